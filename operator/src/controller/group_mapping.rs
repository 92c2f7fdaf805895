//! The GroupMapping controller: re-reconciles when its IdentityProvider changes.

use super::Context;
use super::shell::{self, Pass, Reconciled};
use super::watches::{Changes, Feeds};
use crate::Error;
use countersign_crds::{GroupMapping, ResourceStatus};
use countersign_reconcilers::Outcome;
use countersign_reconcilers::approval::{ApprovedChange, Inputs};
use countersign_reconcilers::group_mapping as pipeline;
use countersign_reconcilers::report::DeletionGate;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::reflector::ObjectRef;
use std::sync::Arc;

impl Reconciled for GroupMapping {
    fn api(&self, client: kube::Client) -> Api<Self> {
        Api::namespaced(client, &self.namespace().unwrap_or_default())
    }

    async fn reconcile(&self, ctx: &Context, approvals: &Inputs, now: &str) -> Result<Pass<ResourceStatus>, Error> {
        let outcome = pipeline::reconcile(
            self,
            &ctx.pool,
            &ctx.actor,
            approvals,
            ctx.rule.platform_tenant.as_deref(),
        )
        .await?;
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

/// The GroupMapping controller, fed by the shared watches; runs until
/// `shutdown` resolves.
pub fn run(
    ctx: Arc<Context>,
    feeds: &mut Feeds,
    policy_changed: impl futures::Stream<Item = ()> + Send + 'static,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> futures::future::BoxFuture<'static, ()> {
    let providers_removed = futures::stream::unfold(ctx.providers_removed.subscribe(), |mut rx| async move {
        rx.changed().await.ok()?;
        Some(((), rx))
    });
    let (controller, store) =
        shell::controller(&ctx, &mut feeds.group_mappings, &mut feeds.row_changes, policy_changed);
    let by_provider = store.clone();
    let controller = controller
        // A removed provider's mappings are looked at once its removal has
        // committed (a rare event: one pass of reads, no writes for the rest).
        .reconcile_all_on(providers_removed)
        // A provider appearing (or going away) decides whether its mappings
        // can be written.
        .watches_shared_stream(feeds.identity_providers.subscribe(Changes::All), move |idp| {
            let (ns, name) = (idp.namespace(), idp.name_any());
            by_provider
                .state()
                .iter()
                .filter(|gm| gm.namespace() == ns && gm.spec.identity_provider_ref.name == name)
                .map(|gm| ObjectRef::from_obj(gm.as_ref()))
                .collect::<Vec<_>>()
        });
    shell::run(controller, ctx, shutdown)
}
