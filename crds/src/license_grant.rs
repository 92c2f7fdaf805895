//! LicenseGrant: a signed license import for a tenant (reference 000 license
//! grants).

use crate::common::ObjectRef;
use crate::status::ResourceStatus;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// A signed license grant, addendum or revocation.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "platform.countersign.dev",
    version = "v1alpha1",
    kind = "LicenseGrant",
    status = "ResourceStatus",
    shortname = "lg",
    category = "countersign",
    printcolumn(name = "Tenant", type_ = "string", json_path = ".spec.tenantRef.name"),
    printcolumn(name = "Type", type_ = "string", json_path = ".spec.grantType"),
    printcolumn(name = "Until", type_ = "string", json_path = ".spec.validUntil")
)]
#[x_kube(validation = Rule::new("timestamp(self.validFrom) < timestamp(self.validUntil)").message("spec.validFrom must be before spec.validUntil"))]
#[x_kube(validation = Rule::new("self.grantType != 'ADDENDUM' || has(self.addendumOf)").message("spec.addendumOf is required when spec.grantType is ADDENDUM"))]
#[x_kube(validation = Rule::new("self.grantType != 'REVOCATION' || has(self.revokes)").message("spec.revokes is required when spec.grantType is REVOCATION"))]
#[serde(rename_all = "camelCase")]
pub struct LicenseGrantSpec {
    /// The Tenant (by name) the grant is for.
    pub tenant_ref: ObjectRef,
    /// Globally unique grant identifier (UUID).
    #[schemars(regex(pattern = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.grantId is immutable"))]
    pub grant_id: String,
    /// Grant, addendum to an earlier grant, or revocation of one.
    pub grant_type: GrantType,
    /// Instance fingerprint the grant is bound to; must equal the tenant's.
    #[schemars(regex(pattern = "^sha256:[A-Za-z0-9._:+/=-]{1,256}$"))]
    pub instance_fingerprint: String,
    /// The licensed product or tier.
    #[schemars(length(min = 1, max = 128))]
    pub license_type: String,
    /// Units granted; positive.
    #[schemars(range(min = 1))]
    pub quantity: i64,
    /// Start of validity (RFC 3339).
    #[schemars(regex(pattern = "^\\d{4}-\\d{2}-\\d{2}T"))]
    pub valid_from: String,
    /// End of validity (RFC 3339), after validFrom.
    #[schemars(regex(pattern = "^\\d{4}-\\d{2}-\\d{2}T"))]
    pub valid_until: String,
    /// Commercial chain from the vendor to the operator, in order.
    #[schemars(length(min = 2))]
    pub commercial_chain: Vec<String>,
    /// For an addendum: the grant ID it amends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addendum_of: Option<String>,
    /// For a revocation: the grant ID it revokes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revokes: Option<String>,
    /// Detached Ed25519 signature over the canonical encoding of these fields.
    pub signature: GrantSignature,
}

/// Kinds of license grant.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum GrantType {
    /// A new grant.
    Grant,
    /// Amends an existing grant.
    Addendum,
    /// Revokes an existing grant.
    Revocation,
}

/// The signature over a grant.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct GrantSignature {
    /// ID of the signing key in the operator's trusted keyring.
    #[schemars(length(min = 1, max = 128))]
    pub key_id: String,
    /// Base64 Ed25519 signature.
    #[schemars(regex(pattern = "^[A-Za-z0-9+/]{86}==$"))]
    pub value: String,
}
