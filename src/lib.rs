//! standby-proxy: makes a pair of telephony servers behave as one.
//!
//! # Layout
//!
//! Layers point down; only `node` knows all parts, and it only wires them.
//!
//! - [`engine`]: the sans-IO standby state engine. Events and a time value in, actions out;
//!   no sockets, tasks or clock. Every election rule (R1–R13 of the README) lives here, and
//!   `engine::ProtocolVersion` is the one place that versions what the peers send each other.
//! - [`store`]: the replicated configuration store: the log, merge and replication protocol
//!   (`replica`, sans-IO), its durable storage (`storage`, redb) and the API's requests.
//! - [`peer`]: the peer link: frames, mutual TLS, the heartbeat tasks, and the store's task
//!   that runs replication over it.
//! - [`sip`]: the SIP scanner, URIs, the 302 responder and the stateless proxy (sans-IO), the
//!   registrar prober and RFC 3263 resolution.
//! - [`front`]: the client entry points (SIP, HTTP(S), TCP); each kind starts itself from its
//!   configuration and reads only the shared [`view`].
//! - [`admin`]: the admin API, status page and `/metrics`, and the CLI's client for it.
//! - [`health`], [`hooks`], [`notify`], [`telemetry`], [`thresholds`], [`tls`], [`certs`]:
//!   the local health check, role-change hooks, systemd notification, metric names, rise/fall
//!   thresholds, TLS set-up shared by every part, and `certs init`.
//! - [`idle`], [`http2`]: what the HTTP servers (front end and admin API) share: one idle and
//!   request-head timer per connection, and HTTP/2 with its limits.
//! - [`config`]: the TOML configuration, one file per section, every error named by key.
//! - [`dev`]: `standby-proxy dev`, a whole pair on this machine for a first look: two node
//!   processes of this binary, their configuration, and a tiny service per node.
//! - [`node`]: opens the store, starts every part and hands the channels between them to the
//!   driver, the task that owns the engine.

pub mod admin;
pub mod certs;
pub mod cidr;
pub mod cluster;
pub mod config;
pub mod dev;
pub mod engine;
pub mod front;
pub mod health;
pub mod hooks;
pub mod http2;
pub mod idle;
pub mod lock;
pub mod node;
pub mod notify;
pub mod peer;
pub mod sip;
pub mod store;
pub mod telemetry;
pub mod thresholds;
pub mod tls;
pub mod view;
pub mod vip;
