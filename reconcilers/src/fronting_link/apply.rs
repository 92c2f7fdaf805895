//! Writes a FrontingLink plan in one transaction with its audit entry.

use super::KIND;
use super::plan::{Cause, Values};
use crate::db;
use sqlx::PgPool;
use uuid::Uuid;

pub use crate::record::Attribution;

/// Inserts or updates the link row. Returns its id.
pub async fn write(
    pool: &PgPool,
    row_id: Option<Uuid>,
    values: &Values,
    cause: Cause,
    who: &Attribution,
) -> Result<Uuid, crate::Error> {
    let mut tx = pool.begin().await?;
    let id: Uuid = match row_id {
        None => {
            // The object may still own a row the platform deleted behind its back.
            sqlx::query("DELETE FROM managed_objects WHERE kind = $1 AND object_uid = $2")
                .bind(KIND)
                .bind(&who.uid)
                .execute(&mut *tx)
                .await?;
            sqlx::query_scalar(
                "INSERT INTO fronting_links (source_resource_id, target_resource_id, scope_map)
                 VALUES ($1, $2, $3) RETURNING id",
            )
            .bind(values.source_resource_id)
            .bind(values.target_resource_id)
            .bind(&values.scope_map)
            .fetch_one(&mut *tx)
            .await?
        }
        Some(id) => {
            sqlx::query_scalar(
                "UPDATE fronting_links SET scope_map = $1, updated_at = now()
                  WHERE id = $2 AND deleted_at IS NULL RETURNING id",
            )
            .bind(&values.scope_map)
            .bind(id)
            .fetch_one(&mut *tx)
            .await?
        }
    };
    let owner = who.ownership(id);
    db::record_ownership(&mut tx, KIND, &owner, cause == Cause::Adopted).await?;
    who.audit(&mut tx, KIND, cause.action(), id, &who.digest, serde_json::json!({}))
        .await?;
    tx.commit().await?;
    Ok(id)
}

/// Soft-deletes the link this object manages.
pub async fn remove(pool: &PgPool, who: &Attribution) -> Result<(), crate::Error> {
    let mut tx = pool.begin().await?;
    let Some(owner) = db::owned_by_object(&mut *tx, KIND, &who.uid).await? else {
        return Ok(());
    };
    sqlx::query(
        "UPDATE fronting_links SET deleted_at = now(), deleted_by = $2, updated_at = now()
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
