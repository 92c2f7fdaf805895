//! The two-person rule (ADR 0004), one implementation for every kind:
//! the pure decision on a change, and the change-request records.

use crate::audit::Actor;
use chrono::{DateTime, Utc};
use countersign_crds::approval_policy::{ApprovalPolicySpec, GuardedKind, Operation};
use sqlx::{Postgres, Transaction};
use std::collections::BTreeSet;
use uuid::Uuid;

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

/// Whether the API server's admission guard is installed as shipped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Guard {
    /// Installed and unchanged.
    Intact,
    /// Missing or altered; the text says what.
    Broken(String),
}

/// An approval or rejection annotation pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mark {
    /// Who (approved-by / rejected-by).
    pub by: String,
    /// The digest they decided on.
    pub digest: String,
}

/// The state of a recorded change request (table `change_requests`).
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct Recorded {
    /// Row id.
    pub id: Uuid,
    /// The digest the request is for.
    pub digest: String,
    /// pending, approved, rejected, expired or superseded.
    pub state: String,
    /// The requester recorded when the digest was first seen.
    pub requester: String,
    /// The account that declared the requester (countersign.dev/declared-by).
    pub declared_by: Option<String>,
    /// Who decided, once decided.
    pub decided_by: Option<String>,
    /// Rejection note.
    pub note: Option<String>,
    /// When the request stops being approvable.
    pub expires_at: DateTime<Utc>,
    /// Who had already approved this digest when the request was recorded:
    /// that approval belongs to an earlier request and does not count.
    pub predating_approval: Option<String>,
}

impl Recorded {
    /// Whether this request still decides on `digest`: it is for that digest
    /// and is open or was refused. An approved request is spent and a
    /// superseded one is over, so a return to their digest is a new request.
    pub fn decides(&self, digest: &str) -> bool {
        self.digest == digest && matches!(self.state.as_str(), "pending" | "rejected" | "expired")
    }
}

/// Everything the decision needs, gathered by the caller.
#[derive(Clone, Debug)]
pub struct Facts<'a> {
    /// The digest of the change.
    pub digest: &'a str,
    /// The requested-by annotation.
    pub requester: Option<&'a str>,
    /// The declared-by annotation the API server stamped.
    pub declarer: Option<&'a str>,
    /// The accounts trusted to declare someone else as requester.
    pub gitops_accounts: &'a BTreeSet<String>,
    /// How many distinct people must approve.
    pub required_approvals: u32,
    /// The approvals this request has collected so far.
    pub collected: &'a [String],
    /// The deployer's username prefixes, dropped before people are compared.
    pub username_prefixes: &'a [String],
    /// The approved-by / approved-digest annotations.
    pub approval: Option<Mark>,
    /// The rejected-by / rejected-digest annotations.
    pub rejection: Option<Mark>,
    /// The optional rejected-reason annotation.
    pub rejection_reason: Option<&'a str>,
    /// The change request recorded for this digest, if any.
    pub recorded: Option<&'a Recorded>,
    /// The admission guard.
    pub guard: &'a Guard,
    /// Now.
    pub now: DateTime<Utc>,
}

/// What to do with a change covered by a policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// No requester declared: stall until one is.
    RequesterUnknown,
    /// The requester was declared by an account not trusted to declare
    /// someone else (or the API server did not stamp who declared it).
    RequesterUnverified {
        /// The declared requester.
        requester: String,
        /// Who declared it, if stamped.
        declarer: Option<String>,
    },
    /// Some, not all, of the required approvals are in.
    PartlyApproved {
        /// The distinct approvers so far.
        approvers: Vec<String>,
        /// How many are required.
        required: u32,
    },
    /// Wait for a second person.
    Awaiting,
    /// An approval exists, but for another digest.
    StaleApproval {
        /// The digest that was approved.
        approved: String,
    },
    /// The approval of this digest was on the object before the request was
    /// recorded: it was given for an earlier request and is spent.
    ApprovalPredatesRequest {
        /// Who had approved.
        approver: String,
    },
    /// The requester approved their own change.
    SelfApprovalIgnored {
        /// Who.
        approver: String,
    },
    /// The change was rejected; it stays rejected until the spec changes.
    Rejected {
        /// Who rejected.
        by: String,
        /// Why, if said.
        reason: Option<String>,
    },
    /// The request expired before anyone approved it.
    Expired,
    /// An approval is present but the admission guard is not intact.
    GuardMissing(String),
    /// Approved: apply it.
    Approved {
        /// Who approved.
        approver: String,
    },
}

impl Decision {
    /// The condition reason for `Approved`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::RequesterUnknown => "RequesterUnknown",
            Self::RequesterUnverified { .. } => "RequesterUnverified",
            Self::Awaiting | Self::PartlyApproved { .. } => "AwaitingApproval",
            Self::StaleApproval { .. } | Self::ApprovalPredatesRequest { .. } => "StaleApproval",
            Self::SelfApprovalIgnored { .. } => "SelfApprovalIgnored",
            Self::Rejected { .. } => "Rejected",
            Self::Expired => "ApprovalExpired",
            Self::GuardMissing(_) => "ApprovalGuardMissing",
            Self::Approved { .. } => "Approved",
        }
    }
}

/// The requester of a change: the `requested-by` annotation, or else the
/// person who declared the change (the API server's stamp). A service
/// account that leaves the requester out names nobody.
pub fn requester_of<'a>(requested_by: Option<&'a str>, declarer: Option<&'a str>) -> Option<&'a str> {
    let named = |v: Option<&'a str>| v.map(str::trim).filter(|v| !v.is_empty());
    named(requested_by).or(named(declarer).filter(|d| !crate::identity::is_system(d)))
}

/// Decides on a change that a policy covers. Pure: every input is in `facts`.
/// `facts.recorded` is the request that decides on this digest (see
/// [`Recorded::decides`]); None when the digest is seen for the first time.
/// People are compared in their normal form ([`crate::identity`]).
pub fn decide(facts: &Facts<'_>) -> Decision {
    let same_person = |a: &str, b: &str| crate::identity::same_person_with(a, b, facts.username_prefixes);
    let Some(requester) = requester_of(facts.requester, facts.declarer) else {
        return Decision::RequesterUnknown;
    };
    // Only a GitOps account may declare someone else as requester.
    let declared_by_requester_or_gitops = facts
        .declarer
        .is_some_and(|d| same_person(d, requester) || facts.gitops_accounts.contains(d.trim()));
    if !declared_by_requester_or_gitops {
        return Decision::RequesterUnverified {
            requester: requester.to_string(),
            declarer: facts.declarer.map(str::to_string),
        };
    }
    let recorded = facts.recorded.filter(|r| r.decides(facts.digest));
    // A decision recorded for this request stands, whatever the annotations say now.
    if let Some(rec) = recorded {
        match rec.state.as_str() {
            "rejected" => {
                return Decision::Rejected {
                    by: rec.decided_by.clone().unwrap_or_default(),
                    reason: rec.note.clone(),
                };
            }
            "expired" => return Decision::Expired,
            _ => {}
        }
    }
    let recorded_requester = recorded.map_or(requester, |r| r.requester.as_str());
    if let Some(rejection) = facts.rejection.as_ref().filter(|r| r.digest == facts.digest) {
        return Decision::Rejected {
            by: rejection.by.clone(),
            reason: facts.rejection_reason.map(str::to_string),
        };
    }
    if recorded.is_some_and(|r| facts.now >= r.expires_at) {
        return Decision::Expired;
    }
    let awaiting = || {
        if facts.collected.is_empty() {
            Decision::Awaiting
        } else {
            Decision::PartlyApproved {
                approvers: facts.collected.to_vec(),
                required: facts.required_approvals,
            }
        }
    };
    let Some(approval) = &facts.approval else {
        return awaiting();
    };
    if approval.digest != facts.digest {
        return Decision::StaleApproval {
            approved: approval.digest.clone(),
        };
    }
    // Approvals are given for a digest shown as pending, so one that is
    // already there when the request is first recorded, or that was there
    // then and never went away, was given for an earlier request.
    let predates = match recorded {
        None => true,
        Some(rec) => rec.predating_approval.as_deref() == Some(approval.by.as_str()),
    };
    if predates {
        return Decision::ApprovalPredatesRequest {
            approver: approval.by.clone(),
        };
    }
    if let Guard::Broken(why) = facts.guard {
        return Decision::GuardMissing(why.clone());
    }
    let declarer = facts.declarer.unwrap_or_default();
    if [recorded_requester, requester, declarer]
        .iter()
        .any(|who| same_person(&approval.by, who))
    {
        return Decision::SelfApprovalIgnored {
            approver: approval.by.clone(),
        };
    }
    let mut approvers = facts.collected.to_vec();
    if !approvers.iter().any(|a| same_person(a, &approval.by)) {
        approvers.push(approval.by.clone());
    }
    if (approvers.len() as u32) < facts.required_approvals {
        return Decision::PartlyApproved {
            approvers,
            required: facts.required_approvals,
        };
    }
    Decision::Approved {
        approver: approvers.join(", "),
    }
}

/// The newest change request of this object, if any: the one that decides
/// on its current digest when [`Recorded::decides`] says so.
pub async fn latest<'e, E: sqlx::PgExecutor<'e>>(
    executor: E,
    kind: &str,
    uid: &str,
) -> Result<Option<Recorded>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, digest, state, requester, declared_by, decided_by, note, expires_at, predating_approval FROM change_requests
          WHERE kind = $1 AND object_uid = $2 ORDER BY created_at DESC LIMIT 1",
    )
    .bind(kind)
    .bind(uid)
    .fetch_optional(executor)
    .await
}

/// A change waiting to be recorded.
#[derive(Clone, Debug)]
pub struct NewRequest {
    /// Kind.
    pub kind: String,
    /// namespace/name.
    pub object_key: String,
    /// uid.
    pub uid: String,
    /// create, update or delete.
    pub operation: Operation,
    /// Digest.
    pub digest: String,
    /// The spec as it would be applied.
    pub snapshot: serde_json::Value,
    /// Requester.
    pub requester: String,
    /// The account that declared the requester.
    pub declared_by: Option<String>,
    /// Open for this long.
    pub ttl_seconds: i64,
    /// Who had already approved this digest when it was first seen.
    pub predating_approval: Option<String>,
}

/// An approved change, applied in the same transaction as its write.
#[derive(Clone, Debug)]
pub struct ApprovedChange {
    /// The request.
    pub request: NewRequest,
    /// Every distinct person whose approval it carries.
    pub approvers: Vec<String>,
    /// Who approved it.
    pub approver: String,
}

/// Records a request the first time its digest is seen (or seen again after
/// its last request was spent or superseded) and marks the object's other
/// open requests superseded. Returns the open request for the digest.
pub async fn record(tx: &mut Transaction<'_, Postgres>, req: &NewRequest) -> Result<Recorded, sqlx::Error> {
    sqlx::query(
        "UPDATE change_requests SET state = 'superseded', decided_at = now()
          WHERE kind = $1 AND object_uid = $2 AND digest <> $3 AND state = 'pending'",
    )
    .bind(&req.kind)
    .bind(&req.uid)
    .bind(&req.digest)
    .execute(&mut **tx)
    .await?;
    sqlx::query_as(
        "INSERT INTO change_requests (kind, object_key, object_uid, operation, digest, spec_snapshot, requester, expires_at,
                                      predating_approval, declared_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7, now() + make_interval(secs => $8), $9, $10)
         ON CONFLICT (kind, object_uid, digest) WHERE state = 'pending' DO UPDATE SET state = change_requests.state
         RETURNING id, digest, state, requester, declared_by, decided_by, note, expires_at, predating_approval",
    )
    .bind(&req.kind)
    .bind(&req.object_key)
    .bind(&req.uid)
    .bind(op_name(req.operation))
    .bind(&req.digest)
    .bind(&req.snapshot)
    .bind(&req.requester)
    .bind(req.ttl_seconds as f64)
    .bind(&req.predating_approval)
    .bind(&req.declared_by)
    .fetch_one(&mut **tx)
    .await
}

/// Marks the object's open requests superseded: its spec moved on before
/// reaching the gate (waiting for a dependency, invalid, refused), so no
/// request for an older digest may be approved any more. Writes nothing when
/// none is open.
pub async fn supersede_open(pool: &sqlx::PgPool, kind: &str, uid: &str) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE change_requests SET state = 'superseded', decided_at = now()
          WHERE kind = $1 AND object_uid = $2 AND state = 'pending'",
    )
    .bind(kind)
    .bind(uid)
    .execute(pool)
    .await?
    .rows_affected())
}

/// Moves a pending request to a final state.
pub async fn settle(
    tx: &mut Transaction<'_, Postgres>,
    id: Uuid,
    state: &str,
    decided_by: Option<&str>,
    note: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE change_requests SET state = $2, decided_by = $3, note = $4, decided_at = now()
          WHERE id = $1 AND state = 'pending'",
    )
    .bind(id)
    .bind(state)
    .bind(decided_by)
    .bind(note)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Records a request that is not applied now, settling it when the decision
/// is final (rejected, expired), with an audit entry for a settled decision.
/// One transaction; writes nothing when the request is already recorded in
/// the same state.
pub async fn record_decision(
    pool: &sqlx::PgPool,
    req: &NewRequest,
    existing: Option<&Recorded>,
    settle_as: Option<(&str, Option<&str>, Option<&str>)>,
    actor: &Actor,
) -> Result<(), crate::Error> {
    let existing = existing.filter(|r| r.decides(&req.digest));
    let unchanged = match (existing, settle_as) {
        (Some(rec), None) => rec.state == "pending",
        (Some(rec), Some((state, _, _))) => rec.state == state,
        (None, _) => false,
    };
    if unchanged {
        return Ok(());
    }
    let mut tx = pool.begin().await?;
    let rec = record(&mut tx, req).await?;
    if let Some((state, decided_by, note)) = settle_as {
        settle(&mut tx, rec.id, state, decided_by, note).await?;
        let mut entry = crate::audit::Entry::now(&req.kind, &req.object_key, state, actor.name());
        entry.requester = Some(req.requester.clone());
        entry.approver = decided_by.map(str::to_string);
        entry.digest = Some(req.digest.clone());
        entry.detail = serde_json::json!({"change_request": rec.id, "operation": op_name(req.operation)});
        if let (Some(declared_by), serde_json::Value::Object(detail)) = (&req.declared_by, &mut entry.detail) {
            detail.insert("declared_by".into(), serde_json::json!(declared_by));
        }
        crate::audit::append(&mut tx, actor.key(), &entry).await?;
    }
    tx.commit().await?;
    Ok(())
}

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

/// The approvals a request has collected so far, oldest first.
async fn collected_approvals(pool: &sqlx::PgPool, request: Uuid) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT approver FROM change_request_approvals WHERE request_id = $1 ORDER BY approved_at, approver",
    )
    .bind(request)
    .fetch_all(pool)
    .await
}

async fn collect_approval(pool: &sqlx::PgPool, request: Uuid, approver: &str) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO change_request_approvals (request_id, approver) VALUES ($1, $2) ON CONFLICT DO NOTHING")
        .bind(request)
        .bind(approver)
        .execute(pool)
        .await?;
    Ok(())
}

async fn forget_predating_approval(pool: &sqlx::PgPool, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE change_requests SET predating_approval = NULL WHERE id = $1")
        .bind(id)
        .execute(pool)
        .await?;
    Ok(())
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

/// The `Approved` condition describing a decision.
pub fn condition(decision: &Decision, digest: &str) -> crate::conditions::DesiredCondition {
    use countersign_crds::ConditionStatus::{False, True};
    use countersign_crds::status::APPROVED;
    let short = &digest[..digest.len().min(12)];
    let message = match decision {
        Decision::RequesterUnknown => {
            "a policy requires approval but metadata.annotations[countersign.dev/requested-by] is not set".to_string()
        }
        Decision::RequesterUnverified { requester, declarer } => match declarer {
            Some(declarer) => format!(
                "metadata.annotations[countersign.dev/requested-by] names {requester} but {declarer} declared it, \
                 and only a GitOps account an ApprovalPolicy lists may declare someone else; nothing is recorded \
                 or applied until the requester is the person who makes the change"
            ),
            None => format!(
                "metadata.annotations[countersign.dev/requested-by] names {requester} but the API server did not \
                 stamp countersign.dev/declared-by (is the admission policy countersign-stamp-declarer installed?); \
                 re-apply the change so who declared it is known"
            ),
        },
        Decision::PartlyApproved { approvers, required } => format!(
            "change {short} has {} of {required} approvals ({}); another person must approve digest {digest}",
            approvers.len(),
            approvers.join(", ")
        ),
        Decision::Awaiting => format!("change {short} awaits a second person's approval (digest {digest})"),
        Decision::StaleApproval { approved } => {
            format!("the approval was for digest {approved}, not the current {digest}; approve the current digest")
        }
        Decision::ApprovalPredatesRequest { approver } => format!(
            "the approval by {approver} was given for an earlier request of this configuration and is spent; \
             approve digest {digest} again"
        ),
        Decision::SelfApprovalIgnored { approver } => {
            format!("{approver} requested this change and cannot approve it; another person must")
        }
        Decision::Rejected { by, reason } => match reason {
            Some(r) => format!("rejected by {by}: {r}; change the spec to make a new request"),
            None => format!("rejected by {by}; change the spec to make a new request"),
        },
        Decision::Expired => "the change request expired before it was approved; change the spec to ask again".into(),
        Decision::GuardMissing(why) => {
            format!("approval not honoured: the admission guard is not installed as shipped ({why})")
        }
        Decision::Approved { approver } => format!("approved by {approver}"),
    };
    let status = if matches!(decision, Decision::Approved { .. }) {
        True
    } else {
        False
    };
    crate::conditions::DesiredCondition::new(APPROVED, status, decision.reason(), message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    fn rec(state: &str, requester: &str, expires_in: i64) -> Recorded {
        Recorded {
            id: Uuid::nil(),
            digest: "D".into(),
            state: state.into(),
            requester: requester.into(),
            declared_by: Some(requester.into()),
            decided_by: Some("bob".into()),
            note: Some("no".into()),
            expires_at: Utc::now() + Duration::seconds(expires_in),
            predating_approval: None,
        }
    }

    fn mark(by: &str, digest: &str) -> Option<Mark> {
        Some(Mark {
            by: by.into(),
            digest: digest.into(),
        })
    }

    #[test]
    fn decision_table() {
        let intact = Guard::Intact;
        let broken = Guard::Broken("policy missing".into());
        let pending = rec("pending", "alice", 3600);
        let expired_pending = rec("pending", "alice", -1);
        let rejected = rec("rejected", "alice", 3600);
        let approved = rec("approved", "alice", 3600);
        let expired = rec("expired", "alice", -1);
        let superseded = rec("superseded", "alice", 3600);
        let predated = Recorded {
            predating_approval: Some("bob".into()),
            ..rec("pending", "alice", 3600)
        };
        type Case<'a> = (
            &'a str,
            Option<&'a str>,
            Option<Mark>,
            Option<Mark>,
            Option<&'a Recorded>,
            &'a Guard,
            Decision,
        );
        let cases: Vec<Case> = vec![
            (
                "no requester",
                None,
                mark("bob", "D"),
                None,
                None,
                &intact,
                Decision::RequesterUnknown,
            ),
            (
                "nothing yet",
                Some("alice"),
                None,
                None,
                Some(&pending),
                &intact,
                Decision::Awaiting,
            ),
            (
                "first sight",
                Some("alice"),
                None,
                None,
                None,
                &intact,
                Decision::Awaiting,
            ),
            (
                "second person approves",
                Some("alice"),
                mark("bob", "D"),
                None,
                Some(&pending),
                &intact,
                Decision::Approved { approver: "bob".into() },
            ),
            (
                "approval for another digest",
                Some("alice"),
                mark("bob", "OLD"),
                None,
                Some(&pending),
                &intact,
                Decision::StaleApproval { approved: "OLD".into() },
            ),
            (
                "self approval",
                Some("alice"),
                mark("alice", "D"),
                None,
                Some(&pending),
                &intact,
                Decision::SelfApprovalIgnored {
                    approver: "alice".into(),
                },
            ),
            (
                "guard missing",
                Some("alice"),
                mark("bob", "D"),
                None,
                Some(&pending),
                &broken,
                Decision::GuardMissing("policy missing".into()),
            ),
            (
                "guard missing without approval just waits",
                Some("alice"),
                None,
                None,
                Some(&pending),
                &broken,
                Decision::Awaiting,
            ),
            (
                "expired while pending",
                Some("alice"),
                mark("bob", "D"),
                None,
                Some(&expired_pending),
                &intact,
                Decision::Expired,
            ),
            (
                "expired stays expired",
                Some("alice"),
                mark("bob", "D"),
                None,
                Some(&expired),
                &intact,
                Decision::Expired,
            ),
            (
                "rejection annotation",
                Some("alice"),
                None,
                mark("bob", "D"),
                Some(&pending),
                &intact,
                Decision::Rejected {
                    by: "bob".into(),
                    reason: None,
                },
            ),
            (
                "recorded rejection sticks after the annotation is removed, approval or not",
                Some("alice"),
                mark("carol", "D"),
                None,
                Some(&rejected),
                &intact,
                Decision::Rejected {
                    by: "bob".into(),
                    reason: Some("no".into()),
                },
            ),
            (
                "rejection of another digest does not count",
                Some("alice"),
                None,
                mark("bob", "OLD"),
                Some(&pending),
                &intact,
                Decision::Awaiting,
            ),
            (
                "a spent approval does not approve a return to its digest",
                Some("alice"),
                mark("bob", "D"),
                None,
                Some(&approved),
                &intact,
                Decision::ApprovalPredatesRequest { approver: "bob".into() },
            ),
            (
                "a spent request with no approval on the object waits for a new one",
                Some("alice"),
                None,
                None,
                Some(&approved),
                &broken,
                Decision::Awaiting,
            ),
            (
                "an approval already there when the digest is first seen is not for this request",
                Some("alice"),
                mark("bob", "D"),
                None,
                None,
                &intact,
                Decision::ApprovalPredatesRequest { approver: "bob".into() },
            ),
            (
                "a superseded request can never be approved",
                Some("alice"),
                mark("bob", "D"),
                None,
                Some(&superseded),
                &intact,
                Decision::ApprovalPredatesRequest { approver: "bob".into() },
            ),
            (
                "the predating approval never went away",
                Some("alice"),
                mark("bob", "D"),
                None,
                Some(&predated),
                &intact,
                Decision::ApprovalPredatesRequest { approver: "bob".into() },
            ),
            (
                "another person's approval of a predated request counts",
                Some("alice"),
                mark("dave", "D"),
                None,
                Some(&predated),
                &intact,
                Decision::Approved {
                    approver: "dave".into(),
                },
            ),
        ];
        for (name, requester, approval, rejection, recorded, guard, want) in cases {
            let no_accounts = BTreeSet::new();
            let facts = Facts {
                digest: "D",
                requester,
                declarer: requester,
                gitops_accounts: &no_accounts,
                required_approvals: 1,
                collected: &[],
                username_prefixes: &[],
                approval,
                rejection,
                rejection_reason: None,
                recorded,
                guard,
                now: Utc::now(),
            };
            assert_eq!(decide(&facts), want, "{name}");
        }
    }

    fn facts<'a>(
        requester: Option<&'a str>,
        declarer: Option<&'a str>,
        accounts: &'a BTreeSet<String>,
        approval: Option<Mark>,
        recorded: Option<&'a Recorded>,
    ) -> Facts<'a> {
        Facts {
            digest: "D",
            requester,
            declarer,
            gitops_accounts: accounts,
            required_approvals: 1,
            collected: &[],
            username_prefixes: &[],
            approval,
            rejection: None,
            rejection_reason: None,
            recorded,
            guard: &Guard::Intact,
            now: Utc::now(),
        }
    }

    #[test]
    fn only_a_gitops_account_may_declare_someone_else() {
        let argo = "system:serviceaccount:argocd:argocd-application-controller";
        let accounts: BTreeSet<String> = [argo.to_string()].into();
        let none = BTreeSet::new();
        let pending = rec("pending", "carol", 3600);
        let forged = decide(&facts(
            Some("carol"),
            Some("mallory"),
            &accounts,
            mark("mallory", "D"),
            Some(&pending),
        ));
        assert_eq!(
            forged,
            Decision::RequesterUnverified {
                requester: "carol".into(),
                declarer: Some("mallory".into())
            }
        );
        let unstamped = decide(&facts(Some("carol"), None, &accounts, None, Some(&pending)));
        assert!(matches!(
            unstamped,
            Decision::RequesterUnverified { declarer: None, .. }
        ));
        let by_gitops = decide(&facts(
            Some("carol"),
            Some(argo),
            &accounts,
            mark("bob", "D"),
            Some(&pending),
        ));
        assert_eq!(by_gitops, Decision::Approved { approver: "bob".into() });
        let untrusted_account = decide(&facts(
            Some("carol"),
            Some(argo),
            &none,
            mark("bob", "D"),
            Some(&pending),
        ));
        assert!(matches!(untrusted_account, Decision::RequesterUnverified { .. }));
        // A person who leaves the requester out is the requester.
        let alice = rec("pending", "alice", 3600);
        assert_eq!(requester_of(None, Some("alice")), Some("alice"));
        assert_eq!(
            requester_of(Some(" "), Some(argo)),
            None,
            "a service account names nobody"
        );
        let own = decide(&facts(None, Some("alice"), &none, mark("alice", "D"), Some(&alice)));
        assert_eq!(
            own,
            Decision::SelfApprovalIgnored {
                approver: "alice".into()
            }
        );
    }

    #[test]
    fn one_person_under_two_spellings_cannot_approve_their_own_change() {
        let none = BTreeSet::new();
        let pending = rec("pending", "carol@example.com", 3600);
        for spelling in [
            "Carol@Example.com",
            "oidc:carol@example.com",
            "https://idp.example#CAROL@example.com",
        ] {
            let decision = decide(&facts(
                Some("carol@example.com"),
                Some("carol@example.com"),
                &none,
                mark(spelling, "D"),
                Some(&pending),
            ));
            assert_eq!(
                decision,
                Decision::SelfApprovalIgnored {
                    approver: spelling.into()
                },
                "{spelling}"
            );
        }
    }

    #[test]
    fn the_deployers_username_prefixes_are_dropped_before_comparing() {
        let none = BTreeSet::new();
        let pending = rec("pending", "carol@example.com", 3600);
        let prefixes = ["corp-".to_string()];
        let mut f = facts(
            Some("carol@example.com"),
            Some("carol@example.com"),
            &none,
            mark("corp-carol@example.com", "D"),
            Some(&pending),
        );
        assert!(
            matches!(decide(&f), Decision::Approved { .. }),
            "unknown prefix: another name"
        );
        f.username_prefixes = &prefixes;
        assert_eq!(
            decide(&f),
            Decision::SelfApprovalIgnored {
                approver: "corp-carol@example.com".into()
            }
        );
    }

    #[test]
    fn several_approvals_are_collected_from_distinct_people() {
        let none = BTreeSet::new();
        let pending = rec("pending", "carol", 3600);
        let mut f = facts(Some("carol"), Some("carol"), &none, mark("bob", "D"), Some(&pending));
        f.required_approvals = 2;
        assert_eq!(
            decide(&f),
            Decision::PartlyApproved {
                approvers: vec!["bob".into()],
                required: 2
            }
        );
        let bob = ["bob".to_string()];
        f.collected = &bob;
        assert_eq!(
            decide(&f),
            Decision::PartlyApproved {
                approvers: vec!["bob".into()],
                required: 2
            },
            "the same person twice counts once"
        );
        f.approval = mark("Bob", "D");
        assert!(
            matches!(decide(&f), Decision::PartlyApproved { .. }),
            "nor under another spelling"
        );
        f.approval = mark("dave", "D");
        assert_eq!(
            decide(&f),
            Decision::Approved {
                approver: "bob, dave".into()
            }
        );
        f.approval = None;
        assert!(
            matches!(decide(&f), Decision::PartlyApproved { .. }),
            "one of two shows as such"
        );
    }

    #[test]
    fn held_changes_are_looked_at_again_when_they_expire() {
        let now = Utc::now();
        let in_an_hour = Some(now + Duration::seconds(3600));
        let wait = recheck_after(&Decision::Awaiting, in_an_hour, now).expect("a timed recheck");
        assert!(wait >= std::time::Duration::from_secs(3600) && wait <= std::time::Duration::from_secs(3602));
        let past = recheck_after(&Decision::Awaiting, Some(now - Duration::seconds(5)), now).expect("due");
        assert!(past <= std::time::Duration::from_secs(1));
        let guard = recheck_after(&Decision::GuardMissing("x".into()), in_an_hour, now);
        assert_eq!(guard, Some(std::time::Duration::from_secs(15)));
        assert_eq!(recheck_after(&Decision::Expired, None, now), None);
    }

    fn off_or(inputs: &Inputs) -> Inputs {
        Inputs {
            floor: false,
            ..inputs.clone()
        }
    }

    #[test]
    fn policies_add_to_the_floor_but_cannot_remove_it() {
        let spec = |yaml: &str| -> ApprovalPolicySpec { serde_norway::from_str(yaml).expect("spec") };
        let deletes = spec("rules: [{kinds: [Tenant], operations: [delete]}]\nrequiredApprovals: 2\n");
        let floor_only = Inputs {
            floor: true,
            ..Inputs::default()
        };
        let idp = |inputs: &Inputs, op| inputs.coverage("IdentityProvider", op, Baseline::Floor);
        assert!(idp(&floor_only, Operation::Create).is_some());
        assert!(idp(&floor_only, Operation::Update).is_some());
        assert!(
            idp(&floor_only, Operation::Delete).is_none(),
            "the floor covers what goes live"
        );
        assert!(
            floor_only
                .coverage("GroupMapping", Operation::Create, Baseline::PoliciesOnly)
                .is_none()
        );
        assert!(
            off_or(&floor_only)
                .coverage("ApprovalPolicy", Operation::Delete, Baseline::Always)
                .is_some()
        );
        let with_policy = Inputs {
            policy: EffectivePolicy::from_specs([&deletes]),
            floor: true,
            ..Inputs::default()
        };
        let held = idp(&with_policy, Operation::Create).expect("a policy not naming providers keeps the floor");
        assert_eq!(held.required_approvals, 2, "and asks as much as the policies do");
        let off = Inputs::default();
        assert!(idp(&off, Operation::Create).is_none());
    }

    #[test]
    fn policies_fold_into_one() {
        let spec = |yaml: &str| -> ApprovalPolicySpec { serde_norway::from_str(yaml).expect("spec") };
        let a = spec("rules: [{kinds: [Tenant], operations: [delete]}]\nrequestTtlSeconds: 600\n");
        let b = spec("rules: [{kinds: [IdentityProvider, Tenant], operations: [create]}]\n");
        let p = EffectivePolicy::from_specs([&a, &b]).expect("policy");
        assert!(p.covers("Tenant", Operation::Delete));
        assert!(p.covers("Tenant", Operation::Create));
        assert!(p.covers("IdentityProvider", Operation::Create));
        assert!(!p.covers("Tenant", Operation::Update));
        assert_eq!(p.request_ttl_seconds, 600);
        assert_eq!(EffectivePolicy::from_specs([]), None);
    }
}
