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

/// The key under which a SIP front end's TLS target is advertised and published beside its
/// plain target (`sip` → `sip/tls`). Front-end names cannot hold a `/`, so it never clashes.
pub fn tls_target_key(name: &str) -> String {
    format!("{name}/tls")
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

/// A value worked out from the view (a parsed target, say), worked out again only when the
/// view's generation changed: the hot path compares one number per use.
pub struct Derived<T> {
    view: SharedView,
    generation: u64,
    value: Option<T>,
    derive: DeriveFn<T>,
}

/// How a [`Derived`] value is worked out from the view.
type DeriveFn<T> = Box<dyn Fn(&ActiveView) -> Option<T> + Send>;

impl<T> Derived<T> {
    /// Derives with `derive` from `view`.
    pub fn new(
        view: SharedView,
        derive: impl Fn(&ActiveView) -> Option<T> + Send + 'static,
    ) -> Self {
        Derived {
            view,
            generation: u64::MAX,
            value: None,
            derive: Box::new(derive),
        }
    }

    /// The value for the current view.
    pub fn get(&mut self) -> Option<&T> {
        let view = self.view.load();
        if view.generation != self.generation {
            self.generation = view.generation;
            self.value = (self.derive)(&view);
        }
        self.value.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn a_derived_value_is_worked_out_once_per_view_change() {
        let view = shared();
        let runs = Arc::new(AtomicUsize::new(0));
        let counter = runs.clone();
        let mut derived = Derived::new(view.clone(), move |v| {
            counter.fetch_add(1, Ordering::Relaxed);
            v.targets.get("sip").cloned()
        });
        assert_eq!(derived.get(), None);
        assert_eq!(derived.get(), None);
        let targets = [("sip".to_owned(), "sip:10.0.0.1".to_owned())].into();
        publish(&view, Some("a".into()), false, targets);
        assert_eq!(derived.get().map(String::as_str), Some("sip:10.0.0.1"));
        assert_eq!(derived.get().map(String::as_str), Some("sip:10.0.0.1"));
        assert_eq!(runs.load(Ordering::Relaxed), 2);
    }
}
