//! LicenseGrants end to end against a real API server and PostgreSQL: signed
//! imports, refusals that write nothing, addenda and revocations with the
//! quota view, expiry without anyone touching the object, and the
//! two-person rule. Vendor keys are generated per run; none is committed.

mod common;

use chrono::{SecondsFormat, Utc};
use common::approvals::{APPROVERS, EDITORS, GITOPS};
use common::vendor::Vendor;
use common::{status_has, wait_for};
use countersign_crds::{LicenseGrant, Tenant};
use countersign_e2e::{ControlPlane, unique_name};
use countersign_operator::controller::Licensing;
use countersign_operator::run::Running;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use sqlx::{PgPool, Row};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// The vendor every chain must start with.
const VENDOR: &str = "Exaion";
/// The platform operator every chain must end with.
const OPERATOR: &str = "Example Operator";
/// The key ID the operator trusts.
const KEY_ID: &str = "exaion-2027";

fn at(offset: chrono::Duration) -> String {
    (Utc::now() + offset).to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// A grant spec valid from yesterday for a year, before signing.
fn grant_spec(tenant: &str, fingerprint: &str, grant_id: Uuid, extra: Value) -> Value {
    let mut spec = json!({
        "tenantRef": {"name": tenant},
        "grantId": grant_id.to_string(),
        "grantType": "GRANT",
        "instanceFingerprint": fingerprint,
        "licenseType": "wipe-seat",
        "quantity": 100,
        "validFrom": at(chrono::Duration::days(-1)),
        "validUntil": at(chrono::Duration::days(365)),
        "commercialChain": [VENDOR, "Acme Reseller", OPERATOR],
    });
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
        s.extend(e.clone());
    }
    spec
}

fn fingerprint_of(tenant: &str) -> String {
    format!("sha256:{tenant}-instance")
}

fn has(lg: &LicenseGrant, type_: &str, status: &str, reason: &str) -> bool {
    status_has(lg.status.as_ref(), lg.metadata.generation, type_, status, reason)
}

fn message(lg: &LicenseGrant, type_: &str) -> String {
    common::condition_of(lg.status.as_ref(), type_)
        .map(|c| c.message.clone())
        .unwrap_or_default()
}

fn live(lg: &LicenseGrant) -> bool {
    has(lg, "Ready", "True", "Live")
}

/// The operator's license settings: `keyring` trusted, Exaion → Example Operator.
fn licensing(keyring: &[&Vendor]) -> Licensing {
    Licensing {
        keyring: keyring
            .iter()
            .map(|v| (v.key_id.clone(), v.public_key()))
            .collect::<BTreeMap<_, _>>(),
        vendor: Some(VENDOR.into()),
        operator: Some(OPERATOR.into()),
    }
}

/// One test's world: a live tenant with an instance fingerprint, a vendor the
/// operator trusts, and the operator.
struct World {
    client: Client,
    pool: PgPool,
    run: String,
    tenant: String,
    vendor: Vendor,
    op: Running,
}

async fn world() -> anyhow::Result<World> {
    let client = common::cluster().await?;
    let (_url, pool) = common::database().await?;
    let run = unique_name("lic");
    let vendor = Vendor::new(KEY_ID);
    let trusted = licensing(&[&vendor]);
    let op = common::operator_with(&client, &pool, &run, |o| {
        o.licensing = trusted;
        o.resync = common::HOUR;
    })
    .await?;
    let w = World {
        client,
        pool,
        run,
        tenant: unique_name("acme"),
        vendor,
        op,
    };
    w.create_tenant(&w.tenant).await?;
    Ok(w)
}

impl World {
    /// A cluster-wide unique object name: tests share one API server.
    fn n(&self, base: &str) -> String {
        format!("{base}-{}", self.run)
    }

    fn api(&self) -> Api<LicenseGrant> {
        Api::all(self.client.clone())
    }

    async fn create_tenant(&self, name: &str) -> anyhow::Result<()> {
        let tenants: Api<Tenant> = Api::all(self.client.clone());
        let spec = json!({"slug": name, "name": "Licensed", "instanceFingerprint": fingerprint_of(name)});
        tenants
            .create(&PostParams::default(), &common::tenant(name, &self.run, spec)?)
            .await?;
        common::wait_tenant(&tenants, name, "Ready", |t| {
            common::has_condition(t, "Ready", "True", "Live")
        })
        .await?;
        Ok(())
    }

    /// A signed grant spec for this world's tenant.
    fn signed(&self, grant_id: Uuid, extra: Value) -> Value {
        let mut spec = grant_spec(&self.tenant, &fingerprint_of(&self.tenant), grant_id, extra);
        self.vendor.sign(&mut spec);
        spec
    }

    fn object(&self, name: &str, spec: Value) -> anyhow::Result<LicenseGrant> {
        Ok(serde_json::from_value(json!({
            "apiVersion": "platform.countersign.dev/v1alpha1", "kind": "LicenseGrant",
            "metadata": {"name": name, "labels": {common::TEST_LABEL: self.run}},
            "spec": spec,
        }))?)
    }

    async fn create(&self, name: &str, spec: Value) -> anyhow::Result<()> {
        self.api()
            .create(&PostParams::default(), &self.object(name, spec)?)
            .await?;
        Ok(())
    }

    async fn wait(&self, name: &str, what: &str, pred: impl Fn(&LicenseGrant) -> bool) -> anyhow::Result<LicenseGrant> {
        let api = self.api();
        wait_for(
            &format!("LicenseGrant {name} {what}"),
            async || Ok(api.get_opt(name).await?),
            pred,
        )
        .await
    }

    async fn rows(&self) -> anyhow::Result<i64> {
        Ok(sqlx::query_scalar("SELECT count(*) FROM license_grants")
            .fetch_one(&self.pool)
            .await?)
    }

    async fn quota(&self, tenant: &str, license_type: &str) -> anyhow::Result<i64> {
        let q: Option<i64> = sqlx::query_scalar(
            "SELECT q.quantity FROM license_quotas q JOIN tenants t ON t.id = q.tenant_id
              WHERE t.slug = $1 AND q.license_type = $2",
        )
        .bind(tenant)
        .bind(license_type)
        .fetch_optional(&self.pool)
        .await?;
        Ok(q.unwrap_or(0))
    }

    async fn audit_actions(&self, name: &str) -> anyhow::Result<Vec<String>> {
        Ok(
            sqlx::query_scalar("SELECT action FROM audit_log WHERE object_key = $1 ORDER BY seq")
                .bind(name)
                .fetch_all(&self.pool)
                .await?,
        )
    }
}

/// Changes an annotation only: the digest stays, so the operator reconciles
/// and must find nothing to write unless the database changed.
async fn touch(w: &World, name: &str, value: &str) -> anyhow::Result<()> {
    w.api()
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"touch": value}}})),
        )
        .await?;
    Ok(())
}

#[tokio::test]
async fn a_signed_grant_is_imported_with_its_quota_kept_immutable_and_released_on_delete() -> anyhow::Result<()> {
    let w = world().await?;
    let id = Uuid::new_v4();
    let spec = w.signed(id, json!({}));
    w.create(&w.n("seats"), spec.clone()).await?;
    let imported = w.wait(&w.n("seats"), "live", live).await?;
    let status = imported.status.clone().unwrap_or_default();
    assert!(has(&imported, "Synced", "True", "ReconcileSucceeded"));
    assert!(has(&imported, "Stalled", "False", "Live"));
    let ready = message(&imported, "Ready");
    assert!(
        ready.contains(&format!("tenant {:?} now holds 100 \"wipe-seat\"", w.tenant)),
        "{ready}"
    );
    assert!(imported.finalizers().iter().any(|f| f == "countersign.dev/cleanup"));

    // The row holds the signed document, field by field.
    let row = sqlx::query(
        "SELECT g.id::text AS id, t.slug, g.grant_type, g.instance_fingerprint, g.license_type, g.quantity,
                g.valid_from, g.valid_until, g.commercial_chain, g.addendum_of, g.revokes, g.revoked_at,
                g.key_id, g.signature
           FROM license_grants g JOIN tenants t ON t.id = g.tenant_id WHERE g.grant_id = $1",
    )
    .bind(id)
    .fetch_one(&w.pool)
    .await?;
    assert_eq!(status.database_id.as_deref(), Some(row.get::<String, _>("id").as_str()));
    assert_eq!(row.get::<String, _>("slug"), w.tenant);
    assert_eq!(row.get::<String, _>("grant_type"), "GRANT");
    assert_eq!(row.get::<String, _>("instance_fingerprint"), fingerprint_of(&w.tenant));
    assert_eq!(row.get::<String, _>("license_type"), "wipe-seat");
    assert_eq!(row.get::<i64, _>("quantity"), 100);
    let from: chrono::DateTime<Utc> = row.get("valid_from");
    let until: chrono::DateTime<Utc> = row.get("valid_until");
    assert_eq!(from.to_rfc3339_opts(SecondsFormat::Secs, true), spec["validFrom"]);
    assert_eq!(until.to_rfc3339_opts(SecondsFormat::Secs, true), spec["validUntil"]);
    assert_eq!(
        row.get::<Vec<String>, _>("commercial_chain"),
        [VENDOR, "Acme Reseller", OPERATOR]
    );
    assert_eq!(row.get::<Option<Uuid>, _>("addendum_of"), None);
    assert_eq!(row.get::<Option<Uuid>, _>("revokes"), None);
    assert_eq!(row.get::<Option<chrono::DateTime<Utc>>, _>("revoked_at"), None);
    assert_eq!(row.get::<String, _>("key_id"), KEY_ID);
    assert_eq!(row.get::<String, _>("signature"), spec["signature"]["value"]);
    assert_eq!(w.quota(&w.tenant, "wipe-seat").await?, 100);

    // One audit entry naming the grant.
    let (action, digest, detail): (String, Option<String>, Value) =
        sqlx::query_as("SELECT action, digest, detail FROM audit_log WHERE object_key = $1")
            .bind(w.n("seats"))
            .fetch_one(&w.pool)
            .await?;
    assert_eq!(action, "create");
    assert_eq!(digest, status.live_digest);
    assert_eq!(detail["grant_id"], json!(id));
    assert_eq!(detail["quantity"], 100);

    // A reconcile that changes nothing writes nothing.
    let settled_rv = w.api().get(&w.n("seats")).await?.resource_version();
    w.api()
        .patch(
            &w.n("seats"),
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"touch": "1"}}})),
        )
        .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(w.audit_actions(&w.n("seats")).await?, ["create"]);
    let touched = w.api().get(&w.n("seats")).await?;
    assert_eq!(touched.status, imported.status, "no status patch for a no-op");
    assert_ne!(touched.resource_version(), settled_rv, "the touch itself landed");

    // An edit of the row behind the operator's back is put back to the signed values.
    // The database says so at once: nothing else makes the grant look again.
    sqlx::query("UPDATE license_grants SET quantity = 5 WHERE grant_id = $1")
        .bind(id)
        .execute(&w.pool)
        .await?;
    wait_for(
        "the edited row to be restored",
        async || Ok(Some(w.audit_actions(&w.n("seats")).await?)),
        |actions| actions.len() == 2,
    )
    .await?;
    assert_eq!(w.audit_actions(&w.n("seats")).await?, ["create", "correct-drift"]);
    let drifted = common::drifted_events(&w.client, &w.n("seats")).await?;
    assert!(drifted.len() == 1 && drifted[0].contains("(quantity)"), "{drifted:?}");
    let restored: i64 = sqlx::query_scalar("SELECT quantity FROM license_grants WHERE grant_id = $1")
        .bind(id)
        .fetch_one(&w.pool)
        .await?;
    assert_eq!(restored, 100);

    // A signed grant is never edited in place: a re-signed change is refused.
    let mut changed = grant_spec(
        &w.tenant,
        &fingerprint_of(&w.tenant),
        id,
        json!({"quantity": 1000, "validFrom": spec["validFrom"], "validUntil": spec["validUntil"]}),
    );
    w.vendor.sign(&mut changed);
    w.api()
        .patch(
            &w.n("seats"),
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": changed})),
        )
        .await?;
    let refused = w
        .wait(&w.n("seats"), "GrantImmutable", |lg| {
            has(lg, "Ready", "False", "GrantImmutable")
        })
        .await?;
    assert!(has(&refused, "Stalled", "True", "GrantImmutable"));
    assert!(
        message(&refused, "Ready").contains("ADDENDUM"),
        "{}",
        message(&refused, "Ready")
    );
    assert_eq!(
        refused.status.as_ref().and_then(|s| s.database_id.clone()),
        status.database_id,
        "status still names the imported row"
    );
    let quantity: i64 = sqlx::query_scalar("SELECT quantity FROM license_grants WHERE grant_id = $1")
        .bind(id)
        .fetch_one(&w.pool)
        .await?;
    assert_eq!(quantity, 100, "the row keeps the imported document");
    assert_eq!(w.audit_actions(&w.n("seats")).await?, ["create", "correct-drift"]);

    // Deleting the object releases the row and leaves it: only a signed
    // revocation takes a grant away.
    w.api().delete(&w.n("seats"), &DeleteParams::default()).await?;
    wait_for(
        "LicenseGrant seats to be gone",
        async || Ok(Some(w.api().get_opt(&w.n("seats")).await?.is_none())),
        |gone| *gone,
    )
    .await?;
    assert_eq!(w.rows().await?, 1);
    assert_eq!(w.quota(&w.tenant, "wipe-seat").await?, 100);
    let owned: i64 = sqlx::query_scalar("SELECT count(*) FROM managed_objects WHERE kind = 'LicenseGrant'")
        .fetch_one(&w.pool)
        .await?;
    assert_eq!(owned, 0);
    assert_eq!(
        w.audit_actions(&w.n("seats")).await?,
        ["create", "correct-drift", "orphan"]
    );
    let verified = countersign_reconcilers::audit::verify(&w.pool, common::test_key().audit_chain_key()).await?;
    assert_eq!(verified.broken, None);
    w.op.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn tampered_unknown_or_wrong_key_signatures_import_nothing() -> anyhow::Result<()> {
    let w = world().await?;
    // A field changed after signing.
    let mut tampered = w.signed(Uuid::new_v4(), json!({}));
    tampered["quantity"] = json!(100_000);
    w.create(&w.n("tampered"), tampered).await?;
    // A key the operator does not know.
    let rogue = Vendor::new("rogue-key");
    let mut unknown = grant_spec(&w.tenant, &fingerprint_of(&w.tenant), Uuid::new_v4(), json!({}));
    rogue.sign(&mut unknown);
    w.create(&w.n("unknown-key"), unknown).await?;
    // Another key claiming the trusted key's ID.
    let impostor = Vendor::new(KEY_ID);
    let mut wrong = grant_spec(&w.tenant, &fingerprint_of(&w.tenant), Uuid::new_v4(), json!({}));
    impostor.sign(&mut wrong);
    w.create(&w.n("wrong-key"), wrong).await?;

    for (name, mentions) in [
        ("tampered", "does not verify"),
        ("unknown-key", "\"rogue-key\" is not in the operator's trusted keyring"),
        ("wrong-key", "does not verify"),
    ] {
        let lg = w
            .wait(&w.n(name), "InvalidSignature", |lg| {
                has(lg, "Ready", "False", "InvalidSignature") && has(lg, "Stalled", "True", "InvalidSignature")
            })
            .await?;
        let msg = message(&lg, "Ready");
        assert!(
            msg.contains(mentions) && msg.contains("spec.signature"),
            "{name}: {msg}"
        );
        assert!(has(&lg, "Synced", "False", "InvalidSignature"));
    }
    assert_eq!(w.rows().await?, 0, "nothing was imported");
    assert_eq!(common::count(&w.pool, "audit_log").await?, 1, "only the tenant's entry");
    w.op.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn chain_fingerprint_and_tenant_are_checked_before_anything_is_written() -> anyhow::Result<()> {
    let w = world().await?;
    w.create(
        &w.n("wrong-vendor"),
        w.signed(Uuid::new_v4(), json!({"commercialChain": ["Mallory", OPERATOR]})),
    )
    .await?;
    w.create(
        &w.n("wrong-operator"),
        w.signed(
            Uuid::new_v4(),
            json!({"commercialChain": [VENDOR, "Acme Reseller", "Someone Else"]}),
        ),
    )
    .await?;
    let mut other_instance = grant_spec(&w.tenant, "sha256:another-instance", Uuid::new_v4(), json!({}));
    w.vendor.sign(&mut other_instance);
    w.create(&w.n("other-instance"), other_instance).await?;

    for (name, reason, mentions) in [
        ("wrong-vendor", "InvalidCommercialChain", "spec.commercialChain[0]"),
        ("wrong-operator", "InvalidCommercialChain", "spec.commercialChain[2]"),
        ("other-instance", "FingerprintMismatch", "spec.instanceFingerprint"),
    ] {
        let lg = w
            .wait(&w.n(name), reason, |lg| {
                has(lg, "Ready", "False", reason) && has(lg, "Stalled", "True", reason)
            })
            .await?;
        assert!(
            message(&lg, "Ready").contains(mentions),
            "{name}: {}",
            message(&lg, "Ready")
        );
    }
    assert_eq!(w.rows().await?, 0);

    // A grant for a tenant that is not live yet waits, then imports by itself.
    let later = unique_name("later");
    let mut early = grant_spec(&later, &fingerprint_of(&later), Uuid::new_v4(), json!({}));
    w.vendor.sign(&mut early);
    w.create(&w.n("early"), early).await?;
    w.wait(&w.n("early"), "WaitingForDependency", |lg| {
        has(lg, "Ready", "False", "WaitingForDependency")
    })
    .await?;
    w.create_tenant(&later).await?;
    w.wait(&w.n("early"), "live", live).await?;
    assert_eq!(w.rows().await?, 1);
    w.op.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_grant_id_is_imported_once() -> anyhow::Result<()> {
    let w = world().await?;
    let id = Uuid::new_v4();
    w.create(&w.n("first"), w.signed(id, json!({}))).await?;
    w.wait(&w.n("first"), "live", live).await?;
    w.create(&w.n("second"), w.signed(id, json!({}))).await?;
    let conflict = w
        .wait(&w.n("second"), "Conflict", |lg| has(lg, "Ready", "False", "Conflict"))
        .await?;
    assert!(
        message(&conflict, "Ready").contains(&format!("{:?}", w.n("first"))),
        "{}",
        message(&conflict, "Ready")
    );
    assert_eq!(w.rows().await?, 1);

    // A grant imported through the admin API is not taken over without adopt.
    let manual = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO license_grants (grant_id, tenant_id, grant_type, instance_fingerprint, license_type, quantity,
                                     valid_from, valid_until, commercial_chain, key_id, signature)
         SELECT $1, id, 'GRANT', instance_fingerprint, 'wipe-seat', 7, now() - interval '1 day',
                now() + interval '1 day', ARRAY['Exaion', 'Example Operator'], 'manual', 'manual'
           FROM tenants WHERE slug = $2",
    )
    .bind(manual)
    .bind(&w.tenant)
    .execute(&w.pool)
    .await?;
    w.create(&w.n("manual"), w.signed(manual, json!({}))).await?;
    let exists = w
        .wait(&w.n("manual"), "AlreadyExists", |lg| {
            has(lg, "Ready", "False", "AlreadyExists")
        })
        .await?;
    assert!(message(&exists, "Ready").contains("countersign.dev/adopt"));
    w.api()
        .patch(
            &w.n("manual"),
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"countersign.dev/adopt": "true"}}})),
        )
        .await?;
    w.wait(&w.n("manual"), "live after adoption", live).await?;
    let (quantity, key_id): (i64, String) =
        sqlx::query_as("SELECT quantity, key_id FROM license_grants WHERE grant_id = $1")
            .bind(manual)
            .fetch_one(&w.pool)
            .await?;
    assert_eq!(
        (quantity, key_id.as_str()),
        (100, KEY_ID),
        "the signed document replaced the manual row"
    );
    assert_eq!(w.audit_actions(&w.n("manual")).await?, ["adopt"]);
    w.op.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn addenda_add_to_a_grant_and_a_revocation_takes_it_out_of_the_quota() -> anyhow::Result<()> {
    let w = world().await?;
    let base = Uuid::new_v4();
    let addendum = Uuid::new_v4();
    // The addendum arrives first (Argo CD applies in any order) and waits.
    w.create(
        &w.n("more-seats"),
        w.signed(
            addendum,
            json!({"grantType": "ADDENDUM", "addendumOf": base.to_string(), "quantity": 50}),
        ),
    )
    .await?;
    w.wait(&w.n("more-seats"), "WaitingForDependency", |lg| {
        has(lg, "Ready", "False", "WaitingForDependency") && message(lg, "Ready").contains("spec.addendumOf")
    })
    .await?;
    w.create(&w.n("seats"), w.signed(base, json!({}))).await?;
    w.wait(&w.n("seats"), "live", live).await?;
    w.wait(&w.n("more-seats"), "live", live).await?;
    assert_eq!(w.quota(&w.tenant, "wipe-seat").await?, 150);
    // The grant's own message follows the quota its addendum raised.
    w.wait(&w.n("seats"), "reporting 150 seats", |lg| {
        live(lg) && message(lg, "Ready").contains("now holds 150")
    })
    .await?;
    let amends: Option<Uuid> = sqlx::query_scalar("SELECT addendum_of FROM license_grants WHERE grant_id = $1")
        .bind(addendum)
        .fetch_one(&w.pool)
        .await?;
    assert_eq!(amends, Some(base));

    // An addendum of another tenant's grant is refused.
    let globex = unique_name("globex");
    w.create_tenant(&globex).await?;
    let foreign = Uuid::new_v4();
    let mut globex_grant = grant_spec(&globex, &fingerprint_of(&globex), foreign, json!({}));
    w.vendor.sign(&mut globex_grant);
    w.create(&w.n("globex-seats"), globex_grant).await?;
    w.wait(&w.n("globex-seats"), "live", live).await?;
    w.create(
        &w.n("poach"),
        w.signed(
            Uuid::new_v4(),
            json!({"grantType": "ADDENDUM", "addendumOf": foreign.to_string(), "quantity": 10}),
        ),
    )
    .await?;
    let poach = w
        .wait(&w.n("poach"), "InvalidReference", |lg| {
            has(lg, "Ready", "False", "InvalidReference")
        })
        .await?;
    assert!(
        message(&poach, "Ready").contains("another tenant"),
        "{}",
        message(&poach, "Ready")
    );

    // A revocation marks the grant revoked in the same transaction; the
    // quota loses the grant and its addendum.
    let revocation = Uuid::new_v4();
    w.create(
        &w.n("revoke-seats"),
        w.signed(
            revocation,
            json!({"grantType": "REVOCATION", "revokes": base.to_string(), "quantity": 1}),
        ),
    )
    .await?;
    let recorded = w.wait(&w.n("revoke-seats"), "live", live).await?;
    assert!(
        message(&recorded, "Ready").contains("now holds 0"),
        "{}",
        message(&recorded, "Ready")
    );
    let (revoked_at, revocation_created): (Option<chrono::DateTime<Utc>>, chrono::DateTime<Utc>) = sqlx::query_as(
        "SELECT g.revoked_at, r.created_at FROM license_grants g, license_grants r
          WHERE g.grant_id = $1 AND r.grant_id = $2",
    )
    .bind(base)
    .bind(revocation)
    .fetch_one(&w.pool)
    .await?;
    assert_eq!(
        revoked_at,
        Some(revocation_created),
        "revoked in the revocation's transaction"
    );
    assert_eq!(w.quota(&w.tenant, "wipe-seat").await?, 0);
    assert_eq!(w.quota(&globex, "wipe-seat").await?, 100, "other tenants keep theirs");
    let revoked = w
        .wait(&w.n("seats"), "Revoked", |lg| has(lg, "Ready", "False", "Revoked"))
        .await?;
    assert!(has(&revoked, "Stalled", "True", "Revoked"));
    let detail: Value = sqlx::query_scalar("SELECT detail FROM audit_log WHERE object_key = $1")
        .bind(w.n("revoke-seats"))
        .fetch_one(&w.pool)
        .await?;
    assert_eq!(
        (detail["revokes"].clone(), detail["newly_revoked"].clone()),
        (json!(base), json!(true))
    );
    // Un-revoking the grant in the database is drift: the revocation restores it.
    sqlx::query("UPDATE license_grants SET revoked_at = NULL WHERE grant_id = $1")
        .bind(base)
        .execute(&w.pool)
        .await?;
    touch(&w, &w.n("revoke-seats"), "1").await?;
    wait_for(
        "the revocation to be restored",
        async || Ok(Some(w.audit_actions(&w.n("revoke-seats")).await?)),
        |actions| actions.len() == 2,
    )
    .await?;
    assert_eq!(
        w.audit_actions(&w.n("revoke-seats")).await?,
        ["create", "correct-drift"]
    );
    let again: Option<chrono::DateTime<Utc>> =
        sqlx::query_scalar("SELECT revoked_at FROM license_grants WHERE grant_id = $1")
            .bind(base)
            .fetch_one(&w.pool)
            .await?;
    assert!(again.is_some(), "revoked again");
    assert_eq!(w.quota(&w.tenant, "wipe-seat").await?, 0);
    w.op.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn validity_windows_turn_status_by_themselves() -> anyhow::Result<()> {
    let w = world().await?;
    // Valid now, for a few seconds more; the resync is 300 s, so only the
    // timed requeue at validUntil can flip it in time.
    let until = Utc::now() + chrono::Duration::seconds(20);
    let from = Utc::now() + chrono::Duration::seconds(15);
    w.create(
        &w.n("short"),
        w.signed(
            Uuid::new_v4(),
            json!({"validFrom": at(chrono::Duration::hours(-1)),
                   "validUntil": until.to_rfc3339_opts(SecondsFormat::Secs, true)}),
        ),
    )
    .await?;
    // Not valid yet, becoming valid in a few seconds.
    w.create(
        &w.n("later"),
        w.signed(
            Uuid::new_v4(),
            json!({"validFrom": from.to_rfc3339_opts(SecondsFormat::Secs, true), "validUntil": at(chrono::Duration::days(30)),
                   "licenseType": "api-calls"}),
        ),
    )
    .await?;
    w.wait(&w.n("short"), "live", live).await?;
    let pending = w
        .wait(&w.n("later"), "NotYetValid", |lg| {
            has(lg, "Ready", "False", "NotYetValid")
        })
        .await?;
    assert!(has(&pending, "Reconciling", "True", "NotYetValid"));
    assert_eq!(w.rows().await?, 2, "both are imported");
    if Utc::now() + chrono::Duration::seconds(1) < from {
        assert_eq!(
            w.quota(&w.tenant, "api-calls").await?,
            0,
            "not counted before validFrom"
        );
    }

    w.wait(&w.n("later"), "live once valid", live).await?;
    assert_eq!(w.quota(&w.tenant, "api-calls").await?, 100);
    let expired = w
        .wait(&w.n("short"), "Expired", |lg| has(lg, "Ready", "False", "Expired"))
        .await?;
    let late = Utc::now() - until;
    assert!(
        late < chrono::Duration::seconds(10),
        "expiry noticed {late} after validUntil: not a timed requeue"
    );
    assert!(has(&expired, "Stalled", "True", "Expired"));
    assert!(
        message(&expired, "Ready").contains("expired at"),
        "{}",
        message(&expired, "Ready")
    );
    assert_eq!(w.quota(&w.tenant, "wipe-seat").await?, 0);
    assert_eq!(w.rows().await?, 2, "an expired grant stays on record");
    assert_eq!(
        common::count(&w.pool, "audit_log").await?,
        3,
        "the tenant and two imports; turning valid or expired writes nothing"
    );
    w.op.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn an_import_under_an_approval_policy_waits_for_a_second_person() -> anyhow::Result<()> {
    // A control plane of its own, with the admission guard and a policy
    // covering LicenseGrant (and not Tenant).
    let cp = ControlPlane::start().await?;
    let admin = cp.client().await?;
    common::approvals::install(&admin, false).await?;
    common::apply_yaml(
        &admin,
        &format!(
            "apiVersion: platform.countersign.dev/v1alpha1\nkind: ApprovalPolicy\nmetadata: {{name: licenses}}\n\
             spec:\n  rules: [{{kinds: [LicenseGrant], operations: [create, update, delete]}}]\n  \
             gitopsServiceAccounts: ['{GITOPS}']\n"
        ),
    )
    .await?;
    let (_url, pool) = common::database().await?;
    let run = unique_name("lic-approval");
    let vendor = Vendor::new(KEY_ID);
    let trusted = licensing(&[&vendor]);
    let op = common::operator_with(&admin, &pool, &run, |o| o.licensing = trusted).await?;
    common::approvals::approve_policy(&cp, &admin, "licenses").await?;
    let w = World {
        client: admin.clone(),
        pool,
        run,
        tenant: unique_name("acme"),
        vendor,
        op,
    };
    w.create_tenant(&w.tenant).await?;

    // GitOps applies the grant on behalf of carol: nothing is imported yet.
    let id = Uuid::new_v4();
    let mut lg = w.object(&w.n("gated"), w.signed(id, json!({})))?;
    lg.annotations_mut()
        .insert("countersign.dev/requested-by".into(), "carol@example.com".into());
    Api::<LicenseGrant>::all(cp.client_as(GITOPS, &["system:serviceaccounts"]).await?)
        .create(&PostParams::default(), &lg)
        .await?;
    let waiting = w
        .wait(&w.n("gated"), "AwaitingApproval", |lg| {
            has(lg, "Approved", "False", "AwaitingApproval") && has(lg, "Ready", "False", "AwaitingApproval")
        })
        .await?;
    let digest = waiting
        .status
        .as_ref()
        .and_then(|s| s.pending_digest.clone())
        .unwrap_or_default();
    assert_eq!(digest.len(), 64);
    assert_eq!(w.rows().await?, 0, "a pending import is not written");
    let requests: Vec<(String, String)> =
        sqlx::query_as("SELECT state, requester FROM change_requests WHERE kind = 'LicenseGrant'")
            .fetch_all(&w.pool)
            .await?;
    assert_eq!(requests, [("pending".to_string(), "carol@example.com".to_string())]);

    // bob, a different person holding the approve verb, approves the digest.
    let bob: Api<LicenseGrant> = Api::all(cp.client_as("bob", &[EDITORS, APPROVERS]).await?);
    let approve = |digest: String| {
        Patch::Merge(json!({"metadata": {"annotations": {
            "countersign.dev/approved-by": "bob", "countersign.dev/approved-digest": digest}}}))
    };
    bob.patch(&w.n("gated"), &PatchParams::default(), &approve(digest.clone()))
        .await?;
    let imported = w.wait(&w.n("gated"), "live", live).await?;
    assert!(has(&imported, "Approved", "True", "Approved"));
    assert_eq!(
        imported.status.as_ref().and_then(|s| s.live_digest.clone()),
        Some(digest)
    );
    assert_eq!(w.rows().await?, 1);
    let (action, requester, approver): (String, Option<String>, Option<String>) =
        sqlx::query_as("SELECT action, requester, approver FROM audit_log WHERE object_key = $1")
            .bind(w.n("gated"))
            .fetch_one(&w.pool)
            .await?;
    assert_eq!(
        (action.as_str(), requester.as_deref(), approver.as_deref()),
        ("create", Some("carol@example.com"), Some("bob"))
    );

    // Deleting waits behind the finalizer for a second person too. The
    // GitOps account prunes it as declared (a person would have to name
    // themselves as requester first).
    Api::<LicenseGrant>::all(cp.client_as(GITOPS, &["system:serviceaccounts"]).await?)
        .delete(&w.n("gated"), &DeleteParams::default())
        .await?;
    let held = w
        .wait(&w.n("gated"), "deletion awaiting approval", |lg| {
            has(lg, "Ready", "True", "DeletionAwaitingApproval")
        })
        .await?;
    let delete_digest = held
        .status
        .as_ref()
        .and_then(|s| s.pending_digest.clone())
        .unwrap_or_default();
    bob.patch(&w.n("gated"), &PatchParams::default(), &approve(delete_digest))
        .await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while w.api().get_opt(&w.n("gated")).await?.is_some() {
        assert!(Instant::now() < deadline, "the approved deletion did not finish");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(w.rows().await?, 1, "the row stays on record");
    assert_eq!(w.audit_actions(&w.n("gated")).await?, ["create", "orphan"]);
    w.op.shutdown().await;
    Ok(())
}
