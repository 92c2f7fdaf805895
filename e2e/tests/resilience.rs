//! The operator refuses a database it does not understand, and survives the
//! database going away.

mod common;

use common::{has_condition, wait_tenant};
use countersign_crds::Tenant;
use countersign_e2e::{Postgres, unique_name};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

#[tokio::test]
async fn the_operator_refuses_an_unmigrated_or_unknown_schema() -> anyhow::Result<()> {
    let client = common::cluster().await?;
    let url = countersign_e2e::test_database_url().await?;
    let pool = countersign_reconcilers::db::connect(&url).await?;

    let err = common::operator(&client, &pool, "never")
        .await
        .err()
        .expect("an empty database is refused");
    assert!(err.to_string().contains("run `countersign migrate`"), "{err}");

    countersign_reconcilers::db::migrate(&pool).await?;
    let ok = common::operator(&client, &pool, "never").await?;
    let ready = reqwest::get(format!("http://{}/readyz", ok.health_addr)).await?;
    assert_eq!(ready.status(), 200);
    let health = reqwest::get(format!("http://{}/healthz", ok.health_addr)).await?;
    assert_eq!(health.status(), 200);
    ok.shutdown().await;

    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES (99990001, 'from the future', true, '\\x00', 0)",
    )
    .execute(&pool)
    .await?;
    let err = common::operator(&client, &pool, "never")
        .await
        .err()
        .expect("an unknown version is refused");
    assert!(
        err.to_string().contains("schema version 99990001") && err.to_string().contains("does not know"),
        "{err}"
    );
    Ok(())
}

#[tokio::test]
async fn a_database_outage_is_reported_and_the_tenant_converges_when_it_returns() -> anyhow::Result<()> {
    let client = common::cluster().await?;
    let pg = Postgres::start().await?;
    let url = pg.create_database().await?;
    let pool = countersign_reconcilers::db::connect(&url).await?;
    countersign_reconcilers::db::migrate(&pool).await?;
    let run = unique_name("outage");
    let op = common::operator(&client, &pool, &run).await?;
    let api: Api<Tenant> = Api::all(client.clone());
    let slug = unique_name("steady");
    api.create(
        &PostParams::default(),
        &common::tenant(&slug, &run, json!({"slug": slug, "name": "Before"}))?,
    )
    .await?;
    wait_tenant(&api, &slug, "Ready", |t| has_condition(t, "Ready", "True", "Live")).await?;

    pg.stop().await?;
    api.patch(
        &slug,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"name": "After"}})),
    )
    .await?;
    let down = wait_tenant(&api, &slug, "DatabaseUnavailable", |t| {
        has_condition(t, "Synced", "False", "DatabaseUnavailable")
    })
    .await?;
    let synced = common::condition_of(down.status.as_ref(), "Synced")
        .map(|c| c.message.clone())
        .unwrap_or_default();
    assert!(synced.contains("database"), "{synced}");
    assert!(
        !synced.contains(&url),
        "the message must not leak the connection string"
    );
    assert!(has_condition(&down, "Reconciling", "True", "DatabaseUnavailable"));
    // Ready still describes what is live: the previous configuration.
    let ready = common::condition_of(down.status.as_ref(), "Ready")
        .cloned()
        .expect("Ready");
    assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("True", "Live"));
    let events = common::events_with_reason(&client, &slug, "DatabaseUnavailable").await?;
    assert!(!events.is_empty(), "{events:?}");

    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    pg.start_again().await?;
    wait_tenant(&api, &slug, "Ready at generation 2", |t| {
        has_condition(t, "Ready", "True", "Live") && has_condition(t, "Synced", "True", "ReconcileSucceeded")
    })
    .await?;
    let name: String = sqlx::query_scalar("SELECT name FROM tenants WHERE slug = $1")
        .bind(&slug)
        .fetch_one(&pool)
        .await?;
    assert_eq!(name, "After");
    op.shutdown().await;
    Ok(())
}
