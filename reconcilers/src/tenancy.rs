//! The tenant a namespaced object belongs to, one lookup for every kind that
//! names one (IdentityProvider, WebhookSubscription, LicenseGrant).
//!
//! The tenant is found through the Tenant object that manages its row, and
//! what the row holds decides: the approved configuration, not the Tenant
//! object's spec. A namespace added by an unapproved tenant change grants
//! nothing.

use sqlx::{Postgres, Transaction};
use uuid::Uuid;

/// The tenant an object attaches to, as live in the database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantLive {
    /// Tenant row id.
    pub id: Uuid,
    /// Tenant slug, for messages.
    pub slug: String,
    /// Namespaces the approved tenant configuration allows.
    pub allowed_namespaces: Vec<String>,
    /// The instance fingerprint the approved tenant row holds.
    pub instance_fingerprint: Option<String>,
}

impl TenantLive {
    /// Whether objects in `namespace` may attach to this tenant.
    pub fn admits(&self, namespace: &str) -> bool {
        self.allowed_namespaces.iter().any(|ns| ns == namespace)
    }
}

/// The live tenant row that the Tenant object `tenant_name` manages.
pub async fn tenant_by_object<'e, E: sqlx::PgExecutor<'e>>(
    executor: E,
    tenant_name: &str,
) -> Result<Option<TenantLive>, sqlx::Error> {
    let row: Option<(Uuid, String, Vec<String>, Option<String>)> = sqlx::query_as(
        "SELECT t.id, t.slug, t.allowed_namespaces, t.instance_fingerprint
           FROM managed_objects m JOIN tenants t ON t.id = m.row_id
          WHERE m.kind = 'Tenant' AND m.object_name = $1 AND t.deleted_at IS NULL",
    )
    .bind(tenant_name)
    .fetch_optional(executor)
    .await?;
    Ok(
        row.map(|(id, slug, allowed_namespaces, instance_fingerprint)| TenantLive {
            id,
            slug,
            allowed_namespaces,
            instance_fingerprint,
        }),
    )
}

/// Holds the tenant row shared until `tx` ends and checks that it is still
/// live and still admits `namespace`. The plan read the tenant before the
/// transaction: without this, a tenant change that drops the namespace (or
/// deletes the tenant) could land between that check and the write.
pub async fn hold_admitting(
    tx: &mut Transaction<'_, Postgres>,
    tenant_id: Uuid,
    namespace: &str,
) -> Result<(), crate::Error> {
    let allowed: Option<Vec<String>> =
        sqlx::query_scalar("SELECT allowed_namespaces FROM tenants WHERE id = $1 AND deleted_at IS NULL FOR SHARE")
            .bind(tenant_id)
            .fetch_optional(&mut **tx)
            .await?;
    if allowed.is_some_and(|ns| ns.iter().any(|n| n == namespace)) {
        Ok(())
    } else {
        Err(crate::Error::Raced("the tenant".into()))
    }
}
