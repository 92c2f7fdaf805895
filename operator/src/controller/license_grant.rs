//! The LicenseGrant controller: verifies grants against the operator's
//! keyring, re-reconciles when their Tenant or a related grant changes, and
//! looks again by itself when a grant becomes valid or expires.

use super::Context;
use super::shell::{self, Pass, Reconciled};
use super::watches::{Changes, Feeds};
use crate::Error;
use countersign_crds::{LicenseGrant, ResourceStatus};
use countersign_reconcilers::Outcome;
use countersign_reconcilers::approval::{ApprovedChange, Inputs};
use countersign_reconcilers::license_grant::{self as pipeline, Trust};
use countersign_reconcilers::report::DeletionGate;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::reflector::{ObjectRef, Store};
use std::sync::Arc;

impl Reconciled for LicenseGrant {
    fn api(&self, client: kube::Client) -> Api<Self> {
        Api::all(client)
    }

    async fn reconcile(&self, ctx: &Context, approvals: &Inputs, now: &str) -> Result<Pass<ResourceStatus>, Error> {
        let licensing = &ctx.licensing;
        let trust = Trust {
            keyring: &licensing.keyring,
            vendor: licensing.vendor.as_deref(),
            operator: licensing.operator.as_deref(),
        };
        let outcome = pipeline::reconcile(self, &ctx.pool, &ctx.actor, approvals, trust, chrono::Utc::now()).await?;
        let status = outcome.status(self.status.as_ref(), self.metadata.generation, now);
        // A validity boundary years away is still looked at every resync
        // (drift checks); a near one exactly when it passes.
        Ok(Pass {
            requeue_after: outcome.requeue_after.map(|d| d.min(ctx.resync)),
            ..Pass::new(status, &outcome)
        })
    }

    async fn deletion_gate(&self, ctx: &Context, approvals: &Inputs) -> Result<DeletionGate, Error> {
        Ok(pipeline::deletion_gate(self, &ctx.pool, &ctx.actor, approvals).await?)
    }

    async fn cleanup(&self, ctx: &Context, approved: Option<ApprovedChange>) -> Result<Result<(), Outcome>, Error> {
        pipeline::cleanup(self, &ctx.pool, &ctx.actor, approved).await?;
        Ok(Ok(()))
    }
}

/// The grants in `store` matching `pick`, as reconcile triggers.
fn grants(store: &Store<LicenseGrant>, pick: impl Fn(&LicenseGrant) -> bool) -> Vec<ObjectRef<LicenseGrant>> {
    store
        .state()
        .iter()
        .filter(|lg| pick(lg))
        .map(|lg| ObjectRef::from_obj(lg.as_ref()))
        .collect()
}

/// Whether a change to `changed` can alter what `other` reports: `other`
/// amends or revokes it (it may be waiting for it), `changed` amends or
/// revokes `other` (revoked, quota), or both count towards one tenant's
/// quota of one license type (the quota in the Ready message).
fn related(changed: &LicenseGrant, other: &LicenseGrant) -> bool {
    let (c, o) = (&changed.spec, &other.spec);
    let points_at = |from: &countersign_crds::LicenseGrantSpec, to: &str| {
        from.addendum_of.as_deref() == Some(to) || from.revokes.as_deref() == Some(to)
    };
    points_at(o, &c.grant_id)
        || points_at(c, &o.grant_id)
        || o.grant_id == c.grant_id
        || (o.tenant_ref.name == c.tenant_ref.name && o.license_type == c.license_type)
}

/// The LicenseGrant controller, fed by the shared watches; runs until
/// `shutdown` resolves.
pub fn run(
    ctx: Arc<Context>,
    feeds: &mut Feeds,
    policy_changed: impl futures::Stream<Item = ()> + Send + 'static,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> futures::future::BoxFuture<'static, ()> {
    let (controller, store) =
        shell::controller(&ctx, &mut feeds.license_grants, &mut feeds.row_changes, policy_changed);
    let (by_tenant, by_grant) = (store.clone(), store.clone());
    let controller = controller
        // A tenant going live, or its instance fingerprint changing, decides
        // whether its grants can be imported.
        .watches_shared_stream(feeds.tenants.subscribe(Changes::All), move |tenant| {
            let name = tenant.name_any();
            grants(&by_tenant, |lg| lg.spec.tenant_ref.name == name)
        })
        // An addendum or revocation waits for its grant; a revocation changes
        // what the revoked grant reports; any grant changes its siblings' quota.
        .watches_shared_stream(feeds.license_grants.subscribe(Changes::All), move |changed| {
            grants(&by_grant, |other| {
                other.metadata.uid != changed.metadata.uid && related(&changed, other)
            })
        });
    shell::run(controller, ctx, shutdown)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(name: &str, extra: serde_json::Value) -> LicenseGrant {
        let mut spec = serde_json::json!({
            "tenantRef": {"name": "acme"}, "grantId": name, "grantType": "GRANT",
            "instanceFingerprint": "sha256:x", "licenseType": "seat", "quantity": 1,
            "validFrom": "2027-01-01T00:00:00Z", "validUntil": "2028-01-01T00:00:00Z",
            "commercialChain": ["Exaion", "Ops"], "signature": {"keyId": "k", "value": "v"},
        });
        if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
            s.extend(e.clone());
        }
        serde_json::from_value(serde_json::json!({
            "apiVersion": "platform.countersign.dev/v1alpha1", "kind": "LicenseGrant",
            "metadata": {"name": name}, "spec": spec,
        }))
        .expect("fixture parses")
    }

    #[test]
    fn grants_are_related_through_references_and_shared_quotas() {
        let base = grant("a", serde_json::json!({}));
        let addendum = grant("b", serde_json::json!({"grantType": "ADDENDUM", "addendumOf": "a"}));
        let revocation = grant(
            "c",
            serde_json::json!({"grantType": "REVOCATION", "revokes": "a", "licenseType": "x"}),
        );
        let other_tenant = grant("d", serde_json::json!({"tenantRef": {"name": "globex"}}));
        let other_type = grant("e", serde_json::json!({"licenseType": "other"}));
        assert!(related(&base, &addendum) && related(&addendum, &base));
        assert!(related(&base, &revocation) && related(&revocation, &base));
        assert!(
            related(&base, &grant("f", serde_json::json!({}))),
            "same tenant and type: quota"
        );
        assert!(!related(&base, &other_tenant));
        assert!(!related(&base, &other_type));
    }
}
