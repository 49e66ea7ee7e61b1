//! A zero-copy SIP message scanner.
//!
//! It finds the start line, iterates the headers (folded continuation lines stay inside the
//! value; compact forms such as `v:` and `i:` are recognised, RFC 3261 §7.3.3), and locates the
//! body. Nothing is allocated and nothing is copied: every result borrows the input. It
//! tolerates what RFC 3261 says to tolerate (leading CRLFs, any case in header names, LWS
//! around the colon) and refuses what it cannot frame.

/// Why a message could not be scanned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ScanError {
    /// The header section has not ended yet (for stream transports: read more).
    #[error("incomplete message")]
    Incomplete,
    /// The first line is neither a request line nor a status line.
    #[error("bad start line")]
    BadStartLine,
    /// A header line has no colon.
    #[error("bad header line")]
    BadHeader,
    /// Content-Length is not a number.
    #[error("bad Content-Length")]
    BadContentLength,
}

/// The first line of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartLine<'a> {
    /// `METHOD URI SIP/2.0`.
    Request {
        /// The method.
        method: &'a [u8],
        /// The Request-URI, as written.
        uri: &'a [u8],
    },
    /// `SIP/2.0 CODE REASON`.
    Response {
        /// The status code.
        code: u16,
        /// The reason phrase.
        reason: &'a [u8],
    },
}

/// A scanned message: its start line, header section and where the body is.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    /// The start line.
    pub start: StartLine<'a>,
    /// The start line as written, without its CRLF.
    pub start_line: &'a [u8],
    /// The header lines, without the start line and the blank line.
    pub head: &'a [u8],
    /// Offset of the body in the input.
    pub body_offset: usize,
    /// The Content-Length, if present.
    pub content_length: Option<usize>,
}

/// Header names the routing code cares about, with their compact forms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Name {
    /// `Via`, `v`.
    Via,
    /// `Call-ID`, `i`.
    CallId,
    /// `CSeq`.
    CSeq,
    /// `From`, `f`.
    From,
    /// `To`, `t`.
    To,
    /// `Contact`, `m`.
    Contact,
    /// `Max-Forwards`.
    MaxForwards,
    /// `Content-Length`, `l`.
    ContentLength,
    /// Anything else.
    Other,
}

impl Name {
    /// Classifies a header name (case-insensitive, compact forms included).
    pub fn of(name: &[u8]) -> Name {
        let eq = |s: &str| name.eq_ignore_ascii_case(s.as_bytes());
        if eq("via") || eq("v") {
            Name::Via
        } else if eq("call-id") || eq("i") {
            Name::CallId
        } else if eq("cseq") {
            Name::CSeq
        } else if eq("from") || eq("f") {
            Name::From
        } else if eq("to") || eq("t") {
            Name::To
        } else if eq("contact") || eq("m") {
            Name::Contact
        } else if eq("max-forwards") {
            Name::MaxForwards
        } else if eq("content-length") || eq("l") {
            Name::ContentLength
        } else {
            Name::Other
        }
    }
}

/// The end of a header section, searched with a searcher built once.
fn find_head_end(haystack: &[u8]) -> Option<usize> {
    static BLANK_LINE: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\r\n\r\n"));
    BLANK_LINE.find(haystack)
}

/// The next CRLF: memchr's vectorised search for CR, then a look at the byte after it.
fn find_crlf(haystack: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(at) = memchr::memchr(b'\r', &haystack[from..]) {
        let at = from + at;
        if haystack.get(at + 1) == Some(&b'\n') {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

/// Trims spaces and tabs (and folding CRLFs) at both ends.
pub fn trim(mut value: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = value {
        if matches!(first, b' ' | b'\t' | b'\r' | b'\n') {
            value = rest;
        } else {
            break;
        }
    }
    while let [rest @ .., last] = value {
        if matches!(last, b' ' | b'\t' | b'\r' | b'\n') {
            value = rest;
        } else {
            break;
        }
    }
    value
}

/// Scans `input` (one datagram, or the start of a stream).
pub fn scan(input: &[u8]) -> Result<Message<'_>, ScanError> {
    // RFC 3261 §7.5: ignore CRLFs before the start line (keep-alives).
    let skipped = input
        .iter()
        .take_while(|b| matches!(b, b'\r' | b'\n'))
        .count();
    let rest = &input[skipped..];
    let head_end = find_head_end(rest).ok_or(ScanError::Incomplete)?;
    let line_end = find_crlf(rest).unwrap_or(head_end);
    let start = parse_start(&rest[..line_end])?;
    let head = if line_end + 2 <= head_end {
        &rest[line_end + 2..head_end]
    } else {
        &[][..]
    };
    let mut content_length = None;
    for header in headers(head) {
        let (name, value) = header?;
        if Name::of(name) == Name::ContentLength {
            let digits = trim(value);
            let parsed = std::str::from_utf8(digits)
                .ok()
                .and_then(|d| d.parse::<usize>().ok())
                .ok_or(ScanError::BadContentLength)?;
            content_length = Some(parsed);
        }
    }
    Ok(Message {
        start,
        start_line: &rest[..line_end],
        head,
        body_offset: skipped + head_end + 4,
        content_length,
    })
}

fn parse_start(line: &[u8]) -> Result<StartLine<'_>, ScanError> {
    let mut parts = line.splitn(3, |&b| b == b' ');
    let first = parts.next().ok_or(ScanError::BadStartLine)?;
    let second = parts.next().ok_or(ScanError::BadStartLine)?;
    let third = parts.next().ok_or(ScanError::BadStartLine)?;
    if first.eq_ignore_ascii_case(b"SIP/2.0") {
        let code = std::str::from_utf8(second)
            .ok()
            .filter(|c| c.len() == 3)
            .and_then(|c| c.parse::<u16>().ok())
            .filter(|c| (100..700).contains(c))
            .ok_or(ScanError::BadStartLine)?;
        return Ok(StartLine::Response {
            code,
            reason: third,
        });
    }
    let token = |s: &[u8]| !s.is_empty() && s.iter().all(|b| b.is_ascii_graphic());
    if token(first) && token(second) && third.starts_with(b"SIP/") {
        return Ok(StartLine::Request {
            method: first,
            uri: second,
        });
    }
    Err(ScanError::BadStartLine)
}

/// One header as written: the whole line (folded continuations included, CRLF excluded),
/// its name and its value (both trimmed).
#[derive(Debug, Clone, Copy)]
pub struct HeaderLine<'a> {
    /// The raw line.
    pub line: &'a [u8],
    /// The name, as written (compact or long form).
    pub name: &'a [u8],
    /// The value.
    pub value: &'a [u8],
}

/// Iterates the header lines of a header section. A line without a colon ends the
/// iteration with [`ScanError::BadHeader`].
pub fn header_lines(head: &[u8]) -> impl Iterator<Item = Result<HeaderLine<'_>, ScanError>> {
    let mut rest = head;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        // The header ends at a CRLF not followed by a space or tab (folding).
        let mut end = rest.len();
        let mut search = 0;
        while let Some(at) = find_crlf(&rest[search..]) {
            let at = search + at;
            match rest.get(at + 2) {
                Some(b' ' | b'\t') => search = at + 2,
                _ => {
                    end = at;
                    break;
                }
            }
        }
        let line = &rest[..end];
        rest = rest.get(end + 2..).unwrap_or_default();
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            rest = &[];
            return Some(Err(ScanError::BadHeader));
        };
        Some(Ok(HeaderLine {
            line,
            name: trim(&line[..colon]),
            value: trim(&line[colon + 1..]),
        }))
    })
}

/// Iterates the headers of a header section as (name, value), both trimmed. A line
/// without a colon ends the iteration with [`ScanError::BadHeader`].
pub fn headers(head: &[u8]) -> impl Iterator<Item = Result<(&[u8], &[u8]), ScanError>> {
    header_lines(head).map(|line| line.map(|l| (l.name, l.value)))
}

/// The first header called `name` (any form), if any.
pub fn first(head: &[u8], name: Name) -> Option<&[u8]> {
    headers(head)
        .filter_map(Result::ok)
        .find(|(n, _)| Name::of(n) == name)
        .map(|(_, v)| v)
}

/// The value of `;name=value` in a header value (case-insensitive name), e.g. a Via's branch.
pub fn param<'a>(value: &'a [u8], name: &str) -> Option<&'a [u8]> {
    value.split(|&b| b == b';').skip(1).find_map(|part| {
        let part = trim(part);
        let (key, val) = match part.iter().position(|&b| b == b'=') {
            Some(eq) => (trim(&part[..eq]), trim(&part[eq + 1..])),
            None => (part, &[][..]),
        };
        key.eq_ignore_ascii_case(name.as_bytes()).then_some(val)
    })
}

/// The first Via of a message: the first comma-separated value of the first Via header.
pub fn top_via(head: &[u8]) -> Option<&[u8]> {
    let via = first(head, Name::Via)?;
    let end = via.iter().position(|&b| b == b',').unwrap_or(via.len());
    Some(trim(&via[..end]))
}

#[cfg(test)]
mod tests {
    use super::*;

    const RESPONSE: &[u8] = b"SIP/2.0 200 OK\r\n\
v: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKabc;rport=5070 , SIP/2.0/UDP other\r\n\
i: call-1@host\r\n\
CSeq: 7\r\n  OPTIONS\r\n\
l: 4\r\n\r\nbody";

    #[test]
    fn compact_forms_folding_and_body() {
        let message = scan(RESPONSE).expect("scans");
        assert_eq!(
            message.start,
            StartLine::Response {
                code: 200,
                reason: b"OK"
            }
        );
        assert_eq!(first(message.head, Name::CallId), Some(&b"call-1@host"[..]));
        let via = top_via(message.head).expect("via");
        assert_eq!(param(via, "branch"), Some(&b"z9hG4bKabc"[..]));
        assert_eq!(param(via, "rport"), Some(&b"5070"[..]));
        let cseq = first(message.head, Name::CSeq).expect("cseq");
        assert!(cseq.ends_with(b"OPTIONS") && cseq.starts_with(b"7"));
        assert_eq!(message.content_length, Some(4));
        assert_eq!(&RESPONSE[message.body_offset..], b"body");
    }

    #[test]
    fn requests_and_leading_crlf() {
        let message = scan(b"\r\n\r\nOPTIONS sip:x SIP/2.0\r\nVia: a\r\n\r\n").expect("scans");
        assert_eq!(
            message.start,
            StartLine::Request {
                method: b"OPTIONS",
                uri: b"sip:x"
            }
        );
    }

    #[test]
    fn refuses_what_it_cannot_frame() {
        assert_eq!(
            scan(b"SIP/2.0 200 OK\r\nVia: a\r\n").err(),
            Some(ScanError::Incomplete)
        );
        assert_eq!(scan(b"HELLO\r\n\r\n").err(), Some(ScanError::BadStartLine));
        assert_eq!(
            scan(b"SIP/2.0 2000 OK\r\n\r\n").err(),
            Some(ScanError::BadStartLine)
        );
        assert_eq!(
            scan(b"SIP/2.0 200 OK\r\nl: x\r\n\r\n").err(),
            Some(ScanError::BadContentLength)
        );
        assert_eq!(
            scan(b"SIP/2.0 200 OK\r\nnocolon\r\n\r\n").err(),
            Some(ScanError::BadHeader)
        );
    }

    /// Every RFC 4475 torture message scans or is refused cleanly: never a panic.
    #[test]
    fn rfc4475_torture_messages_never_panic() {
        let dir = crate::sip::rfc4475_corpus();
        let Ok(entries) = std::fs::read_dir(&dir) else {
            panic!("{} is missing: the torture tests need it", dir.display());
        };
        let mut scanned = 0;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "dat") {
                let bytes = std::fs::read(&path).expect("readable");
                if let Ok(message) = scan(&bytes) {
                    for header in headers(message.head) {
                        let _ = header;
                    }
                    let _ = top_via(message.head).map(|via| param(via, "branch"));
                    scanned += 1;
                }
            }
        }
        assert!(scanned >= 25, "only {scanned} torture messages scanned");
    }
}
