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
    /// In cluster mode, while this node is the active one: until when it may serve as such
    /// (its lease is surely alive until then). Past it the view names nobody, whatever the
    /// control plane managed to publish: a node frozen and resumed serves nobody as active.
    pub valid_until: Option<std::time::Instant>,
}

impl ActiveView {
    /// The active node, unless the view's deadline passed (reads the clock only when there
    /// is one).
    pub fn active_now(&self) -> Option<&NodeId> {
        if self.expired() {
            return None;
        }
        self.active.as_ref()
    }

    /// Whether the deadline passed.
    pub fn expired(&self) -> bool {
        self.valid_until
            .is_some_and(|until| tokio::time::Instant::now().into_std() >= until)
    }
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
    publish_until(view, active, local_active, targets, None)
}

/// Like [`publish`], valid only until `valid_until` (cluster mode's lease deadline).
pub fn publish_until(
    view: &SharedView,
    active: Option<NodeId>,
    local_active: bool,
    targets: Targets,
    valid_until: Option<std::time::Instant>,
) -> bool {
    let current = view.load();
    if current.active == active
        && current.local_active == local_active
        && current.targets == targets
        && current.valid_until == valid_until
    {
        return false;
    }
    view.store(Arc::new(ActiveView {
        generation: current.generation + 1,
        active,
        local_active,
        targets,
        valid_until,
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

    /// The value for the current view; none once the view's deadline passed.
    pub fn get(&mut self) -> Option<&T> {
        let view = self.view.load();
        if view.generation != self.generation {
            self.generation = view.generation;
            self.value = (self.derive)(&view);
        }
        if view.expired() {
            return None;
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

    #[test]
    fn a_view_past_its_deadline_names_nobody_and_derives_nothing() {
        let view = shared();
        let targets: Targets = [("sip".to_owned(), "sip:10.0.0.1".to_owned())].into();
        let now = tokio::time::Instant::now().into_std();
        let mut derived = Derived::new(view.clone(), |v| v.targets.get("sip").cloned());
        publish_until(
            &view,
            Some(NodeId::from("a")),
            true,
            targets.clone(),
            Some(now + std::time::Duration::from_secs(60)),
        );
        assert_eq!(view.load().active_now(), Some(&NodeId::from("a")));
        assert!(derived.get().is_some());
        // The same view, its deadline passed (a node frozen past its lease): nobody.
        publish_until(
            &view,
            Some(NodeId::from("a")),
            true,
            targets.clone(),
            Some(now),
        );
        assert_eq!(view.load().active_now(), None);
        assert_eq!(derived.get(), None);
        // A pair's view has no deadline.
        publish(&view, Some(NodeId::from("a")), true, targets);
        assert!(view.load().active_now().is_some() && derived.get().is_some());
    }
}
