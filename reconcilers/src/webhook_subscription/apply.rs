//! Writes a WebhookSubscription plan in one transaction: the sealed secret
//! (revoking the one it replaces), the row, ownership, the carried-out
//! approval and the audit entry.

use super::KIND;
use super::plan::{Cause, Write};
use crate::db;
use crate::secrets::{self, Sealed};
use sqlx::PgPool;
use uuid::Uuid;

pub use crate::record::Attribution;

/// Whether a database error is the live (tenant, url) index refusing a
/// second row: another writer got there between our read and our write.
fn is_url_taken(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.constraint() == Some("webhook_subscriptions_live_url"))
}

/// Executes a write. `sealed` is the new signing secret when the write
/// replaces it (always on insert: the column is NOT NULL). Returns the row id.
pub async fn write(pool: &PgPool, w: &Write, sealed: Option<&Sealed>, who: &Attribution) -> Result<Uuid, crate::Error> {
    let mut tx = pool.begin().await?;
    crate::tenancy::hold_admitting(&mut tx, w.values.tenant_id, &who.namespace).await?;
    let old_secret: Option<Uuid> = match w.row_id {
        Some(id) => {
            sqlx::query_scalar("SELECT secret_ref FROM webhook_subscriptions WHERE id = $1 FOR UPDATE")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?
        }
        None => None,
    };
    if let Some(s) = sealed {
        secrets::store(&mut tx, s).await?;
        // The replaced secret stops working at once: in this transaction.
        if let Some(old) = old_secret {
            secrets::revoke(&mut tx, old).await?;
        }
    }
    let secret_ref = match (sealed.map(|s| s.id), old_secret) {
        (Some(id), _) | (None, Some(id)) => id,
        (None, None) => return Err(crate::Error::Raced("the subscription's stored secret".into())),
    };
    let written = match w.row_id {
        None => {
            // The object may still own a row that vanished behind its back.
            sqlx::query("DELETE FROM managed_objects WHERE kind = $1 AND object_uid = $2")
                .bind(KIND)
                .bind(&who.uid)
                .execute(&mut *tx)
                .await?;
            sqlx::query_scalar(
                "INSERT INTO webhook_subscriptions (tenant_id, url, events, secret_ref, active)
                 VALUES ($1, $2, $3, $4, true) RETURNING id",
            )
            .bind(w.values.tenant_id)
            .bind(&w.values.url)
            .bind(&w.values.events)
            .bind(secret_ref)
            .fetch_one(&mut *tx)
            .await
        }
        Some(id) => {
            sqlx::query_scalar(
                "UPDATE webhook_subscriptions SET tenant_id = $1, url = $2, events = $3, secret_ref = $4,
                        active = true, updated_at = now()
                  WHERE id = $5 AND deleted_at IS NULL RETURNING id",
            )
            .bind(w.values.tenant_id)
            .bind(&w.values.url)
            .bind(&w.values.events)
            .bind(secret_ref)
            .bind(id)
            .fetch_one(&mut *tx)
            .await
        }
    };
    let row_id: Uuid = match written {
        Ok(id) => id,
        Err(e) if is_url_taken(&e) => return Err(crate::Error::Raced("the subscriptions of this URL".into())),
        Err(sqlx::Error::RowNotFound) => return Err(crate::Error::Raced("the subscription row".into())),
        Err(e) => return Err(e.into()),
    };
    let owner = who.ownership(row_id);
    db::record_ownership(&mut tx, KIND, &owner, w.cause == Cause::Adopted).await?;
    let mut detail = serde_json::json!({});
    if let Some(s) = sealed {
        // The fingerprint, never the secret: enough to tell rotations apart.
        detail["secret_fingerprint"] = serde_json::Value::String(s.fingerprint.clone());
    }
    who.audit(&mut tx, KIND, w.cause.action(), row_id, &who.digest, detail)
        .await?;
    tx.commit().await?;
    Ok(row_id)
}

/// Soft-deletes the row this object manages and revokes its signing secret,
/// in one transaction with the audit entry. Rows it does not manage are
/// never touched.
pub async fn remove(pool: &PgPool, who: &Attribution) -> Result<(), crate::Error> {
    let mut tx = pool.begin().await?;
    let Some(owner) = db::owned_by_object(&mut *tx, KIND, &who.uid).await? else {
        return Ok(());
    };
    let secret: Option<Uuid> = sqlx::query_scalar(
        "UPDATE webhook_subscriptions SET deleted_at = now(), deleted_by = $2, active = false, updated_at = now()
          WHERE id = $1 AND deleted_at IS NULL RETURNING secret_ref",
    )
    .bind(owner.row_id)
    .bind(&who.actor)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(secret) = secret {
        secrets::revoke(&mut tx, secret).await?;
    }
    db::release_ownership(&mut tx, KIND, owner.row_id).await?;
    who.audit(
        &mut tx,
        KIND,
        "delete",
        owner.row_id,
        &owner.digest,
        serde_json::json!({}),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}
