//! WebhookSubscriptions end to end: a real API server, PostgreSQL, and a
//! local HTTPS webhook receiver on loopback that checks every signature on
//! its own, with the secret it reads from the Kubernetes Secret.

mod common;

use common::approvals::{APPROVERS, EDITORS, GITOPS, Stack};
use common::{status_has, wait_for};
use countersign_crds::webhook_subscription::{VERIFIED, WebhookSubscriptionStatus};
use countersign_crds::{Tenant, WebhookSubscription};
use countersign_e2e::unique_name;
use countersign_e2e::webhook_receiver::{KeySource, WebhookReceiver};
use countersign_operator::run::Running;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use sqlx::{PgPool, Row};
use std::time::Duration;
use uuid::Uuid;

/// The key and name suffix of the Secret the operator generates.
const GENERATED_KEY: &str = "signing-secret";
const ROTATE: &str = "countersign.dev/rotate-secret";
/// The prefix of this kind's reconcile counters on /metrics.
const RECONCILES: &str = "countersign_reconciles_total{kind=\"WebhookSubscription\"";

/// One test's world: a namespace, a live tenant allowing it, the receiver
/// and an operator that trusts the receiver's CA.
struct World {
    client: Client,
    pool: PgPool,
    run: String,
    ns: String,
    tenant: String,
    receiver: WebhookReceiver,
    allow_loopback: bool,
    op: Option<Running>,
}

async fn world(allow_loopback: bool) -> anyhow::Result<World> {
    common::secrets::captured_logs();
    let client = common::cluster().await?;
    let (_url, pool) = common::database().await?;
    let run = unique_name("whs");
    let ns = unique_name("team");
    common::ensure_namespace(&client, &ns).await?;
    let receiver = WebhookReceiver::start(KeySource::None).await?;
    let mut w = World {
        client: client.clone(),
        pool,
        run,
        ns: ns.clone(),
        tenant: unique_name("acme"),
        receiver,
        allow_loopback,
        op: None,
    };
    w.start_operator().await?;
    let tenants: Api<Tenant> = Api::all(client);
    tenants
        .create(
            &PostParams::default(),
            &common::tenant(
                &w.tenant,
                &w.run,
                json!({"slug": w.tenant, "name": "Acme", "allowedNamespaces": [ns]}),
            )?,
        )
        .await?;
    common::wait_tenant(&tenants, &w.tenant, "Ready", |t| {
        common::has_condition(t, "Ready", "True", "Live")
    })
    .await?;
    Ok(w)
}

impl World {
    async fn start_operator(&mut self) -> anyhow::Result<()> {
        let (allow_loopback, ca) = (self.allow_loopback, self.receiver.ca_pem().to_string());
        let op = common::operator_with(&self.client, &self.pool, &self.run, |o| {
            o.outbound.allow_loopback = allow_loopback;
            o.outbound.extra_roots_pem = vec![ca];
            o.resync = common::HOUR;
        })
        .await?;
        self.op = Some(op);
        Ok(())
    }

    async fn stop_operator(&mut self) {
        if let Some(op) = self.op.take() {
            op.shutdown().await;
        }
    }

    fn op(&self) -> anyhow::Result<&Running> {
        self.op.as_ref().ok_or_else(|| anyhow::anyhow!("no operator running"))
    }

    fn subscriptions(&self) -> Api<WebhookSubscription> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    fn subscription(&self, name: &str, url: &str, extra: serde_json::Value) -> anyhow::Result<WebhookSubscription> {
        let mut spec = json!({"tenantRef": {"name": self.tenant}, "url": url, "events": ["certificate.issued"]});
        if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
            s.extend(e.clone());
        }
        Ok(serde_json::from_value(json!({
            "apiVersion": "platform.countersign.dev/v1alpha1", "kind": "WebhookSubscription",
            "metadata": {"name": name, "namespace": self.ns, "labels": {common::TEST_LABEL: self.run}},
            "spec": spec,
        }))?)
    }

    async fn create(&self, name: &str, url: &str, extra: serde_json::Value) -> anyhow::Result<()> {
        self.subscriptions()
            .create(&PostParams::default(), &self.subscription(name, url, extra)?)
            .await?;
        Ok(())
    }

    async fn wait(
        &self,
        name: &str,
        what: &str,
        pred: impl Fn(&WebhookSubscription) -> bool,
    ) -> anyhow::Result<WebhookSubscription> {
        let api = self.subscriptions();
        wait_for(
            &format!("WebhookSubscription {name} {what}"),
            async || Ok(api.get_opt(name).await?),
            pred,
        )
        .await
    }

    /// The generated signing secret of subscription `name`, as the Secret holds it.
    async fn generated(&self, name: &str) -> anyhow::Result<(Secret, String)> {
        let secret = self.secrets().get(&format!("{name}-signing-secret")).await?;
        let value = secret
            .data
            .as_ref()
            .and_then(|d| d.get(GENERATED_KEY))
            .map(|b| String::from_utf8_lossy(&b.0).to_string())
            .ok_or_else(|| anyhow::anyhow!("the generated Secret has no key {GENERATED_KEY}"))?;
        Ok((secret, value))
    }

    /// Sets an annotation and waits until this kind has been reconciled at
    /// least once more (a reconcile that changes nothing leaves no other trace).
    async fn annotate_and_wait_for_reconcile(&self, name: &str, key: &str, value: &str) -> anyhow::Result<()> {
        let op = self.op()?;
        let before = common::metric(op, RECONCILES).await?;
        self.subscriptions()
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"annotations": {key: value}}})),
            )
            .await?;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while common::metric(op, RECONCILES).await? <= before {
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "no reconcile after annotating {name}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Let anything that reconcile triggered (a status write) settle too.
        tokio::time::sleep(Duration::from_secs(2)).await;
        Ok(())
    }

    async fn shutdown(mut self) {
        self.stop_operator().await;
    }
}

fn has(ws: &WebhookSubscription, type_: &str, status: &str, reason: &str) -> bool {
    status_has(
        ws.status.as_ref().map(|s| &s.common),
        ws.metadata.generation,
        type_,
        status,
        reason,
    )
}

fn live(ws: &WebhookSubscription) -> bool {
    has(ws, "Ready", "True", "Live")
}

fn status(ws: &WebhookSubscription) -> WebhookSubscriptionStatus {
    ws.status.clone().unwrap_or_default()
}

fn message(ws: &WebhookSubscription, type_: &str) -> String {
    ws.status
        .as_ref()
        .and_then(|s| s.common.condition(type_))
        .map(|c| c.message.clone())
        .unwrap_or_default()
}

/// The live row of a URL: (id, events, secret_ref).
async fn row(pool: &PgPool, url: &str) -> anyhow::Result<(Uuid, Vec<String>, Uuid)> {
    let r =
        sqlx::query("SELECT id, events, secret_ref FROM webhook_subscriptions WHERE url = $1 AND deleted_at IS NULL")
            .bind(url)
            .fetch_one(pool)
            .await?;
    Ok((r.get("id"), r.get("events"), r.get("secret_ref")))
}

async fn count(pool: &PgPool, sql: &'static str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(sql).fetch_one(pool).await?)
}

/// The plaintext a stored secret opens to with the test key.
async fn opened(pool: &PgPool, id: Uuid) -> anyhow::Result<String> {
    let sealed = countersign_reconcilers::secrets::load(pool, id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no stored secret {id}"))?;
    Ok(String::from_utf8(common::test_key().open(&sealed)?)?)
}

/// No secret in the database, the objects and their status, their events or the logs.
async fn assert_no_plaintext(w: &World, objects: &[&str], secrets: &[&str]) -> anyhow::Result<()> {
    let db = common::secrets::database_text(&w.pool).await?;
    let logs = common::secrets::logs_text();
    assert!(logs.contains("WebhookSubscription"), "the log capture works");
    for name in objects {
        let object = serde_json::to_string(&w.subscriptions().get(name).await?)?;
        let events = format!("{:?}", common::events_for(&w.client, name).await?);
        for secret in secrets {
            assert!(!object.contains(secret), "secret in {name} or its status");
            assert!(!events.contains(secret), "secret in the events of {name}");
        }
    }
    for secret in secrets {
        assert!(secret.len() >= 16, "a real secret is checked");
        assert!(!db.contains(secret), "secret in the database");
        assert!(!logs.contains(secret), "secret in the logs");
    }
    Ok(())
}

#[tokio::test]
async fn a_generated_secret_is_created_once_owned_sealed_and_survives_a_restart() -> anyhow::Result<()> {
    let mut w = world(true).await?;
    let url = w.receiver.url();
    w.create("hooks", &url, json!({})).await?;
    let ws = w.wait("hooks", "live", live).await?;
    let st = status(&ws);
    let fingerprint = st.secret_fingerprint.clone().expect("fingerprint in status");
    assert!(fingerprint.starts_with("hmac-sha256:"), "{fingerprint}");
    assert!(
        st.verification.is_none() && st.common.condition(VERIFIED).is_none(),
        "verify is off"
    );

    // The Secret: generated, 256 bits, owned (controller) by the subscription.
    let (secret, value) = w.generated("hooks").await?;
    assert_eq!(value.len(), 64, "32 random bytes, hex");
    assert!(value.chars().all(|c| c.is_ascii_hexdigit()));
    let owners = secret.owner_references();
    assert_eq!(owners.len(), 1, "{owners:?}");
    assert_eq!(
        (owners[0].kind.as_str(), owners[0].name.as_str(), owners[0].controller),
        ("WebhookSubscription", "hooks", Some(true))
    );
    assert_eq!(Some(owners[0].uid.clone()), ws.uid());

    // The row references the sealed secret, which opens to the Secret's value.
    let (id, events, secret_ref) = row(&w.pool, &url).await?;
    assert_eq!(st.common.database_id, Some(id.to_string()));
    assert_eq!(events, ["certificate.issued"]);
    assert_eq!(opened(&w.pool, secret_ref).await?, value);
    let sealed_fp: String = sqlx::query_scalar("SELECT fingerprint FROM encrypted_secrets WHERE id = $1")
        .bind(secret_ref)
        .fetch_one(&w.pool)
        .await?;
    assert_eq!(sealed_fp, fingerprint);
    let action: String =
        sqlx::query_scalar("SELECT action FROM audit_log WHERE kind = 'WebhookSubscription' ORDER BY seq DESC LIMIT 1")
            .fetch_one(&w.pool)
            .await?;
    assert_eq!(action, "create");

    // A new operator finds everything as it was and writes nothing.
    let audit = count(&w.pool, "SELECT count(*) FROM audit_log").await?;
    let stored = count(&w.pool, "SELECT count(*) FROM encrypted_secrets").await?;
    let version = secret.resource_version();
    w.stop_operator().await;
    w.start_operator().await?;
    w.annotate_and_wait_for_reconcile("hooks", "e2e/touch", "after-restart")
        .await?;
    let (secret_after, value_after) = w.generated("hooks").await?;
    assert_eq!(value_after, value, "never regenerated");
    assert_eq!(
        secret_after.resource_version(),
        version,
        "the Secret was not even rewritten"
    );
    let after = w.subscriptions().get("hooks").await?;
    assert_eq!(status(&after).secret_fingerprint, Some(fingerprint));
    assert_eq!(row(&w.pool, &url).await?, (id, events, secret_ref));
    assert_eq!(
        count(&w.pool, "SELECT count(*) FROM audit_log").await?,
        audit,
        "no audit entry"
    );
    assert_eq!(count(&w.pool, "SELECT count(*) FROM encrypted_secrets").await?, stored);

    // Deleting the subscription soft-deletes the row and revokes its secret.
    w.subscriptions().delete("hooks", &DeleteParams::default()).await?;
    wait_for(
        "the subscription to be gone",
        async || Ok(Some(w.subscriptions().get_opt("hooks").await?.is_none())),
        |gone| *gone,
    )
    .await?;
    let (deleted_by, revoked): (Option<String>, bool) = sqlx::query_as(
        "SELECT w.deleted_by, s.revoked_at IS NOT NULL FROM webhook_subscriptions w
           JOIN encrypted_secrets s ON s.id = w.secret_ref WHERE w.id = $1",
    )
    .bind(id)
    .fetch_one(&w.pool)
    .await?;
    assert_eq!((deleted_by.as_deref(), revoked), (Some("countersign"), true));
    w.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_subscription_edited_or_switched_off_in_the_database_is_restored_when_it_happens() -> anyhow::Result<()> {
    let w = world(true).await?;
    let url = w.receiver.url();
    w.create("hooks", &url, json!({})).await?;
    w.wait("hooks", "live", live).await?;
    sqlx::query("UPDATE webhook_subscriptions SET active = false, events = '{tenant.changed}' WHERE url = $1")
        .bind(&url)
        .execute(&w.pool)
        .await?;
    common::wait_row(
        &w.pool,
        "SELECT active::text || ' ' || array_to_string(events, ',') FROM webhook_subscriptions
          WHERE url = $1 AND deleted_at IS NULL",
        &url,
        "true certificate.issued",
        Duration::from_secs(5),
    )
    .await?;
    let drifted = common::drifted_events(&w.client, "hooks").await?;
    assert!(
        drifted.len() == 1 && drifted[0].contains("(events, active)"),
        "{drifted:?}"
    );
    let action: String =
        sqlx::query_scalar("SELECT action FROM audit_log WHERE kind = 'WebhookSubscription' ORDER BY seq DESC LIMIT 1")
            .fetch_one(&w.pool)
            .await?;
    assert_eq!(action, "correct-drift");
    Ok(())
}

#[tokio::test]
async fn the_rotate_annotation_rotates_the_generated_secret_exactly_once_per_value() -> anyhow::Result<()> {
    let w = world(true).await?;
    let url = w.receiver.url();
    w.create("hooks", &url, json!({})).await?;
    let first = w.wait("hooks", "live", live).await?;
    let fp1 = status(&first).secret_fingerprint.expect("fingerprint");
    let (_, v1) = w.generated("hooks").await?;
    let (id, _, ref1) = row(&w.pool, &url).await?;
    let audit = count(&w.pool, "SELECT count(*) FROM audit_log").await?;

    w.subscriptions()
        .patch(
            "hooks",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {ROTATE: "2026-01-rotation"}}})),
        )
        .await?;
    let rotated = w
        .wait("hooks", "rotated", |ws| {
            let s = status(ws);
            s.last_rotation_token.as_deref() == Some("2026-01-rotation")
                && s.secret_fingerprint.as_deref().is_some_and(|f| f != fp1)
        })
        .await?;
    assert!(live(&rotated), "rotation keeps the subscription live");
    let fp2 = status(&rotated).secret_fingerprint.expect("fingerprint");
    let (secret, v2) = w.generated("hooks").await?;
    assert_ne!(v2, v1, "a new value");
    assert_eq!(
        secret.annotations().get(ROTATE).map(String::as_str),
        Some("2026-01-rotation"),
        "the Secret records the rotation it answers"
    );
    let (id2, _, ref2) = row(&w.pool, &url).await?;
    assert_eq!(id2, id, "the same subscription row");
    assert_ne!(ref2, ref1);
    assert_eq!(opened(&w.pool, ref2).await?, v2);
    let revoked: bool = sqlx::query_scalar("SELECT revoked_at IS NOT NULL FROM encrypted_secrets WHERE id = $1")
        .bind(ref1)
        .fetch_one(&w.pool)
        .await?;
    assert!(revoked, "the old secret stops working at once");
    assert_eq!(
        count(&w.pool, "SELECT count(*) FROM audit_log").await?,
        audit + 1,
        "one audit entry"
    );
    let (action, detail): (String, serde_json::Value) = sqlx::query_as(
        "SELECT action, detail FROM audit_log WHERE kind = 'WebhookSubscription' ORDER BY seq DESC LIMIT 1",
    )
    .fetch_one(&w.pool)
    .await?;
    assert_eq!(action, "rotate-secret");
    assert_eq!(detail["secret_fingerprint"], json!(fp2));

    // The same value again (any other change makes the object reconcile): no second rotation.
    w.annotate_and_wait_for_reconcile("hooks", "e2e/touch", "1").await?;
    let (_, v_again) = w.generated("hooks").await?;
    assert_eq!(v_again, v2);
    assert_eq!(row(&w.pool, &url).await?.2, ref2);
    assert_eq!(
        status(&w.subscriptions().get("hooks").await?).secret_fingerprint,
        Some(fp2.clone())
    );
    assert_eq!(count(&w.pool, "SELECT count(*) FROM audit_log").await?, audit + 1);

    // A new value rotates once more.
    w.annotate_and_wait_for_reconcile("hooks", ROTATE, "2026-02-rotation")
        .await?;
    let third = w
        .wait("hooks", "rotated again", |ws| {
            status(ws).last_rotation_token.as_deref() == Some("2026-02-rotation")
        })
        .await?;
    assert_ne!(status(&third).secret_fingerprint, Some(fp2));
    let (_, v3) = w.generated("hooks").await?;
    assert_eq!(count(&w.pool, "SELECT count(*) FROM audit_log").await?, audit + 2);
    assert_no_plaintext(&w, &["hooks"], &[&v1, &v2, &v3]).await?;
    w.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_verified_subscription_sends_one_signed_test_delivery_per_change() -> anyhow::Result<()> {
    let w = world(true).await?;
    // The receiver checks signatures with whatever the operator put in the Secret.
    w.receiver.set_key(KeySource::kubernetes_secret(
        w.client.clone(),
        &w.ns,
        "hooks-signing-secret",
        GENERATED_KEY,
    ));
    let url = w.receiver.url();
    w.create("hooks", &url, json!({"verify": true})).await?;
    let ws = w
        .wait("hooks", "verified", |ws| {
            live(ws) && has(ws, VERIFIED, "True", "Delivered")
        })
        .await?;
    let st = status(&ws);
    let verification = st.verification.clone().expect("verification in status");
    assert!(verification.delivered && verification.error.is_none());
    assert_eq!(verification.status_code, Some(204));
    assert_eq!(verification.observed_generation, ws.metadata.generation);
    assert_eq!(verification.secret_fingerprint, st.secret_fingerprint);
    assert!(
        message(&ws, VERIFIED).contains("HTTP 204"),
        "{}",
        message(&ws, VERIFIED)
    );

    let deliveries = w.receiver.deliveries();
    assert_eq!(deliveries.len(), 1, "one test delivery: {deliveries:?}");
    let d = &deliveries[0];
    assert!(d.signature_valid, "the receiver verified the HMAC: {:?}", d.rejection);
    assert_eq!(d.header("X-Countersign-Event"), Some("webhook.verification"));
    assert!(
        d.header("X-Countersign-Signature")
            .is_some_and(|s| s.starts_with("v1=")),
        "{:?}",
        d.headers
    );
    assert_eq!(d.header("Content-Type"), Some("application/json"));
    let body = d.json();
    assert_eq!(body["type"], "webhook.verification");
    assert_eq!(body["id"], json!(verification.delivery_id));
    assert_eq!(
        d.header("X-Countersign-Delivery"),
        Some(verification.delivery_id.as_str())
    );
    assert_eq!(body["data"]["subscriptionId"], json!(st.common.database_id));
    assert_eq!(body["data"]["tenant"], json!(w.tenant));

    // Nothing changed: no second delivery, however often the object is reconciled.
    w.annotate_and_wait_for_reconcile("hooks", "e2e/touch", "1").await?;
    assert_eq!(w.receiver.deliveries().len(), 1, "not on every reconcile");

    // The endpoint breaks; a spec change verifies again and reports it, and
    // the subscription stays live.
    w.receiver.answer_with(500);
    w.subscriptions()
        .patch(
            "hooks",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"events": ["certificate.issued", "tenant.changed"]}})),
        )
        .await?;
    let failed = w
        .wait("hooks", "DeliveryFailed", |ws| {
            has(ws, VERIFIED, "False", "DeliveryFailed")
        })
        .await?;
    assert!(live(&failed), "a failed verification does not undo the subscription");
    let v = status(&failed).verification.expect("verification");
    assert_eq!((v.delivered, v.status_code), (false, Some(500)));
    assert!(
        message(&failed, VERIFIED).contains("HTTP 500"),
        "{}",
        message(&failed, VERIFIED)
    );
    let deliveries = w.receiver.deliveries();
    assert_eq!(deliveries.len(), 2, "{deliveries:?}");
    assert!(deliveries[1].signature_valid && deliveries[1].answered == 500);
    assert_eq!(row(&w.pool, &url).await?.1, ["certificate.issued", "tenant.changed"]);
    // The flip is an event (kubectl describe), once.
    wait_for(
        "a DeliveryFailed event",
        async || Ok(Some(common::events_for(&w.client, "hooks").await?)),
        |events| {
            events
                .iter()
                .any(|(reason, note)| reason == "DeliveryFailed" && note.contains("HTTP 500"))
        },
    )
    .await?;

    // A rotation is a change too: the new secret is verified at once.
    w.receiver.answer_with(204);
    w.subscriptions()
        .patch(
            "hooks",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {ROTATE: "r1"}}})),
        )
        .await?;
    let healed = w
        .wait("hooks", "verified with the rotated secret", |ws| {
            has(ws, VERIFIED, "True", "Delivered") && status(ws).last_rotation_token.as_deref() == Some("r1")
        })
        .await?;
    let v = status(&healed).verification.expect("verification");
    assert_eq!(v.secret_fingerprint, status(&healed).secret_fingerprint);
    let last = w.receiver.deliveries().last().cloned().expect("a delivery");
    assert!(last.signature_valid, "signed with the new value: {:?}", last.rejection);

    // Switching verification off drops its condition and result.
    w.subscriptions()
        .patch(
            "hooks",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"verify": false}})),
        )
        .await?;
    w.wait("hooks", "without verification", |ws| {
        live(ws) && status(ws).verification.is_none() && status(ws).common.condition(VERIFIED).is_none()
    })
    .await?;
    let (_, value) = w.generated("hooks").await?;
    assert_no_plaintext(&w, &["hooks"], &[&value]).await?;
    w.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_referenced_secret_is_sealed_and_rotates_when_the_secret_changes() -> anyhow::Result<()> {
    let w = world(true).await?;
    let put_labelled = |value: String, labels: serde_json::Value| {
        let api = w.secrets();
        let ns = w.ns.clone();
        async move {
            let secret: Secret = serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "partner-hook", "namespace": ns, "labels": labels},
                "stringData": {"hmac": value},
            }))?;
            api.patch(
                "partner-hook",
                &PatchParams::apply("e2e").force(),
                &Patch::Apply(&secret),
            )
            .await?;
            anyhow::Ok(())
        }
    };
    w.receiver.set_key(KeySource::kubernetes_secret(
        w.client.clone(),
        &w.ns,
        "partner-hook",
        "hmac",
    ));
    let url = w.receiver.url();
    w.create(
        "partner",
        &url,
        json!({"verify": true, "signingSecretRef": {"name": "partner-hook", "key": "hmac"}}),
    )
    .await?;
    w.wait("partner", "SecretNotFound", |ws| {
        has(ws, "Ready", "False", "SecretNotFound")
    })
    .await?;
    assert!(w.receiver.deliveries().is_empty());

    // Attack 11: a Secret the subscription's author may not read, not
    // labelled for signing, is never read or signed with.
    let someone_elses = format!("not-yours-{}", Uuid::new_v4().simple());
    put_labelled(someone_elses.clone(), json!({})).await?;
    let refused = w
        .wait("partner", "SecretNotMarked", |ws| {
            has(ws, "Ready", "False", "SecretNotMarked")
        })
        .await?;
    assert!(
        message(&refused, "Ready").contains("countersign.dev/secret-use=webhook-signing"),
        "{}",
        message(&refused, "Ready")
    );
    assert!(status(&refused).secret_fingerprint.is_none());
    assert!(w.receiver.deliveries().is_empty(), "nothing was signed with it");
    assert_eq!(count(&w.pool, "SELECT count(*) FROM webhook_subscriptions").await?, 0);
    assert_eq!(count(&w.pool, "SELECT count(*) FROM encrypted_secrets").await?, 0);
    assert_no_plaintext(&w, &["partner"], &[&someone_elses]).await?;

    // Labelled for this use by whoever may edit it, it is used.
    let put = |value: String| put_labelled(value, json!({"countersign.dev/secret-use": "webhook-signing"}));
    let v1 = format!("partner-{}", Uuid::new_v4().simple());
    put(v1.clone()).await?;
    let first = w
        .wait("partner", "verified", |ws| {
            live(ws) && has(ws, VERIFIED, "True", "Delivered")
        })
        .await?;
    let fp1 = status(&first).secret_fingerprint.expect("fingerprint");
    let (_, _, ref1) = row(&w.pool, &url).await?;
    assert_eq!(opened(&w.pool, ref1).await?, v1);
    assert!(
        w.secrets().get_opt("partner-signing-secret").await?.is_none(),
        "nothing generated"
    );

    // Someone rotates the Secret: the operator follows, revokes the old value, verifies the new one.
    let v2 = format!("partner-{}", Uuid::new_v4().simple());
    put(v2.clone()).await?;
    let rotated = w
        .wait("partner", "rotated", |ws| {
            status(ws).secret_fingerprint.as_deref().is_some_and(|f| f != fp1) && has(ws, VERIFIED, "True", "Delivered")
        })
        .await?;
    assert!(live(&rotated));
    let (_, _, ref2) = row(&w.pool, &url).await?;
    assert_eq!(opened(&w.pool, ref2).await?, v2);
    let revoked: bool = sqlx::query_scalar("SELECT revoked_at IS NOT NULL FROM encrypted_secrets WHERE id = $1")
        .bind(ref1)
        .fetch_one(&w.pool)
        .await?;
    assert!(revoked);
    assert!(w.receiver.deliveries().iter().all(|d| d.signature_valid));

    // A value too short to be a signing secret is refused, naming the field.
    put("short".into()).await?;
    let short = w
        .wait("partner", "SecretTooShort", |ws| {
            has(ws, "Ready", "False", "SecretTooShort")
        })
        .await?;
    assert!(message(&short, "Ready").contains("spec.signingSecretRef"));
    assert_eq!(row(&w.pool, &url).await?.2, ref2, "the stored secret stays");
    assert_no_plaintext(&w, &["partner"], &[&v1, &v2]).await?;
    w.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn subscriptions_to_loopback_and_metadata_addresses_are_refused_when_declared() -> anyhow::Result<()> {
    // This operator is NOT allowed to reach loopback.
    let w = world(false).await?;
    w.receiver.set_key(KeySource::Fixed(b"never-used-never-used".to_vec()));
    // With or without a test delivery: the platform would call the URL later.
    let cases = [
        ("literal", w.receiver.url(), json!({"verify": true}), "loopback"),
        ("byname", w.receiver.localhost_url(), json!({}), "loopback"),
        (
            "metadata",
            "https://169.254.169.254/latest/hook".to_string(),
            json!({}),
            "169.254.169.254",
        ),
    ];
    for (name, url, extra, _) in &cases {
        w.create(name, url, extra.clone()).await?;
    }
    for (name, _, _, mentions) in &cases {
        let refused = w
            .wait(name, "refused", |ws| {
                has(ws, "Ready", "False", "OutboundRefused") && has(ws, "Stalled", "True", "OutboundRefused")
            })
            .await?;
        let msg = message(&refused, "Ready");
        assert!(
            msg.contains("spec.url") && msg.contains("AddressNotAllowed") && msg.contains(mentions),
            "{name}: {msg}"
        );
        assert!(status(&refused).verification.is_none(), "{name}: nothing was sent");
    }
    assert!(w.receiver.deliveries().is_empty(), "nothing reached the receiver");
    assert_eq!(
        count(&w.pool, "SELECT count(*) FROM webhook_subscriptions").await?,
        0,
        "nothing was written"
    );

    // Plain HTTP never gets past the API server.
    let err = w
        .subscriptions()
        .create(
            &PostParams::default(),
            &w.subscription("plain", "http://hooks.example/x", json!({}))?,
        )
        .await
        .expect_err("http must be rejected");
    assert!(err.to_string().contains("spec.url must be an https:// URL"), "{err}");
    // An event outside the closed set neither.
    let bad: kube::api::DynamicObject = serde_json::from_value(json!({
        "apiVersion": "platform.countersign.dev/v1alpha1", "kind": "WebhookSubscription",
        "metadata": {"name": "bad-event", "namespace": w.ns},
        "spec": {"tenantRef": {"name": w.tenant}, "url": "https://hooks.example/x", "events": ["user.deleted"]},
    }))?;
    let err = common::create_dynamic(&w.client, &bad, false)
        .await
        .expect_err("unknown event");
    assert!(err.to_string().contains("Unsupported value"), "{err}");
    w.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_subscription_cannot_attach_to_a_tenant_that_does_not_list_its_namespace() -> anyhow::Result<()> {
    let w = world(true).await?;
    let other_ns = unique_name("intruder");
    common::ensure_namespace(&w.client, &other_ns).await?;
    let mut hijack = w.subscription("hijack", &w.receiver.url(), json!({"verify": true}))?;
    hijack.metadata.namespace = Some(other_ns.clone());
    let api: Api<WebhookSubscription> = Api::namespaced(w.client.clone(), &other_ns);
    api.create(&PostParams::default(), &hijack).await?;
    let refused = wait_for(
        "TenantNotPermitted",
        async || Ok(api.get_opt("hijack").await?),
        |ws| has(ws, "Ready", "False", "TenantNotPermitted") && has(ws, "Stalled", "True", "TenantNotPermitted"),
    )
    .await?;
    let msg = message(&refused, "Ready");
    assert!(msg.contains(&other_ns) && msg.contains("spec.tenantRef"), "{msg}");
    assert_eq!(count(&w.pool, "SELECT count(*) FROM webhook_subscriptions").await?, 0);
    assert!(w.receiver.deliveries().is_empty(), "not even verified");

    // The tenant reference cannot be switched afterwards.
    let err = api
        .patch(
            "hijack",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"tenantRef": {"name": "someone-else"}}})),
        )
        .await
        .expect_err("tenantRef is immutable");
    assert!(err.to_string().contains("spec.tenantRef is immutable"), "{err}");

    // A second subscription of the same tenant to the same URL conflicts.
    w.create("first", &w.receiver.url(), json!({})).await?;
    w.wait("first", "live", live).await?;
    w.create("second", &w.receiver.url(), json!({})).await?;
    let conflict = w
        .wait("second", "Conflict", |ws| has(ws, "Ready", "False", "Conflict"))
        .await?;
    assert!(message(&conflict, "Ready").contains(&format!("{}/first", w.ns)));
    assert_eq!(count(&w.pool, "SELECT count(*) FROM webhook_subscriptions").await?, 1);

    // A subscription for a tenant that does not exist yet waits, then goes live.
    let later = unique_name("later");
    let mut waiting = w.subscription("waiting", "https://hooks.example/later", json!({}))?;
    waiting.spec.tenant_ref.name = later.clone();
    w.subscriptions().create(&PostParams::default(), &waiting).await?;
    w.wait("waiting", "WaitingForDependency", |ws| {
        has(ws, "Ready", "False", "WaitingForDependency")
    })
    .await?;
    Api::<Tenant>::all(w.client.clone())
        .create(
            &PostParams::default(),
            &common::tenant(
                &later,
                &w.run,
                json!({"slug": later, "name": "Later", "allowedNamespaces": [w.ns]}),
            )?,
        )
        .await?;
    w.wait("waiting", "live", live).await?;

    let intruder_value = {
        let s = Api::<Secret>::namespaced(w.client.clone(), &other_ns)
            .get("hijack-signing-secret")
            .await?;
        s.data
            .and_then(|mut d| d.remove(GENERATED_KEY))
            .map(|b| String::from_utf8_lossy(&b.0).to_string())
            .unwrap_or_default()
    };
    let (_, first_value) = w.generated("first").await?;
    assert_no_plaintext(&w, &["first", "second", "waiting"], &[&intruder_value, &first_value]).await?;
    w.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_new_subscription_under_a_policy_is_written_only_once_a_second_person_approves() -> anyhow::Result<()> {
    let receiver = WebhookReceiver::start(KeySource::None).await?;
    let ca = receiver.ca_pem().to_string();
    let stack = Stack::start_with(|o| {
        o.outbound.allow_loopback = true;
        o.outbound.extra_roots_pem = vec![ca];
    })
    .await?;
    common::apply_yaml(
        &stack.admin,
        &format!(
            "apiVersion: platform.countersign.dev/v1alpha1\nkind: ApprovalPolicy\nmetadata: {{name: webhooks}}\n\
             spec:\n  rules: [{{kinds: [WebhookSubscription], operations: [create, update, delete]}}]\n  \
             gitopsServiceAccounts: ['{GITOPS}']\n"
        ),
    )
    .await?;
    let ns = unique_name("team");
    common::ensure_namespace(&stack.admin, &ns).await?;
    let gitops = stack.cp.client_as(GITOPS, &["system:serviceaccounts"]).await?;
    let tenant = unique_name("acme");
    let mut t = common::tenant(
        &tenant,
        &stack.run,
        json!({"slug": tenant, "name": "Acme", "allowedNamespaces": [ns]}),
    )?;
    t.metadata.annotations = Some([("countersign.dev/requested-by".to_string(), "carol".to_string())].into());
    Api::<Tenant>::all(gitops.clone())
        .create(&PostParams::default(), &t)
        .await?;
    let waiting = stack.awaiting(&tenant).await?;
    let digest = waiting.status.and_then(|s| s.pending_digest).expect("pending digest");
    stack.approve(&tenant, "bob", &digest).await?;
    common::wait_tenant(&Api::all(stack.admin.clone()), &tenant, "Ready", |t| {
        common::has_condition(t, "Ready", "True", "Live")
    })
    .await?;

    // GitOps declares a subscription on carol's behalf: it waits, unwritten.
    let ws: WebhookSubscription = serde_json::from_value(json!({
        "apiVersion": "platform.countersign.dev/v1alpha1", "kind": "WebhookSubscription",
        "metadata": {"name": "hooks", "namespace": ns, "labels": {common::TEST_LABEL: stack.run},
                     "annotations": {"countersign.dev/requested-by": "carol"}},
        "spec": {"tenantRef": {"name": tenant}, "url": receiver.url(), "events": ["approval.decided"]},
    }))?;
    Api::<WebhookSubscription>::namespaced(gitops, &ns)
        .create(&PostParams::default(), &ws)
        .await?;
    let api: Api<WebhookSubscription> = Api::namespaced(stack.admin.clone(), &ns);
    let pending = wait_for(
        "the subscription to await approval",
        async || Ok(api.get_opt("hooks").await?),
        |ws| has(ws, "Approved", "False", "AwaitingApproval") && has(ws, "Ready", "False", "AwaitingApproval"),
    )
    .await?;
    let digest = status(&pending).common.pending_digest.expect("pending digest");
    assert_eq!(
        count(&stack.pool, "SELECT count(*) FROM webhook_subscriptions").await?,
        0
    );
    assert_eq!(count(&stack.pool, "SELECT count(*) FROM encrypted_secrets").await?, 0);

    // bob approves; the row, its sealed secret and the audit entry land together.
    Api::<WebhookSubscription>::namespaced(stack.cp.client_as("bob", &[EDITORS, APPROVERS]).await?, &ns)
        .patch(
            "hooks",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {
                "countersign.dev/approved-by": "bob", "countersign.dev/approved-digest": digest}}})),
        )
        .await?;
    let approved = wait_for(
        "the subscription to go live",
        async || Ok(api.get_opt("hooks").await?),
        |ws| live(ws) && has(ws, "Approved", "True", "Approved"),
    )
    .await?;
    assert_eq!(status(&approved).common.live_digest, Some(digest));
    let audit: Vec<(String, Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT action, requester, approver FROM audit_log WHERE kind = 'WebhookSubscription' ORDER BY seq",
    )
    .fetch_all(&stack.pool)
    .await?;
    assert_eq!(audit, [("create".into(), Some("carol".into()), Some("bob".into()))]);
    let secret = Api::<Secret>::namespaced(stack.admin.clone(), &ns)
        .get("hooks-signing-secret")
        .await?;
    let value = secret
        .data
        .and_then(|mut d| d.remove(GENERATED_KEY))
        .map(|b| b.0)
        .unwrap_or_default();
    let secret_ref: Uuid = sqlx::query_scalar("SELECT secret_ref FROM webhook_subscriptions")
        .fetch_one(&stack.pool)
        .await?;
    let sealed = countersign_reconcilers::secrets::load(&stack.pool, secret_ref)
        .await?
        .expect("sealed");
    assert_eq!(
        common::test_key().open(&sealed)?,
        value,
        "the Secret generated while waiting is the one stored"
    );
    stack.op.shutdown().await;
    Ok(())
}
