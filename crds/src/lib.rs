//! Countersign's custom resources: the Rust types are the single source of
//! truth, and `crdgen` writes the CRD YAML the Helm chart and the kustomize base install
//! (`charts/countersign/files/crds/`) from them.

// kube's `printcolumn(...)` repeats `type_ = ...` once per column, which this
// lint mistakes for a duplicated attribute.
#![allow(clippy::duplicated_attributes)]

pub mod approval_policy;
pub mod common;
pub mod fronting_link;
pub mod group_mapping;
pub mod identity_provider;
pub mod license_grant;
pub mod status;
pub mod tenant;
pub mod webhook_subscription;

pub use approval_policy::{ApprovalPolicy, ApprovalPolicySpec};
pub use common::{DeletionPolicy, ObjectRef, SecretKeyRef};
pub use fronting_link::{FrontingLink, FrontingLinkSpec};
pub use group_mapping::{GroupMapping, GroupMappingSpec};
pub use identity_provider::{IdentityProvider, IdentityProviderSpec};
pub use license_grant::{LicenseGrant, LicenseGrantSpec};
pub use status::{Condition, ConditionStatus, ResourceStatus};
pub use tenant::{Tenant, TenantSpec};
pub use webhook_subscription::{WebhookSubscription, WebhookSubscriptionSpec};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceColumnDefinition, CustomResourceDefinition,
};
use kube::CustomResourceExt;

/// The API group every Countersign kind belongs to.
pub const GROUP: &str = "platform.countersign.dev";
/// The one served and stored API version.
pub const VERSION: &str = "v1alpha1";

/// The admission policies and RBAC that make the API server enforce the
/// two-person rule (ADR 0004), as shipped.
pub mod admission {
    /// ValidatingAdmissionPolicy + binding (the guard) and the
    /// MutatingAdmissionPolicy + binding that stamps the requester.
    pub const APPROVAL_GUARD_YAML: &str = include_str!("../../charts/countersign/files/admission/approval-guard.yaml");
    /// ClusterRoles: `countersign-approver` (verb `approve`) and `countersign-editor`.
    pub const RBAC_YAML: &str = include_str!("../../charts/countersign/files/rbac/roles.yaml");
}

/// Annotation keys of the two-person protocol and ownership (ADRs 0002 and 0004).
pub mod annotations {
    /// Who asked for the change: the git author or the kubectl user.
    pub const REQUESTED_BY: &str = "countersign.dev/requested-by";
    /// The approving user; must differ from the requester.
    pub const APPROVED_BY: &str = "countersign.dev/approved-by";
    /// The digest the approver saw; an approval never carries over to another digest.
    pub const APPROVED_DIGEST: &str = "countersign.dev/approved-digest";
    /// The rejecting user.
    pub const REJECTED_BY: &str = "countersign.dev/rejected-by";
    /// The digest that was rejected.
    pub const REJECTED_DIGEST: &str = "countersign.dev/rejected-digest";
    /// Optional free-text reason for a rejection.
    pub const REJECTED_REASON: &str = "countersign.dev/rejected-reason";
    /// The account whose write last set the spec or the requester. The API
    /// server stamps it (MutatingAdmissionPolicy countersign-stamp-declarer)
    /// and refuses any other value, so the operator knows who declared the
    /// requester: a person may only declare themselves, a GitOps account
    /// listed in an ApprovalPolicy may declare the git author.
    pub const DECLARED_BY: &str = "countersign.dev/declared-by";
    /// Set to "true" to let this object take over a row made outside the operator.
    pub const ADOPT: &str = "countersign.dev/adopt";
    /// Set to a new value to rotate an operator-generated secret (e.g. a
    /// webhook signing secret): each distinct value rotates once.
    pub const ROTATE_SECRET: &str = "countersign.dev/rotate-secret";
}

/// Labels Countersign reads.
pub mod labels {
    /// On a Secret: what the operator may use it for. A
    /// WebhookSubscription's `spec.signingSecretRef` may only name a Secret
    /// labelled with [`SECRET_USE_WEBHOOK_SIGNING`], so a user who cannot
    /// read a Secret cannot have the operator sign deliveries with it.
    pub const SECRET_USE: &str = "countersign.dev/secret-use";
    /// The [`SECRET_USE`] value of a webhook signing secret.
    pub const SECRET_USE_WEBHOOK_SIGNING: &str = "webhook-signing";
}

/// Every CRD in install order (the kinds others reference come first), each
/// with the shared printer columns after its own.
pub fn all_crds() -> Vec<CustomResourceDefinition> {
    [
        Tenant::crd(),
        ApprovalPolicy::crd(),
        IdentityProvider::crd(),
        GroupMapping::crd(),
        WebhookSubscription::crd(),
        FrontingLink::crd(),
        LicenseGrant::crd(),
    ]
    .into_iter()
    .map(|crd| with_unobserved_status(with_shared_columns(crd, true)))
    .collect()
}

/// The `status.observedGeneration` the API server shows until the operator
/// first writes a status: no real generation (they start at 1) matches it,
/// so kstatus (Flux, `kubectl wait`-style tools) reads a fresh object as
/// InProgress and the Argo CD health check as Progressing, without the
/// operator spending an API write per object on saying so.
pub const UNOBSERVED_GENERATION: i64 = -1;

/// Gives every version's `status` a structural default of
/// `{observedGeneration: UNOBSERVED_GENERATION}`, applied by the API server
/// whenever it reads an object that has no status yet.
fn with_unobserved_status(mut crd: CustomResourceDefinition) -> CustomResourceDefinition {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSON;
    for version in &mut crd.spec.versions {
        let status = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
            .and_then(|s| s.properties.as_mut())
            .and_then(|p| p.get_mut("status"));
        if let Some(status) = status {
            status.default = Some(JSON(serde_json::json!({ "observedGeneration": UNOBSERVED_GENERATION })));
        }
    }
    crd
}

/// Appends the columns every kind shows: Ready and its reason,
/// the approval verdict where an ApprovalPolicy can apply, Age, and the Ready
/// message at `-o wide`.
fn with_shared_columns(mut crd: CustomResourceDefinition, approval: bool) -> CustomResourceDefinition {
    let condition = |type_: &str, field: &str| format!(r#".status.conditions[?(@.type=="{type_}")].{field}"#);
    let column = |name: &str, type_: &str, json_path: String, priority: Option<i32>| CustomResourceColumnDefinition {
        name: name.into(),
        type_: type_.into(),
        json_path,
        priority,
        ..Default::default()
    };
    let mut shared = vec![
        column("Ready", "string", condition("Ready", "status"), None),
        column("Reason", "string", condition("Ready", "reason"), None),
    ];
    if approval {
        shared.push(column("Approval", "string", condition("Approved", "reason"), None));
        shared.push(column("Pending", "string", ".status.pendingDigest".into(), Some(1)));
    }
    shared.push(column("Age", "date", ".metadata.creationTimestamp".into(), None));
    shared.push(column("Message", "string", condition("Ready", "message"), Some(1)));
    for version in &mut crd.spec.versions {
        version
            .additional_printer_columns
            .get_or_insert_with(Vec::new)
            .extend(shared.iter().cloned());
    }
    crd
}

/// Renders one CRD as the YAML document `crdgen` writes.
pub fn crd_yaml(crd: &CustomResourceDefinition) -> Result<String, serde_norway::Error> {
    serde_norway::to_string(crd)
}
