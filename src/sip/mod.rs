//! SIP: what standby-proxy needs of it.
//!
//! - [`scan`]: a zero-copy scanner for SIP messages (start line, headers with compact forms
//!   and folded lines, body). No allocation; every value is a slice of the input.
//! - [`uri`]: SIP URIs as far as routing needs them (scheme, host, port, transport).
//! - [`framing`]: message boundaries on a SIP byte stream, every length checked first.
//! - [`options`]: the OPTIONS request the registrar prober sends, and matching its answer.
//! - [`resolve`]: RFC 3263: which transports, addresses and ports a SIP URI means.
//! - [`prober`]: the registrar prober (UDP with timer E retransmissions, TCP, TLS).
//! - [`redirect`]: the 302 responder of the SIP front end, sans-IO.
//! - [`proxy`]: the stateless proxy of the SIP front end (RFC 3261 §16.11), sans-IO.

pub mod framing;
pub mod options;
pub mod prober;
pub mod proxy;
pub mod redirect;
pub mod resolve;
pub mod scan;
pub mod uri;

/// A transport for SIP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// Datagrams; retransmitted on timer E.
    Udp,
    /// A TCP connection.
    Tcp,
    /// TLS over TCP.
    Tls,
}

impl Transport {
    /// As written in a Via header.
    pub fn via_name(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
        }
    }

    /// The default port (RFC 3261 §19.1.2).
    pub fn default_port(self) -> u16 {
        match self {
            Transport::Udp | Transport::Tcp => 5060,
            Transport::Tls => 5061,
        }
    }

    /// From a `transport=` URI parameter.
    pub fn from_param(value: &str) -> Option<Transport> {
        match value.to_ascii_lowercase().as_str() {
            "udp" => Some(Transport::Udp),
            "tcp" => Some(Transport::Tcp),
            "tls" => Some(Transport::Tls),
            _ => None,
        }
    }
}

/// Random tokens for branches, tags and Call-IDs. SplitMix64 seeded from the process's
/// random hash keys: unpredictable enough for SIP identifiers, and no crate needed.
#[derive(Debug, Clone)]
pub struct TokenSource(u64);

impl TokenSource {
    /// A new source with a random seed.
    pub fn new() -> Self {
        use std::hash::{BuildHasher, Hasher};
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u32(std::process::id());
        TokenSource(hasher.finish())
    }

    /// A source that replays: the same seed gives the same tokens (for tests and simulations).
    pub fn seeded(seed: u64) -> Self {
        TokenSource(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A token of 16 hex digits.
    pub fn token(&mut self) -> String {
        format!("{:016x}", self.next_u64())
    }
}

impl Default for TokenSource {
    fn default() -> Self {
        Self::new()
    }
}

/// The RFC 4475 torture messages kept in the repository (`tests/data/rfc4475`), for the
/// unit tests of the scanner, the responder and the proxy.
#[cfg(test)]
pub(crate) fn rfc4475_corpus() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/rfc4475")
}
