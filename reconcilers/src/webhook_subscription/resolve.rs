//! Reads what the database holds for a WebhookSubscription (I/O, no writes).

use crate::db::{self, Ownership};
pub use crate::tenancy::TenantLive;
use sqlx::PgPool;
use uuid::Uuid;

/// A webhook-subscription row as the admin API stores it.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct SubscriptionRow {
    /// Row id.
    pub id: Uuid,
    /// Owning tenant row.
    pub tenant_id: Uuid,
    /// Delivery endpoint.
    pub url: String,
    /// Subscribed event types.
    pub events: Vec<String>,
    /// The sealed signing secret.
    pub secret_ref: Uuid,
    /// Whether deliveries are sent.
    pub active: bool,
}

/// Everything the planner needs to know about the database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    /// The live tenant row managed by the referenced Tenant object, if any.
    pub tenant: Option<TenantLive>,
    /// The live row this object manages, if any.
    pub ours: Option<(SubscriptionRow, Ownership)>,
    /// Another live row of the same tenant already subscribing the URL, with its owner if any.
    pub url_taken: Option<(SubscriptionRow, Option<Ownership>)>,
    /// The fingerprint of the unrevoked signing secret our row references, if any.
    pub stored_secret_fingerprint: Option<String>,
}

/// A SELECT of every [`SubscriptionRow`] column, followed by `$tail` (sqlx
/// wants static SQL, so the column list is spliced at compile time).
macro_rules! select_row {
    ($tail:literal) => {
        concat!(
            "SELECT id, tenant_id, url, events, secret_ref, active FROM webhook_subscriptions ",
            $tail
        )
    };
}

/// Loads the tenant, this object's row, and whichever other row holds (tenant, url).
pub async fn observe(pool: &PgPool, uid: &str, tenant_name: &str, url: &str) -> Result<Observed, sqlx::Error> {
    // The approved tenant row decides which namespaces may attach, exactly
    // as for identity providers (one rule, one implementation).
    let tenant = crate::tenancy::tenant_by_object(pool, tenant_name).await?;
    let ours = match db::owned_by_object(pool, super::KIND, uid).await? {
        Some(owner) => {
            let row: Option<SubscriptionRow> = sqlx::query_as(select_row!("WHERE id = $1 AND deleted_at IS NULL"))
                .bind(owner.row_id)
                .fetch_optional(pool)
                .await?;
            row.map(|r| (r, owner))
        }
        None => None,
    };
    let url_taken = match &tenant {
        None => None,
        Some(t) => {
            let row: Option<SubscriptionRow> =
                sqlx::query_as(select_row!("WHERE tenant_id = $1 AND url = $2 AND deleted_at IS NULL"))
                    .bind(t.id)
                    .bind(url)
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
    let stored_secret_fingerprint = match &ours {
        Some((row, _)) => crate::secrets::fingerprint_of(pool, row.secret_ref).await?,
        None => None,
    };
    Ok(Observed {
        tenant,
        ours,
        url_taken,
        stored_secret_fingerprint,
    })
}
