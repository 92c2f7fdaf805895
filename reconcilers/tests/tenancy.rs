//! A namespaced object's write holds its tenant: a tenant change that drops
//! the object's namespace (or deletes the tenant) between the plan's check
//! and the write leaves nothing written, for every kind that attaches to a
//! tenant by namespace. Against a real PostgreSQL, without an API server:
//! the race is made by changing the tenant row after planning.

use countersign_reconcilers::identity_provider::plan::{Cause, Values, Write};
use countersign_reconcilers::identity_provider::validate::{DesiredIdp, Protocol, SamlValues};
use countersign_reconcilers::record::Attribution;
use countersign_reconcilers::secrets::SecretKey;
use countersign_reconcilers::tenancy;
use sqlx::PgPool;
use uuid::Uuid;

async fn database() -> anyhow::Result<PgPool> {
    let url = countersign_e2e::test_database_url().await?;
    let pool = countersign_reconcilers::db::connect(&url).await?;
    countersign_reconcilers::db::migrate(&pool).await?;
    Ok(pool)
}

/// A live tenant whose approved row admits `namespaces`.
async fn tenant(pool: &PgPool, slug: &str, namespaces: &[&str]) -> anyhow::Result<Uuid> {
    let namespaces: Vec<String> = namespaces.iter().map(|n| n.to_string()).collect();
    Ok(
        sqlx::query_scalar("INSERT INTO tenants (slug, name, allowed_namespaces) VALUES ($1, 'Acme', $2) RETURNING id")
            .bind(slug)
            .bind(&namespaces)
            .fetch_one(pool)
            .await?,
    )
}

fn attribution(key: &SecretKey, namespace: &str) -> Attribution {
    Attribution {
        actor: "countersign".into(),
        chain: key.audit_chain_key().clone(),
        requester: Some("alice".into()),
        declared_by: Some("alice".into()),
        uid: Uuid::new_v4().to_string(),
        namespace: namespace.into(),
        name: "sso".into(),
        digest: "sha256:test".into(),
        approval: None,
    }
}

/// The write a plan made while the tenant still admitted the namespace.
fn new_provider(tenant_id: Uuid) -> Write {
    Write {
        row_id: None,
        values: Values {
            tenant_id,
            idp: DesiredIdp {
                tenant_name: "acme".into(),
                name: "Acme SAML".into(),
                enabled: true,
                protocol: Protocol::Saml(SamlValues {
                    metadata_url: "https://idp.example/md".into(),
                    entity_id: "urn:acme".into(),
                    sso_url: "https://idp.example/sso".into(),
                }),
            },
        },
        cause: Cause::Create,
        rotate_secret: false,
        is_create: true,
    }
}

async fn providers_of(pool: &PgPool, tenant_id: Uuid) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM identity_providers WHERE tenant_id = $1")
            .bind(tenant_id)
            .fetch_one(pool)
            .await?,
    )
}

/// Writes `write` for an object in team-a.
async fn write_in_team_a(
    pool: &PgPool,
    key: &SecretKey,
    write: &Write,
) -> Result<Uuid, countersign_reconcilers::Error> {
    countersign_reconcilers::identity_provider::apply::write(pool, write, "ACTIVE", None, &attribution(key, "team-a"))
        .await
}

/// Changes the tenant row behind the plan's back, then writes what the plan
/// decided: refused as a race, and nothing written.
async fn assert_refused_after(
    pool: &PgPool,
    key: &SecretKey,
    tenant_id: Uuid,
    change: &'static str,
) -> anyhow::Result<()> {
    sqlx::query(change).bind(tenant_id).execute(pool).await?;
    let refused = write_in_team_a(pool, key, &new_provider(tenant_id)).await;
    assert!(
        matches!(refused, Err(countersign_reconcilers::Error::Raced(_))),
        "after `{change}`: {refused:?}"
    );
    assert_eq!(
        providers_of(pool, tenant_id).await?,
        0,
        "after `{change}` nothing is written"
    );
    Ok(())
}

#[tokio::test]
async fn an_identity_provider_is_not_written_once_its_tenant_stops_admitting_the_namespace() -> anyhow::Result<()> {
    let pool = database().await?;
    let key = SecretKey::from_bytes(&[7u8; 32])?;
    let slug = format!("acme-{}", &Uuid::new_v4().simple().to_string()[..8]);
    let tenant_id = tenant(&pool, &slug, &["team-a"]).await?;
    // The tenant's approved configuration drops team-a after the plan read it.
    assert_refused_after(
        &pool,
        &key,
        tenant_id,
        "UPDATE tenants SET allowed_namespaces = '{team-b}' WHERE id = $1",
    )
    .await?;
    // A deleted tenant admits nobody.
    assert_refused_after(
        &pool,
        &key,
        tenant_id,
        "UPDATE tenants SET allowed_namespaces = '{team-a}', deleted_at = now(), deleted_by = 'x' WHERE id = $1",
    )
    .await?;
    // The same write goes through for a tenant that still admits the namespace.
    let admitting = tenant(&pool, &format!("{slug}-b"), &["team-a"]).await?;
    write_in_team_a(&pool, &key, &new_provider(admitting)).await?;
    assert_eq!(providers_of(&pool, admitting).await?, 1);
    Ok(())
}

#[tokio::test]
async fn the_tenant_lookup_reads_the_approved_row_through_its_tenant_object() -> anyhow::Result<()> {
    let pool = database().await?;
    let slug = format!("acme-{}", &Uuid::new_v4().simple().to_string()[..8]);
    let tenant_id = tenant(&pool, &slug, &["team-a"]).await?;
    assert_eq!(
        tenancy::tenant_by_object(&pool, "acme").await?,
        None,
        "no Tenant object manages it yet"
    );
    sqlx::query(
        "INSERT INTO managed_objects (kind, object_uid, object_name, row_id, digest)
         VALUES ('Tenant', $1, 'acme', $2, 'sha256:test')",
    )
    .bind(Uuid::new_v4().to_string())
    .bind(tenant_id)
    .execute(&pool)
    .await?;
    let live = tenancy::tenant_by_object(&pool, "acme").await?.expect("managed");
    assert_eq!((live.id, live.slug.as_str()), (tenant_id, slug.as_str()));
    assert!(live.admits("team-a") && !live.admits("team-b"));
    Ok(())
}
