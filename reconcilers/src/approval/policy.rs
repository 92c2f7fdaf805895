//! What the ApprovalPolicies in force say: their union, the floor under it, and what covers a kind.

use countersign_crds::approval_policy::{ApprovalPolicySpec, GuardedKind, Operation};
use std::collections::BTreeSet;

/// The union of every ApprovalPolicy in the cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EffectivePolicy {
    covered: BTreeSet<(String, &'static str)>,
    /// How long a request stays open, in seconds (the shortest of all policies).
    pub request_ttl_seconds: i64,
    /// The GitOps accounts any policy trusts to declare another person as
    /// requester.
    pub gitops_accounts: BTreeSet<String>,
    /// How many distinct people must approve (the highest of all policies).
    pub required_approvals: u32,
}

impl EffectivePolicy {
    /// Folds the policies' rules together; None when there is no policy.
    pub fn from_specs<'a>(specs: impl IntoIterator<Item = &'a ApprovalPolicySpec>) -> Option<Self> {
        let mut out: Option<Self> = None;
        for spec in specs {
            let p = out.get_or_insert_with(|| Self {
                covered: BTreeSet::new(),
                request_ttl_seconds: i64::MAX,
                gitops_accounts: BTreeSet::new(),
                required_approvals: 1,
            });
            p.request_ttl_seconds = p.request_ttl_seconds.min(spec.request_ttl_seconds);
            p.required_approvals = p.required_approvals.max(spec.required_approvals);
            p.gitops_accounts.extend(spec.gitops_service_accounts.iter().cloned());
            for rule in &spec.rules {
                for kind in &rule.kinds {
                    for op in &rule.operations {
                        p.covered.insert((kind_name(*kind).to_string(), op_name(*op)));
                    }
                }
            }
        }
        out
    }

    /// Whether a second person must approve `operation` on `kind`.
    pub fn covers(&self, kind: &str, operation: Operation) -> bool {
        self.covers_name(kind, op_name(operation))
    }

    /// Like [`Self::covers`], with the operation as the database spells it.
    pub fn covers_name(&self, kind: &str, operation: &str) -> bool {
        self.covered.iter().any(|(k, o)| k == kind && *o == operation)
    }

    /// Every (kind, operation) a second person must approve.
    pub fn covered(&self) -> impl Iterator<Item = (&str, &'static str)> {
        self.covered.iter().map(|(k, o)| (k.as_str(), *o))
    }
}

/// What, besides the ApprovalPolicies, makes a change need a second person.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Baseline {
    /// Only the policies decide.
    PoliciesOnly,
    /// The approval floor covers it (a new or changed IdentityProvider, a
    /// GroupMapping granting a platform-wide role) when it is on.
    Floor,
    /// Always: a change that loosens the rule itself.
    Always,
}

/// How long a request stays open when only the floor covers a change.
pub const FLOOR_REQUEST_TTL_SECONDS: i64 = 7 * 24 * 3600;

/// What the rule asks of one covered change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Coverage {
    /// How long the request stays open.
    pub ttl_seconds: i64,
    /// How many distinct people must approve.
    pub required_approvals: u32,
}

/// The Kubernetes kind name of a guarded kind.
pub fn kind_name(kind: GuardedKind) -> &'static str {
    match kind {
        GuardedKind::Tenant => "Tenant",
        GuardedKind::IdentityProvider => "IdentityProvider",
        GuardedKind::GroupMapping => "GroupMapping",
        GuardedKind::WebhookSubscription => "WebhookSubscription",
        GuardedKind::FrontingLink => "FrontingLink",
        GuardedKind::LicenseGrant => "LicenseGrant",
    }
}

/// The database spelling of an operation.
pub fn op_name(op: Operation) -> &'static str {
    match op {
        Operation::Create => "create",
        Operation::Update => "update",
        Operation::Delete => "delete",
    }
}
