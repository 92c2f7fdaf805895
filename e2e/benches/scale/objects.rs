//! The kinds the benchmark declares, the labels it puts on them, and the objects of one run.

use crate::args::Set;
use crate::metrics::BenchWrites;
use anyhow::Context as _;
use countersign_crds::{GroupMapping, IdentityProvider, Tenant, WebhookSubscription};
use kube::api::{Api, ApiResource, DynamicObject, PostParams};
use kube::{Client, ResourceExt};
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// The label every object the operators reconcile carries (value: the run id).
pub(crate) const BENCH_LABEL: &str = "countersign.dev/bench";

/// The label that assigns an object to one operator process (value: 0..K).
pub(crate) const SHARD_LABEL: &str = "countersign.dev/shard";

/// The label of the bare-client baseline's objects, which no operator selects.
pub(crate) const BARE_LABEL: &str = "countersign.dev/bench-bare";

/// The field manager of the benchmark's own writes.
pub(crate) const FIELD_MANAGER: &str = "countersign-bench";

/// The Secret (in [`common::OPERATOR_NAMESPACE`]) holding the operator's key.
pub(crate) const KEY_SECRET: &str = "countersign-encryption-key";

/// The Secret every IdentityProvider's OIDC client secret is read from.
pub(crate) const IDP_SECRET: &str = "bench-idp-client";

/// The kinds the benchmark declares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub(crate) enum Kind {
    /// Cluster-scoped.
    Tenant,
    /// OIDC, against the stub IdP.
    IdentityProvider,
    /// Maps a group of one of the providers.
    GroupMapping,
    /// Points at the webhook receiver (no test delivery).
    WebhookSubscription,
}

/// Every kind, in the order they are applied.
pub(crate) const KINDS: [Kind; 4] = [
    Kind::Tenant,
    Kind::IdentityProvider,
    Kind::GroupMapping,
    Kind::WebhookSubscription,
];

impl Kind {
    /// The kind's API resource.
    pub(crate) fn resource(self) -> ApiResource {
        match self {
            Kind::Tenant => ApiResource::erase::<Tenant>(&()),
            Kind::IdentityProvider => ApiResource::erase::<IdentityProvider>(&()),
            Kind::GroupMapping => ApiResource::erase::<GroupMapping>(&()),
            Kind::WebhookSubscription => ApiResource::erase::<WebhookSubscription>(&()),
        }
    }
}

/// One object the benchmark declares.
#[derive(Clone, Debug)]
pub(crate) struct Planned {
    /// Its kind.
    pub(crate) kind: Kind,
    /// The object as created.
    pub(crate) obj: DynamicObject,
}

impl Planned {
    /// The tracker's key of the object.
    pub(crate) fn key(&self) -> String {
        key_of(self.kind, self.obj.metadata.namespace.as_deref(), &self.obj.name_any())
    }

    /// The API of the object's kind (in its namespace).
    pub(crate) fn api(&self, client: &Client) -> Api<DynamicObject> {
        let resource = self.kind.resource();
        match &self.obj.metadata.namespace {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
            None => Api::all_with(client.clone(), &resource),
        }
    }
}

/// `Kind/namespace/name`.
pub(crate) fn key_of(kind: Kind, namespace: Option<&str>, name: &str) -> String {
    format!("{kind:?}/{}/{name}", namespace.unwrap_or(""))
}

/// What a set of declared objects is made of.
pub(crate) struct Declare<'a> {
    /// Name prefix (also the Tenants' slugs).
    pub(crate) prefix: &'a str,
    /// The namespace of the namespaced kinds.
    pub(crate) namespace: &'a str,
    /// The labels of the object in a shard.
    pub(crate) labels: &'a dyn Fn(usize) -> Value,
    /// The OIDC issuer of every IdentityProvider.
    pub(crate) issuer: &'a str,
    /// The URL every WebhookSubscription's own path is appended to.
    pub(crate) hook_url: &'a str,
}

/// How many objects of each kind a set of `n` has.
pub(crate) fn counts(set: Set, n: usize) -> BTreeMap<Kind, usize> {
    match set {
        Set::Tenants => BTreeMap::from([(Kind::Tenant, n)]),
        Set::Mixed => {
            let quarter = n / 4;
            BTreeMap::from([
                (Kind::Tenant, n - 3 * quarter),
                (Kind::IdentityProvider, quarter),
                (Kind::GroupMapping, quarter),
                (Kind::WebhookSubscription, quarter),
            ])
        }
    }
}

/// The objects of one run, in the order they are applied (Tenants first, as
/// `kubectl apply` of a directory would). Objects that refer to a Tenant go
/// to that Tenant's shard, so no reference crosses shards.
pub(crate) fn declare(set: Set, n: usize, shards: usize, d: &Declare<'_>) -> anyhow::Result<Vec<Planned>> {
    let counts = counts(set, n);
    let tenants = counts.get(&Kind::Tenant).copied().unwrap_or(0);
    let shard_of_tenant = |t: usize| t % shards;
    let mut out = Vec::with_capacity(n);
    for kind in KINDS {
        for i in 0..counts.get(&kind).copied().unwrap_or(0) {
            let tenant = i % tenants.max(1);
            let shard = shard_of_tenant(tenant);
            let tenant_name = format!("{}-t{tenant:05}", d.prefix);
            let (name, spec) = match kind {
                Kind::Tenant => (
                    tenant_name.clone(),
                    json!({
                        "slug": tenant_name,
                        "name": format!("Bench tenant {i}"),
                        "description": "declared by the scale benchmark",
                        "allowedNamespaces": [d.namespace],
                    }),
                ),
                Kind::IdentityProvider => (
                    format!("{}-idp{i:05}", d.prefix),
                    json!({
                        "tenantRef": {"name": tenant_name},
                        "displayName": format!("Bench IdP {i}"),
                        "oidc": {
                            "issuer": d.issuer,
                            "clientId": "countersign",
                            "clientSecret": {"name": IDP_SECRET, "key": "client-secret"},
                        },
                    }),
                ),
                Kind::GroupMapping => (
                    format!("{}-gm{i:05}", d.prefix),
                    json!({
                        "identityProviderRef": {"name": format!("{}-idp{i:05}", d.prefix)},
                        "groupName": format!("bench-group-{i}"),
                        "role": "CLIENT_ADMIN",
                    }),
                ),
                Kind::WebhookSubscription => (
                    format!("{}-wh{i:05}", d.prefix),
                    json!({
                        "tenantRef": {"name": tenant_name},
                        "url": format!("{}/w{i:05}", d.hook_url),
                        "events": ["certificate.issued"],
                    }),
                ),
            };
            let resource = kind.resource();
            let mut metadata = json!({"name": name, "labels": (d.labels)(shard)});
            if kind != Kind::Tenant {
                metadata["namespace"] = json!(d.namespace);
            }
            let obj: DynamicObject = serde_json::from_value(json!({
                "apiVersion": resource.api_version,
                "kind": resource.kind,
                "metadata": metadata,
                "spec": spec,
            }))
            .with_context(|| format!("building {kind:?} {name}"))?;
            out.push(Planned { kind, obj });
        }
    }
    Ok(out)
}

/// Creates one object, counting the request as the benchmark's.
pub(crate) async fn create(client: &Client, p: &Planned, writes: &BenchWrites) -> anyhow::Result<DynamicObject> {
    writes.record("POST", &p.kind.resource().plural, "");
    p.api(client)
        .create(
            &PostParams {
                dry_run: false,
                field_manager: Some(FIELD_MANAGER.into()),
            },
            &p.obj,
        )
        .await
        .with_context(|| format!("creating {}", p.key()))
}
