//! The FrontingLink controller. Platform resources live only in the
//! database: any change to one makes every link look again (the database's
//! row-change notifications), and so does the periodic resync.

use super::Context;
use super::policy_fan_out::paced;
use super::shell::{self, Pass, Reconciled};
use super::watches::{Changes, Feeds};
use crate::Error;
use countersign_crds::{FrontingLink, ResourceStatus};
use countersign_reconcilers::Outcome;
use countersign_reconcilers::approval::{ApprovedChange, Inputs};
use countersign_reconcilers::fronting_link as pipeline;
use countersign_reconcilers::report::DeletionGate;
use kube::api::Api;
use kube::runtime::controller::Controller;
use std::sync::Arc;

impl Reconciled for FrontingLink {
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

/// The FrontingLink controller, fed by the shared FrontingLink watch; runs
/// until `shutdown` resolves.
pub fn run(
    ctx: Arc<Context>,
    feeds: &mut Feeds,
    policy_changed: impl futures::Stream<Item = ()> + Send + 'static,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> futures::future::BoxFuture<'static, ()> {
    let rows = feeds.row_changes.subscribe::<FrontingLink>(pipeline::KIND);
    let store = feeds.fronting_links.store();
    let controller = Controller::for_shared_stream(feeds.fronting_links.subscribe(Changes::Declared), store.clone())
        .with_config(ctx.controller_config())
        // Its row edited in the database: look at it now. Every object once
        // the notifications may have missed some.
        .reconcile_on(rows.objects)
        .reconcile_on(paced(store.clone(), rows.everything))
        .reconcile_on(paced(store, policy_changed))
        .graceful_shutdown_on(shutdown)
        .run(
            shell::reconcile::<FrontingLink>,
            shell::error_policy::<FrontingLink>,
            ctx,
        );
    Box::pin(shell::drain(controller))
}
