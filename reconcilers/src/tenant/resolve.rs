//! Reads what the database holds for a Tenant (I/O, no writes).

use crate::db::{self, Ownership};
use sqlx::{FromRow, PgPool, Row};
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
/// parent in one statement: one snapshot, one round trip and one transaction
/// for the database. A reconcile of a new Tenant is dominated by round trips
/// (each wakes the database and the operator), not by the queries' work.
pub async fn observe(pool: &PgPool, uid: &str, slug: &str, parent_slug: Option<&str>) -> Result<Observed, sqlx::Error> {
    let row = sqlx::query(
        "WITH found AS (
             SELECT id, slug, name, description, parent_tenant_id, status, owner_email, owner_display_name,
                    instance_fingerprint, branding, allowed_namespaces
               FROM tenants WHERE slug = $1 AND deleted_at IS NULL)
         SELECT f.id, f.slug, f.name, f.description, f.parent_tenant_id, f.status, f.owner_email,
                f.owner_display_name, f.instance_fingerprint, f.branding, f.allowed_namespaces,
                ro.row_id AS owner_row_id, ro.object_uid AS owner_object_uid, ro.object_ns AS owner_object_ns,
                ro.object_name AS owner_object_name, ro.digest AS owner_digest,
                o.row_id AS ours_row_id, o.object_uid AS ours_object_uid, o.object_ns AS ours_object_ns,
                o.object_name AS ours_object_name, o.digest AS ours_digest,
                (SELECT p.id FROM tenants p WHERE p.slug = $4 AND p.deleted_at IS NULL) AS parent_id
           FROM (VALUES (1)) AS one (x)
           LEFT JOIN found f ON true
           LEFT JOIN managed_objects ro ON ro.kind = $2 AND ro.row_id = f.id
           LEFT JOIN managed_objects o ON o.kind = $2 AND o.object_uid = $3",
    )
    .bind(slug)
    .bind(super::KIND)
    .bind(uid)
    .bind(parent_slug)
    .fetch_one(pool)
    .await?;
    let tenant = match row.try_get::<Option<Uuid>, _>("id")? {
        None => None,
        Some(_) => Some(TenantRow::from_row(&row)?),
    };
    let parent = match parent_slug {
        None => Parent::None,
        Some(p) => row
            .try_get::<Option<Uuid>, _>("parent_id")?
            .map_or_else(|| Parent::Missing(p.to_string()), Parent::Found),
    };
    Ok(Observed {
        row: tenant,
        row_owner: db::ownership_in(&row, "owner_")?,
        ours: db::ownership_in(&row, "ours_")?,
        parent,
    })
}
