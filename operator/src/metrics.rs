//! Prometheus metrics: reconciles, errors by reason, durations.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of a reconcile counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcileLabels {
    /// The kind reconciled.
    pub kind: String,
    /// ok or error.
    pub result: String,
}

/// Labels of an error counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// The kind reconciled.
    pub kind: String,
    /// The error's condition reason.
    pub reason: String,
}

/// Labels of the objects gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ObjectLabels {
    /// The kind.
    pub kind: String,
    /// Ready, NotReady, Stalled or Unknown.
    pub state: String,
}

/// Labels of the duration histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// The kind reconciled.
    pub kind: String,
}

/// The operator's metrics and the registry that exposes them.
pub struct Metrics {
    /// Registry rendered at /metrics.
    pub registry: Registry,
    /// countersign_reconciles_total.
    pub reconciles: Family<ReconcileLabels, Counter>,
    /// countersign_reconcile_errors_total.
    pub errors: Family<ErrorLabels, Counter>,
    /// countersign_reconcile_duration_seconds.
    pub duration: Family<KindLabels, Histogram>,
    /// countersign_leader: 1 while this instance runs the controllers.
    pub leader: Gauge,
    /// countersign_pending_approvals: objects with a change awaiting approval.
    pub pending_approvals: Gauge,
    /// countersign_reconciles_in_flight: reconciles running now.
    pub reconciles_in_flight: Gauge,
    /// countersign_reconciles_waiting: reconciles waiting for a slot
    /// (`--max-concurrent-reconciles`).
    pub reconciles_waiting: Gauge,
    /// countersign_row_change_listener_connected: 1 while the operator hears
    /// of database edits as they happen.
    pub row_change_listener_connected: Gauge,
    /// countersign_objects: objects per kind by what their status says.
    pub objects: Family<ObjectLabels, Gauge>,
    /// countersign_drift_corrections_total: rows edited behind the
    /// operator's back and restored, by kind.
    pub drift_corrections: Family<KindLabels, Counter>,
    /// countersign_last_full_resync_timestamp_seconds: when every object was
    /// last queued for a look at once (start-up, a listener reconnect).
    pub last_full_resync: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("countersign");
        let reconciles = Family::<ReconcileLabels, Counter>::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let duration = Family::<KindLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 14))
        });
        registry.register("reconciles", "Reconciles by kind and result", reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Reconcile errors by kind and reason",
            errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Reconcile duration by kind",
            duration.clone(),
        );
        let pending_approvals = Gauge::default();
        registry.register(
            "pending_approvals",
            "Objects with a change awaiting a second person's approval",
            pending_approvals.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this instance leads and runs the controllers",
            leader.clone(),
        );
        let reconciles_in_flight = Gauge::default();
        registry.register(
            "reconciles_in_flight",
            "Reconciles running now, across every controller",
            reconciles_in_flight.clone(),
        );
        let reconciles_waiting = Gauge::default();
        registry.register(
            "reconciles_waiting",
            "Reconciles waiting for one of the --max-concurrent-reconciles slots",
            reconciles_waiting.clone(),
        );
        let row_change_listener_connected = Gauge::default();
        registry.register(
            "row_change_listener_connected",
            "1 while the database's row-change notifications reach the operator, 0 while they do not",
            row_change_listener_connected.clone(),
        );
        let objects = Family::<ObjectLabels, Gauge>::default();
        registry.register(
            "objects",
            "Objects per kind by state: Ready, NotReady, Stalled (waits for a person), Unknown",
            objects.clone(),
        );
        let drift_corrections = Family::<KindLabels, Counter>::default();
        registry.register(
            "drift_corrections",
            "Managed rows found edited outside Countersign and restored, by kind",
            drift_corrections.clone(),
        );
        let last_full_resync = Gauge::default();
        registry.register(
            "last_full_resync_timestamp_seconds",
            "Unix time at which every object was last queued for a look at once",
            last_full_resync.clone(),
        );
        Self {
            registry,
            reconciles,
            errors,
            duration,
            leader,
            pending_approvals,
            reconciles_in_flight,
            reconciles_waiting,
            row_change_listener_connected,
            objects,
            drift_corrections,
            last_full_resync,
        }
    }
}

impl Metrics {
    /// Records that every object was just queued for a look.
    pub fn mark_full_resync(&self) {
        self.last_full_resync.set(chrono::Utc::now().timestamp());
    }

    /// Renders the OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
