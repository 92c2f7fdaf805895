//! Writes a plan in one transaction, with its audit entry.

use super::KIND;
use super::plan::{Plan, Values};
use crate::db;
use sqlx::PgPool;
use uuid::Uuid;

pub use crate::record::Attribution;

/// Executes a plan. Returns the row id written, or None for plans that write nothing.
pub async fn apply(pool: &PgPool, plan: &Plan, who: &Attribution) -> Result<Option<Uuid>, crate::Error> {
    let (row_id, action, adopted) = match plan {
        Plan::WaitForParent(_) | Plan::AlreadyExists { .. } | Plan::Conflict { .. } | Plan::Noop { .. } => {
            return Ok(None);
        }
        Plan::Create(values) => {
            let mut tx = pool.begin().await?;
            // The object may still own a row that vanished behind its back:
            // that record goes in the statement that inserts the new row.
            let id: Uuid = bind_values(
                sqlx::query_scalar(
                    "WITH stale AS (DELETE FROM managed_objects WHERE kind = $12 AND object_uid = $13)
                     INSERT INTO tenants (slug, name, description, parent_tenant_id, status, owner_email, owner_display_name,
                                          instance_fingerprint, branding, allowed_namespaces, created_by, updated_by)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11) RETURNING id",
                ),
                values,
            )
            .bind(&who.actor)
            .bind(KIND)
            .bind(&who.uid)
            .fetch_one(&mut *tx)
            .await?;
            finish(tx, id, "create", false, who).await?;
            return Ok(Some(id));
        }
        Plan::Update { row_id, values, cause } => {
            let mut tx = pool.begin().await?;
            bind_values(
                sqlx::query_scalar::<_, Uuid>(
                    "UPDATE tenants SET slug = $1, name = $2, description = $3, parent_tenant_id = $4, status = $5,
                            owner_email = $6, owner_display_name = $7, instance_fingerprint = $8, branding = $9,
                            allowed_namespaces = $10, updated_by = $11, updated_at = now()
                      WHERE id = $12 AND deleted_at IS NULL RETURNING id",
                ),
                values,
            )
            .bind(&who.actor)
            .bind(row_id)
            .fetch_one(&mut *tx)
            .await?;
            let adopted = *cause == super::plan::UpdateCause::Adopted;
            finish(tx, *row_id, cause.action(), adopted, who).await?;
            return Ok(Some(*row_id));
        }
        Plan::RecordDigest { row_id } => (*row_id, "record-digest", false),
    };
    let tx = pool.begin().await?;
    finish(tx, row_id, action, adopted, who).await?;
    Ok(Some(row_id))
}

fn bind_values<'q, O>(
    q: sqlx::query::QueryScalar<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments>,
    v: &'q Values,
) -> sqlx::query::QueryScalar<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments> {
    let t = &v.tenant;
    q.bind(&t.slug)
        .bind(&t.name)
        .bind(&t.description)
        .bind(v.parent_tenant_id)
        .bind(&t.status)
        .bind(&t.owner_email)
        .bind(&t.owner_display_name)
        .bind(&t.instance_fingerprint)
        .bind(&t.branding)
        .bind(&t.allowed_namespaces)
}

async fn finish(
    mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
    row_id: Uuid,
    action: &str,
    adopted: bool,
    who: &Attribution,
) -> Result<(), crate::Error> {
    let owner = who.ownership(row_id);
    db::record_ownership(&mut tx, KIND, &owner, adopted).await?;
    who.audit(&mut tx, KIND, action, row_id, &who.digest, serde_json::json!({}))
        .await?;
    tx.commit().await?;
    Ok(())
}

/// Soft-deletes (policy Delete) or releases (policy Orphan) the row this
/// object manages, in one transaction with its audit entry. Rows it does not
/// manage are never touched.
pub async fn remove(pool: &PgPool, orphan: bool, who: &Attribution) -> Result<Option<Uuid>, crate::Error> {
    let mut tx = pool.begin().await?;
    let Some(owner) = db::owned_by_object(&mut *tx, KIND, &who.uid).await? else {
        return Ok(None);
    };
    if !orphan {
        sqlx::query("UPDATE tenants SET deleted_at = now(), deleted_by = $2, updated_at = now() WHERE id = $1 AND deleted_at IS NULL")
            .bind(owner.row_id)
            .bind(&who.actor)
            .execute(&mut *tx)
            .await?;
    }
    db::release_ownership(&mut tx, KIND, owner.row_id).await?;
    who.audit(
        &mut tx,
        KIND,
        if orphan { "orphan" } else { "delete" },
        owner.row_id,
        &owner.digest,
        serde_json::json!({}),
    )
    .await?;
    tx.commit().await?;
    Ok(Some(owner.row_id))
}
