//! The Tenant controller.

use super::Context;
use super::shell::{self, Pass, Reconciled};
use super::watches::Feeds;
use crate::Error;
use countersign_crds::{ResourceStatus, Tenant};
use countersign_reconcilers::Outcome;
use countersign_reconcilers::approval::{ApprovedChange, Inputs};
use countersign_reconcilers::report::DeletionGate;
use countersign_reconcilers::tenant as pipeline;
use kube::api::Api;
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
    let (controller, _) = shell::controller(&ctx, &mut feeds.tenants, &mut feeds.row_changes, policy_changed);
    shell::run(controller, ctx, shutdown)
}
