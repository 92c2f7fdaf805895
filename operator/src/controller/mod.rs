//! Controllers: one per kind, each a thin shell around its pipeline in
//! `countersign-reconcilers` that adds the finalizer, writes status, records
//! events on transitions and backs off with jitter.

pub mod backoff;
pub mod status;
pub mod tenant;

use crate::metrics::Metrics;
use backoff::Backoff;
use kube::Client;
use kube::runtime::events::Recorder;
use sqlx::PgPool;
use std::sync::Arc;

/// The finalizer every kind carries while it manages a row.
pub const FINALIZER: &str = "countersign.dev/cleanup";
/// The field manager for status writes.
pub const FIELD_MANAGER: &str = "countersign";

/// What every controller shares.
pub struct Context {
    /// Kubernetes client.
    pub client: Client,
    /// API database pool.
    pub pool: PgPool,
    /// Event recorder.
    pub recorder: Recorder,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Retry state per object.
    pub backoff: Backoff,
    /// The identity written to the audit log as actor.
    pub actor: String,
    /// How often a settled object is looked at again to detect drift in the
    /// database, which has no watch of its own.
    pub resync: std::time::Duration,
}
