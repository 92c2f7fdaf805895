//! The gate every kind's write passes: the facts gathered, the decision taken, an approved change carried out.

use crate::audit::Actor;
use chrono::{DateTime, Utc};
use countersign_crds::approval_policy::Operation;
use sqlx::{Postgres, Transaction};
use std::collections::BTreeSet;
use uuid::Uuid;

use super::*;

/// What the controller knows about approvals for this reconcile.
#[derive(Clone, Debug, Default)]
pub struct Inputs {
    /// The union of the ApprovalPolicies, None without any.
    pub policy: Option<EffectivePolicy>,
    /// The state of the admission guard (checked by the operator).
    pub guard: Option<Guard>,
    /// The deployer's username prefixes (operator configuration), dropped
    /// before people are compared.
    pub username_prefixes: Vec<String>,
    /// Whether the approval floor is on (operator configuration): a new or
    /// changed IdentityProvider and a GroupMapping granting a platform-wide
    /// role always wait for a second person, policy or not.
    pub floor: bool,
}

impl Inputs {
    /// What the rule asks of `operation` on `kind`; None when nobody need
    /// approve. `baseline` says what covers the change besides the policies
    /// (policies add to the floor, they cannot remove it).
    pub fn coverage(&self, kind: &str, operation: Operation, baseline: Baseline) -> Option<Coverage> {
        let by_policy = self.policy.as_ref().filter(|p| p.covers(kind, operation));
        let by_floor = match baseline {
            Baseline::PoliciesOnly => false,
            Baseline::Floor => self.floor && operation != Operation::Delete,
            Baseline::Always => true,
        };
        match (by_policy, by_floor) {
            (Some(p), _) => Some(Coverage {
                ttl_seconds: p.request_ttl_seconds,
                required_approvals: p.required_approvals,
            }),
            (None, true) => Some(Coverage {
                ttl_seconds: self.policy.as_ref().map_or(FLOOR_REQUEST_TTL_SECONDS, |p| {
                    p.request_ttl_seconds.min(FLOOR_REQUEST_TTL_SECONDS)
                }),
                required_approvals: self.policy.as_ref().map_or(1, |p| p.required_approvals),
            }),
            (None, false) => None,
        }
    }

    /// Whether the rule may apply to an object at all (so an Approved
    /// condition it carries stays).
    pub fn may_apply(&self) -> bool {
        self.policy.is_some() || self.floor
    }

    /// The accounts trusted to declare another person as requester.
    pub fn gitops_accounts(&self) -> BTreeSet<String> {
        self.policy
            .as_ref()
            .map(|p| p.gitops_accounts.clone())
            .unwrap_or_default()
    }
}

/// The result of passing a change through the two-person rule.
#[derive(Clone, Debug)]
pub enum Gate {
    /// No policy covers the change: apply it.
    NotRequired,
    /// Approved: apply it together with this approval.
    Approved(ApprovedChange),
    /// Do not apply; report this decision. The time is when an open request
    /// expires, so the caller can look again then without polling.
    Hold(Decision, Option<DateTime<Utc>>),
}

/// The object facts a gate needs.
#[derive(Clone, Debug)]
pub struct Change<'a> {
    /// Kind.
    pub kind: &'a str,
    /// namespace/name.
    pub object_key: String,
    /// uid.
    pub uid: &'a str,
    /// The object's annotations.
    pub annotations: Option<&'a std::collections::BTreeMap<String, String>>,
    /// create, update or delete.
    pub operation: Operation,
    /// Digest of the change.
    pub digest: &'a str,
    /// What would be applied.
    pub snapshot: serde_json::Value,
    /// What covers this change besides the policies.
    pub floor: Baseline,
}

/// Passes a change through the two-person rule, recording the change request.
pub async fn gate(
    pool: &sqlx::PgPool,
    inputs: &Inputs,
    change: Change<'_>,
    actor: &Actor,
) -> Result<Gate, crate::Error> {
    use countersign_crds::annotations as a;
    let Some(coverage) = inputs.coverage(change.kind, change.operation, change.floor) else {
        return Ok(Gate::NotRequired);
    };
    let get = |k: &str| change.annotations.and_then(|m| m.get(k)).map(String::as_str);
    let pair = |by: &str, digest: &str| match (get(by), get(digest)) {
        (Some(by), Some(digest)) => Some(Mark {
            by: by.into(),
            digest: digest.into(),
        }),
        _ => None,
    };
    let approval = pair(a::APPROVED_BY, a::APPROVED_DIGEST);
    let recorded = latest(pool, change.kind, change.uid)
        .await?
        .filter(|r| r.decides(change.digest));
    // The approval that predated the request has been removed: from now on a
    // new approval by the same person is a fresh one.
    let recorded = match recorded {
        Some(rec)
            if rec.predating_approval.is_some() && approval.as_ref().is_none_or(|m| m.digest != change.digest) =>
        {
            forget_predating_approval(pool, rec.id).await?;
            Some(Recorded {
                predating_approval: None,
                ..rec
            })
        }
        other => other,
    };
    let collected = match &recorded {
        Some(rec) if coverage.required_approvals > 1 => collected_approvals(pool, rec.id).await?,
        _ => Vec::new(),
    };
    let intact = Guard::Intact;
    let gitops_accounts = inputs.gitops_accounts();
    let declarer = get(a::DECLARED_BY);
    let decision = decide(&Facts {
        digest: change.digest,
        requester: get(a::REQUESTED_BY),
        declarer,
        gitops_accounts: &gitops_accounts,
        required_approvals: coverage.required_approvals,
        collected: &collected,
        username_prefixes: &inputs.username_prefixes,
        approval: approval.clone(),
        rejection: pair(a::REJECTED_BY, a::REJECTED_DIGEST),
        rejection_reason: get(a::REJECTED_REASON),
        recorded: recorded.as_ref(),
        guard: inputs.guard.as_ref().unwrap_or(&intact),
        now: Utc::now(),
    });
    // A change nobody (verifiably) asked for is not recorded as a request.
    let requester = match (&decision, requester_of(get(a::REQUESTED_BY), declarer)) {
        (Decision::RequesterUnknown | Decision::RequesterUnverified { .. }, _) | (_, None) => {
            return Ok(Gate::Hold(decision, None));
        }
        (_, Some(requester)) => requester,
    };
    let request = NewRequest {
        kind: change.kind.into(),
        object_key: change.object_key,
        uid: change.uid.into(),
        operation: change.operation,
        digest: change.digest.into(),
        snapshot: change.snapshot,
        requester: requester.into(),
        declared_by: declarer.map(str::to_string),
        ttl_seconds: coverage.ttl_seconds,
        predating_approval: approval
            .as_ref()
            .filter(|m| m.digest == change.digest)
            .map(|m| m.by.clone()),
    };
    let settle_as = match &decision {
        Decision::Approved { approver } => {
            let mut approvers = collected;
            if let Some(mark) = &approval
                && !approvers
                    .iter()
                    .any(|a| crate::identity::same_person_with(a, &mark.by, &inputs.username_prefixes))
            {
                approvers.push(mark.by.clone());
            }
            return Ok(Gate::Approved(ApprovedChange {
                request,
                approvers,
                approver: approver.clone(),
            }));
        }
        Decision::Rejected { by, reason } => Some(("rejected", Some(by.as_str()), reason.as_deref())),
        Decision::Expired => Some(("expired", None, None)),
        _ => None,
    };
    let open_until = settle_as.is_none().then(|| {
        recorded.as_ref().map_or_else(
            || Utc::now() + chrono::Duration::seconds(request.ttl_seconds),
            |r| r.expires_at,
        )
    });
    record_decision(pool, &request, recorded.as_ref(), settle_as, actor).await?;
    // One more of several approvals: kept, so the next person may approve.
    if let (Decision::PartlyApproved { .. }, Some(rec), Some(mark)) = (&decision, &recorded, &approval)
        && !collected
            .iter()
            .any(|a| crate::identity::same_person_with(a, &mark.by, &inputs.username_prefixes))
    {
        collect_approval(pool, rec.id, &mark.by).await?;
    }
    Ok(Gate::Hold(decision, open_until))
}

/// How long to wait before looking at a held change again by itself: until
/// its request expires (so expiry shows without anyone touching the object),
/// or sooner while an approval waits for the admission guard to be restored.
pub fn recheck_after(
    decision: &Decision,
    open_until: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Option<std::time::Duration> {
    const GUARD_RECHECK: std::time::Duration = std::time::Duration::from_secs(15);
    let until_expiry = open_until.map(|t| (t - now).to_std().unwrap_or_default() + std::time::Duration::from_secs(1));
    match decision {
        Decision::GuardMissing(_) => Some(until_expiry.map_or(GUARD_RECHECK, |d| d.min(GUARD_RECHECK))),
        _ => until_expiry,
    }
}

/// Marks the approved change request approved inside the write's
/// transaction, names the approver in the write's audit entry and adds the
/// change request to its detail. The request must still be open and unexpired
/// when the transaction runs (an approval is honoured once, before expiry);
/// otherwise nothing is written and the next pass decides again.
pub async fn carry_out(
    tx: &mut Transaction<'_, Postgres>,
    approved: Option<&ApprovedChange>,
    entry: &mut crate::audit::Entry,
) -> Result<(), crate::Error> {
    if let Some(approved) = approved {
        let request: Option<Uuid> = sqlx::query_scalar(
            "UPDATE change_requests SET state = 'approved', decided_by = $4, decided_at = now()
              WHERE kind = $1 AND object_uid = $2 AND digest = $3 AND state = 'pending' AND expires_at > now()
              RETURNING id",
        )
        .bind(&approved.request.kind)
        .bind(&approved.request.uid)
        .bind(&approved.request.digest)
        .bind(&approved.approver)
        .fetch_optional(&mut **tx)
        .await?;
        let Some(request) = request else {
            return Err(crate::Error::Raced("the approved change request".into()));
        };
        for approver in &approved.approvers {
            sqlx::query(
                "INSERT INTO change_request_approvals (request_id, approver) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            )
            .bind(request)
            .bind(approver)
            .execute(&mut **tx)
            .await?;
        }
        entry.approver = Some(approved.approver.clone());
        // Added to whatever the write's own entry says, never replacing it.
        if !entry.detail.is_object() {
            entry.detail = serde_json::json!({});
        }
        if let serde_json::Value::Object(detail) = &mut entry.detail {
            detail.insert("change_request".into(), serde_json::json!(request));
            detail.insert("approvers".into(), serde_json::json!(approved.approvers));
        }
    }
    Ok(())
}
