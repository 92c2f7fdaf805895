//! The Tenant controller.

use super::Context;
use super::policy_fan_out::paced;
use super::shell::{self, Pass, Reconciled};
use super::watches::{Changes, Feeds};
use crate::Error;
use countersign_crds::{ResourceStatus, Tenant};
use countersign_reconcilers::Outcome;
use countersign_reconcilers::approval::{ApprovedChange, Inputs};
use countersign_reconcilers::report::DeletionGate;
use countersign_reconcilers::tenant as pipeline;
use kube::api::Api;
use kube::runtime::controller::Controller;
use std::sync::Arc;

impl Reconciled for Tenant {
    fn api(&self, client: kube::Client) -> Api<Self> {
        Api::all(client)
    }

    async fn reconcile(&self, ctx: &Context, approvals: &Inputs, now: &str) -> Result<Pass<ResourceStatus>, Error> {
        let outcome = pipeline::reconcile(self, &ctx.pool, &ctx.actor, approvals).await?;
        let status = outcome.status(self.status.as_ref(), self.metadata.generation, now);
        Ok(Pass::new(status, &outcome))
    }

    async fn deletion_gate(&self, ctx: &Context, approvals: &Inputs) -> Result<DeletionGate, Error> {
        Ok(pipeline::deletion_gate(self, &ctx.pool, &ctx.actor, approvals).await?)
    }

    async fn cleanup(&self, ctx: &Context, approved: Option<ApprovedChange>) -> Result<Result<(), Outcome>, Error> {
        pipeline::cleanup(self, &ctx.pool, &ctx.actor, approved).await?;
        Ok(Ok(()))
    }
}

/// The Tenant controller, fed by the shared Tenant watch; runs until
/// `shutdown` resolves.
pub fn run(
    ctx: Arc<Context>,
    feeds: &mut Feeds,
    policy_changed: impl futures::Stream<Item = ()> + Send + 'static,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> futures::future::BoxFuture<'static, ()> {
    let rows = feeds.row_changes.subscribe::<Tenant>(pipeline::KIND);
    let store = feeds.tenants.store();
    let controller = Controller::for_shared_stream(feeds.tenants.subscribe(Changes::Declared), store.clone())
        .with_config(ctx.controller_config())
        // Its row edited in the database: look at it now. Every object once
        // the notifications may have missed some.
        .reconcile_on(rows.objects)
        .reconcile_on(paced(store.clone(), rows.everything))
        // A policy appearing, changing or going away can release or hold
        // waiting changes: look at all Tenants again when their rules changed.
        .reconcile_on(paced(store, policy_changed))
        .graceful_shutdown_on(shutdown)
        .run(shell::reconcile::<Tenant>, shell::error_policy::<Tenant>, ctx);
    Box::pin(shell::drain(controller))
}
