//! The Tenant controller.

use super::{Context, FINALIZER, status};
use crate::Error;
use crate::metrics::{ErrorLabels, KindLabels, ReconcileLabels};
use countersign_crds::Tenant;
use countersign_reconcilers::approval::ApprovedChange;
use countersign_reconcilers::tenant as pipeline;
use futures::StreamExt;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::watcher;
use std::sync::Arc;
use std::time::Instant;

/// Runs the Tenant controller until `shutdown` resolves.
pub async fn run(
    ctx: Arc<Context>,
    selector: Option<String>,
    policy_changed: impl futures::Stream<Item = ()> + Send + 'static,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let api: Api<Tenant> = Api::all(ctx.client.clone());
    let mut config = watcher::Config::default().any_semantic();
    if let Some(sel) = &selector {
        config = config.labels(sel);
    }
    Controller::new(api, config)
        // A policy appearing, changing or going away can release or hold
        // every waiting change: look at all Tenants again.
        .reconcile_all_on(policy_changed)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "tenant reconcile failed");
            }
        })
        .await;
}

async fn reconcile(tenant: Arc<Tenant>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let api: Api<Tenant> = Api::all(ctx.client.clone());
    let result = match deletion_gate(&api, &tenant, &ctx).await {
        Err(e) => Err(e),
        Ok(Err(hold)) => Ok(hold),
        Ok(Ok(approved)) => finalizer(&api, FINALIZER, tenant.clone(), |event| async {
            match event {
                Finalizer::Apply(t) => apply(&api, &t, &ctx).await,
                Finalizer::Cleanup(t) => {
                    pipeline::cleanup(&t, &ctx.pool, &ctx.actor, approved).await?;
                    ctx.pending.track(&t.uid().unwrap_or_default(), false, &ctx.metrics);
                    Ok(Action::await_change())
                }
            }
        })
        .await
        .map_err(|e| match e {
            kube::runtime::finalizer::Error::ApplyFailed(e) | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
            other => Error::Finalizer(other.to_string()),
        }),
    };
    let kind = KindLabels {
        kind: pipeline::KIND.into(),
    };
    ctx.metrics
        .duration
        .get_or_create(&kind)
        .observe(started.elapsed().as_secs_f64());
    let ok = result.is_ok();
    ctx.metrics
        .reconciles
        .get_or_create(&ReconcileLabels {
            kind: pipeline::KIND.into(),
            result: if ok { "ok" } else { "error" }.into(),
        })
        .inc();
    if ok {
        ctx.backoff.reset(&tenant.uid().unwrap_or_default());
    }
    result
}

/// For a Tenant being deleted that still carries the finalizer: Ok(approval)
/// lets the deletion proceed, Err(action) holds it with its status written.
async fn deletion_gate(
    api: &Api<Tenant>,
    tenant: &Tenant,
    ctx: &Context,
) -> Result<Result<Option<ApprovedChange>, Action>, Error> {
    let deleting = tenant.metadata.deletion_timestamp.is_some() && tenant.finalizers().iter().any(|f| f == FINALIZER);
    if !deleting {
        return Ok(Ok(None));
    }
    let approvals = super::approval_inputs(ctx, tenant.metadata.annotations.as_ref()).await?;
    match pipeline::deletion_gate(tenant, &ctx.pool, &ctx.actor, &approvals).await? {
        pipeline::DeletionGate::Proceed(approved) => Ok(Ok(approved)),
        pipeline::DeletionGate::Hold(outcome) => {
            let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            let previous = tenant.status.as_ref();
            let new = outcome.status(previous, tenant.metadata.generation, &now);
            status::write(api, tenant, previous, &new, ctx).await?;
            Ok(Err(Action::requeue(outcome.requeue_after.unwrap_or(ctx.resync))))
        }
    }
}

async fn apply(api: &Api<Tenant>, tenant: &Tenant, ctx: &Context) -> Result<Action, Error> {
    let generation = tenant.metadata.generation;
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let previous = tenant.status.as_ref();
    let approvals = super::approval_inputs(ctx, tenant.metadata.annotations.as_ref()).await?;
    match pipeline::reconcile(tenant, &ctx.pool, &ctx.actor, &approvals).await {
        Ok(outcome) => {
            let new = outcome.status(previous, generation, &now);
            status::write(api, tenant, previous, &new, ctx).await?;
            Ok(Action::requeue(outcome.requeue_after.unwrap_or(ctx.resync)))
        }
        Err(e) => {
            let new = pipeline::unavailable(&e).status(previous, generation, &now);
            if let Err(write_err) = status::write(api, tenant, previous, &new, ctx).await {
                tracing::warn!(error = %write_err, "could not report the failure in status");
            }
            Err(e.into())
        }
    }
}

fn error_policy(tenant: Arc<Tenant>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics
        .errors
        .get_or_create(&ErrorLabels {
            kind: pipeline::KIND.into(),
            reason: error.reason().into(),
        })
        .inc();
    let delay = ctx.backoff.next_delay(&tenant.uid().unwrap_or_default());
    tracing::warn!(tenant = %tenant.name_any(), reason = error.reason(), error = %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}
