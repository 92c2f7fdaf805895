//! The Tenant controller.

use super::Context;
use super::shell::{self, Reconciled};
use crate::Error;
use countersign_crds::{ResourceStatus, Tenant};
use countersign_reconcilers::Outcome;
use countersign_reconcilers::approval::{ApprovedChange, Inputs};
use countersign_reconcilers::report::DeletionGate;
use countersign_reconcilers::tenant as pipeline;
use kube::api::Api;
use kube::runtime::controller::Controller;
use std::sync::Arc;
use std::time::Duration;

impl Reconciled for Tenant {
    const KIND: &'static str = pipeline::KIND;

    fn api(&self, client: kube::Client) -> Api<Self> {
        Api::all(client)
    }

    async fn reconcile(
        &self,
        ctx: &Context,
        approvals: &Inputs,
        now: &str,
    ) -> Result<(ResourceStatus, Option<Duration>), Error> {
        let outcome = pipeline::reconcile(self, &ctx.pool, &ctx.actor, approvals).await?;
        let status = outcome.status(self.status.as_ref(), self.metadata.generation, now);
        Ok((status, outcome.requeue_after))
    }

    async fn deletion_gate(&self, ctx: &Context, approvals: &Inputs) -> Result<DeletionGate, Error> {
        Ok(pipeline::deletion_gate(self, &ctx.pool, &ctx.actor, approvals).await?)
    }

    async fn cleanup(&self, ctx: &Context, approved: Option<ApprovedChange>) -> Result<Result<(), Outcome>, Error> {
        pipeline::cleanup(self, &ctx.pool, &ctx.actor, approved).await?;
        Ok(Ok(()))
    }
}

/// Runs the Tenant controller until `shutdown` resolves.
pub async fn run(
    ctx: Arc<Context>,
    selector: Option<String>,
    policy_changed: impl futures::Stream<Item = ()> + Send + 'static,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let api: Api<Tenant> = Api::all(ctx.client.clone());
    let config = super::watch_config(selector.as_deref());
    let controller = Controller::new(api, config)
        // A policy appearing, changing or going away can release or hold
        // every waiting change: look at all Tenants again.
        .reconcile_all_on(policy_changed)
        .graceful_shutdown_on(shutdown)
        .run(shell::reconcile::<Tenant>, shell::error_policy::<Tenant>, ctx);
    shell::drain(controller).await;
}
