//! Reads what the database holds for a LicenseGrant (I/O, no writes).

use crate::db::{self, Ownership};
pub use crate::tenancy::TenantLive;
use crate::tenancy::tenant_by_object;
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

/// A license-grant row as the admin API stores it.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct GrantRow {
    /// Row id.
    pub id: Uuid,
    /// The globally unique grant ID.
    pub grant_id: Uuid,
    /// The tenant row.
    pub tenant_id: Uuid,
    /// GRANT, ADDENDUM or REVOCATION.
    pub grant_type: String,
    /// Instance fingerprint.
    pub instance_fingerprint: String,
    /// License type.
    pub license_type: String,
    /// Units.
    pub quantity: i64,
    /// Start of validity.
    pub valid_from: DateTime<Utc>,
    /// End of validity.
    pub valid_until: DateTime<Utc>,
    /// Commercial chain.
    pub commercial_chain: Vec<String>,
    /// Amended grant.
    pub addendum_of: Option<Uuid>,
    /// Revoked grant.
    pub revokes: Option<Uuid>,
    /// When a revocation revoked this grant.
    pub revoked_at: Option<DateTime<Utc>>,
    /// Signing key ID.
    pub key_id: String,
    /// Signature.
    pub signature: String,
}

/// Everything the planner needs to know about the database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    /// The live tenant row managed by the referenced Tenant object.
    pub tenant: Option<TenantLive>,
    /// The row this object manages, if any.
    pub ours: Option<(GrantRow, Ownership)>,
    /// Another row holding the grant ID, with its owner if any.
    pub grant_taken: Option<(GrantRow, Option<Ownership>)>,
    /// The row named by `addendumOf` or `revokes`, if the spec names one and it exists.
    pub referenced: Option<GrantRow>,
}

/// A SELECT of every [`GrantRow`] column, followed by `$tail`.
macro_rules! select_grant {
    ($tail:literal) => {
        concat!(
            "SELECT id, grant_id, tenant_id, grant_type, instance_fingerprint, license_type, quantity, valid_from,
                    valid_until, commercial_chain, addendum_of, revokes, revoked_at, key_id, signature
               FROM license_grants ",
            $tail
        )
    };
}

/// The row holding a grant ID.
pub async fn grant_by_id<'e, E: sqlx::PgExecutor<'e>>(
    executor: E,
    grant_id: Uuid,
) -> Result<Option<GrantRow>, sqlx::Error> {
    sqlx::query_as(select_grant!("WHERE grant_id = $1"))
        .bind(grant_id)
        .fetch_optional(executor)
        .await
}

/// Loads the tenant, this object's row, whichever other row holds the
/// grant ID, and the grant the spec references.
pub async fn observe(
    pool: &PgPool,
    uid: &str,
    tenant_name: &str,
    grant_id: Uuid,
    reference: Option<Uuid>,
) -> Result<Observed, sqlx::Error> {
    let tenant = tenant_by_object(pool, tenant_name).await?;
    let ours = match db::owned_by_object(pool, super::KIND, uid).await? {
        Some(owner) => {
            let row: Option<GrantRow> = sqlx::query_as(select_grant!("WHERE id = $1"))
                .bind(owner.row_id)
                .fetch_optional(pool)
                .await?;
            row.map(|r| (r, owner))
        }
        None => None,
    };
    let grant_taken = match grant_by_id(pool, grant_id).await? {
        Some(r) if ours.as_ref().is_none_or(|(o, _)| o.id != r.id) => {
            let owner = db::owner_of_row(pool, super::KIND, r.id).await?;
            Some((r, owner))
        }
        _ => None,
    };
    let referenced = match reference {
        Some(id) => grant_by_id(pool, id).await?,
        None => None,
    };
    Ok(Observed {
        tenant,
        ours,
        grant_taken,
        referenced,
    })
}

/// The tenant's current quota of a license type (view `license_quotas`):
/// 0 when nothing valid and unrevoked grants it.
pub async fn quota<'e, E: sqlx::PgExecutor<'e>>(
    executor: E,
    tenant_id: Uuid,
    license_type: &str,
) -> Result<i64, sqlx::Error> {
    let quantity: Option<i64> =
        sqlx::query_scalar("SELECT quantity FROM license_quotas WHERE tenant_id = $1 AND license_type = $2")
            .bind(tenant_id)
            .bind(license_type)
            .fetch_optional(executor)
            .await?;
    Ok(quantity.unwrap_or(0))
}
