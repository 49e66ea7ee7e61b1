//! Who is active, as the front listeners see it: one value, swapped atomically on every
//! change, read without a lock on the hot path.

use crate::engine::{NodeId, Targets};
use arc_swap::ArcSwap;
use std::sync::Arc;

/// The pair as the entry point needs it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ActiveView {
    /// Grows with every change, so a reader can tell it has seen a newer view.
    pub generation: u64,
    /// The active node, if any is known.
    pub active: Option<NodeId>,
    /// Whether that is this node.
    pub local_active: bool,
    /// The active node's service targets, by front-end name.
    pub targets: Targets,
}

/// The shared, lock-free handle to the current view.
pub type SharedView = Arc<ArcSwap<ActiveView>>;

/// A view with nobody active.
pub fn shared() -> SharedView {
    Arc::new(ArcSwap::from_pointee(ActiveView::default()))
}

/// Publishes a new view if it differs from the current one; returns whether it changed.
pub fn publish(
    view: &SharedView,
    active: Option<NodeId>,
    local_active: bool,
    targets: Targets,
) -> bool {
    let current = view.load();
    if current.active == active
        && current.local_active == local_active
        && current.targets == targets
    {
        return false;
    }
    view.store(Arc::new(ActiveView {
        generation: current.generation + 1,
        active,
        local_active,
        targets,
    }));
    true
}
