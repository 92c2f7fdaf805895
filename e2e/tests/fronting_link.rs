//! FrontingLinks end to end: dependencies on platform resources, scope checks,
//! immutability at admission, conflicts, and a resource that disappears.

mod common;

use common::{status_has, wait_for};
use countersign_crds::FrontingLink;
use countersign_e2e::unique_name;
use kube::Client;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::json;
use sqlx::PgPool;
use std::time::Duration;

fn link(name: &str, run: &str, source: &str, target: &str, map: serde_json::Value) -> anyhow::Result<FrontingLink> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "platform.countersign.dev/v1alpha1", "kind": "FrontingLink",
        "metadata": {"name": name, "labels": {common::TEST_LABEL: run}},
        "spec": {"sourceSlug": source, "targetSlug": target, "scopeMap": map},
    }))?)
}

fn has(l: &FrontingLink, type_: &str, status: &str, reason: &str) -> bool {
    status_has(l.status.as_ref(), l.metadata.generation, type_, status, reason)
}

fn message(l: &FrontingLink) -> String {
    l.status
        .as_ref()
        .and_then(|s| s.condition("Ready"))
        .map(|c| c.message.clone())
        .unwrap_or_default()
}

async fn wait_link(
    api: &Api<FrontingLink>,
    name: &str,
    what: &str,
    pred: impl Fn(&FrontingLink) -> bool,
) -> anyhow::Result<FrontingLink> {
    wait_for(
        &format!("FrontingLink {name} {what}"),
        async || Ok(api.get_opt(name).await?),
        pred,
    )
    .await
}

async fn resource(pool: &PgPool, slug: &str, scopes: &[&str]) -> anyhow::Result<()> {
    sqlx::query("INSERT INTO platform_resources (slug, name, scopes) VALUES ($1, $1, $2)")
        .bind(slug)
        .bind(scopes.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .execute(pool)
        .await?;
    Ok(())
}

async fn live_map(pool: &PgPool, source: &str) -> anyhow::Result<Option<serde_json::Value>> {
    Ok(sqlx::query_scalar(
        "SELECT l.scope_map FROM fronting_links l JOIN platform_resources s ON s.id = l.source_resource_id
          WHERE s.slug = $1 AND l.deleted_at IS NULL",
    )
    .bind(source)
    .fetch_optional(pool)
    .await?)
}

struct World {
    client: Client,
    pool: PgPool,
    run: String,
    api: Api<FrontingLink>,
    op: countersign_operator::run::Running,
}

async fn world() -> anyhow::Result<World> {
    let client = common::cluster().await?;
    let (_url, pool) = common::database().await?;
    let run = unique_name("fl");
    // Resources live only in the database: the operator hears of them (and
    // of edited links) from its change notifications, not from a resync.
    let op = common::operator_with_resync(&client, &pool, &run, common::HOUR).await?;
    let api = Api::all(client.clone());
    Ok(World {
        client,
        pool,
        run,
        api,
        op,
    })
}

#[tokio::test]
async fn a_link_waits_for_its_resources_checks_scopes_and_updates_only_its_scope_map() -> anyhow::Result<()> {
    let w = world().await?;
    let (gw, api_slug) = (unique_name("gw"), unique_name("api"));
    let name = unique_name("front");
    w.api
        .create(
            &PostParams::default(),
            &link(&name, &w.run, &gw, &api_slug, json!({"gw:read": ["api:read"]}))?,
        )
        .await?;
    let waiting = wait_link(&w.api, &name, "WaitingForDependency", |l| {
        has(l, "Ready", "False", "WaitingForDependency")
    })
    .await?;
    assert!(
        message(&waiting).contains(&gw) && message(&waiting).contains(&api_slug),
        "{}",
        message(&waiting)
    );

    // The platform creates the resources: the link goes live by itself.
    resource(&w.pool, &gw, &["gw:read", "gw:write"]).await?;
    resource(&w.pool, &api_slug, &["api:read", "api:write"]).await?;
    wait_link(&w.api, &name, "live", |l| has(l, "Ready", "True", "Live")).await?;
    assert_eq!(live_map(&w.pool, &gw).await?, Some(json!({"gw:read": ["api:read"]})));

    // Only the scope map changes in place.
    w.api
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"scopeMap": {"gw:read": ["api:read"], "gw:write": ["api:write", "api:read"]}}}),
            ),
        )
        .await?;
    wait_link(&w.api, &name, "live with the new map", |l| {
        has(l, "Ready", "True", "Live")
    })
    .await?;
    assert_eq!(
        live_map(&w.pool, &gw).await?,
        Some(json!({"gw:read": ["api:read"], "gw:write": ["api:read", "api:write"]}))
    );
    let actions: Vec<String> =
        sqlx::query_scalar("SELECT action FROM audit_log WHERE kind = 'FrontingLink' ORDER BY seq")
            .fetch_all(&w.pool)
            .await?;
    assert_eq!(actions, ["create", "update"]);

    // The scope map edited in the database is put back when it happens.
    sqlx::query(
        "UPDATE fronting_links SET scope_map = '{\"gw:read\": [\"api:write\"]}'
          WHERE source_resource_id = (SELECT id FROM platform_resources WHERE slug = $1)",
    )
    .bind(&gw)
    .execute(&w.pool)
    .await?;
    common::wait_row(
        &w.pool,
        "SELECT l.scope_map::text FROM fronting_links l JOIN platform_resources s ON s.id = l.source_resource_id
          WHERE s.slug = $1 AND l.deleted_at IS NULL",
        &gw,
        // jsonb's text form.
        r#"{"gw:read": ["api:read"], "gw:write": ["api:read", "api:write"]}"#,
        Duration::from_secs(5),
    )
    .await?;
    let drifted = common::drifted_events(&w.client, &name).await?;
    assert!(drifted.len() == 1 && drifted[0].contains("(scope_map)"), "{drifted:?}");

    // Source and target are immutable: the API server says what to do instead.
    let err = w
        .api
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"sourceSlug": "elsewhere"}})),
        )
        .await
        .expect_err("sourceSlug is immutable");
    assert!(
        err.to_string().contains("delete the FrontingLink and create a new one"),
        "{err}"
    );

    // A scope the resources do not define is refused, naming the field.
    let bad = unique_name("bad");
    let (s2, t2) = (unique_name("s"), unique_name("t"));
    resource(&w.pool, &s2, &["s:a"]).await?;
    resource(&w.pool, &t2, &["t:a"]).await?;
    w.api
        .create(
            &PostParams::default(),
            &link(&bad, &w.run, &s2, &t2, json!({"t:a": ["s:a"]}))?,
        )
        .await?;
    let refused = wait_link(&w.api, &bad, "UnknownScope", |l| {
        has(l, "Ready", "False", "UnknownScope")
    })
    .await?;
    assert!(message(&refused).contains("spec.scopeMap"), "{}", message(&refused));
    assert_eq!(live_map(&w.pool, &s2).await?, None, "nothing written");

    // A second link for the same pair conflicts.
    let twin = unique_name("twin");
    w.api
        .create(
            &PostParams::default(),
            &link(&twin, &w.run, &gw, &api_slug, json!({"gw:read": ["api:read"]}))?,
        )
        .await?;
    wait_link(&w.api, &twin, "Conflict", |l| has(l, "Ready", "False", "Conflict")).await?;

    // Deleting the link soft-deletes its row.
    w.api.delete(&name, &DeleteParams::default()).await?;
    wait_for(
        "the link to be gone",
        async || Ok(Some(w.api.get_opt(&name).await?.is_none())),
        |gone| *gone,
    )
    .await?;
    assert_eq!(live_map(&w.pool, &gw).await?, None);
    w.op.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_link_whose_resource_disappears_says_so() -> anyhow::Result<()> {
    let w = world().await?;
    let (gw, api_slug) = (unique_name("gw"), unique_name("api"));
    resource(&w.pool, &gw, &["gw:read"]).await?;
    resource(&w.pool, &api_slug, &["api:read"]).await?;
    let name = unique_name("front");
    w.api
        .create(
            &PostParams::default(),
            &link(&name, &w.run, &gw, &api_slug, json!({"gw:read": ["api:read"]}))?,
        )
        .await?;
    wait_link(&w.api, &name, "live", |l| has(l, "Ready", "True", "Live")).await?;

    // The platform deletes the target resource with ?cascade=true, taking the link with it.
    sqlx::query(
        "DELETE FROM fronting_links WHERE target_resource_id = (SELECT id FROM platform_resources WHERE slug = $1)",
    )
    .bind(&api_slug)
    .execute(&w.pool)
    .await?;
    sqlx::query("DELETE FROM platform_resources WHERE slug = $1")
        .bind(&api_slug)
        .execute(&w.pool)
        .await?;
    let missing = wait_link(&w.api, &name, "ResourceMissing", |l| {
        has(l, "Ready", "False", "ResourceMissing")
    })
    .await?;
    assert!(message(&missing).contains(&api_slug), "{}", message(&missing));
    assert_eq!(
        missing.status.as_ref().and_then(|s| s.database_id.clone()),
        None,
        "nothing is live"
    );
    let events = common::events_for(&w.client, &name).await?;
    assert!(
        events.iter().any(|(reason, _)| reason == "ResourceMissing"),
        "{events:?}"
    );

    // The resource comes back: the link is written again.
    resource(&w.pool, &api_slug, &["api:read"]).await?;
    wait_link(&w.api, &name, "live again", |l| has(l, "Ready", "True", "Live")).await?;
    assert!(live_map(&w.pool, &gw).await?.is_some());
    w.op.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn what_the_object_alone_shows_wrong_is_refused_at_admission() -> anyhow::Result<()> {
    let client = common::cluster().await?;
    let cases = [
        (
            json!({"sourceSlug": "gw", "targetSlug": "gw", "scopeMap": {"a": ["b"]}}),
            "cannot front itself",
        ),
        (
            json!({"sourceSlug": "gw", "targetSlug": "api", "scopeMap": {}}),
            "at least one entry",
        ),
        (
            json!({"sourceSlug": "gw", "targetSlug": "api", "scopeMap": {"a": []}}),
            "at least one target scope",
        ),
    ];
    for (spec, expect) in cases {
        let obj: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "platform.countersign.dev/v1alpha1", "kind": "FrontingLink",
            "metadata": {"name": unique_name("bad")}, "spec": spec,
        }))?;
        let err = common::create_dynamic(&client, &obj, true).await.expect_err("rejected");
        assert!(err.to_string().contains(expect), "{expect}: {err}");
    }
    Ok(())
}
