//! Writes a LicenseGrant plan in one transaction with its audit entry; a
//! revocation marks the grant it revokes in the same transaction.

use super::KIND;
use super::plan::{Cause, Values};
use crate::db;
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

pub use crate::record::Attribution;

/// PostgreSQL's unique_violation: two objects imported one grant ID at once.
const UNIQUE_VIOLATION: &str = "23505";

fn raced_on_unique(e: sqlx::Error, what: &str) -> crate::Error {
    match &e {
        sqlx::Error::Database(db) if db.code().as_deref() == Some(UNIQUE_VIOLATION) => crate::Error::Raced(what.into()),
        _ => crate::Error::Database(e),
    }
}

/// Imports, adopts or restores the grant row. Returns its id.
pub async fn write(
    pool: &PgPool,
    row_id: Option<Uuid>,
    values: &Values,
    cause: Cause,
    who: &Attribution,
) -> Result<Uuid, crate::Error> {
    let g = &values.grant;
    let mut tx = pool.begin().await?;
    // Holding the tenant row shared makes a concurrent tenant change wait, or
    // makes this write see it: no grant is imported for a tenant that is
    // gone or now bound to another instance.
    let tenant: Option<Uuid> = sqlx::query_scalar(
        "SELECT id FROM tenants WHERE id = $1 AND deleted_at IS NULL AND instance_fingerprint = $2 FOR SHARE",
    )
    .bind(values.tenant_id)
    .bind(&g.instance_fingerprint)
    .fetch_optional(&mut *tx)
    .await?;
    if tenant.is_none() {
        return Err(crate::Error::Raced("the tenant".into()));
    }
    if let Some((_, reference)) = g.reference()
        && cause != Cause::RecordDigest
    {
        // The referenced grant is locked so an addendum and a revocation of
        // the same grant serialise: an addendum never lands on a grant that
        // was revoked in between.
        let target: Option<(Uuid, Option<DateTime<Utc>>)> =
            sqlx::query_as("SELECT tenant_id, revoked_at FROM license_grants WHERE grant_id = $1 FOR UPDATE")
                .bind(reference)
                .fetch_optional(&mut *tx)
                .await?;
        let still_fits = target.is_some_and(|(tenant_id, revoked_at)| {
            tenant_id == values.tenant_id && (g.addendum_of.is_none() || revoked_at.is_none())
        });
        if !still_fits {
            return Err(crate::Error::Raced("the referenced grant".into()));
        }
    }
    let id: Uuid = match (row_id, cause) {
        (None, _) => {
            // The object may still own a row that vanished behind its back.
            sqlx::query("DELETE FROM managed_objects WHERE kind = $1 AND object_uid = $2")
                .bind(KIND)
                .bind(&who.uid)
                .execute(&mut *tx)
                .await?;
            bind_values(
                sqlx::query_scalar(
                    "INSERT INTO license_grants (grant_id, tenant_id, grant_type, instance_fingerprint, license_type,
                                                 quantity, valid_from, valid_until, commercial_chain, addendum_of,
                                                 revokes, key_id, signature)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) RETURNING id",
                ),
                values,
            )
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| raced_on_unique(e, "the grant ID"))?
        }
        (Some(id), Cause::RecordDigest) => id,
        (Some(id), _) => bind_values(
            sqlx::query_scalar(
                "UPDATE license_grants SET grant_id = $1, tenant_id = $2, grant_type = $3, instance_fingerprint = $4,
                        license_type = $5, quantity = $6, valid_from = $7, valid_until = $8, commercial_chain = $9,
                        addendum_of = $10, revokes = $11, key_id = $12, signature = $13
                  WHERE id = $14 RETURNING id",
            ),
            values,
        )
        .bind(id)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| raced_on_unique(e, "the grant ID"))?,
    };
    let mut detail = serde_json::json!({
        "grant_id": g.grant_id,
        "grant_type": g.grant_type,
        "license_type": g.license_type,
        "quantity": g.quantity,
        "key_id": g.key_id,
    });
    if let Some(revoked) = g.revokes
        && cause != Cause::RecordDigest
    {
        // The first revocation's time stands; a second one (or restoring a
        // revocation row) does not move it.
        let newly: Option<DateTime<Utc>> = sqlx::query_scalar(
            "UPDATE license_grants SET revoked_at = now() WHERE grant_id = $1 AND revoked_at IS NULL RETURNING revoked_at",
        )
        .bind(revoked)
        .fetch_optional(&mut *tx)
        .await?;
        detail["revokes"] = serde_json::json!(revoked);
        detail["newly_revoked"] = serde_json::json!(newly.is_some());
    }
    if let Some(base) = g.addendum_of {
        detail["addendum_of"] = serde_json::json!(base);
    }
    let owner = who.ownership(id);
    db::record_ownership(&mut tx, KIND, &owner, cause == Cause::Adopted).await?;
    who.audit(&mut tx, KIND, cause.action(), id, &who.digest, detail)
        .await?;
    tx.commit().await?;
    Ok(id)
}

fn bind_values<'q, O>(
    q: sqlx::query::QueryScalar<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments>,
    v: &'q Values,
) -> sqlx::query::QueryScalar<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments> {
    let g = &v.grant;
    q.bind(g.grant_id)
        .bind(v.tenant_id)
        .bind(g.grant_type)
        .bind(&g.instance_fingerprint)
        .bind(&g.license_type)
        .bind(g.quantity)
        .bind(g.valid_from)
        .bind(g.valid_until)
        .bind(&g.commercial_chain)
        .bind(g.addendum_of)
        .bind(g.revokes)
        .bind(&g.key_id)
        .bind(&g.signature)
}

/// Releases the row this object imported, leaving it as it is: a license
/// row is a commercial record, and only a signed REVOCATION takes a grant
/// out of the quota. One transaction with its audit entry (`orphan`).
pub async fn release(pool: &PgPool, who: &Attribution) -> Result<Option<Uuid>, crate::Error> {
    let mut tx = pool.begin().await?;
    let Some(owner) = db::owned_by_object(&mut *tx, KIND, &who.uid).await? else {
        return Ok(None);
    };
    db::release_ownership(&mut tx, KIND, owner.row_id).await?;
    who.audit(
        &mut tx,
        KIND,
        "orphan",
        owner.row_id,
        &owner.digest,
        serde_json::json!({"row": "kept: deleting a LicenseGrant does not revoke the grant"}),
    )
    .await?;
    tx.commit().await?;
    Ok(Some(owner.row_id))
}
