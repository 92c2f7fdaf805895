//! Reads what the database holds for a GroupMapping (I/O, no writes).

use crate::db::{self, Ownership};
use sqlx::PgPool;
use uuid::Uuid;

/// A group-mapping row.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct MappingRow {
    /// Row id.
    pub id: Uuid,
    /// The provider row.
    pub identity_provider_id: Uuid,
    /// Group name.
    pub group_name: String,
    /// Role.
    pub role: String,
}

/// The provider the mapping references, as live in the database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProviderLive {
    /// Provider row id.
    pub id: Uuid,
    /// PENDING_APPROVAL or ACTIVE.
    pub status: String,
    /// The slug of the provider's tenant.
    pub tenant_slug: String,
    /// The namespaces the provider's tenant (its live row) lets declare objects for it.
    pub allowed_namespaces: Vec<String>,
}

/// Everything the planner needs to know about the database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    /// The live provider row managed by the referenced IdentityProvider object.
    pub provider: Option<ProviderLive>,
    /// The live row this object manages, if any.
    pub ours: Option<(MappingRow, Ownership)>,
    /// Another live row already mapping (provider, group), with its owner if any.
    pub group_taken: Option<(MappingRow, Option<Ownership>)>,
}

/// Loads the provider, this object's row and whichever other row maps the same group.
pub async fn observe(
    pool: &PgPool,
    uid: &str,
    namespace: &str,
    provider_name: &str,
    group_name: &str,
) -> Result<Observed, sqlx::Error> {
    let provider: Option<(Uuid, String, String, Vec<String>)> = sqlx::query_as(
        "SELECT p.id, p.status, t.slug, t.allowed_namespaces
           FROM managed_objects m JOIN identity_providers p ON p.id = m.row_id JOIN tenants t ON t.id = p.tenant_id
          WHERE m.kind = 'IdentityProvider' AND m.object_ns = $1 AND m.object_name = $2 AND p.deleted_at IS NULL
            AND t.deleted_at IS NULL",
    )
    .bind(namespace)
    .bind(provider_name)
    .fetch_optional(pool)
    .await?;
    let provider = provider.map(|(id, status, tenant_slug, allowed_namespaces)| ProviderLive {
        id,
        status,
        tenant_slug,
        allowed_namespaces,
    });
    let ours = match db::owned_by_object(pool, super::KIND, uid).await? {
        Some(owner) => {
            let row: Option<MappingRow> = sqlx::query_as(
                "SELECT id, identity_provider_id, group_name, role FROM group_mappings
                  WHERE id = $1 AND deleted_at IS NULL",
            )
            .bind(owner.row_id)
            .fetch_optional(pool)
            .await?;
            row.map(|r| (r, owner))
        }
        None => None,
    };
    let group_taken = match &provider {
        None => None,
        Some(p) => {
            let row: Option<MappingRow> = sqlx::query_as(
                "SELECT id, identity_provider_id, group_name, role FROM group_mappings
                  WHERE identity_provider_id = $1 AND group_name = $2 AND deleted_at IS NULL",
            )
            .bind(p.id)
            .bind(group_name)
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
    };
    Ok(Observed {
        provider,
        ours,
        group_taken,
    })
}
