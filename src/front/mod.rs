//! The client entry point: listeners that send every client to the active node.
//!
//! They read only the shared [`ActiveView`](crate::view::ActiveView) (who is active and
//! where its services are), never the engine. Whichever node's listener a client reaches,
//! it ends up at the active node.

pub mod http;
pub mod sip;
pub mod tcp;
