//! Drift is seen when it happens: the database notifies the operator of a
//! managed row edited behind its back, and the operator corrects it within
//! seconds although its periodic resync is an hour away. It reads nothing for
//! rows that did not change, and after its listening connection drops it
//! looks at everything once, so no edit is missed.

mod common;

use common::{has_condition, metric, wait_tenant};
use countersign_crds::Tenant;
use countersign_e2e::unique_name;
use countersign_operator::run::Running;
use kube::api::{Api, PostParams};
use serde_json::json;
use sqlx::PgPool;
use std::time::{Duration, Instant};

/// The resync of every operator here: far beyond any test, so only a
/// notification can explain a correction.
const HOUR: Duration = Duration::from_secs(3600);

fn ready(t: &Tenant) -> bool {
    has_condition(t, "Ready", "True", "Live")
        && t.status.as_ref().and_then(|s| s.observed_generation) == t.metadata.generation
}

async fn tenant_name(pool: &PgPool, slug: &str) -> anyhow::Result<Option<String>> {
    Ok(
        sqlx::query_scalar("SELECT name FROM tenants WHERE slug = $1 AND deleted_at IS NULL")
            .bind(slug)
            .fetch_optional(pool)
            .await?,
    )
}

/// Polls until the live tenant row `slug` is named `name`; how long it took.
async fn until_named(pool: &PgPool, slug: &str, name: &str, within: Duration) -> anyhow::Result<Duration> {
    let started = Instant::now();
    loop {
        if tenant_name(pool, slug).await?.as_deref() == Some(name) {
            return Ok(started.elapsed());
        }
        anyhow::ensure!(
            started.elapsed() < within,
            "tenant {slug} not restored to {name:?} within {within:?}: {:?}",
            tenant_name(pool, slug).await?
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn until_metric(op: &Running, series: &str, pred: impl Fn(f64) -> bool) -> anyhow::Result<f64> {
    let started = Instant::now();
    loop {
        let value = metric(op, series).await?;
        if pred(value) {
            return Ok(value);
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(30),
            "{series} stayed at {value}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

struct World {
    client: kube::Client,
    pool: PgPool,
    api: Api<Tenant>,
    run: String,
    op: Running,
}

impl World {
    async fn start(prefix: &str) -> anyhow::Result<Self> {
        let client = common::cluster().await?;
        let (_url, pool) = common::database().await?;
        let run = unique_name(prefix);
        let op = common::operator_with_resync(&client, &pool, &run, HOUR).await?;
        until_metric(&op, "countersign_row_change_listener_connected", |v| v == 1.0).await?;
        let api: Api<Tenant> = Api::all(client.clone());
        Ok(Self {
            client,
            pool,
            api,
            run,
            op,
        })
    }

    async fn live_tenant(&self, prefix: &str) -> anyhow::Result<String> {
        let slug = unique_name(prefix);
        self.api
            .create(
                &PostParams::default(),
                &common::tenant(&slug, &self.run, json!({"slug": slug, "name": "Declared"}))?,
            )
            .await?;
        wait_tenant(&self.api, &slug, "Ready", ready).await?;
        Ok(slug)
    }

    async fn audit_actions(&self) -> anyhow::Result<Vec<String>> {
        Ok(sqlx::query_scalar("SELECT action FROM audit_log ORDER BY seq")
            .fetch_all(&self.pool)
            .await?)
    }
}

#[tokio::test]
async fn an_edited_row_is_restored_within_a_second_and_only_its_object_is_looked_at() -> anyhow::Result<()> {
    let w = World::start("notify").await?;
    let edited = w.live_tenant("edited").await?;
    let _untouched = w.live_tenant("untouched").await?;
    // Settled: neither object is being looked at any more.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let reconciles_before = metric(&w.op, "countersign_reconciles_total{kind=\"Tenant\"").await?;

    sqlx::query("UPDATE tenants SET name = 'Edited behind our back', status = 'SUSPENDED' WHERE slug = $1")
        .bind(&edited)
        .execute(&w.pool)
        .await?;
    let took = until_named(&w.pool, &edited, "Declared", Duration::from_secs(5)).await?;
    assert!(took < Duration::from_secs(1), "drift corrected after {took:?}");

    // One reconcile for the edited row; nothing read for the untouched one.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let reconciles = metric(&w.op, "countersign_reconciles_total{kind=\"Tenant\"").await? - reconciles_before;
    assert_eq!(reconciles, 1.0, "reconciles after one edited row");
    assert_eq!(
        metric(&w.op, "countersign_drift_corrections_total{kind=\"Tenant\"").await?,
        1.0
    );
    assert_eq!(
        w.audit_actions().await?,
        ["create", "create", "correct-drift"],
        "the correction is audited as such"
    );
    // The event names the columns, not what they held.
    let events = common::events_for(&w.client, &edited).await?;
    let drifted: Vec<_> = events.iter().filter(|(reason, _)| reason == "Drifted").collect();
    assert_eq!(drifted.len(), 1, "{events:?}");
    assert!(
        drifted[0].1.contains("name") && drifted[0].1.contains("status"),
        "{drifted:?}"
    );
    assert!(!drifted[0].1.contains("Edited behind"), "{drifted:?}");
    // The object reports nothing new: it is live as declared.
    assert!(ready(&w.api.get(&edited).await?));
    assert_eq!(
        metric(&w.op, "countersign_objects{kind=\"Tenant\",state=\"Ready\"}").await?,
        2.0,
        "both Tenants counted as Ready"
    );
    w.op.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_row_deleted_or_disowned_behind_the_operator_is_seen_at_once() -> anyhow::Result<()> {
    let w = World::start("notify-del").await?;
    let deleted = w.live_tenant("deleted").await?;
    let disowned = w.live_tenant("disowned").await?;

    // The row and its ownership record deleted together: the object writes
    // the row again.
    let mut tx = w.pool.begin().await?;
    sqlx::query("DELETE FROM managed_objects WHERE row_id = (SELECT id FROM tenants WHERE slug = $1)")
        .bind(&deleted)
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM tenants WHERE slug = $1")
        .bind(&deleted)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    until_named(&w.pool, &deleted, "Declared", Duration::from_secs(5)).await?;

    // The ownership record removed: the row now looks made by people, and
    // taking it over is not the operator's call. It says so at once.
    sqlx::query("DELETE FROM managed_objects WHERE row_id = (SELECT id FROM tenants WHERE slug = $1)")
        .bind(&disowned)
        .execute(&w.pool)
        .await?;
    let started = Instant::now();
    wait_tenant(&w.api, &disowned, "refused as AlreadyExists", |t| {
        has_condition(t, "Ready", "False", "AlreadyExists")
    })
    .await?;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "seen after {:?}",
        started.elapsed()
    );
    w.op.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn after_the_listener_reconnects_every_object_is_looked_at_once() -> anyhow::Result<()> {
    let w = World::start("notify-lost").await?;
    let slug = w.live_tenant("missed").await?;
    let last_full = metric(&w.op, "countersign_last_full_resync_timestamp_seconds").await?;
    assert!(last_full > 0.0, "start-up looks at everything");
    // The gauge counts seconds: let one pass.
    tokio::time::sleep(Duration::from_millis(1100)).await;

    // Cut the listening connection (its last statement was its LISTEN).
    let cut: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND query LIKE 'LISTEN %countersign_row_changes%'",
    )
    .fetch_all(&w.pool)
    .await?;
    assert_eq!(cut, [true], "one listener");
    until_metric(&w.op, "countersign_row_change_listener_connected", |v| v == 0.0).await?;
    // Edited while nobody listens: no notification reaches the operator.
    sqlx::query("UPDATE tenants SET name = 'Edited while unheard' WHERE slug = $1")
        .bind(&slug)
        .execute(&w.pool)
        .await?;
    until_metric(&w.op, "countersign_row_change_listener_connected", |v| v == 1.0).await?;
    until_named(&w.pool, &slug, "Declared", Duration::from_secs(10)).await?;
    assert!(
        metric(&w.op, "countersign_last_full_resync_timestamp_seconds").await? > last_full,
        "the reconnect looked at everything"
    );
    assert_eq!(
        metric(&w.op, "countersign_drift_corrections_total{kind=\"Tenant\"").await?,
        1.0
    );
    w.op.shutdown().await;
    Ok(())
}

/// Whoever holds database credentials can put the operator's own marker
/// (`countersign.origin=operator`) on their session, and the triggers then
/// stay silent about their edit. The periodic resync is the safety net that
/// still finds it: the masked edit sends no notification, and the row is put
/// back, audited and reported as drift within the resync period.
#[tokio::test]
async fn an_edit_masked_as_the_operators_own_is_still_restored_by_the_resync() -> anyhow::Result<()> {
    use sqlx::Connection as _;
    const RESYNC: Duration = Duration::from_secs(3);
    let client = common::cluster().await?;
    let (url, pool) = common::database().await?;
    let run = unique_name("masked");
    let op = common::operator_with_resync(&client, &pool, &run, RESYNC).await?;
    until_metric(&op, "countersign_row_change_listener_connected", |v| v == 1.0).await?;
    let api: Api<Tenant> = Api::all(client.clone());
    let slug = unique_name("masked");
    api.create(
        &PostParams::default(),
        &common::tenant(&slug, &run, json!({"slug": slug, "name": "Declared"}))?,
    )
    .await?;
    wait_tenant(&api, &slug, "Ready", ready).await?;
    let row_id: uuid::Uuid = sqlx::query_scalar("SELECT id FROM tenants WHERE slug = $1 AND deleted_at IS NULL")
        .bind(&slug)
        .fetch_one(&pool)
        .await?;

    let mut heard = sqlx::postgres::PgListener::connect(&url).await?;
    heard
        .listen(countersign_operator::controller::row_changes::CHANNEL)
        .await?;
    let mut attacker = sqlx::PgConnection::connect(&url).await?;
    sqlx::query("SET countersign.origin = 'operator'")
        .execute(&mut attacker)
        .await?;
    sqlx::query("UPDATE tenants SET name = 'Masked edit' WHERE id = $1")
        .bind(row_id)
        .execute(&mut attacker)
        .await?;
    // The triggers said nothing about this row.
    let notice = tokio::time::timeout(Duration::from_millis(500), async {
        loop {
            let n = heard.recv().await?;
            if n.payload().contains(&row_id.to_string()) {
                return Ok::<_, sqlx::Error>(n.payload().to_string());
            }
        }
    })
    .await;
    assert!(notice.is_err(), "the masked edit was notified: {notice:?}");

    // The resync (3 s, ±10%) finds and restores it all the same.
    until_named(&pool, &slug, "Declared", RESYNC * 3).await?;
    let actions: Vec<String> = sqlx::query_scalar("SELECT action FROM audit_log WHERE row_id = $1 ORDER BY seq")
        .bind(row_id)
        .fetch_all(&pool)
        .await?;
    assert_eq!(actions.last().map(String::as_str), Some("correct-drift"), "{actions:?}");
    let drifted = common::drifted_events(&client, &slug).await?;
    assert!(drifted.iter().any(|note| note.contains("name")), "{drifted:?}");
    op.shutdown().await;
    Ok(())
}
