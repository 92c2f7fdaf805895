//! FrontingLink: lets one platform resource front another, mapping scopes
//! (reference 004 fronting links).

use crate::common::SLUG_PATTERN;
use crate::status::ResourceStatus;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A fronting link from a source resource to a target resource.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "platform.countersign.dev",
    version = "v1alpha1",
    kind = "FrontingLink",
    status = "ResourceStatus",
    shortname = "fl",
    category = "countersign",
    printcolumn(name = "Source", type_ = "string", json_path = ".spec.sourceSlug"),
    printcolumn(name = "Target", type_ = "string", json_path = ".spec.targetSlug")
)]
#[x_kube(validation = Rule::new("self.sourceSlug != self.targetSlug").message("spec.targetSlug: a resource cannot front itself"))]
#[serde(rename_all = "camelCase")]
pub struct FrontingLinkSpec {
    /// Slug of the fronting (source) resource. Immutable.
    #[schemars(regex(pattern = SLUG_PATTERN), length(max = 63))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.sourceSlug is immutable: delete the FrontingLink and create a new one"))]
    pub source_slug: String,
    /// Slug of the fronted (target) resource. Immutable.
    #[schemars(regex(pattern = SLUG_PATTERN), length(max = 63))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.targetSlug is immutable: delete the FrontingLink and create a new one"))]
    pub target_slug: String,
    /// Source scope → the target scopes it grants; at least one entry, each
    /// with at least one target scope.
    #[x_kube(validation = Rule::new("size(self) > 0").message("spec.scopeMap needs at least one entry"))]
    #[x_kube(validation = Rule::new("self.all(k, size(self[k]) > 0)").message("spec.scopeMap: every source scope needs at least one target scope"))]
    pub scope_map: BTreeMap<String, Vec<String>>,
}
