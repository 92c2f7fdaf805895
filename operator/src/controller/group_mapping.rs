//! The GroupMapping controller: re-reconciles when its IdentityProvider changes.

use super::Context;
use super::shell::{self, Reconciled};
use crate::Error;
use countersign_crds::{GroupMapping, IdentityProvider, ResourceStatus};
use countersign_reconcilers::Outcome;
use countersign_reconcilers::approval::{ApprovedChange, Inputs};
use countersign_reconcilers::group_mapping as pipeline;
use countersign_reconcilers::report::DeletionGate;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Controller;
use kube::runtime::reflector::ObjectRef;
use std::sync::Arc;
use std::time::Duration;

impl Reconciled for GroupMapping {
    const KIND: &'static str = pipeline::KIND;

    fn api(&self, client: kube::Client) -> Api<Self> {
        Api::namespaced(client, &self.namespace().unwrap_or_default())
    }

    async fn reconcile(
        &self,
        ctx: &Context,
        approvals: &Inputs,
        now: &str,
    ) -> Result<(ResourceStatus, Option<Duration>), Error> {
        let outcome = pipeline::reconcile(
            self,
            &ctx.pool,
            &ctx.actor,
            approvals,
            ctx.rule.platform_tenant.as_deref(),
        )
        .await?;
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

/// Runs the GroupMapping controller until `shutdown` resolves.
pub async fn run(
    ctx: Arc<Context>,
    selector: Option<String>,
    policy_changed: impl futures::Stream<Item = ()> + Send + 'static,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let config = super::watch_config(selector.as_deref());
    let controller = Controller::new(Api::<GroupMapping>::all(client.clone()), config.clone());
    let store = controller.store();
    let providers_removed = futures::stream::unfold(ctx.providers_removed.subscribe(), |mut rx| async move {
        rx.changed().await.ok()?;
        Some(((), rx))
    });
    let controller = controller
        .reconcile_all_on(policy_changed)
        // A removed provider's mappings are looked at once its removal has
        // committed (a rare event: one pass of reads, no writes for the rest).
        .reconcile_all_on(providers_removed)
        // A provider appearing (or going away) decides whether its mappings
        // can be written.
        .watches(Api::<IdentityProvider>::all(client), config, move |idp| {
            let (ns, name) = (idp.namespace(), idp.name_any());
            store
                .state()
                .iter()
                .filter(|gm| gm.namespace() == ns && gm.spec.identity_provider_ref.name == name)
                .map(|gm| ObjectRef::from_obj(gm.as_ref()))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(shutdown)
        .run(
            shell::reconcile::<GroupMapping>,
            shell::error_policy::<GroupMapping>,
            ctx,
        );
    shell::drain(controller).await;
}
