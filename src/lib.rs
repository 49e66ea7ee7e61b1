//! standby-proxy: makes a pair of telephony servers behave as one.
//!
//! # Layout
//!
//! Layers point down; only `node` knows all parts.
//!
//! - [`engine`]: the sans-IO standby state engine. Events and a time value in, actions out;
//!   no sockets, tasks or clock. Every election rule (R1–R13 of `design.md`) lives here.
//! - [`config`]: the TOML configuration, parsed then validated, every error named by key.
//! - [`node`]: the driver that runs one node: feeds the engine time and events, carries out
//!   its actions, and shuts down in order.
//!
//! The peer link, registrar prober, front listeners, replicated store and admin API are added
//! beside these as their issues land (see the README's "where is what").

pub mod admin;
pub mod certs;
pub mod config;
pub mod engine;
pub mod front;
pub mod health;
pub mod hooks;
pub mod node;
pub mod notify;
pub mod peer;
pub mod sip;
pub mod store;
pub mod telemetry;
pub mod thresholds;
pub mod view;
