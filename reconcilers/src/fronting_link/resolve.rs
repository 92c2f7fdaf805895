//! Reads what the database holds for a FrontingLink (I/O, no writes).

use crate::db::{self, Ownership};
use sqlx::PgPool;
use uuid::Uuid;

/// A platform resource a link points at (owned by the platform, not by Countersign).
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct Resource {
    /// Row id.
    pub id: Uuid,
    /// Slug.
    pub slug: String,
    /// The scopes the resource defines.
    pub scopes: Vec<String>,
}

/// A fronting-link row.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct LinkRow {
    /// Row id.
    pub id: Uuid,
    /// Source resource row.
    pub source_resource_id: Uuid,
    /// Target resource row.
    pub target_resource_id: Uuid,
    /// The scope map as stored.
    pub scope_map: serde_json::Value,
}

/// Everything the planner needs to know about the database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    /// The source resource, if it exists.
    pub source: Option<Resource>,
    /// The target resource, if it exists.
    pub target: Option<Resource>,
    /// The live row this object manages, if any.
    pub ours: Option<(LinkRow, Ownership)>,
    /// Whether this object managed a row before that is gone now (the
    /// platform deleted it, e.g. with a resource deleted by cascade).
    pub ours_vanished: bool,
    /// Another live row linking the same pair, with its owner if any.
    pub pair_taken: Option<(LinkRow, Option<Ownership>)>,
}

async fn resource(pool: &PgPool, slug: &str) -> Result<Option<Resource>, sqlx::Error> {
    sqlx::query_as("SELECT id, slug, scopes FROM platform_resources WHERE slug = $1")
        .bind(slug)
        .fetch_optional(pool)
        .await
}

/// Loads both resources, this object's row and any other row linking the pair.
pub async fn observe(pool: &PgPool, uid: &str, source_slug: &str, target_slug: &str) -> Result<Observed, sqlx::Error> {
    let source = resource(pool, source_slug).await?;
    let target = resource(pool, target_slug).await?;
    let owner = db::owned_by_object(pool, super::KIND, uid).await?;
    let ours = match &owner {
        Some(owner) => {
            let row: Option<LinkRow> = sqlx::query_as(
                "SELECT id, source_resource_id, target_resource_id, scope_map FROM fronting_links
                  WHERE id = $1 AND deleted_at IS NULL",
            )
            .bind(owner.row_id)
            .fetch_optional(pool)
            .await?;
            row.map(|r| (r, owner.clone()))
        }
        None => None,
    };
    let ours_vanished = owner.is_some() && ours.is_none();
    let pair_taken = match (&source, &target) {
        (Some(s), Some(t)) => {
            let row: Option<LinkRow> = sqlx::query_as(
                "SELECT id, source_resource_id, target_resource_id, scope_map FROM fronting_links
                  WHERE source_resource_id = $1 AND target_resource_id = $2 AND deleted_at IS NULL",
            )
            .bind(s.id)
            .bind(t.id)
            .fetch_optional(pool)
            .await?;
            match row {
                Some(r) if ours.as_ref().is_none_or(|(o, _)| o.id != r.id) => {
                    let owner = db::owner_of_row(pool, super::KIND, r.id).await?;
                    Some((r, owner))
                }
                _ => None,
            }
        }
        _ => None,
    };
    Ok(Observed {
        source,
        target,
        ours,
        ours_vanished,
        pair_taken,
    })
}
