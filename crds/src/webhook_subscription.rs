//! WebhookSubscription: signed event deliveries to a tenant's HTTPS endpoint
//! (reference 000 webhooks, 001 webhook tables).

use crate::common::{HTTPS_URL_RULE, ObjectRef, SecretKeyRef};
use crate::status::ResourceStatus;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// A subscription of an HTTPS endpoint to platform events.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "platform.countersign.dev",
    version = "v1alpha1",
    kind = "WebhookSubscription",
    namespaced,
    status = "ResourceStatus",
    shortname = "whs",
    category = "countersign",
    printcolumn(name = "Tenant", type_ = "string", json_path = ".spec.tenantRef.name"),
    printcolumn(name = "URL", type_ = "string", json_path = ".spec.url")
)]
#[serde(rename_all = "camelCase")]
pub struct WebhookSubscriptionSpec {
    /// The Tenant (by name) the subscription belongs to; the Tenant must list
    /// this object's namespace in spec.allowedNamespaces.
    pub tenant_ref: ObjectRef,
    /// HTTPS endpoint that receives the signed deliveries.
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new(HTTPS_URL_RULE).message("spec.url must be an https:// URL"))]
    pub url: String,
    /// The events delivered; at least one.
    #[schemars(length(min = 1))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub events: Vec<WebhookEvent>,
    /// Where the signing secret comes from; absent means the operator
    /// generates one once into a Secret it owns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_secret_ref: Option<SecretKeyRef>,
    /// Send a signed test delivery and report the result in a condition.
    #[serde(default)]
    pub verify: bool,
}

/// Event types a subscription can receive.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, schemars::JsonSchema)]
pub enum WebhookEvent {
    /// A certificate was issued (reference 000).
    #[serde(rename = "certificate.issued")]
    CertificateIssued,
    /// A tenant was created, changed or deleted.
    #[serde(rename = "tenant.changed")]
    TenantChanged,
    /// An identity provider was created, changed, approved or deleted.
    #[serde(rename = "identity_provider.changed")]
    IdentityProviderChanged,
    /// A license grant was imported or revoked.
    #[serde(rename = "license_grant.changed")]
    LicenseGrantChanged,
    /// A change request was approved, rejected or expired.
    #[serde(rename = "approval.decided")]
    ApprovalDecided,
}
