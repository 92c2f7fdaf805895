//! The change-request records in the database: one per change awaiting approval, and its approvals.

use crate::audit::Actor;
use chrono::{DateTime, Utc};
use countersign_crds::approval_policy::Operation;
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use super::*;

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

/// The approvals a request has collected so far, oldest first.
pub(super) async fn collected_approvals(pool: &sqlx::PgPool, request: Uuid) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT approver FROM change_request_approvals WHERE request_id = $1 ORDER BY approved_at, approver",
    )
    .bind(request)
    .fetch_all(pool)
    .await
}

pub(super) async fn collect_approval(pool: &sqlx::PgPool, request: Uuid, approver: &str) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO change_request_approvals (request_id, approver) VALUES ($1, $2) ON CONFLICT DO NOTHING")
        .bind(request)
        .bind(approver)
        .execute(pool)
        .await?;
    Ok(())
}

pub(super) async fn forget_predating_approval(pool: &sqlx::PgPool, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE change_requests SET predating_approval = NULL WHERE id = $1")
        .bind(id)
        .execute(pool)
        .await?;
    Ok(())
}
