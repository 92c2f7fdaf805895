//! Small types several kinds share.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// A reference to another Countersign object by its Kubernetes name.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObjectRef {
    /// metadata.name of the referenced object.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// A key inside a Secret in the same namespace as the referring object.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key within the Secret's data.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// What happens to the database row when the Kubernetes object is deleted.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
pub enum DeletionPolicy {
    /// Soft-delete the row (it keeps its audit trail and `deleted_at`).
    #[default]
    Delete,
    /// Leave the row as it is and release ownership, so the admin API manages it again.
    Orphan,
}

/// The CEL rule that accepts only absolute HTTPS URLs.
pub const HTTPS_URL_RULE: &str = "isURL(self) && url(self).getScheme() == 'https'";

/// DNS-label slug: lowercase letters, digits and inner hyphens, at most 63 characters.
pub const SLUG_PATTERN: &str = "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$";
