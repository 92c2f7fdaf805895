//! GroupMapping: members of an IdP group receive a platform role (reference
//! 002 group mappings).

use crate::common::ObjectRef;
use crate::status::ResourceStatus;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// Maps one identity-provider group to one platform role.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "platform.countersign.dev",
    version = "v1alpha1",
    kind = "GroupMapping",
    namespaced,
    status = "ResourceStatus",
    shortname = "gm",
    category = "countersign",
    printcolumn(name = "Provider", type_ = "string", json_path = ".spec.identityProviderRef.name"),
    printcolumn(name = "Group", type_ = "string", json_path = ".spec.groupName"),
    printcolumn(name = "Role", type_ = "string", json_path = ".spec.role")
)]
#[serde(rename_all = "camelCase")]
pub struct GroupMappingSpec {
    /// The IdentityProvider (same namespace) whose users carry the group.
    pub identity_provider_ref: ObjectRef,
    /// The group name exactly as the IdP advertises it in the groups claim.
    #[schemars(length(min = 1, max = 512))]
    pub group_name: String,
    /// The platform role members receive.
    pub role: PlatformRole,
}

/// The platform's roles (reference 000, seeded realm roles).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PlatformRole {
    /// Administers the whole platform.
    PlatformAdmin,
    /// Runs billing exports.
    BillingOperator,
    /// Administers one client organization.
    ClientAdmin,
    /// Technical user of one client organization.
    ClientTech,
    /// Read-only access for audits.
    Auditor,
}
