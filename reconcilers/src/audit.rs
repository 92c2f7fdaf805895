//! The append-only, hash-chained audit log (DESIGN.md §3). Entries are written
//! in the same transaction as the change they record; `verify` recomputes the
//! chain and reports the first broken link.

use crate::digest::{canonical_json, sha256_hex};
use chrono::{DateTime, SubsecRound, Utc};
use serde::Serialize;
use sqlx::{PgPool, Postgres, Row, Transaction};
use uuid::Uuid;

/// The hash the first entry chains from.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Serialises writers of the chain so each entry links to its true predecessor.
const CHAIN_LOCK: i64 = 0x436f_756e_7465_7273; // "Counters"

/// One audit entry, before it is chained.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Entry {
    /// When the change happened (microsecond precision, as stored).
    pub at: DateTime<Utc>,
    /// The kind of object changed.
    pub kind: String,
    /// namespace/name (or name for cluster-scoped kinds).
    pub object_key: String,
    /// The row changed, if any.
    pub row_id: Option<Uuid>,
    /// What happened: create, update, correct-drift, adopt, delete, orphan, ….
    pub action: String,
    /// Who wrote it (the operator's identity).
    pub actor: String,
    /// Who asked for the change.
    pub requester: Option<String>,
    /// Who approved it, under the two-person rule.
    pub approver: Option<String>,
    /// Digest of the configuration written.
    pub digest: Option<String>,
    /// Additional structured detail (never secrets).
    pub detail: serde_json::Value,
}

impl Entry {
    /// An entry stamped now.
    pub fn now(kind: &str, object_key: &str, action: &str, actor: &str) -> Self {
        Self {
            at: Utc::now().trunc_subsecs(6),
            kind: kind.into(),
            object_key: object_key.into(),
            row_id: None,
            action: action.into(),
            actor: actor.into(),
            requester: None,
            approver: None,
            digest: None,
            detail: serde_json::json!({}),
        }
    }

    /// The link hash: SHA-256 over the previous hash and this entry's canonical JSON.
    pub fn chain_hash(&self, prev_hash: &str) -> Result<String, serde_json::Error> {
        let body = canonical_json(self)?;
        Ok(sha256_hex(format!("{prev_hash}\n{body}").as_bytes()))
    }
}

/// Appends an entry inside the caller's transaction.
pub async fn append(tx: &mut Transaction<'_, Postgres>, entry: &Entry) -> Result<String, crate::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(CHAIN_LOCK)
        .execute(&mut **tx)
        .await?;
    let prev: Option<String> = sqlx::query_scalar("SELECT hash FROM audit_log ORDER BY seq DESC LIMIT 1")
        .fetch_optional(&mut **tx)
        .await?;
    let prev = prev.unwrap_or_else(|| GENESIS.to_string());
    let hash = entry.chain_hash(&prev)?;
    sqlx::query(
        "INSERT INTO audit_log (at, kind, object_key, row_id, action, actor, requester, approver, digest, detail, prev_hash, hash)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
    )
    .bind(entry.at)
    .bind(&entry.kind)
    .bind(&entry.object_key)
    .bind(entry.row_id)
    .bind(&entry.action)
    .bind(&entry.actor)
    .bind(&entry.requester)
    .bind(&entry.approver)
    .bind(&entry.digest)
    .bind(&entry.detail)
    .bind(&prev)
    .bind(&hash)
    .execute(&mut **tx)
    .await?;
    Ok(hash)
}

/// The first entry whose link does not hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokenLink {
    /// Sequence number of the entry.
    pub seq: i64,
    /// What is wrong with it.
    pub problem: String,
}

/// The result of checking the whole chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verification {
    /// Entries checked.
    pub entries: u64,
    /// The first broken link, if any.
    pub broken: Option<BrokenLink>,
}

/// Recomputes every link in order.
pub async fn verify(pool: &PgPool) -> Result<Verification, crate::Error> {
    let rows = sqlx::query(
        "SELECT seq, at, kind, object_key, row_id, action, actor, requester, approver, digest, detail, prev_hash, hash
           FROM audit_log ORDER BY seq",
    )
    .fetch_all(pool)
    .await?;
    let mut expected_prev = GENESIS.to_string();
    let mut entries = 0;
    for row in rows {
        entries += 1;
        let seq: i64 = row.try_get("seq")?;
        let entry = Entry {
            at: row.try_get("at")?,
            kind: row.try_get("kind")?,
            object_key: row.try_get("object_key")?,
            row_id: row.try_get("row_id")?,
            action: row.try_get("action")?,
            actor: row.try_get("actor")?,
            requester: row.try_get("requester")?,
            approver: row.try_get("approver")?,
            digest: row.try_get("digest")?,
            detail: row.try_get("detail")?,
        };
        let prev_hash: String = row.try_get("prev_hash")?;
        let hash: String = row.try_get("hash")?;
        let problem = if prev_hash != expected_prev {
            Some("prev_hash does not match the previous entry's hash (an entry was removed or reordered)".to_string())
        } else if entry.chain_hash(&prev_hash)? != hash {
            Some("content does not match its hash (the entry was modified)".to_string())
        } else {
            None
        };
        if let Some(problem) = problem {
            return Ok(Verification {
                entries,
                broken: Some(BrokenLink { seq, problem }),
            });
        }
        expected_prev = hash;
    }
    Ok(Verification { entries, broken: None })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_covers_content_and_predecessor() {
        let entry = Entry::now("Tenant", "acme", "create", "countersign");
        let h = entry.chain_hash(GENESIS).expect("hash");
        assert_ne!(h, entry.chain_hash(&h).expect("hash"));
        let mut changed = entry.clone();
        changed.approver = Some("mallory".into());
        assert_ne!(h, changed.chain_hash(GENESIS).expect("hash"));
    }
}
