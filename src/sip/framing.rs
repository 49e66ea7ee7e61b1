//! Message boundaries on a SIP byte stream (TCP, TLS): where the next message ends, with
//! every length from the wire checked against the limit before any arithmetic, so a
//! Content-Length of 2^64 − 50 neither wraps nor spins. Used by the front end's stream
//! connections and by the registrar prober's TCP/TLS reader; fuzzed (`sip_stream`).

use super::scan::{self, ScanError};

/// What the front of a stream buffer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// A whole message of this many bytes (head and body).
    Complete(usize),
    /// Not yet a whole message; read more (the buffer is still within the limit).
    Incomplete,
    /// The message is, or announces itself, larger than the limit: close the stream.
    TooLarge,
    /// The head cannot be read, so the stream's message boundaries are lost: close it
    /// (after answering 400 if the responder can).
    Unframeable(ScanError),
}

/// The first message in `buffer` on a stream whose messages may be at most `max_message`
/// bytes. Scans the whole head each call: a reader that calls it after every read of a
/// trickled message should use a [`Framer`] instead.
pub fn next(buffer: &[u8], max_message: usize) -> Frame {
    match message_end(buffer, max_message) {
        Ok(end) if buffer.len() < end => Frame::Incomplete,
        Ok(end) => Frame::Complete(end),
        Err(frame) => frame,
    }
}

/// Where the first message in `buffer` ends once its head is whole, or what else the
/// buffer holds.
fn message_end(buffer: &[u8], max_message: usize) -> Result<usize, Frame> {
    match scan::scan(buffer) {
        Ok(message) => {
            let body = message.content_length.unwrap_or(0);
            // Compare before adding: neither term can make the sum wrap once both are
            // within the limit.
            if body > max_message || message.body_offset > max_message {
                return Err(Frame::TooLarge);
            }
            match message.body_offset.checked_add(body) {
                Some(end) if end <= max_message => Ok(end),
                _ => Err(Frame::TooLarge),
            }
        }
        Err(ScanError::Incomplete) if buffer.len() > max_message => Err(Frame::TooLarge),
        Err(ScanError::Incomplete) => Err(Frame::Incomplete),
        Err(error) => Err(Frame::Unframeable(error)),
    }
}

/// [`next`] for a reader that asks again after every read: it looks for the end of the
/// head only in the bytes that arrived since it last looked, and scans a head once, so a
/// message trickled one byte per read costs linear time, not quadratic.
///
/// The caller appends to the buffer and takes off exactly a `Complete` message's bytes
/// before asking again; anything else it takes off the front calls for [`Framer::reset`].
#[derive(Debug, Clone)]
pub struct Framer {
    max_message: usize,
    /// Bytes at the front of the buffer already searched for the blank line, in vain.
    searched: usize,
    /// The end of the message at the front, once its head was scanned.
    known_end: Option<usize>,
}

impl Framer {
    /// A framer for messages of at most `max_message` bytes.
    pub fn new(max_message: usize) -> Self {
        Framer {
            max_message,
            searched: 0,
            known_end: None,
        }
    }

    /// The first message in `buffer`, as [`next`] would say.
    pub fn next(&mut self, buffer: &[u8]) -> Frame {
        if let Some(end) = self.known_end {
            return self.complete_at(end, buffer);
        }
        // The blank line may straddle what was searched and what is new.
        let blank_run = buffer
            .iter()
            .take_while(|b| matches!(b, b'\r' | b'\n'))
            .count();
        let from = self.searched.saturating_sub(3).max(blank_run);
        let head_whole = buffer
            .get(from..)
            .is_some_and(|new| memchr::memmem::find(new, b"\r\n\r\n").is_some());
        if !head_whole {
            self.searched = buffer.len();
            return if buffer.len() > self.max_message {
                Frame::TooLarge
            } else {
                Frame::Incomplete
            };
        }
        match message_end(buffer, self.max_message) {
            Ok(end) => {
                self.known_end = Some(end);
                self.complete_at(end, buffer)
            }
            Err(frame) => frame,
        }
    }

    /// Forgets what it learnt of the buffer's front (the caller took bytes off).
    pub fn reset(&mut self) {
        self.searched = 0;
        self.known_end = None;
    }

    fn complete_at(&mut self, end: usize, buffer: &[u8]) -> Frame {
        if buffer.len() < end {
            return Frame::Incomplete;
        }
        self.reset();
        Frame::Complete(end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPTIONS: &[u8] = b"OPTIONS sip:x SIP/2.0\r\nl: 4\r\n\r\nbody";

    #[test]
    fn a_whole_message_is_framed_by_its_content_length() {
        assert_eq!(next(OPTIONS, 1024), Frame::Complete(OPTIONS.len()));
        let mut two = OPTIONS.to_vec();
        two.extend_from_slice(OPTIONS);
        assert_eq!(next(&two, 1024), Frame::Complete(OPTIONS.len()));
        assert_eq!(next(&OPTIONS[..OPTIONS.len() - 1], 1024), Frame::Incomplete);
        assert_eq!(next(&OPTIONS[..10], 1024), Frame::Incomplete);
    }

    #[test]
    fn a_content_length_that_would_wrap_is_too_large_not_a_spin() {
        for length in ["18446744073709551566", "18446744073709551615", "65537"] {
            let message = format!("OPTIONS sip:x SIP/2.0\r\nl: {length}\r\n\r\n");
            assert_eq!(next(message.as_bytes(), 65536), Frame::TooLarge, "{length}");
        }
        // One more digit than usize holds is not a number at all.
        let message = b"OPTIONS sip:x SIP/2.0\r\nl: 184467440737095516150\r\n\r\n";
        assert!(matches!(next(message, 65536), Frame::Unframeable(_)));
    }

    #[test]
    fn a_head_that_never_ends_is_too_large_once_over_the_limit() {
        let mut head = b"OPTIONS sip:x SIP/2.0\r\n".to_vec();
        head.resize(2000, b'a');
        assert_eq!(next(&head, 4096), Frame::Incomplete);
        assert_eq!(next(&head, 1024), Frame::TooLarge);
    }

    #[test]
    fn a_message_just_at_the_limit_passes() {
        assert_eq!(next(OPTIONS, OPTIONS.len()), Frame::Complete(OPTIONS.len()));
        assert_eq!(next(OPTIONS, OPTIONS.len() - 1), Frame::TooLarge);
    }

    #[test]
    fn the_framer_agrees_with_next_however_the_bytes_arrive() {
        let mut stream = OPTIONS.to_vec();
        stream.extend_from_slice(b"INVITE sip:y SIP/2.0\r\nContent-Length: 3\r\n\r\nabc");
        stream.extend_from_slice(OPTIONS);
        for step in [1, 2, 3, 5, 7, 64] {
            let mut framer = Framer::new(1024);
            let (mut buffer, mut framed, mut expected) = (Vec::new(), Vec::new(), Vec::new());
            for piece in stream.chunks(step) {
                buffer.extend_from_slice(piece);
                loop {
                    let frame = framer.next(&buffer);
                    assert_eq!(frame, next(&buffer, 1024), "step {step}");
                    let Frame::Complete(end) = frame else { break };
                    framed.push(buffer.drain(..end).collect::<Vec<u8>>());
                }
            }
            let mut rest = &stream[..];
            while let Frame::Complete(end) = next(rest, 1024) {
                expected.push(rest[..end].to_vec());
                rest = &rest[end..];
            }
            assert_eq!(framed, expected, "step {step}");
            assert!(buffer.is_empty());
        }
    }

    #[test]
    fn the_framer_finds_a_blank_line_split_across_reads_and_bounds_a_head() {
        let mut framer = Framer::new(64);
        let mut buffer = b"OPTIONS sip:x SIP/2.0\r\nl: 0\r\n\r".to_vec();
        assert_eq!(framer.next(&buffer), Frame::Incomplete);
        buffer.push(b'\n');
        assert_eq!(framer.next(&buffer), Frame::Complete(buffer.len()));
        let mut framer = Framer::new(64);
        let mut head = b"OPTIONS sip:x SIP/2.0\r\n".to_vec();
        while head.len() <= 64 {
            assert_eq!(framer.next(&head), Frame::Incomplete);
            head.push(b'a');
        }
        assert_eq!(framer.next(&head), Frame::TooLarge);
    }
}
