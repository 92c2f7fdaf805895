//! Writes a GroupMapping plan in one transaction with its audit entry.

use super::KIND;
use super::plan::{Cause, Values};
use crate::db;
use sqlx::PgPool;
use uuid::Uuid;

pub use crate::record::Attribution;

/// Inserts or updates the mapping row. Returns its id.
pub async fn write(
    pool: &PgPool,
    row_id: Option<Uuid>,
    values: &Values,
    cause: Cause,
    who: &Attribution,
) -> Result<Uuid, crate::Error> {
    let mut tx = pool.begin().await?;
    // Holding the provider row shared makes a concurrent deletion of the
    // provider (which locks it for update first) wait, or makes this write
    // see that the provider is gone: no live mapping outlives its provider.
    let provider_live: Option<Uuid> =
        sqlx::query_scalar("SELECT id FROM identity_providers WHERE id = $1 AND deleted_at IS NULL FOR SHARE")
            .bind(values.identity_provider_id)
            .fetch_optional(&mut *tx)
            .await?;
    if provider_live.is_none() {
        return Err(crate::Error::Raced("the identity provider".into()));
    }
    let id: Uuid =
        match row_id {
            None => {
                sqlx::query("DELETE FROM managed_objects WHERE kind = $1 AND object_uid = $2")
                    .bind(KIND)
                    .bind(&who.uid)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query_scalar(
                "INSERT INTO group_mappings (identity_provider_id, group_name, role) VALUES ($1, $2, $3) RETURNING id",
            )
            .bind(values.identity_provider_id)
            .bind(&values.group_name)
            .bind(values.role)
            .fetch_one(&mut *tx)
            .await?
            }
            Some(id) => sqlx::query_scalar(
                "UPDATE group_mappings SET identity_provider_id = $1, group_name = $2, role = $3, updated_at = now()
                  WHERE id = $4 AND deleted_at IS NULL RETURNING id",
            )
            .bind(values.identity_provider_id)
            .bind(&values.group_name)
            .bind(values.role)
            .bind(id)
            .fetch_one(&mut *tx)
            .await?,
        };
    let owner = who.ownership(id);
    db::record_ownership(&mut tx, KIND, &owner, cause == Cause::Adopted).await?;
    who.audit(&mut tx, KIND, cause.action(), id, &who.digest, serde_json::json!({}))
        .await?;
    tx.commit().await?;
    Ok(id)
}

/// Soft-deletes the row this object manages.
pub async fn remove(pool: &PgPool, who: &Attribution) -> Result<(), crate::Error> {
    let mut tx = pool.begin().await?;
    let Some(owner) = db::owned_by_object(&mut *tx, KIND, &who.uid).await? else {
        return Ok(());
    };
    sqlx::query(
        "UPDATE group_mappings SET deleted_at = now(), deleted_by = $2, updated_at = now()
          WHERE id = $1 AND deleted_at IS NULL",
    )
    .bind(owner.row_id)
    .bind(&who.actor)
    .execute(&mut *tx)
    .await?;
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
