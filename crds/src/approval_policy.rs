//! ApprovalPolicy: which changes need a second person.

use crate::status::ResourceStatus;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// Says which kinds and operations need a second person's approval.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "platform.countersign.dev",
    version = "v1alpha1",
    kind = "ApprovalPolicy",
    status = "ApprovalPolicyStatus",
    shortname = "ap",
    category = "countersign"
)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalPolicySpec {
    /// Which kinds and operations need approval; at least one rule.
    #[schemars(length(min = 1))]
    pub rules: Vec<ApprovalRule>,
    /// How long a change request stays open, in seconds (default 7 days).
    #[serde(default = "default_ttl")]
    #[schemars(range(min = 60, max = 7776000))]
    pub request_ttl_seconds: i64,
    /// Usernames of the GitOps service accounts (e.g.
    /// system:serviceaccount:argocd:argocd-application-controller) that may
    /// declare another person as requester.
    #[serde(default)]
    #[schemars(inner(regex(
        pattern = "^system:serviceaccount:[a-z0-9]([-a-z0-9]*[a-z0-9])?:[a-z0-9]([-.a-z0-9]*[a-z0-9])?$"
    )))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub gitops_service_accounts: Vec<String>,
    /// How many distinct people, none of them the requester, must approve a
    /// covered change (default 1). With several policies the highest count
    /// applies. Two or more mean that one person who can both merge to the
    /// synced repository and approve cannot pass a change alone.
    #[serde(default = "one_approval")]
    #[schemars(range(min = 1, max = 5))]
    pub required_approvals: u32,
}

fn default_ttl() -> i64 {
    7 * 24 * 3600
}

fn one_approval() -> u32 {
    1
}

/// What the operator reports about an ApprovalPolicy: the shared conditions
/// and digests, and the configuration actually in force. A change that
/// tightens the rule is in force at once; one that loosens it (a rule
/// removed or narrowed, a GitOps account added, a longer TTL, fewer
/// approvals, deletion) waits for a second person while the previous
/// configuration stays in force.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalPolicyStatus {
    /// Conditions, observedGeneration and the digests (pendingDigest: the
    /// loosening awaiting approval).
    #[serde(flatten)]
    pub common: ResourceStatus,
    /// The configuration of this policy the operator enforces now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_force: Option<ApprovalPolicySpec>,
    /// How the declared spec loosens the rule, while that waits for approval.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub loosening: Vec<String>,
}

/// One set of kinds and operations that need a second person.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalRule {
    /// The kinds the rule covers.
    #[schemars(length(min = 1))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub kinds: Vec<GuardedKind>,
    /// The operations the rule covers.
    #[schemars(length(min = 1))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub operations: Vec<Operation>,
}

/// Kinds an ApprovalPolicy can guard.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, schemars::JsonSchema)]
pub enum GuardedKind {
    /// Tenants.
    Tenant,
    /// Identity providers.
    IdentityProvider,
    /// Group mappings.
    GroupMapping,
    /// Webhook subscriptions.
    WebhookSubscription,
    /// Fronting links.
    FrontingLink,
    /// License grants.
    LicenseGrant,
}

/// Operations an ApprovalPolicy can guard.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    /// Creating the row.
    Create,
    /// Changing the row.
    Update,
    /// Deleting the row.
    Delete,
}
