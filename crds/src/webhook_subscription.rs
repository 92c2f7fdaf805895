//! WebhookSubscription: signed event deliveries to a tenant's HTTPS endpoint
//! (reference 000 webhooks, 001 webhook tables).

use crate::common::{HTTPS_URL_RULE, ObjectRef, SecretKeyRef};
use crate::status::ResourceStatus;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// Condition type (only with spec.verify): the last signed test delivery
/// reached the endpoint and was accepted with a 2xx status.
pub const VERIFIED: &str = "Verified";

/// A subscription of an HTTPS endpoint to platform events.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "platform.countersign.dev",
    version = "v1alpha1",
    kind = "WebhookSubscription",
    namespaced,
    status = "WebhookSubscriptionStatus",
    shortname = "whs",
    category = "countersign",
    printcolumn(name = "Tenant", type_ = "string", json_path = ".spec.tenantRef.name"),
    printcolumn(name = "URL", type_ = "string", json_path = ".spec.url"),
    printcolumn(
        name = "Verified",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Verified")].reason"#,
        priority = 1
    )
)]
#[serde(rename_all = "camelCase")]
pub struct WebhookSubscriptionSpec {
    /// The Tenant (by name) the subscription belongs to; the Tenant must list
    /// this object's namespace in spec.allowedNamespaces. Immutable.
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.tenantRef is immutable; delete the subscription and create a new one"))]
    pub tenant_ref: ObjectRef,
    /// HTTPS endpoint that receives the signed deliveries; unique per tenant
    /// (compared exactly as written).
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new(HTTPS_URL_RULE).message("spec.url must be an https:// URL"))]
    pub url: String,
    /// The events delivered; at least one.
    #[schemars(length(min = 1))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub events: Vec<WebhookEvent>,
    /// Where the signing secret comes from; absent means the operator
    /// generates one once into a Secret it owns, named
    /// `<metadata.name>-signing-secret` with the key `signing-secret`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_secret_ref: Option<SecretKeyRef>,
    /// Send a signed test delivery (event `webhook.verification`) whenever
    /// the subscription or its secret changes, and report the result in the
    /// `Verified` condition and status.verification.
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

impl WebhookEvent {
    /// The event type as deliveries and the database spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CertificateIssued => "certificate.issued",
            Self::TenantChanged => "tenant.changed",
            Self::IdentityProviderChanged => "identity_provider.changed",
            Self::LicenseGrantChanged => "license_grant.changed",
            Self::ApprovalDecided => "approval.decided",
        }
    }
}

/// The observed state of a WebhookSubscription: the shared status plus the
/// signing secret's fingerprint, the last rotation acted on and the result of
/// the last test delivery.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookSubscriptionStatus {
    /// Conditions, database ID and digests, as every kind reports them.
    #[serde(flatten)]
    pub common: ResourceStatus,
    /// Fingerprint of the signing secret stored for this subscription
    /// (HMAC-SHA-256 under the operator's key, truncated); changes when the
    /// secret does and reveals nothing about it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_fingerprint: Option<String>,
    /// The value of the `countersign.dev/rotate-secret` annotation whose
    /// rotation is live in the API database; setting the annotation to any
    /// other value rotates the generated secret once more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rotation_token: Option<String>,
    /// The result of the last signed test delivery (only with spec.verify).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<WebhookVerificationStatus>,
}

/// What the last signed test delivery found.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookVerificationStatus {
    /// The generation of the spec the delivery was made for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The fingerprint of the signing secret the delivery was signed with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_fingerprint: Option<String>,
    /// The `id` of the test delivery, as its body and the
    /// `X-Countersign-Delivery` header carry it, so a receiver's logs can be
    /// matched.
    pub delivery_id: String,
    /// When the delivery was attempted (RFC 3339).
    pub attempted_at: String,
    /// Whether the endpoint answered with a 2xx status.
    pub delivered: bool,
    /// The HTTP status the endpoint answered with, if it answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<i32>,
    /// Why the delivery failed (the outbound client's safe message: the
    /// host, never a body or a secret); absent when it was delivered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}
