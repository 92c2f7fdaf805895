//! LicenseGrant: a signed license import for a tenant (reference 000 license
//! grants).

use crate::common::ObjectRef;
use crate::status::ResourceStatus;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// A signed license grant, addendum or revocation, imported into the
/// license_grants table once its Ed25519 signature verifies against the
/// operator's trusted keyring. Every field except `signature` is signed, so
/// an imported grant is never changed in place.
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
#[x_kube(validation = Rule::new("self.grantType == 'ADDENDUM' || !has(self.addendumOf)").message("spec.addendumOf is only allowed when spec.grantType is ADDENDUM"))]
#[x_kube(validation = Rule::new("self.grantType == 'REVOCATION' || !has(self.revokes)").message("spec.revokes is only allowed when spec.grantType is REVOCATION"))]
#[serde(rename_all = "camelCase")]
pub struct LicenseGrantSpec {
    /// The Tenant (by metadata.name) the grant is for; its live row must carry
    /// the same instance fingerprint.
    pub tenant_ref: ObjectRef,
    /// Globally unique grant identifier (lowercase UUID). Immutable.
    #[schemars(regex(pattern = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.grantId is immutable"))]
    pub grant_id: String,
    /// GRANT (new units), ADDENDUM (more units for an earlier GRANT of the
    /// same tenant and license type) or REVOCATION (withdraws an earlier grant).
    pub grant_type: GrantType,
    /// Instance fingerprint the grant is bound to; must equal the tenant's.
    #[schemars(regex(pattern = "^sha256:[A-Za-z0-9._:+/=-]{1,256}$"))]
    pub instance_fingerprint: String,
    /// The licensed product or tier; quotas are kept per tenant and license type.
    #[schemars(length(min = 1, max = 128))]
    pub license_type: String,
    /// Units granted; positive. An addendum adds to its grant's units.
    #[schemars(range(min = 1))]
    pub quantity: i64,
    /// Start of validity (RFC 3339, inclusive); signed exactly as written.
    #[schemars(regex(pattern = "^\\d{4}-\\d{2}-\\d{2}T"))]
    pub valid_from: String,
    /// End of validity (RFC 3339, exclusive), after validFrom; signed exactly as
    /// written. Past it the grant reports Ready=False/Expired and stops counting.
    #[schemars(regex(pattern = "^\\d{4}-\\d{2}-\\d{2}T"))]
    pub valid_until: String,
    /// Commercial chain from the vendor to the platform operator, in order: the
    /// first entry must be the operator's configured vendor and the last its
    /// configured operator name (compared exactly).
    #[schemars(length(min = 2))]
    pub commercial_chain: Vec<String>,
    /// For an ADDENDUM only: the grant ID (lowercase UUID) of the GRANT it amends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"))]
    pub addendum_of: Option<String>,
    /// For a REVOCATION only: the grant ID (lowercase UUID) it revokes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"))]
    pub revokes: Option<String>,
    /// Detached Ed25519 signature over the canonical encoding of every other
    /// spec field (README "What a LicenseGrant reports" defines the bytes).
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

/// The signature over a grant: which trusted key made it, and the signature.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct GrantSignature {
    /// ID of the signing key in the operator's trusted keyring (--license-keyring).
    #[schemars(length(min = 1, max = 128))]
    pub key_id: String,
    /// Base64 (standard alphabet, padded) Ed25519 signature: 64 bytes. The
    /// signed bytes are the canonical JSON of the spec without `signature`,
    /// with `addendumOf`/`revokes` null when absent and
    /// `"format": "countersign.dev/license-grant/v1"` added.
    #[schemars(regex(pattern = "^[A-Za-z0-9+/]{86}==$"))]
    pub value: String,
}
