//! ApprovalPolicies as the operator enforces them. Nobody can switch the
//! two-person rule off alone: a change to a policy that tightens the rule is
//! in force at once, one that loosens it (a rule removed or narrowed, a GitOps
//! account added, a longer TTL, fewer approvals, deletion) is itself a change
//! that waits for a second person, and until then the configuration in force
//! stays (table `approval_policies`). Every policy change is audited.
//!
//! resolve (the in-force configurations, loaded by the caller) → plan (pure:
//! [`plan`]) → gate → apply (one transaction with its audit entry) → status.

use crate::approval::{self, ApprovedChange, EffectivePolicy, Gate};
use crate::audit::Actor;
use crate::conditions::DesiredCondition;
use crate::outcome::{Desired, Outcome};
use crate::report::{self, cond};
use countersign_crds::ConditionStatus;
use countersign_crds::approval_policy::{ApprovalPolicy, ApprovalPolicySpec, Operation};
use countersign_crds::status::{READY, RECONCILING, STALLED, SYNCED};
use sqlx::PgPool;
use std::collections::{BTreeMap, BTreeSet};
use uuid::Uuid;

/// The kind name used in change requests and the audit log.
pub const KIND: &str = "ApprovalPolicy";

/// The configurations in force, by policy name.
pub type InForce = BTreeMap<String, ApprovalPolicySpec>;

/// How `after` (None: no policy at all) loosens the rule `before` makes, in
/// words; empty when it does not.
/// With no policy before, nothing needed approval, so only trusting an
/// account loosens: it would let that account name others as requester of
/// changes other policies (and the floor) cover.
pub fn loosenings(before: Option<&EffectivePolicy>, after: Option<&EffectivePolicy>) -> Vec<String> {
    let empty = EffectivePolicy::default();
    let before_rule = before.unwrap_or(&empty);
    let after_rule = after.unwrap_or(&empty);
    let mut out = Vec::new();
    for (kind, op) in before_rule.covered() {
        if !after_rule.covers_name(kind, op) {
            out.push(format!("{op} {kind} would no longer need a second person"));
        }
    }
    for account in after_rule.gitops_accounts.difference(&before_rule.gitops_accounts) {
        out.push(format!("{account} would be trusted to declare requesters"));
    }
    if let (Some(before), Some(after)) = (before, after) {
        if after.request_ttl_seconds > before.request_ttl_seconds {
            out.push(format!(
                "requests would stay open {} s instead of {} s",
                after.request_ttl_seconds, before.request_ttl_seconds
            ));
        }
        if after.required_approvals < before.required_approvals {
            out.push(format!(
                "{} approval(s) would do instead of {}",
                after.required_approvals, before.required_approvals
            ));
        }
    }
    out
}

/// The tightest configuration of a policy that both its configuration in
/// force (None: it has none yet) and its declared spec allow: every rule of
/// either, only the GitOps accounts both trust, the shorter TTL and the
/// higher approval count. Putting it in force never loosens anything.
pub fn tightest(in_force: Option<&ApprovalPolicySpec>, declared: &ApprovalPolicySpec) -> ApprovalPolicySpec {
    let Some(old) = in_force else {
        return ApprovalPolicySpec {
            gitops_service_accounts: Vec::new(),
            ..declared.clone()
        };
    };
    let mut rules = old.rules.clone();
    rules.extend(declared.rules.iter().filter(|r| !old.rules.contains(r)).cloned());
    let trusted: BTreeSet<&String> = old.gitops_service_accounts.iter().collect();
    ApprovalPolicySpec {
        rules,
        request_ttl_seconds: old.request_ttl_seconds.min(declared.request_ttl_seconds),
        gitops_service_accounts: declared
            .gitops_service_accounts
            .iter()
            .filter(|a| trusted.contains(a))
            .cloned()
            .collect(),
        required_approvals: old.required_approvals.max(declared.required_approvals),
    }
}

/// Whether two configurations of one policy make the same rule.
pub fn same_rule(a: &ApprovalPolicySpec, b: &ApprovalPolicySpec) -> bool {
    EffectivePolicy::from_specs([a]) == EffectivePolicy::from_specs([b])
}

/// What to do with one policy.
#[derive(Clone, Debug, PartialEq)]
pub enum Plan {
    /// The declared spec is what is in force.
    Unchanged,
    /// The declared spec tightens the rule (or changes nothing it makes):
    /// put it in force now.
    Apply(ApprovalPolicySpec),
    /// The declared spec loosens the rule: it waits for a second person.
    /// `interim`, when set, is the tightening part, put in force now.
    Loosen {
        /// The tightest configuration both allow, if it differs from what is in force.
        interim: Option<ApprovalPolicySpec>,
        /// How the declared spec loosens the rule.
        loosening: Vec<String>,
    },
}

/// Plans a declared spec of policy `name` against everything in force. Pure.
pub fn plan(in_force: &InForce, name: &str, declared: &ApprovalPolicySpec) -> Plan {
    let current = in_force.get(name);
    if current.is_some_and(|c| c == declared) {
        return Plan::Unchanged;
    }
    let before = EffectivePolicy::from_specs(in_force.values());
    let others = || in_force.iter().filter(|(n, _)| n.as_str() != name).map(|(_, s)| s);
    let after = EffectivePolicy::from_specs(others().chain([declared]));
    let loosening = loosenings(before.as_ref(), after.as_ref());
    if loosening.is_empty() {
        return Plan::Apply(declared.clone());
    }
    let interim = tightest(current, declared);
    Plan::Loosen {
        interim: current.is_none_or(|c| !same_rule(c, &interim)).then_some(interim),
        loosening,
    }
}

/// How deleting policy `name` loosens the rule; empty when it does not.
pub fn deletion_loosens(in_force: &InForce, name: &str) -> Vec<String> {
    if !in_force.contains_key(name) {
        return Vec::new();
    }
    let before = EffectivePolicy::from_specs(in_force.values());
    let after = EffectivePolicy::from_specs(in_force.iter().filter(|(n, _)| n.as_str() != name).map(|(_, s)| s));
    loosenings(before.as_ref(), after.as_ref())
}

/// What the gates enforce right now: for every policy, the tightest of its
/// configuration in force and its declared spec ([`tightest`]). A policy
/// declared but not yet processed is thus enforced at once (less any GitOps
/// account nobody trusted yet), a declared loosening never is, and a policy in
/// force whose object is gone still is.
pub fn enforced(in_force: &InForce, declared: &InForce) -> Vec<ApprovalPolicySpec> {
    let names: BTreeSet<&String> = in_force.keys().chain(declared.keys()).collect();
    names
        .into_iter()
        .map(|name| match (in_force.get(name), declared.get(name)) {
            (current, Some(declared)) => tightest(current, declared),
            (Some(current), None) => current.clone(),
            (None, None) => unreachable_spec(),
        })
        .collect()
}

/// Never reached: every name comes from one of the two maps.
fn unreachable_spec() -> ApprovalPolicySpec {
    ApprovalPolicySpec {
        rules: Vec::new(),
        request_ttl_seconds: approval::FLOOR_REQUEST_TTL_SECONDS,
        gitops_service_accounts: Vec::new(),
        required_approvals: 1,
    }
}

/// Every configuration in force, from the database.
pub async fn load(pool: &PgPool) -> Result<InForce, crate::Error> {
    let rows: Vec<(String, serde_json::Value)> = sqlx::query_as("SELECT name, spec FROM approval_policies")
        .fetch_all(pool)
        .await?;
    rows.into_iter()
        .map(|(name, spec)| Ok((name, serde_json::from_value(spec)?)))
        .collect()
}

/// What a reconcile of one policy did.
#[derive(Clone, Debug)]
pub struct Report {
    /// Conditions and digests.
    pub outcome: Outcome,
    /// This policy's configuration in force after the reconcile (None: none).
    pub in_force: Option<ApprovalPolicySpec>,
    /// Whether the configuration in force changed (every held change must
    /// be looked at again).
    pub changed: bool,
    /// How the declared spec loosens the rule, while that waits.
    pub loosening: Vec<String>,
}

/// The policy's configuration in force, in words.
pub fn summary(spec: &ApprovalPolicySpec) -> String {
    let rules: Vec<String> = spec
        .rules
        .iter()
        .map(|r| {
            let kinds: Vec<&str> = r.kinds.iter().map(|k| approval::kind_name(*k)).collect();
            let ops: Vec<&str> = r.operations.iter().map(|o| approval::op_name(*o)).collect();
            format!("{} {}", ops.join("/"), kinds.join(", "))
        })
        .collect();
    format!(
        "a second person must approve: {}; {} approval(s); requests stay open {} s; {} GitOps account(s) may declare \
         requesters",
        rules.join("; "),
        spec.required_approvals,
        spec.request_ttl_seconds,
        spec.gitops_service_accounts.len()
    )
}

fn in_force_outcome(spec: Option<&ApprovalPolicySpec>, loosening: &[String]) -> Vec<DesiredCondition> {
    let mut message = match spec {
        Some(spec) => format!("in force: {}", summary(spec)),
        None => "nothing of this policy is in force yet".to_string(),
    };
    if !loosening.is_empty() {
        message.push_str(&format!(
            "; the declared spec loosens the rule and waits for a second person ({})",
            loosening.join("; ")
        ));
    }
    vec![
        cond(READY, ConditionStatus::True, "InForce", message),
        cond(
            SYNCED,
            ConditionStatus::True,
            "ReconcileSucceeded",
            "the database was read without error",
        ),
    ]
}

fn attribution(
    policy: &ApprovalPolicy,
    actor: &Actor,
    digest: String,
    approval: Option<ApprovedChange>,
) -> crate::record::Attribution {
    crate::record::Attribution::of(&policy.metadata, actor, digest, approval)
}

/// Puts `spec` in force for the policy, with its audit entry, in one transaction.
async fn put_in_force(
    pool: &PgPool,
    policy: &ApprovalPolicy,
    spec: &ApprovalPolicySpec,
    who: &crate::record::Attribution,
    action: &str,
    loosening: &[String],
) -> Result<(), crate::Error> {
    let mut tx = pool.begin().await?;
    let id: Uuid = sqlx::query_scalar(
        "INSERT INTO approval_policies (name, object_uid, spec, digest) VALUES ($1, $2, $3, $4)
         ON CONFLICT (name) DO UPDATE SET object_uid = $2, spec = $3, digest = $4, updated_at = now()
         RETURNING id",
    )
    .bind(policy.metadata.name.as_deref().unwrap_or_default())
    .bind(&who.uid)
    .bind(serde_json::to_value(spec)?)
    .bind(&who.digest)
    .fetch_one(&mut *tx)
    .await?;
    let detail = serde_json::json!({"in_force": spec, "loosening": loosening});
    who.audit(&mut tx, KIND, action, id, &who.digest, detail).await?;
    tx.commit().await?;
    Ok(())
}

/// Reconciles one policy against what is in force.
pub async fn reconcile(
    policy: &ApprovalPolicy,
    pool: &PgPool,
    actor: &Actor,
    approvals: &approval::Inputs,
    in_force: &InForce,
) -> Result<Report, crate::Error> {
    let name = policy.metadata.name.clone().unwrap_or_default();
    let uid = policy.metadata.uid.clone().unwrap_or_default();
    let digest = crate::digest::intent_digest(&policy.metadata, &policy.spec)?;
    let current = in_force.get(&name).cloned();
    let done = |spec: Option<ApprovalPolicySpec>, changed: bool, approver: Option<String>| {
        let mut conditions = in_force_outcome(spec.as_ref(), &[]);
        conditions.push(cond(RECONCILING, ConditionStatus::False, "InForce", ""));
        conditions.push(cond(STALLED, ConditionStatus::False, "InForce", ""));
        let outcome = Outcome {
            conditions,
            live: Desired::Live {
                database_id: name.clone(),
                digest: digest.clone(),
            },
            requeue_after: None,
            pending_digest: Some(None),
            drop_conditions: Vec::new(),
            drift_corrected: Vec::new(),
        };
        Report {
            outcome: report::with_approval(outcome, approver, true, &digest),
            in_force: spec,
            changed,
            loosening: Vec::new(),
        }
    };
    match plan(in_force, &name, &policy.spec) {
        Plan::Unchanged => Ok(done(current, false, None)),
        Plan::Apply(spec) => {
            let who = attribution(policy, actor, digest.clone(), None);
            put_in_force(pool, policy, &spec, &who, "tighten", &[]).await?;
            Ok(done(Some(spec), true, None))
        }
        Plan::Loosen { interim, loosening } => {
            let mut in_force_now = current;
            let mut changed = false;
            if let Some(interim) = interim {
                let who = attribution(policy, actor, digest.clone(), None);
                put_in_force(pool, policy, &interim, &who, "tighten", &[]).await?;
                in_force_now = Some(interim);
                changed = true;
            }
            let first_sight = approval::latest(pool, KIND, &uid)
                .await?
                .is_none_or(|r| !(r.digest == digest && r.state == "pending"));
            let change = approval::Change {
                kind: KIND,
                object_key: name.clone(),
                uid: &uid,
                annotations: policy.metadata.annotations.as_ref(),
                operation: Operation::Update,
                digest: &digest,
                snapshot: serde_json::to_value(&policy.spec)?,
                floor: approval::Baseline::Always,
            };
            match approval::gate(pool, approvals, change, actor).await? {
                Gate::NotRequired => unreachable_not_required(),
                Gate::Approved(approved) => {
                    let approver = approved.approver.clone();
                    let who = attribution(policy, actor, digest.clone(), Some(approved));
                    put_in_force(pool, policy, &policy.spec, &who, "loosen", &loosening).await?;
                    Ok(done(Some(policy.spec.clone()), true, Some(approver)))
                }
                Gate::Hold(decision, open_until) => {
                    if first_sight && matches!(decision, approval::Decision::Awaiting) {
                        // A loosening asked for is a policy change too: audited
                        // when first seen, approved or not.
                        let who = attribution(policy, actor, digest.clone(), None);
                        let mut tx = pool.begin().await?;
                        let detail = serde_json::json!({"declared": policy.spec, "loosening": loosening});
                        who.audit(&mut tx, KIND, "request-loosening", Uuid::nil(), &digest, detail)
                            .await?;
                        tx.commit().await?;
                    }
                    let mut outcome = report::held(&decision, open_until, &digest, Operation::Update, "");
                    outcome
                        .conditions
                        .extend(in_force_outcome(in_force_now.as_ref(), &loosening));
                    outcome.live = Desired::Unchanged;
                    Ok(Report {
                        outcome,
                        in_force: in_force_now,
                        changed,
                        loosening,
                    })
                }
            }
        }
    }
}

/// The loosening gate always covers the change ([`approval::Baseline::Always`]).
fn unreachable_not_required() -> Result<Report, crate::Error> {
    Err(crate::Error::Raced("the approval policy's own gate".into()))
}

/// Whether the policy may be deleted now: at once when that loosens nothing,
/// otherwise once a second person approves.
pub async fn deletion_gate(
    policy: &ApprovalPolicy,
    pool: &PgPool,
    actor: &Actor,
    approvals: &approval::Inputs,
    in_force: &InForce,
) -> Result<report::DeletionGate, crate::Error> {
    let name = policy.metadata.name.clone().unwrap_or_default();
    let loosening = deletion_loosens(in_force, &name);
    if loosening.is_empty() {
        return Ok(report::DeletionGate::Proceed(None));
    }
    let uid = policy.metadata.uid.clone().unwrap_or_default();
    let requester = report::annotation(
        policy.metadata.annotations.as_ref(),
        countersign_crds::annotations::REQUESTED_BY,
    );
    let snapshot = serde_json::json!({ "delete": policy.spec });
    let digest = crate::digest::change_digest(&uid, requester.map(String::as_str), &snapshot)?;
    let change = approval::Change {
        kind: KIND,
        object_key: name.clone(),
        uid: &uid,
        annotations: policy.metadata.annotations.as_ref(),
        operation: Operation::Delete,
        digest: &digest,
        snapshot,
        floor: approval::Baseline::Always,
    };
    Ok(match approval::gate(pool, approvals, change, actor).await? {
        Gate::NotRequired => report::DeletionGate::Proceed(None),
        Gate::Approved(approved) => report::DeletionGate::Proceed(Some(approved)),
        Gate::Hold(decision, open_until) => {
            let mut outcome = report::held(&decision, open_until, &digest, Operation::Delete, "");
            outcome.conditions.push(cond(
                READY,
                ConditionStatus::True,
                "DeletionAwaitingApproval",
                format!(
                    "policy {name:?} stays in force until a second person approves its deletion ({})",
                    loosening.join("; ")
                ),
            ));
            report::DeletionGate::Hold(outcome)
        }
    })
}

/// Takes the policy out of force, with its audit entry, in one transaction.
pub async fn cleanup(
    policy: &ApprovalPolicy,
    pool: &PgPool,
    actor: &Actor,
    approved: Option<ApprovedChange>,
) -> Result<(), crate::Error> {
    let who = attribution(policy, actor, String::new(), approved);
    let mut tx = pool.begin().await?;
    let removed: Option<(Uuid, String)> =
        // By name: a policy object re-created after its finalizer was forced
        // off manages the configuration its name holds.
        sqlx::query_as("DELETE FROM approval_policies WHERE name = $1 RETURNING id, digest")
            .bind(policy.metadata.name.as_deref().unwrap_or_default())
            .fetch_optional(&mut *tx)
            .await?;
    if let Some((id, digest)) = removed {
        who.audit(&mut tx, KIND, "delete", id, &digest, serde_json::json!({}))
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> ApprovalPolicySpec {
        serde_norway::from_str(yaml).expect("spec")
    }

    const ARGO: &str = "system:serviceaccount:argocd:argocd-application-controller";

    fn base() -> ApprovalPolicySpec {
        spec(&format!(
            "rules: [{{kinds: [Tenant], operations: [create, update, delete]}}]\nrequestTtlSeconds: 3600\n\
             gitopsServiceAccounts: ['{ARGO}']\n"
        ))
    }

    fn in_force(specs: &[(&str, ApprovalPolicySpec)]) -> InForce {
        specs.iter().map(|(n, s)| (n.to_string(), s.clone())).collect()
    }

    #[test]
    fn tightening_is_in_force_at_once() {
        let now = in_force(&[("p", base())]);
        let mut tighter = base();
        tighter
            .rules
            .push(spec("rules: [{kinds: [IdentityProvider], operations: [create]}]").rules[0].clone());
        tighter.request_ttl_seconds = 600;
        tighter.required_approvals = 2;
        tighter.gitops_service_accounts.clear();
        assert_eq!(plan(&now, "p", &tighter), Plan::Apply(tighter.clone()));
        assert_eq!(plan(&now, "p", &base()), Plan::Unchanged);
    }

    #[test]
    fn every_way_of_loosening_waits() {
        let now = in_force(&[("p", base())]);
        let cases: Vec<(&str, ApprovalPolicySpec, &str)> = vec![
            (
                "a rule narrowed",
                spec(&format!(
                    "rules: [{{kinds: [Tenant], operations: [create, update]}}]\nrequestTtlSeconds: 3600\n\
                     gitopsServiceAccounts: ['{ARGO}']\n"
                )),
                "delete Tenant would no longer need a second person",
            ),
            (
                "a GitOps account added",
                ApprovalPolicySpec {
                    gitops_service_accounts: vec![ARGO.into(), "system:serviceaccount:team:mallory".into()],
                    ..base()
                },
                "system:serviceaccount:team:mallory would be trusted",
            ),
            (
                "a longer TTL",
                ApprovalPolicySpec {
                    request_ttl_seconds: 7200,
                    ..base()
                },
                "requests would stay open 7200 s instead of 3600 s",
            ),
        ];
        for (name, declared, says) in cases {
            match plan(&now, "p", &declared) {
                Plan::Loosen { loosening, .. } => {
                    assert!(loosening.iter().any(|l| l.contains(says)), "{name}: {loosening:?}")
                }
                other => panic!("{name}: {other:?}"),
            }
        }
        let loosening = deletion_loosens(&now, "p");
        assert_eq!(loosening.len(), 3, "{loosening:?}");
    }

    #[test]
    fn a_mixed_change_puts_its_tightening_in_force_and_holds_the_rest() {
        let now = in_force(&[("p", base())]);
        let mixed = ApprovalPolicySpec {
            request_ttl_seconds: 600,
            gitops_service_accounts: vec!["system:serviceaccount:team:mallory".into()],
            ..base()
        };
        let Plan::Loosen {
            interim: Some(interim),
            loosening,
        } = plan(&now, "p", &mixed)
        else {
            panic!("a mixed change loosens");
        };
        assert_eq!(interim.request_ttl_seconds, 600, "the shorter TTL is in force at once");
        assert!(interim.gitops_service_accounts.is_empty(), "only accounts both trust");
        assert_eq!(loosening.len(), 1, "{loosening:?}");
    }

    #[test]
    fn what_is_enforced_is_never_looser_than_what_is_in_force_or_declared() {
        let looser = ApprovalPolicySpec {
            rules: spec("rules: [{kinds: [Tenant], operations: [update]}]").rules,
            request_ttl_seconds: 7200,
            gitops_service_accounts: vec![ARGO.into(), "system:serviceaccount:team:mallory".into()],
            required_approvals: 1,
        };
        let enforced_now = enforced(&in_force(&[("p", base())]), &in_force(&[("p", looser)]));
        let rule = EffectivePolicy::from_specs(&enforced_now).expect("a policy");
        assert!(
            rule.covers("Tenant", Operation::Delete),
            "a declared narrowing is not enforced"
        );
        assert_eq!(rule.request_ttl_seconds, 3600);
        assert_eq!(rule.gitops_accounts, [ARGO.to_string()].into());
        // Declared and not yet processed: enforced at once, without its accounts.
        let fresh = enforced(&InForce::new(), &in_force(&[("p", base())]));
        let rule = EffectivePolicy::from_specs(&fresh).expect("a policy");
        assert!(rule.covers("Tenant", Operation::Create));
        assert!(rule.gitops_accounts.is_empty());
        // In force, object gone: still enforced.
        let gone = enforced(&in_force(&[("p", base())]), &InForce::new());
        assert_eq!(gone, [base()]);
    }

    #[test]
    fn a_new_policy_is_in_force_at_once_except_for_accounts_nobody_trusted() {
        let empty = InForce::new();
        let Plan::Loosen {
            interim: Some(interim),
            loosening,
        } = plan(&empty, "p", &base())
        else {
            panic!("a new GitOps account needs a second person");
        };
        assert!(same_rule(
            &interim,
            &ApprovalPolicySpec {
                gitops_service_accounts: Vec::new(),
                ..base()
            }
        ));
        assert_eq!(loosening, [format!("{ARGO} would be trusted to declare requesters")]);
        // An account another policy in force already trusts is no loosening.
        let now = in_force(&[("p", base())]);
        let second = spec(&format!(
            "rules: [{{kinds: [IdentityProvider], operations: [create]}}]\ngitopsServiceAccounts: ['{ARGO}']\n"
        ));
        assert_eq!(plan(&now, "q", &second), Plan::Apply(second.clone()));
        // A duplicate policy may go without anyone approving.
        let both = in_force(&[("p", base()), ("q", base())]);
        assert!(deletion_loosens(&both, "q").is_empty());
    }
}
