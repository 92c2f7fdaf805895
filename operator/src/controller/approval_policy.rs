//! The ApprovalPolicy controller: the same shell as every kind, around the
//! pipeline that decides whether a policy change tightens the rule (in force
//! at once) or loosens it (held for a second person, the previous
//! configuration staying in force). Whatever it puts in force is shared with
//! every other controller through [`super::InForcePolicies`], and each change
//! makes them look at all their objects again.

use super::Context;
use super::shell::{self, Pass, Reconciled};
use super::watches::{Changes, Feeds};
use crate::Error;
use countersign_crds::approval_policy::{ApprovalPolicy, ApprovalPolicyStatus};
use countersign_reconcilers::Outcome;
use countersign_reconcilers::approval::{ApprovedChange, Inputs};
use countersign_reconcilers::approval_policy as pipeline;
use countersign_reconcilers::report::DeletionGate;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::{Config, Controller};
use std::sync::Arc;

impl Reconciled for ApprovalPolicy {
    fn api(&self, client: kube::Client) -> Api<Self> {
        Api::all(client)
    }

    async fn reconcile(
        &self,
        ctx: &Context,
        approvals: &Inputs,
        now: &str,
    ) -> Result<Pass<ApprovalPolicyStatus>, Error> {
        let in_force = ctx.in_force.snapshot();
        let report = pipeline::reconcile(self, &ctx.pool, &ctx.actor, approvals, &in_force).await?;
        if report.changed {
            ctx.in_force.set(&self.name_any(), report.in_force.clone());
            ctx.policies_changed();
        }
        let previous = self.status.as_ref();
        let status = ApprovalPolicyStatus {
            common: report
                .outcome
                .status(previous.map(|p| &p.common), self.metadata.generation, now),
            in_force: report.in_force,
            loosening: report.loosening,
        };
        Ok(Pass::new(status, &report.outcome))
    }

    async fn deletion_gate(&self, ctx: &Context, approvals: &Inputs) -> Result<DeletionGate, Error> {
        let in_force = ctx.in_force.snapshot();
        Ok(pipeline::deletion_gate(self, &ctx.pool, &ctx.actor, approvals, &in_force).await?)
    }

    async fn cleanup(&self, ctx: &Context, approved: Option<ApprovedChange>) -> Result<Result<(), Outcome>, Error> {
        pipeline::cleanup(self, &ctx.pool, &ctx.actor, approved).await?;
        ctx.in_force.set(&self.name_any(), None);
        ctx.policies_changed();
        Ok(Ok(()))
    }
}

/// The ApprovalPolicy controller, fed by the shared watch; runs until
/// `shutdown` resolves. One policy at a time: each plan compares against
/// everything in force.
pub fn run(
    ctx: Arc<Context>,
    feeds: &mut Feeds,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> futures::future::BoxFuture<'static, ()> {
    let controller = Controller::for_shared_stream(
        feeds.approval_policies.subscribe(Changes::Declared),
        feeds.approval_policies.store(),
    )
    .with_config(Config::default().concurrency(1))
    .graceful_shutdown_on(shutdown)
    .run(
        shell::reconcile::<ApprovalPolicy>,
        shell::error_policy::<ApprovalPolicy>,
        ctx,
    );
    Box::pin(shell::drain(controller))
}
