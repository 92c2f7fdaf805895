//! Database errors are reported as what they are: a missing privilege, a
//! constraint the operator cannot foresee and a missing column each get a
//! reason of their own (not `DatabaseUnavailable`), and a serialization
//! failure is retried soon without being reported.
//!
//! Every test has a database of its own (`common::database()`) and an
//! operator connected as the runtime role; what a test changes in the
//! schema (a grant, a constraint, a trigger) it undoes at the end, and its
//! constraint and trigger only match its own tenant.

mod common;

use common::{count, has_condition, metric, wait_tenant};
use countersign_crds::Tenant;
use countersign_e2e::unique_name;
use countersign_operator::run::Running;
use futures::StreamExt as _;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;
use sqlx::{AssertSqlSafe, PgPool};
use std::time::{Duration, Instant};

fn ready(t: &Tenant) -> bool {
    has_condition(t, "Ready", "True", "Live")
        && has_condition(t, "Synced", "True", "ReconcileSucceeded")
        && t.status.as_ref().and_then(|s| s.observed_generation) == t.metadata.generation
}

/// `countersign_reconcile_errors_total` of Tenants with `reason`.
async fn errors(op: &Running, reason: &str) -> anyhow::Result<f64> {
    metric(
        op,
        &format!("countersign_reconcile_errors_total{{kind=\"Tenant\",reason=\"{reason}\"}}"),
    )
    .await
}

/// Waits until `countersign_reconcile_errors_total` of Tenants with `reason`
/// is at least 1: the operator counts a failure after it wrote the status.
async fn wait_counted(op: &Running, reason: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while errors(op, reason).await? < 1.0 {
        anyhow::ensure!(Instant::now() < deadline, "no error with reason {reason} was counted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// The message of the Tenant's condition `type_`.
fn message(t: &Tenant, type_: &str) -> String {
    common::condition_of(t.status.as_ref(), type_)
        .map(|c| c.message.clone())
        .unwrap_or_default()
}

/// Rows, ownership records and audit entries for Tenants: what a write would leave.
async fn written(owner: &PgPool, slug: &str) -> anyhow::Result<(i64, i64, i64)> {
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM tenants WHERE slug = $1")
        .bind(slug)
        .fetch_one(owner)
        .await?;
    Ok((
        rows,
        count(owner, "managed_objects").await?,
        count(owner, "object_audit").await?,
    ))
}

/// Asserts the failure a Tenant reports for a database error that needs a
/// person: Synced=False and Stalled=True with `reason`, not retrying as if
/// the database were away, nothing claimed live.
fn assert_stalled_by(t: &Tenant, reason: &str) {
    assert!(has_condition(t, "Synced", "False", reason), "{:?}", t.status);
    assert!(has_condition(t, "Stalled", "True", reason), "{:?}", t.status);
    assert!(has_condition(t, "Reconciling", "False", reason), "{:?}", t.status);
    let status = t.status.clone().unwrap_or_default();
    assert_eq!((status.database_id, status.live_digest), (None, None));
    assert!(
        common::condition_of(t.status.as_ref(), "Ready").is_none_or(|c| c.status.as_str() != "True"),
        "{:?}",
        t.status
    );
}

#[tokio::test]
async fn a_revoked_privilege_is_reported_as_permission_denied_until_it_is_granted_again() -> anyhow::Result<()> {
    let client = common::cluster().await?;
    let (url, owner) = common::database().await?;
    let role = common::runtime_role(&url, &owner).await?;
    let run = unique_name("dberr-grant");
    let op = common::operator(&client, &role.pool, &run).await?;
    let api: Api<Tenant> = Api::all(client.clone());
    let slug = unique_name("denied");

    // The schema owner takes away a privilege the operator needs.
    sqlx::query("REVOKE INSERT ON tenants FROM countersign_runtime")
        .execute(&owner)
        .await?;
    let result = async {
        api.create(
            &PostParams::default(),
            &common::tenant(&slug, &run, json!({"slug": slug, "name": "Denied"}))?,
        )
        .await?;
        let denied = wait_tenant(&api, &slug, "DatabasePermissionDenied", |t| {
            has_condition(t, "Synced", "False", "DatabasePermissionDenied")
        })
        .await?;
        assert_stalled_by(&denied, "DatabasePermissionDenied");
        let synced = message(&denied, "Synced");
        assert!(synced.contains("database role lacks a privilege"), "{synced}");
        assert!(synced.contains("permission denied for table tenants"), "{synced}");
        assert!(synced.contains("SQLSTATE 42501"), "{synced}");
        assert!(synced.contains("countersign migrate"), "{synced}");
        assert!(!synced.contains(&role.url) && !synced.contains(&role.name), "{synced}");
        assert_eq!(message(&denied, "Stalled"), synced);
        wait_counted(&op, "DatabasePermissionDenied").await?;
        assert_eq!(errors(&op, "DatabaseUnavailable").await?, 0.0);
        let events = common::events_for(&client, &slug).await?;
        assert!(
            events.iter().any(|(reason, _)| reason == "DatabasePermissionDenied"),
            "{events:?}"
        );
        assert_eq!(written(&owner, &slug).await?, (0, 0, 0), "nothing may be written");

        // Restoring the grant heals it without touching the spec: the
        // operator keeps looking with back-off.
        sqlx::query("GRANT INSERT ON tenants TO countersign_runtime")
            .execute(&owner)
            .await?;
        let live = wait_tenant(&api, &slug, "Ready once granted", ready).await?;
        assert!(has_condition(&live, "Stalled", "False", "Live"));
        assert_eq!(written(&owner, &slug).await?, (1, 1, 1));
        anyhow::Ok(())
    }
    .await;
    sqlx::query("GRANT INSERT ON tenants TO countersign_runtime")
        .execute(&owner)
        .await?;
    op.shutdown().await;
    result
}

#[tokio::test]
async fn a_constraint_the_operator_cannot_foresee_is_reported_by_name_without_the_value() -> anyhow::Result<()> {
    let client = common::cluster().await?;
    let (url, owner) = common::database().await?;
    let role = common::runtime_role(&url, &owner).await?;
    let run = unique_name("dberr-check");
    let op = common::operator(&client, &role.pool, &run).await?;
    let api: Api<Tenant> = Api::all(client.clone());
    let slug = unique_name("checked");
    // Names of [a-z0-9_ -] only, so formatting them into SQL is safe.
    let constraint = format!("dberr_no_forbidden_{}", uuid::Uuid::new_v4().simple());
    let forbidden = format!("Forbidden {slug}");
    sqlx::query(AssertSqlSafe(format!(
        "ALTER TABLE tenants ADD CONSTRAINT {constraint} CHECK (name <> '{forbidden}')"
    )))
    .execute(&owner)
    .await?;
    let result = async {
        api.create(
            &PostParams::default(),
            &common::tenant(&slug, &run, json!({"slug": slug, "name": forbidden}))?,
        )
        .await?;
        let refused = wait_tenant(&api, &slug, "DatabaseConstraintViolation", |t| {
            has_condition(t, "Synced", "False", "DatabaseConstraintViolation")
        })
        .await?;
        assert_stalled_by(&refused, "DatabaseConstraintViolation");
        let synced = message(&refused, "Synced");
        assert!(synced.contains(&format!("constraint \"{constraint}\"")), "{synced}");
        assert!(synced.contains("table \"tenants\""), "{synced}");
        assert!(synced.contains("SQLSTATE 23514 check_violation"), "{synced}");
        assert!(!synced.contains(&forbidden), "the value must not be echoed: {synced}");
        wait_counted(&op, "DatabaseConstraintViolation").await?;
        assert_eq!(errors(&op, "DatabaseUnavailable").await?, 0.0);
        assert_eq!(written(&owner, &slug).await?, (0, 0, 0), "nothing may be written");

        // A spec the constraint accepts goes live.
        api.patch(
            &slug,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"name": "Allowed"}})),
        )
        .await?;
        wait_tenant(&api, &slug, "Ready with an allowed name", ready).await?;
        assert_eq!(written(&owner, &slug).await?, (1, 1, 1));
        anyhow::Ok(())
    }
    .await;
    sqlx::query(AssertSqlSafe(format!(
        "ALTER TABLE tenants DROP CONSTRAINT IF EXISTS {constraint}"
    )))
    .execute(&owner)
    .await?;
    op.shutdown().await;
    result
}

#[tokio::test]
async fn a_missing_column_is_a_schema_mismatch() -> anyhow::Result<()> {
    let client = common::cluster().await?;
    let (url, owner) = common::database().await?;
    let role = common::runtime_role(&url, &owner).await?;
    let run = unique_name("dberr-schema");
    let op = common::operator(&client, &role.pool, &run).await?;
    let api: Api<Tenant> = Api::all(client.clone());
    let slug = unique_name("drifted");
    sqlx::query("ALTER TABLE tenants RENAME COLUMN owner_display_name TO owner_display_name_dberr")
        .execute(&owner)
        .await?;
    let result = async {
        api.create(
            &PostParams::default(),
            &common::tenant(&slug, &run, json!({"slug": slug, "name": "Drifted"}))?,
        )
        .await?;
        let mismatch = wait_tenant(&api, &slug, "SchemaMismatch", |t| {
            has_condition(t, "Synced", "False", "SchemaMismatch")
        })
        .await?;
        assert_stalled_by(&mismatch, "SchemaMismatch");
        let synced = message(&mismatch, "Synced");
        assert!(synced.contains("SQLSTATE 42703 undefined_column"), "{synced}");
        assert!(synced.contains("countersign migrate"), "{synced}");
        wait_counted(&op, "SchemaMismatch").await?;
        assert_eq!(errors(&op, "DatabaseUnavailable").await?, 0.0);
        assert_eq!(count(&owner, "object_audit").await?, 0);

        sqlx::query("ALTER TABLE tenants RENAME COLUMN owner_display_name_dberr TO owner_display_name")
            .execute(&owner)
            .await?;
        wait_tenant(&api, &slug, "Ready once the column is back", ready).await?;
        assert_eq!(written(&owner, &slug).await?, (1, 1, 1));
        anyhow::Ok(())
    }
    .await;
    // Puts the column back if the test failed before it did (a no-op otherwise).
    sqlx::query(
        "DO $$ BEGIN
           ALTER TABLE tenants RENAME COLUMN owner_display_name_dberr TO owner_display_name;
         EXCEPTION WHEN undefined_column THEN NULL;
         END $$",
    )
    .execute(&owner)
    .await?;
    op.shutdown().await;
    result
}

/// How many times the trigger refuses the tenant's insert. Six failures
/// take at least 15.75 s with the plain back-off (0.5 s doubling, jittered
/// down to half), at most 9.5 s with the serialization retry's cap of 2 s.
const SERIALIZATION_FAILURES: i64 = 6;

#[tokio::test]
async fn a_serialization_failure_is_retried_soon_and_never_reported() -> anyhow::Result<()> {
    let client = common::cluster().await?;
    let (url, owner) = common::database().await?;
    let role = common::runtime_role(&url, &owner).await?;
    let run = unique_name("dberr-serial");
    let op = common::operator(&client, &role.pool, &run).await?;
    let api: Api<Tenant> = Api::all(client.clone());
    let slug = unique_name("contended");
    // [a-z0-9_] only (and the slug [a-z0-9-]), so formatting them into SQL is safe.
    let name = format!("dberr_serial_{}", uuid::Uuid::new_v4().simple());
    // A sequence counts the attempts: nextval is not rolled back with the
    // transaction the trigger aborts, so only the first attempts fail.
    for statement in [
        format!("CREATE SEQUENCE {name}"),
        format!("GRANT USAGE ON SEQUENCE {name} TO countersign_runtime"),
        format!(
            "CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
               IF NEW.slug = '{slug}' AND nextval('{name}') <= {SERIALIZATION_FAILURES} THEN
                 RAISE EXCEPTION 'could not serialize access (provoked by the test)' USING ERRCODE = '40001';
               END IF;
               RETURN NEW;
             END $$"
        ),
        format!("CREATE TRIGGER {name} BEFORE INSERT ON tenants FOR EACH ROW EXECUTE FUNCTION {name}()"),
    ] {
        sqlx::query(AssertSqlSafe(statement)).execute(&owner).await?;
    }

    let result = async {
        // Every status the Tenant shows, from before it exists until Ready.
        let (listed, listed_rx) = tokio::sync::oneshot::channel();
        let watch_api = api.clone();
        let fields = format!("metadata.name={slug}");
        let watch = tokio::spawn(async move {
            let mut listed = Some(listed);
            let mut seen: Vec<Tenant> = Vec::new();
            let mut stream = watcher(watch_api, watcher::Config::default().fields(&fields)).boxed();
            while let Some(event) = stream.next().await {
                match event? {
                    watcher::Event::InitDone => {
                        if let Some(tx) = listed.take() {
                            let _ = tx.send(());
                        }
                    }
                    watcher::Event::Apply(t) | watcher::Event::InitApply(t) => {
                        let done = ready(&t);
                        seen.push(t);
                        if done {
                            break;
                        }
                    }
                    watcher::Event::Init | watcher::Event::Delete(_) => {}
                }
            }
            anyhow::Ok(seen)
        });
        tokio::time::timeout(Duration::from_secs(30), listed_rx).await??;

        let started = Instant::now();
        api.create(
            &PostParams::default(),
            &common::tenant(&slug, &run, json!({"slug": slug, "name": "Contended"}))?,
        )
        .await?;
        let seen = tokio::time::timeout(Duration::from_secs(90), watch).await???;
        let took = started.elapsed();

        let reported: Vec<_> = seen
            .iter()
            .filter_map(|t| common::condition_of(t.status.as_ref(), "Synced"))
            .filter(|c| c.status.as_str() != "True")
            .collect();
        assert!(reported.is_empty(), "the failures were reported: {reported:?}");
        assert!(seen.last().is_some_and(ready), "the watch ended before Ready: {seen:?}");
        let attempts: i64 = sqlx::query_scalar(AssertSqlSafe(format!("SELECT last_value FROM {name}")))
            .fetch_one(&owner)
            .await?;
        assert_eq!(
            attempts,
            SERIALIZATION_FAILURES + 1,
            "failed attempts and the one that passed"
        );
        assert_eq!(
            errors(&op, "DatabaseSerializationFailure").await?,
            SERIALIZATION_FAILURES as f64
        );
        assert_eq!(
            metric(&op, "countersign_reconcile_errors_total{kind=\"Tenant\"").await?,
            SERIALIZATION_FAILURES as f64,
            "no error of another reason"
        );
        assert!(
            took < Duration::from_secs(15),
            "retried soon, not with the full back-off: {took:?}"
        );
        let events = common::events_for(&client, &slug).await?;
        assert!(
            !events
                .iter()
                .any(|(reason, note)| reason.starts_with("Database") || note.starts_with("Synced=False")),
            "{events:?}"
        );
        assert_eq!(written(&owner, &slug).await?, (1, 1, 1));
        anyhow::Ok(())
    }
    .await;
    for statement in [
        format!("DROP TRIGGER IF EXISTS {name} ON tenants"),
        format!("DROP FUNCTION IF EXISTS {name}()"),
        format!("DROP SEQUENCE IF EXISTS {name}"),
    ] {
        sqlx::query(AssertSqlSafe(statement)).execute(&owner).await?;
    }
    op.shutdown().await;
    result
}
