//! The operator's database role: `countersign_runtime` may do what reconciles
//! do and append to the audit log, but cannot change or empty the log.

mod common;

use common::{has_condition, wait_tenant};
use countersign_crds::Tenant;
use countersign_e2e::unique_name;
use countersign_reconcilers::audit::{self, Entry};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

/// Whether `result` failed because the role lacks the privilege (42501).
fn permission_denied<T: std::fmt::Debug>(result: Result<T, sqlx::Error>) -> bool {
    match result {
        Err(sqlx::Error::Database(e)) => e.code().as_deref() == Some("42501"),
        other => {
            eprintln!("expected a permission error, got {other:?}");
            false
        }
    }
}

#[tokio::test]
async fn the_runtime_role_appends_to_the_audit_log_but_cannot_update_delete_or_truncate_it() -> anyhow::Result<()> {
    let (url, owner) = common::database().await?;
    let role = common::runtime_role(&url, &owner).await?;
    let key = common::test_key();
    let pool = &role.pool;

    assert!(countersign_reconcilers::db::check_schema(pool).await.is_ok());
    for action in ["create", "update"] {
        let mut tx = pool.begin().await?;
        audit::append(
            &mut tx,
            key.audit_chain_key(),
            &Entry::now("Tenant", "acme", action, "countersign"),
        )
        .await?;
        tx.commit().await?;
    }
    let v = audit::verify(pool, key.audit_chain_key()).await?;
    assert_eq!((v.entries, v.broken), (2, None));

    let update = sqlx::query("UPDATE audit_log SET approver = 'mallory' WHERE seq = 1")
        .execute(pool)
        .await;
    assert!(permission_denied(update), "UPDATE must be refused");
    let delete = sqlx::query("DELETE FROM audit_log WHERE seq = 2").execute(pool).await;
    assert!(permission_denied(delete), "DELETE must be refused");
    let truncate = sqlx::query("TRUNCATE audit_log").execute(pool).await;
    assert!(permission_denied(truncate), "TRUNCATE must be refused");
    // Nor can it switch the guards off: only the owner may alter the table.
    let disable = sqlx::query("ALTER TABLE audit_log DISABLE TRIGGER USER")
        .execute(pool)
        .await;
    assert!(disable.is_err(), "only the owner may disable the triggers");
    let owns: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner
          WHERE r.rolname IN ('countersign_runtime', $1)",
    )
    .bind(&role.name)
    .fetch_one(&owner)
    .await?;
    assert_eq!(owns, 0, "the runtime role owns nothing");

    assert_eq!(common::count(&owner, "audit_log").await?, 2);
    role.pool.close().await;
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP ROLE {}", role.name)))
        .execute(&owner)
        .await?;
    Ok(())
}

fn ready(t: &Tenant) -> bool {
    has_condition(t, "Ready", "True", "Live")
        && t.status.as_ref().and_then(|s| s.observed_generation) == t.metadata.generation
}

#[tokio::test]
async fn an_operator_connected_as_the_runtime_role_creates_updates_and_deletes_a_tenant() -> anyhow::Result<()> {
    let client = common::cluster().await?;
    let (url, owner) = common::database().await?;
    let role = common::runtime_role(&url, &owner).await?;
    let run = unique_name("runtime");
    let op = common::operator(&client, &role.pool, &run).await?;
    let api: Api<Tenant> = Api::all(client.clone());
    let slug = unique_name("acme");
    api.create(
        &PostParams::default(),
        &common::tenant(&slug, &run, json!({"slug": slug, "name": "Acme"}))?,
    )
    .await?;
    wait_tenant(&api, &slug, "Ready", ready).await?;
    api.patch(
        &slug,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"name": "Acme Renamed"}})),
    )
    .await?;
    wait_tenant(&api, &slug, "Ready at generation 2", |t| {
        ready(t) && t.metadata.generation == Some(2)
    })
    .await?;
    api.delete(&slug, &DeleteParams::default()).await?;
    common::wait_gone(&api, &slug).await?;
    op.shutdown().await;

    let actions: Vec<String> = sqlx::query_scalar("SELECT action FROM audit_log ORDER BY seq")
        .fetch_all(&owner)
        .await?;
    assert_eq!(actions, ["create", "update", "delete"]);
    let (name, deleted): (String, bool) =
        sqlx::query_as("SELECT name, deleted_at IS NOT NULL FROM tenants WHERE slug = $1")
            .bind(&slug)
            .fetch_one(&owner)
            .await?;
    assert_eq!((name.as_str(), deleted), ("Acme Renamed", true));
    assert_eq!(common::count(&owner, "managed_objects").await?, 0, "ownership released");
    let v = audit::verify(&owner, common::test_key().audit_chain_key()).await?;
    assert_eq!((v.entries, v.broken), (3, None));
    role.pool.close().await;
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP ROLE {}", role.name)))
        .execute(&owner)
        .await?;
    Ok(())
}
