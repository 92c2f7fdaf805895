//! The one controller shape every kind shares: the deletion gate before the
//! finalizer, the pipeline, the status write, metrics and back-off. A kind
//! plugs in by implementing [`Reconciled`].

use super::policy_fan_out::paced;
use super::row_changes::RowChanges;
use super::status::{self, WithStatus};
use super::watches::{Changes, Feed};
use super::{Context, FINALIZER};
use crate::Error;
use crate::metrics::{ErrorLabels, KindLabels, ReconcileLabels};
use countersign_reconcilers::Outcome;
use countersign_reconcilers::approval::{ApprovedChange, Inputs};
use countersign_reconcilers::report::DeletionGate;
use kube::Resource;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::Store;
use serde::Serialize;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A kind the operator reconciles into the API database.
pub trait Reconciled: WithStatus + Serialize + Send + Sync + 'static {
    /// The API to write this object's status and finalizer through.
    fn api(&self, client: kube::Client) -> Api<Self>;
    /// Runs the pipeline: the new status and when to look again.
    fn reconcile(
        &self,
        ctx: &Context,
        approvals: &Inputs,
        now: &str,
    ) -> impl Future<Output = Result<Pass<Self::Status>, Error>> + Send;
    /// Whether a deletion may proceed.
    fn deletion_gate(
        &self,
        ctx: &Context,
        approvals: &Inputs,
    ) -> impl Future<Output = Result<DeletionGate, Error>> + Send;
    /// Removes or releases the row. `Err(outcome)`: not now, say why.
    fn cleanup(
        &self,
        ctx: &Context,
        approved: Option<ApprovedChange>,
    ) -> impl Future<Output = Result<Result<(), Outcome>, Error>> + Send;
}

/// What one pass of a kind's pipeline leaves: the new status, when to look
/// again, and what drift it corrected.
#[derive(Debug)]
pub struct Pass<S> {
    /// The status to write.
    pub status: S,
    /// Come back after this long (None: the jittered resync).
    pub requeue_after: Option<Duration>,
    /// The row's columns found edited behind the operator's back and restored.
    pub drift_corrected: Vec<&'static str>,
}

impl<S> Pass<S> {
    /// The pass that reports `status` for `outcome`.
    pub fn new(status: S, outcome: &Outcome) -> Self {
        Self {
            status,
            requeue_after: outcome.requeue_after,
            drift_corrected: outcome.drift_corrected.clone(),
        }
    }
}

/// The status after an outcome that says nothing kind-specific.
fn status_from<K: Reconciled>(
    outcome: &Outcome,
    previous: Option<&K::Status>,
    generation: Option<i64>,
    now: &str,
) -> K::Status {
    K::with_common(previous, outcome.status(previous.map(K::common), generation, now))
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// One reconcile of any kind.
pub async fn reconcile<K: Reconciled>(obj: Arc<K>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _slot = ctx.reconcile_slots.acquire(&ctx.metrics).await;
    ctx.metrics.reconciles_in_flight.inc();
    let _in_flight = scopeguard(|| {
        ctx.metrics.reconciles_in_flight.dec();
    });
    let started = Instant::now();
    let api = obj.api(ctx.client.clone());
    let result = match deletion_gate(&api, &obj, &ctx).await {
        Err(e) => Err(e),
        Ok(Err(hold)) => Ok(hold),
        Ok(Ok(approved)) => match with_finalizer(&api, obj.clone()).await {
            Err(e) => Err(e),
            Ok(obj) => finalizer(&api, FINALIZER, obj, |event| async {
                match event {
                    Finalizer::Apply(o) => apply(&api, &o, &ctx).await,
                    Finalizer::Cleanup(o) => match o.cleanup(&ctx, approved).await? {
                        Ok(()) => {
                            ctx.pending.track(&o.uid().unwrap_or_default(), false, &ctx.metrics);
                            ctx.object_states
                                .track(K::KIND, &o.uid().unwrap_or_default(), None, &ctx.metrics);
                            Ok(Action::await_change())
                        }
                        // Keep the finalizer: report why and fail this cleanup so
                        // the finalizer helper does not remove it.
                        Err(outcome) => {
                            let previous = K::current(&o);
                            let new = status_from::<K>(&outcome, previous, o.meta().generation, &now());
                            status::write(&api, o.as_ref(), previous, &new, &ctx).await?;
                            Err(Error::DeletionRefused)
                        }
                    },
                }
            })
            .await
            .map_err(|e| match e {
                kube::runtime::finalizer::Error::ApplyFailed(e) | kube::runtime::finalizer::Error::CleanupFailed(e) => {
                    e
                }
                other => Error::Finalizer(other.to_string()),
            }),
        },
    };
    ctx.metrics
        .duration
        .get_or_create(&KindLabels { kind: K::KIND.into() })
        .observe(started.elapsed().as_secs_f64());
    let ok = result.is_ok();
    ctx.metrics
        .reconciles
        .get_or_create(&ReconcileLabels {
            kind: K::KIND.into(),
            result: if ok { "ok" } else { "error" }.into(),
        })
        .inc();
    if ok {
        ctx.backoff.reset(&obj.uid().unwrap_or_default());
    }
    result
}

/// Runs `f` when dropped, however the scope ends.
fn scopeguard<F: FnOnce()>(f: F) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}

/// The JSON patch that adds the operator's finalizer to an object whose
/// finalizers are `current`, applying only while they still are (`test`).
/// Public so the scale benchmark's bare client sends the very same write.
pub fn add_finalizer_patch(current: Option<&[String]>) -> Result<json_patch::Patch, serde_json::Error> {
    let ops = match current {
        None => serde_json::json!([
            {"op": "test", "path": "/metadata/finalizers", "value": null},
            {"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]},
        ]),
        Some(current) => serde_json::json!([
            {"op": "test", "path": "/metadata/finalizers", "value": current},
            {"op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER},
        ]),
    };
    serde_json::from_value(ops)
}

/// The object with the operator's finalizer: as it is when it carries it
/// (or is being deleted), else as the API server returns it after adding it.
/// The same pass then goes on to write the row: a new object costs one
/// reconcile, not one to add the finalizer and another once its watch event
/// comes back. The patch only applies to the finalizers it was computed from
/// (JSON patch `test`), as kube's finalizer helper does it.
async fn with_finalizer<K: Reconciled>(api: &Api<K>, obj: Arc<K>) -> Result<Arc<K>, Error> {
    if obj.meta().deletion_timestamp.is_some() || obj.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(obj);
    }
    let patch = add_finalizer_patch(obj.meta().finalizers.as_deref()).map_err(|e| Error::Finalizer(e.to_string()))?;
    match api
        .patch(&obj.name_any(), &PatchParams::default(), &Patch::<()>::Json(patch))
        .await
    {
        Ok(patched) => Ok(Arc::new(patched)),
        // The cached copy was older than the object: another pass (started
        // by a related object before this object's own watch event arrived)
        // may have added the finalizer already. Look at the object itself.
        Err(kube::Error::Api(status)) if status.code == 422 => {
            let current = api.get(&obj.name_any()).await?;
            if current.finalizers().iter().any(|f| f == FINALIZER) || current.meta().deletion_timestamp.is_some() {
                Ok(Arc::new(current))
            } else {
                Err(Error::Finalizer(format!(
                    "adding the finalizer was refused: {}",
                    status.message
                )))
            }
        }
        Err(e) => Err(Error::Finalizer(e.to_string())),
    }
}

/// For an object being deleted that still carries the finalizer: Ok(approval)
/// lets the deletion proceed, Err(action) holds it with its status written.
async fn deletion_gate<K: Reconciled>(
    api: &Api<K>,
    obj: &K,
    ctx: &Context,
) -> Result<Result<Option<ApprovedChange>, Action>, Error> {
    let deleting = obj.meta().deletion_timestamp.is_some() && obj.finalizers().iter().any(|f| f == FINALIZER);
    if !deleting {
        return Ok(Ok(None));
    }
    let approvals = super::approval_inputs(ctx, obj.meta().annotations.as_ref()).await?;
    match obj.deletion_gate(ctx, &approvals).await? {
        DeletionGate::Proceed(approved) => Ok(Ok(approved)),
        DeletionGate::Hold(outcome) => {
            let previous = K::current(obj);
            let new = status_from::<K>(&outcome, previous, obj.meta().generation, &now());
            status::write(api, obj, previous, &new, ctx).await?;
            Ok(Err(Action::requeue(
                outcome.requeue_after.unwrap_or_else(|| ctx.resync_after()),
            )))
        }
    }
}

async fn apply<K: Reconciled>(api: &Api<K>, obj: &K, ctx: &Context) -> Result<Action, Error> {
    let previous = K::current(obj);
    let approvals = super::approval_inputs(ctx, obj.meta().annotations.as_ref()).await?;
    let now = now();
    match obj.reconcile(ctx, &approvals, &now).await {
        Ok(pass) => {
            let new = pass.status;
            settle_requests::<K>(obj, previous, &new, ctx).await?;
            status::write(api, obj, previous, &new, ctx).await?;
            if !pass.drift_corrected.is_empty() {
                status::drift_corrected(obj, &pass.drift_corrected, ctx).await;
            }
            consume_approval(api, obj, &new).await;
            Ok(Action::requeue(
                pass.requeue_after.unwrap_or_else(|| ctx.resync_after()),
            ))
        }
        // A serialization failure or deadlock rolled the transaction back
        // and the next pass is expected to succeed: it is retried soon
        // (`error_policy`) and not reported in status.
        Err(Error::Reconcile(e)) if e.is_serialization_failure() => Err(Error::Reconcile(e)),
        Err(Error::Reconcile(e)) => {
            let outcome = countersign_reconcilers::report::failed(&e);
            let new = status_from::<K>(&outcome, previous, obj.meta().generation, &now);
            if let Err(write_err) = status::write(api, obj, previous, &new, ctx).await {
                tracing::warn!(error = %write_err, "could not report the failure in status");
            }
            Err(Error::Reconcile(e))
        }
        Err(e) => Err(e),
    }
}

/// A pass that cleared the pending digest ended before the gate (the spec
/// moved on and now waits, is invalid or is refused) or found the spec live:
/// no older request of this object may be approved any more. Runs only when
/// the status showed a pending digest, so a settled object costs nothing.
async fn settle_requests<K: Reconciled>(
    obj: &K,
    previous: Option<&K::Status>,
    new: &K::Status,
    ctx: &Context,
) -> Result<(), Error> {
    let was_pending = previous.is_some_and(|p| K::common(p).pending_digest.is_some());
    if was_pending && K::common(new).pending_digest.is_none() {
        let uid = obj.uid().unwrap_or_default();
        countersign_reconcilers::approval::supersede_open(&ctx.pool, K::KIND, &uid)
            .await
            .map_err(|e| Error::Reconcile(e.into()))?;
    }
    Ok(())
}

/// An approval annotation is used once: when the change it approved went
/// live, or when it was judged stale, the operator removes it, so a later
/// return to the same digest needs a fresh approval and an approver can
/// approve again by setting it anew. The removal only goes through if the
/// annotations still hold what was judged (JSON patch `test`); if it fails,
/// the change request's record of a predating approval still keeps the old
/// one from counting.
async fn consume_approval<K: Reconciled>(api: &Api<K>, obj: &K, new: &K::Status) {
    use countersign_crds::annotations::{APPROVED_BY, APPROVED_DIGEST};
    use countersign_crds::status::APPROVED;
    let annotations = obj.annotations();
    let (Some(by), Some(digest)) = (annotations.get(APPROVED_BY), annotations.get(APPROVED_DIGEST)) else {
        return;
    };
    let common = K::common(new);
    let spent = common.condition(APPROVED).is_some_and(|c| {
        (c.status == countersign_crds::ConditionStatus::True && common.live_digest.as_ref() == Some(digest))
            || (c.status == countersign_crds::ConditionStatus::False && c.reason == "StaleApproval")
    });
    if !spent {
        return;
    }
    let path = |key: &str| format!("/metadata/annotations/{}", key.replace('~', "~0").replace('/', "~1"));
    let ops = serde_json::json!([
        {"op": "test", "path": path(APPROVED_BY), "value": by},
        {"op": "test", "path": path(APPROVED_DIGEST), "value": digest},
        {"op": "remove", "path": path(APPROVED_BY)},
        {"op": "remove", "path": path(APPROVED_DIGEST)},
    ]);
    let patch = match serde_json::from_value::<json_patch::Patch>(ops) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "could not build the approval removal");
            return;
        }
    };
    if let Err(e) = api
        .patch(&obj.name_any(), &PatchParams::default(), &Patch::<()>::Json(patch))
        .await
    {
        // A changed annotation fails the test: the next pass judges the new one.
        tracing::debug!(error = %e, "spent approval annotations not removed");
    }
}

/// The longest wait before a serialization failure or deadlock is retried:
/// the transaction it lost to has ended by then.
const SERIALIZATION_RETRY_MAX: Duration = Duration::from_secs(2);

/// Counts the failure and backs off with jitter (a serialization failure
/// only briefly: see [`SERIALIZATION_RETRY_MAX`]).
pub fn error_policy<K: Reconciled>(obj: Arc<K>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics
        .errors
        .get_or_create(&ErrorLabels {
            kind: K::KIND.into(),
            reason: error.reason().into(),
        })
        .inc();
    let delay = ctx.backoff.next_delay(&obj.uid().unwrap_or_default());
    if matches!(error, Error::Reconcile(e) if e.is_serialization_failure()) {
        let delay = if delay > SERIALIZATION_RETRY_MAX {
            use rand::Rng;
            SERIALIZATION_RETRY_MAX.mul_f64(rand::rng().random_range(0.5..=1.0))
        } else {
            delay
        };
        tracing::info!(kind = K::KIND, object = %obj.name_any(), namespace = obj.namespace(), reason = error.reason(),
            error = %error, retry_in = ?delay, "reconcile lost a serialization conflict; retrying");
        return Action::requeue(delay);
    }
    tracing::warn!(kind = K::KIND, object = %obj.name_any(), namespace = obj.namespace(), reason = error.reason(),
        error = %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// The controller every kind starts from: fed by its kind's shared watch
/// (its own status writes do not come back to it), bounded by the shared
/// reconcile slots, told when its rows change in the database (and to look
/// at everything after the notifications may have missed some) and when its
/// rules under the two-person rule change. Returns the controller and its
/// cache, for the kind's own related-object triggers.
pub fn controller<K>(
    ctx: &Context,
    feed: &mut Feed<K>,
    row_changes: &mut RowChanges,
    rules_changed: impl futures::Stream<Item = ()> + Send + 'static,
) -> (Controller<K>, Store<K>)
where
    K: Reconciled + Resource<DynamicType = ()>,
{
    let store = feed.store();
    let rows = row_changes.subscribe::<K>(K::KIND);
    let controller = Controller::for_shared_stream(feed.subscribe(Changes::Declared), store.clone())
        .with_config(ctx.controller_config())
        .reconcile_on(rows.objects)
        .reconcile_on(paced(store.clone(), rows.everything))
        .reconcile_on(paced(store.clone(), rules_changed));
    (controller, store)
}

/// Runs `controller` with the shared pipeline shell until `shutdown` resolves.
pub fn run<K: Reconciled>(
    controller: Controller<K>,
    ctx: Arc<Context>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> futures::future::BoxFuture<'static, ()> {
    let stream = controller
        .graceful_shutdown_on(shutdown)
        .run(reconcile::<K>, error_policy::<K>, ctx);
    Box::pin(drain(stream))
}

/// Logs the end of each reconcile stream item at debug level.
pub async fn drain<S, T, E>(stream: S)
where
    S: futures::Stream<Item = Result<T, E>>,
    E: std::fmt::Display,
{
    use futures::StreamExt;
    stream
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "reconcile failed");
            }
        })
        .await;
}
