//! Reads what the database holds for an IdentityProvider (I/O, no writes).

use crate::db::{self, Ownership};
pub use crate::tenancy::TenantLive;
use crate::tenancy::tenant_by_object;
use sqlx::PgPool;
use uuid::Uuid;

/// An identity-provider row as the admin API stores it.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct IdpRow {
    /// Row id.
    pub id: Uuid,
    /// Owning tenant row.
    pub tenant_id: Uuid,
    /// Provider name.
    pub name: String,
    /// OIDC or SAML.
    pub protocol: String,
    /// PENDING_APPROVAL or ACTIVE.
    pub status: String,
    /// Sign-in enabled.
    pub enabled: bool,
    /// OIDC issuer.
    pub issuer_url: Option<String>,
    /// OIDC client ID.
    pub client_id: Option<String>,
    /// The sealed client secret.
    pub client_secret_ref: Option<Uuid>,
    /// Scopes.
    pub scopes: Vec<String>,
    /// Subject claim.
    pub subject_claim: String,
    /// Email claim.
    pub email_claim: String,
    /// Display-name claim.
    pub display_name_claim: String,
    /// Groups claim path.
    pub groups_claim_path: String,
    /// Groups claim format.
    pub groups_claim_format: String,
    /// Userinfo call.
    pub fetch_userinfo: bool,
    /// Allowed email domains.
    pub allowed_email_domains: Vec<String>,
    /// iat window.
    pub iat_window_seconds: i32,
    /// JWKS TTL.
    pub jwks_cache_ttl_seconds: i32,
    /// SAML metadata URL.
    pub metadata_url: Option<String>,
    /// SAML entity ID.
    pub entity_id: Option<String>,
    /// SAML SSO URL.
    pub sso_url: Option<String>,
}

/// Everything the planner needs to know about the database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    /// The live tenant row managed by the referenced Tenant object, if any.
    pub tenant: Option<TenantLive>,
    /// The live row this object manages, if any.
    pub ours: Option<(IdpRow, Ownership)>,
    /// Another live row already holding (tenant, name), with its owner if any.
    pub name_taken: Option<(IdpRow, Option<Ownership>)>,
    /// The fingerprint of the unrevoked client secret our row references, if any.
    pub stored_secret_fingerprint: Option<String>,
}

/// A SELECT of every [`IdpRow`] column, followed by `$tail` (sqlx wants
/// static SQL, so the column list is spliced at compile time).
macro_rules! select_idp {
    ($tail:literal) => {
        concat!(
            "SELECT id, tenant_id, name, protocol, status, enabled, issuer_url, client_id, client_secret_ref, scopes,
                    subject_claim, email_claim, display_name_claim, groups_claim_path, groups_claim_format,
                    fetch_userinfo, allowed_email_domains, iat_window_seconds, jwks_cache_ttl_seconds, metadata_url,
                    entity_id, sso_url
               FROM identity_providers ",
            $tail
        )
    };
}

/// Loads the tenant, this object's row, and whichever other row holds (tenant, name).
pub async fn observe(pool: &PgPool, uid: &str, tenant_name: &str, name: &str) -> Result<Observed, sqlx::Error> {
    let tenant = tenant_by_object(pool, tenant_name).await?;
    let ours = match db::owned_by_object(pool, super::KIND, uid).await? {
        Some(owner) => {
            let row: Option<IdpRow> = sqlx::query_as(select_idp!("WHERE id = $1 AND deleted_at IS NULL"))
                .bind(owner.row_id)
                .fetch_optional(pool)
                .await?;
            row.map(|r| (r, owner))
        }
        None => None,
    };
    let name_taken = match &tenant {
        None => None,
        Some(t) => {
            let row: Option<IdpRow> =
                sqlx::query_as(select_idp!("WHERE tenant_id = $1 AND name = $2 AND deleted_at IS NULL"))
                    .bind(t.id)
                    .bind(name)
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
    let stored_secret_fingerprint = match ours.as_ref().and_then(|(r, _)| r.client_secret_ref) {
        Some(id) => crate::secrets::fingerprint_of(pool, id).await?,
        None => None,
    };
    Ok(Observed {
        tenant,
        ours,
        name_taken,
        stored_secret_fingerprint,
    })
}

/// How many live group mappings reference the provider row.
pub async fn mappings_referencing<'e, E: sqlx::PgExecutor<'e>>(executor: E, row_id: Uuid) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM group_mappings WHERE identity_provider_id = $1 AND deleted_at IS NULL")
        .bind(row_id)
        .fetch_one(executor)
        .await
}
