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
/// bytes.
pub fn next(buffer: &[u8], max_message: usize) -> Frame {
    match scan::scan(buffer) {
        Ok(message) => {
            let body = message.content_length.unwrap_or(0);
            // Compare before adding: neither term can make the sum wrap once both are
            // within the limit.
            if body > max_message || message.body_offset > max_message {
                return Frame::TooLarge;
            }
            match message.body_offset.checked_add(body) {
                Some(end) if end <= max_message => {
                    if buffer.len() < end {
                        Frame::Incomplete
                    } else {
                        Frame::Complete(end)
                    }
                }
                _ => Frame::TooLarge,
            }
        }
        Err(ScanError::Incomplete) if buffer.len() > max_message => Frame::TooLarge,
        Err(ScanError::Incomplete) => Frame::Incomplete,
        Err(error) => Frame::Unframeable(error),
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
}
