//! Reads what the database holds for a Tenant (I/O, no writes).

use crate::db::{self, Ownership};
use sqlx::PgPool;
use uuid::Uuid;

/// A tenant row as the admin API stores it.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct TenantRow {
    /// Row id.
    pub id: Uuid,
    /// Slug.
    pub slug: String,
    /// Display name.
    pub name: String,
    /// Description.
    pub description: Option<String>,
    /// Parent row id.
    pub parent_tenant_id: Option<Uuid>,
    /// Lifecycle status.
    pub status: String,
    /// Owner email.
    pub owner_email: Option<String>,
    /// Owner display name.
    pub owner_display_name: Option<String>,
    /// Instance fingerprint.
    pub instance_fingerprint: Option<String>,
    /// Branding payload.
    pub branding: Option<serde_json::Value>,
    /// Namespaces allowed to attach objects.
    pub allowed_namespaces: Vec<String>,
}

/// The parent the spec names, as found in the database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parent {
    /// The spec names no parent.
    None,
    /// The parent tenant's row id.
    Found(Uuid),
    /// No live tenant has that slug (yet).
    Missing(String),
}

/// Everything the planner needs to know about the database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    /// The live row holding the slug, if any.
    pub row: Option<TenantRow>,
    /// Who manages that row, if anyone.
    pub row_owner: Option<Ownership>,
    /// The row this object manages, if any (it may have vanished behind our back).
    pub ours: Option<Ownership>,
    /// The parent lookup.
    pub parent: Parent,
}

/// Loads the row for `slug`, its owner, this object's ownership and the
/// parent, in one read-only transaction: one consistent snapshot and one
/// transaction for the database, not one per query.
pub async fn observe(pool: &PgPool, uid: &str, slug: &str, parent_slug: Option<&str>) -> Result<Observed, sqlx::Error> {
    let mut tx = pool
        .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await?;
    let observed = observe_in(&mut tx, uid, slug, parent_slug).await?;
    tx.commit().await?;
    Ok(observed)
}

async fn observe_in(
    conn: &mut sqlx::PgConnection,
    uid: &str,
    slug: &str,
    parent_slug: Option<&str>,
) -> Result<Observed, sqlx::Error> {
    let row: Option<TenantRow> = sqlx::query_as(
        "SELECT id, slug, name, description, parent_tenant_id, status, owner_email, owner_display_name,
                instance_fingerprint, branding, allowed_namespaces
           FROM tenants WHERE slug = $1 AND deleted_at IS NULL",
    )
    .bind(slug)
    .fetch_optional(&mut *conn)
    .await?;
    let row_owner = match &row {
        Some(r) => db::owner_of_row(&mut *conn, super::KIND, r.id).await?,
        None => None,
    };
    let ours = db::owned_by_object(&mut *conn, super::KIND, uid).await?;
    let parent = match parent_slug {
        None => Parent::None,
        Some(p) => {
            let id: Option<Uuid> = sqlx::query_scalar("SELECT id FROM tenants WHERE slug = $1 AND deleted_at IS NULL")
                .bind(p)
                .fetch_optional(&mut *conn)
                .await?;
            id.map_or_else(|| Parent::Missing(p.to_string()), Parent::Found)
        }
    };
    Ok(Observed {
        row,
        row_owner,
        ours,
        parent,
    })
}
