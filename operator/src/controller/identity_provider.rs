//! The IdentityProvider controller: reads the client secret from its Secret,
//! checks the provider through the outbound policy, and re-reconciles when
//! the Secret, the Tenant or a GroupMapping referencing the provider changes.

use super::Context;
use super::shell::{self, Pass, Reconciled};
use super::watches::{Changes, Feeds};
use crate::Error;
use countersign_crds::IdentityProvider;
use countersign_crds::identity_provider::{IdentityProviderStatus, OidcDiscoveryStatus, SamlMetadataStatus};
use countersign_reconcilers::Outcome;
use countersign_reconcilers::approval::{ApprovedChange, Inputs};
use countersign_reconcilers::discovery;
use countersign_reconcilers::identity_provider::{self as pipeline, ClientSecret, ProviderChecks};
use countersign_reconcilers::outbound::OutboundClient;
use countersign_reconcilers::report::DeletionGate;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::reflector::{ObjectRef, Store};
use std::sync::Arc;

/// The network checks, through the operator's outbound policy.
struct Checks<'a>(Option<&'a OutboundClient>);

impl ProviderChecks for Checks<'_> {
    async fn oidc(&self, issuer: &str) -> OidcDiscoveryStatus {
        match self.0 {
            Some(client) => discovery::check_oidc(client, issuer).await,
            None => OidcDiscoveryStatus {
                errors: vec!["the operator has no outbound client configured".into()],
                ..Default::default()
            },
        }
    }

    async fn saml(&self, metadata_url: &str, entity_id: &str, sso_url: &str) -> SamlMetadataStatus {
        match self.0 {
            Some(client) => discovery::check_saml(client, metadata_url, entity_id, sso_url).await,
            None => SamlMetadataStatus {
                errors: vec!["the operator has no outbound client configured".into()],
                ..Default::default()
            },
        }
    }
}

/// Reads the client secret the spec references. Never logged: only its
/// presence reaches conditions.
async fn client_secret(idp: &IdentityProvider, ctx: &Context) -> Result<ClientSecret, kube::Error> {
    let Some(oidc) = &idp.spec.oidc else {
        return Ok(ClientSecret::NotNeeded);
    };
    let reference = &oidc.client_secret;
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &idp.namespace().unwrap_or_default());
    let Some(secret) = api.get_opt(&reference.name).await? else {
        return Ok(ClientSecret::SecretMissing {
            secret: reference.name.clone(),
        });
    };
    match secret.data.and_then(|mut d| d.remove(&reference.key)) {
        Some(bytes) => Ok(ClientSecret::Found(bytes.0)),
        None => Ok(ClientSecret::KeyMissing {
            secret: reference.name.clone(),
            key: reference.key.clone(),
        }),
    }
}

impl Reconciled for IdentityProvider {
    fn api(&self, client: kube::Client) -> Api<Self> {
        Api::namespaced(client, &self.namespace().unwrap_or_default())
    }

    async fn reconcile(
        &self,
        ctx: &Context,
        approvals: &Inputs,
        now: &str,
    ) -> Result<Pass<IdentityProviderStatus>, Error> {
        let secret = client_secret(self, ctx).await?;
        let checks = Checks(ctx.outbound.as_ref());
        let inputs = pipeline::Inputs {
            approvals,
            secret,
            key: Some(ctx.secret_key.as_ref()),
            checks: &checks,
        };
        let report = pipeline::reconcile(self, &ctx.pool, &ctx.actor, inputs).await?;
        let status = report.status(self.status.as_ref(), self.metadata.generation, now);
        Ok(Pass::new(status, &report.outcome))
    }

    async fn deletion_gate(&self, ctx: &Context, approvals: &Inputs) -> Result<DeletionGate, Error> {
        Ok(pipeline::deletion_gate(self, &ctx.pool, &ctx.actor, approvals).await?)
    }

    async fn cleanup(&self, ctx: &Context, approved: Option<ApprovedChange>) -> Result<Result<(), Outcome>, Error> {
        let removed = pipeline::cleanup(self, &ctx.pool, &ctx.actor, approved).await?;
        if removed.is_ok() {
            ctx.providers_removed.send_modify(|n| *n = n.wrapping_add(1));
        }
        Ok(removed)
    }
}

/// The providers in `store` matching `pick`, as reconcile triggers.
fn providers(
    store: &Store<IdentityProvider>,
    pick: impl Fn(&IdentityProvider) -> bool,
) -> Vec<ObjectRef<IdentityProvider>> {
    store
        .state()
        .iter()
        .filter(|idp| pick(idp))
        .map(|idp| ObjectRef::from_obj(idp.as_ref()))
        .collect()
}

/// The IdentityProvider controller, fed by the shared watches; runs until
/// `shutdown` resolves.
pub fn run(
    ctx: Arc<Context>,
    feeds: &mut Feeds,
    policy_changed: impl futures::Stream<Item = ()> + Send + 'static,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> futures::future::BoxFuture<'static, ()> {
    let (controller, store) = shell::controller(
        &ctx,
        &mut feeds.identity_providers,
        &mut feeds.row_changes,
        policy_changed,
    );
    let (by_secret, by_tenant, by_mapping) = (store.clone(), store.clone(), store.clone());
    let controller = controller
        // Secrets are watched by metadata only: the operator learns that a
        // Secret changed without holding every Secret's data in memory.
        .watches_shared_stream(feeds.secrets.subscribe(Changes::All), move |secret| {
            let (ns, name) = (secret.namespace(), secret.name_any());
            providers(&by_secret, |idp| {
                idp.namespace() == ns && idp.spec.oidc.as_ref().is_some_and(|o| o.client_secret.name == name)
            })
        })
        // A tenant going live, or changing its allowed namespaces, decides
        // whether waiting or refused providers may proceed.
        .watches_shared_stream(feeds.tenants.subscribe(Changes::All), move |tenant| {
            let name = tenant.name_any();
            providers(&by_tenant, |idp| idp.spec.tenant_ref.name == name)
        })
        // A mapping going away can release a provider whose deletion waits (InUse).
        .watches_shared_stream(feeds.group_mappings.subscribe(Changes::All), move |gm| {
            let (ns, name) = (gm.namespace(), gm.spec.identity_provider_ref.name.clone());
            providers(&by_mapping, |idp| idp.namespace() == ns && idp.name_any() == name)
        });
    shell::run(controller, ctx, shutdown)
}
