//! The peer link: how the two nodes' engines hear each other.
//!
//! Each node dials its peer's listener and sends its own heartbeats on that outbound
//! connection; it receives the peer's heartbeats on the inbound one. Both are TCP with TLS 1.3
//! and mutual authentication against the pair's CA, and each side checks that the other's
//! certificate names the configured peer.
//!
//! Heartbeats never queue: the outbound side holds only the newest one (a `watch` channel),
//! so a slow link delays at most one heartbeat and never delivers an old one late. Bulk
//! traffic (the store's replication, [`replication`]) uses a connection of its own, announced
//! by the `channel` of the hello frame, so it can never hold heartbeats back; so does a request
//! for the peer's own status report ([`status`]), for the status page.
//!
//! In cluster mode there is no pair link; with `on_store_loss = "keep-if-peers-confirm"`,
//! members confirm the active one over a listener of their own ([`confirm`]), with the same
//! frames and TLS.

pub mod confirm;
pub mod frame;
pub mod link;
pub mod replication;
pub mod status;
pub mod tls;
