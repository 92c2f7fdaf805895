//! Tenants reconciled end to end against a real API server and PostgreSQL.

mod common;

use common::{count, has_condition, wait_tenant};
use countersign_crds::Tenant;
use countersign_e2e::unique_name;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use sqlx::Row;
use std::time::Duration;

fn ready(t: &Tenant) -> bool {
    has_condition(t, "Ready", "True", "Live")
        && t.status.as_ref().and_then(|s| s.observed_generation) == t.metadata.generation
}

#[tokio::test]
async fn a_tenant_is_created_updated_and_soft_deleted() -> anyhow::Result<()> {
    let client = common::cluster().await?;
    let (_url, pool) = common::database().await?;
    let run = unique_name("life");
    let op = common::operator(&client, &pool, &run).await?;
    let api: Api<Tenant> = Api::all(client.clone());
    let slug = unique_name("acme");
    let mut t = common::tenant(
        &slug,
        &run,
        json!({
            "slug": slug, "name": "Acme Corporation", "status": "SUSPENDED",
            "owner": {"email": "owner@acme.example", "displayName": "Ada"},
            "allowedNamespaces": ["team-b", "team-a"],
            "branding": {"appName": "Acme", "logoUrl": "https://static.acme.example/logo.png",
                         "emailTemplates": {"userInvitedSubject": "Welcome to {{app_name}}"}},
        }),
    )?;
    t.annotations_mut()
        .insert("countersign.dev/requested-by".into(), "alice@example.com".into());
    api.create(&PostParams::default(), &t).await?;
    let live = wait_tenant(&api, &slug, "Ready", ready).await?;
    let status = live.status.clone().unwrap_or_default();
    assert!(has_condition(&live, "Synced", "True", "ReconcileSucceeded"));
    assert!(has_condition(&live, "Stalled", "False", "Live"));
    assert!(has_condition(&live, "Reconciling", "False", "Live"));
    assert_eq!(status.live_digest.as_ref().map(String::len), Some(64));
    assert!(live.finalizers().iter().any(|f| f == "countersign.dev/cleanup"));

    let row = sqlx::query("SELECT id::text AS id, name, status, owner_email, allowed_namespaces, branding, created_by FROM tenants WHERE slug = $1")
        .bind(&slug)
        .fetch_one(&pool)
        .await?;
    assert_eq!(status.database_id.as_deref(), Some(row.get::<String, _>("id").as_str()));
    assert_eq!(row.get::<String, _>("name"), "Acme Corporation");
    assert_eq!(row.get::<String, _>("status"), "SUSPENDED");
    assert_eq!(
        row.get::<Option<String>, _>("owner_email").as_deref(),
        Some("owner@acme.example")
    );
    assert_eq!(row.get::<Vec<String>, _>("allowed_namespaces"), ["team-a", "team-b"]);
    assert_eq!(
        row.get::<serde_json::Value, _>("branding")["email_templates"]["user_invited_subject"],
        "Welcome to {{app_name}}"
    );
    assert_eq!(
        row.get::<Option<String>, _>("created_by").as_deref(),
        Some("countersign")
    );
    let audit = sqlx::query("SELECT action, requester, digest FROM audit_log ORDER BY seq")
        .fetch_all(&pool)
        .await?;
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].get::<String, _>("action"), "create");
    assert_eq!(
        audit[0].get::<Option<String>, _>("requester").as_deref(),
        Some("alice@example.com")
    );
    assert_eq!(audit[0].get::<Option<String>, _>("digest"), status.live_digest);
    let events = common::events_for(&client, &slug).await?;
    // Routine success is in the status only: no event per object going live.
    assert!(!events.iter().any(|(reason, _)| reason == "Live"), "{events:?}");

    api.patch(
        &slug,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"name": "Acme Renamed", "status": "ACTIVE"}})),
    )
    .await?;
    let updated = wait_tenant(&api, &slug, "Ready at generation 2", |t| {
        ready(t) && t.metadata.generation == Some(2)
    })
    .await?;
    assert_ne!(
        updated.status.as_ref().and_then(|s| s.live_digest.clone()),
        status.live_digest
    );
    let (name, st): (String, String) = sqlx::query_as("SELECT name, status FROM tenants WHERE slug = $1")
        .bind(&slug)
        .fetch_one(&pool)
        .await?;
    assert_eq!((name.as_str(), st.as_str()), ("Acme Renamed", "ACTIVE"));
    let actions: Vec<String> = sqlx::query_scalar("SELECT action FROM audit_log ORDER BY seq")
        .fetch_all(&pool)
        .await?;
    assert_eq!(actions, ["create", "update"]);

    api.delete(&slug, &DeleteParams::default()).await?;
    common::wait_gone(&api, &slug).await?;
    let (deleted_at, deleted_by): (Option<chrono::DateTime<chrono::Utc>>, Option<String>) =
        sqlx::query_as("SELECT deleted_at, deleted_by FROM tenants WHERE slug = $1")
            .bind(&slug)
            .fetch_one(&pool)
            .await?;
    assert!(deleted_at.is_some(), "the row is soft-deleted");
    assert_eq!(deleted_by.as_deref(), Some("countersign"));
    assert_eq!(count(&pool, "managed_objects").await?, 0);
    let actions: Vec<String> = sqlx::query_scalar("SELECT action FROM audit_log ORDER BY seq")
        .fetch_all(&pool)
        .await?;
    assert_eq!(actions, ["create", "update", "delete"]);
    let verified = countersign_reconcilers::audit::verify(&pool, common::test_key().audit_chain_key()).await?;
    assert_eq!((verified.entries, verified.broken), (3, None));
    op.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn orphan_policy_leaves_the_row_live_and_releases_it() -> anyhow::Result<()> {
    let client = common::cluster().await?;
    let (_url, pool) = common::database().await?;
    let run = unique_name("orphan");
    let op = common::operator(&client, &pool, &run).await?;
    let api: Api<Tenant> = Api::all(client.clone());
    let slug = unique_name("keep");
    api.create(
        &PostParams::default(),
        &common::tenant(
            &slug,
            &run,
            json!({"slug": slug, "name": "Kept", "deletionPolicy": "Orphan"}),
        )?,
    )
    .await?;
    wait_tenant(&api, &slug, "Ready", ready).await?;
    api.delete(&slug, &DeleteParams::default()).await?;
    common::wait_gone(&api, &slug).await?;
    let deleted: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT deleted_at FROM tenants WHERE slug = $1")
            .bind(&slug)
            .fetch_one(&pool)
            .await?;
    assert!(deleted.is_none(), "an orphaned row stays live");
    assert_eq!(count(&pool, "managed_objects").await?, 0);
    let actions: Vec<String> = sqlx::query_scalar("SELECT action FROM audit_log ORDER BY seq")
        .fetch_all(&pool)
        .await?;
    assert_eq!(actions, ["create", "orphan"]);
    op.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn reconciles_that_change_nothing_write_nothing() -> anyhow::Result<()> {
    let client = common::cluster().await?;
    let (_url, pool) = common::database().await?;
    let run = unique_name("noop");
    let api: Api<Tenant> = Api::all(client.clone());
    let slug = unique_name("quiet");
    let mut op = common::operator(&client, &pool, &run).await?;
    api.create(
        &PostParams::default(),
        &common::tenant(&slug, &run, json!({"slug": slug, "name": "Quiet"}))?,
    )
    .await?;
    let settled = wait_tenant(&api, &slug, "Ready", ready).await?;
    let before_rv = settled.resource_version();
    let snapshot = |pool: sqlx::PgPool| async move {
        let rows: Vec<(String,)> = sqlx::query_as("SELECT row_to_json(t)::text FROM tenants t ORDER BY 1")
            .fetch_all(&pool)
            .await?;
        let owners: Vec<(String,)> = sqlx::query_as("SELECT row_to_json(m)::text FROM managed_objects m ORDER BY 1")
            .fetch_all(&pool)
            .await?;
        let audit = count(&pool, "audit_log").await?;
        anyhow::Ok((rows, owners, audit))
    };
    let before = snapshot(pool.clone()).await?;
    assert_eq!(before.2, 1);
    // Each fresh operator lists and reconciles every object once; do it three times.
    for _ in 0..3 {
        op.shutdown().await;
        op = common::operator(&client, &pool, &run).await?;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while common::metric(&op, "countersign_reconciles_total{kind=\"Tenant\",result=\"ok\"}").await? < 1.0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the restarted operator did not reconcile"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Give a late write the chance to show up before comparing.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = api.get(&slug).await?;
    assert_eq!(
        after.resource_version(),
        before_rv,
        "a no-op reconcile must not patch the object"
    );
    assert_eq!(
        snapshot(pool.clone()).await?,
        before,
        "a no-op reconcile must not write the database"
    );
    op.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn rows_made_outside_the_operator_are_not_overwritten_without_adopt() -> anyhow::Result<()> {
    let client = common::cluster().await?;
    let (_url, pool) = common::database().await?;
    let run = unique_name("own");
    let op = common::operator(&client, &pool, &run).await?;
    let api: Api<Tenant> = Api::all(client.clone());
    let slug = unique_name("handmade");
    sqlx::query("INSERT INTO tenants (slug, name, created_by) VALUES ($1, 'Made by hand', 'admin-ui')")
        .bind(&slug)
        .execute(&pool)
        .await?;

    api.create(
        &PostParams::default(),
        &common::tenant(&slug, &run, json!({"slug": slug, "name": "From git"}))?,
    )
    .await?;
    let refused = wait_tenant(&api, &slug, "AlreadyExists", |t| {
        has_condition(t, "Ready", "False", "AlreadyExists")
    })
    .await?;
    let message = common::condition_of(refused.status.as_ref(), "Ready")
        .map(|c| c.message.clone())
        .unwrap_or_default();
    assert!(
        message.contains("spec.slug") && message.contains("countersign.dev/adopt"),
        "{message}"
    );
    assert!(has_condition(&refused, "Stalled", "True", "AlreadyExists"));
    let name: String = sqlx::query_scalar("SELECT name FROM tenants WHERE slug = $1")
        .bind(&slug)
        .fetch_one(&pool)
        .await?;
    assert_eq!(name, "Made by hand");
    assert_eq!(count(&pool, "audit_log").await?, 0);

    // A second object claiming the same slug while the first adopts it.
    let rival = format!("{slug}-rival");
    api.patch(
        &slug,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"countersign.dev/adopt": "true"}}})),
    )
    .await?;
    wait_tenant(&api, &slug, "Ready after adopt", ready).await?;
    let (name, adopted): (String, bool) = sqlx::query_as(
        "SELECT t.name, m.adopted FROM tenants t JOIN managed_objects m ON m.row_id = t.id WHERE t.slug = $1",
    )
    .bind(&slug)
    .fetch_one(&pool)
    .await?;
    assert_eq!((name.as_str(), adopted), ("From git", true));
    let actions: Vec<String> = sqlx::query_scalar("SELECT action FROM audit_log ORDER BY seq")
        .fetch_all(&pool)
        .await?;
    assert_eq!(actions, ["adopt"]);

    let mut rival_obj = common::tenant(&rival, &run, json!({"slug": slug, "name": "Tug of war"}))?;
    rival_obj
        .annotations_mut()
        .insert("countersign.dev/adopt".into(), "true".into());
    api.create(&PostParams::default(), &rival_obj).await?;
    let conflict = wait_tenant(&api, &rival, "Conflict", |t| {
        has_condition(t, "Ready", "False", "Conflict")
    })
    .await?;
    let message = common::condition_of(conflict.status.as_ref(), "Ready")
        .map(|c| c.message.clone())
        .unwrap_or_default();
    assert!(message.contains(&slug), "{message}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let name: String = sqlx::query_scalar("SELECT name FROM tenants WHERE slug = $1")
        .bind(&slug)
        .fetch_one(&pool)
        .await?;
    assert_eq!(name, "From git", "the conflicting object must not overwrite the row");
    assert_eq!(count(&pool, "audit_log").await?, 1);

    // Deleting the conflicting object touches nothing it does not own.
    api.delete(&rival, &DeleteParams::default()).await?;
    common::wait_gone(&api, &rival).await?;
    let deleted: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT deleted_at FROM tenants WHERE slug = $1")
            .bind(&slug)
            .fetch_one(&pool)
            .await?;
    assert!(deleted.is_none());
    op.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn an_invalid_tenant_stalls_naming_the_field_and_leaves_the_database_untouched() -> anyhow::Result<()> {
    let client = common::cluster().await?;
    let (_url, pool) = common::database().await?;
    let run = unique_name("bad");
    let op = common::operator(&client, &pool, &run).await?;
    let api: Api<Tenant> = Api::all(client.clone());
    let blank = unique_name("blank");
    let template = unique_name("template");
    api.create(
        &PostParams::default(),
        &common::tenant(&blank, &run, json!({"slug": blank, "name": "   "}))?,
    )
    .await?;
    api.create(
        &PostParams::default(),
        &common::tenant(
            &template,
            &run,
            json!({"slug": template, "name": "T",
            "branding": {"emailTemplates": {"userInvitedHtml": "<p>{{password}}</p>"}}}),
        )?,
    )
    .await?;
    for (name, field) in [
        (&blank, "spec.name"),
        (&template, "spec.branding.emailTemplates.userInvitedHtml"),
    ] {
        let t = wait_tenant(&api, name, "Stalled", |t| {
            has_condition(t, "Stalled", "True", "InvalidSpec")
        })
        .await?;
        assert!(has_condition(&t, "Ready", "False", "InvalidSpec"));
        let message = common::condition_of(t.status.as_ref(), "Stalled")
            .map(|c| c.message.clone())
            .unwrap_or_default();
        assert!(message.starts_with(field), "{message}");
    }
    assert_eq!(count(&pool, "tenants").await?, 0);
    assert_eq!(count(&pool, "audit_log").await?, 0);

    // Fixing the spec un-stalls it.
    api.patch(
        &blank,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"name": "Now valid"}})),
    )
    .await?;
    wait_tenant(&api, &blank, "Ready", ready).await?;
    op.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn drift_in_a_managed_row_is_corrected() -> anyhow::Result<()> {
    let client = common::cluster().await?;
    let (_url, pool) = common::database().await?;
    let run = unique_name("drift");
    // Heard from the database at once, not found by a resync.
    let op = common::operator_with_resync(&client, &pool, &run, common::HOUR).await?;
    let api: Api<Tenant> = Api::all(client.clone());
    let slug = unique_name("drifty");
    api.create(
        &PostParams::default(),
        &common::tenant(&slug, &run, json!({"slug": slug, "name": "Declared"}))?,
    )
    .await?;
    wait_tenant(&api, &slug, "Ready", ready).await?;
    sqlx::query("UPDATE tenants SET name = 'Edited behind our back' WHERE slug = $1")
        .bind(&slug)
        .execute(&pool)
        .await?;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let name: String = sqlx::query_scalar("SELECT name FROM tenants WHERE slug = $1")
            .bind(&slug)
            .fetch_one(&pool)
            .await?;
        if name == "Declared" {
            break;
        }
        if std::time::Instant::now() > deadline {
            let actions: Vec<String> = sqlx::query_scalar("SELECT action FROM audit_log ORDER BY seq")
                .fetch_all(&pool)
                .await?;
            let reconciles = common::metric(&op, "countersign_reconciles_total").await?;
            panic!(
                "drift was not corrected; audit {actions:?}; reconciles {reconciles}; status {:?}",
                api.get(&slug).await?.status
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let actions: Vec<String> = sqlx::query_scalar("SELECT action FROM audit_log ORDER BY seq")
        .fetch_all(&pool)
        .await?;
    assert_eq!(actions, ["create", "correct-drift"]);
    let drifted = common::drifted_events(&client, &slug).await?;
    assert!(
        drifted.len() == 1 && drifted[0].contains("(name)"),
        "one Drifted event naming the column: {drifted:?}"
    );
    op.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_child_waits_for_its_parent_tenant() -> anyhow::Result<()> {
    let client = common::cluster().await?;
    let (_url, pool) = common::database().await?;
    let run = unique_name("parent");
    let op = common::operator(&client, &pool, &run).await?;
    let api: Api<Tenant> = Api::all(client.clone());
    let parent = unique_name("root");
    let child = unique_name("leaf");
    api.create(
        &PostParams::default(),
        &common::tenant(
            &child,
            &run,
            json!({"slug": child, "name": "Leaf", "parentTenant": parent}),
        )?,
    )
    .await?;
    wait_tenant(&api, &child, "WaitingForDependency", |t| {
        has_condition(t, "Ready", "False", "WaitingForDependency")
    })
    .await?;
    assert_eq!(count(&pool, "tenants").await?, 0);
    api.create(
        &PostParams::default(),
        &common::tenant(&parent, &run, json!({"slug": parent, "name": "Root"}))?,
    )
    .await?;
    wait_tenant(&api, &child, "Ready", ready).await?;
    let linked: bool = sqlx::query_scalar(
        "SELECT c.parent_tenant_id = p.id FROM tenants c, tenants p WHERE c.slug = $1 AND p.slug = $2",
    )
    .bind(&child)
    .bind(&parent)
    .fetch_one(&pool)
    .await?;
    assert!(linked);
    op.shutdown().await;
    Ok(())
}
