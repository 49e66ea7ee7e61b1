//! The replicated configuration store: keys (paths like `users/1234/forwarding`) to JSON
//! values, written on the active node and replicated synchronously to the standby.
//!
//! - [`replica`]: the log, the key state, replication and merge, sans-IO;
//! - [`storage`]: making [`replica::Changes`] durable in redb, and loading them back;
//! - [`service`]: the task that owns both, serves the admin API and runs replication over
//!   the peer link.

pub mod api;
pub mod replica;
pub mod storage;
