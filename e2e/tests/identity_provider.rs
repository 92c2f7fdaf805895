//! IdentityProviders and GroupMappings end to end: a real API server,
//! PostgreSQL, and a local HTTPS identity provider on loopback with a test CA.

mod common;

use common::{status_has, wait_for};
use countersign_crds::identity_provider::IdentityProviderStatus;
use countersign_crds::{GroupMapping, IdentityProvider, Tenant};
use countersign_e2e::stub_idp::StubIdp;
use countersign_e2e::unique_name;
use countersign_operator::run::Running;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use sqlx::{PgPool, Row};
use std::time::Duration;

/// One test's world: a namespace, a live tenant allowing it, the stub IdP
/// and an operator that trusts the stub's CA.
struct World {
    client: Client,
    pool: PgPool,
    run: String,
    ns: String,
    tenant: String,
    stub: StubIdp,
    op: Running,
}

async fn world(allow_loopback: bool) -> anyhow::Result<World> {
    common::secrets::captured_logs();
    let client = common::cluster().await?;
    let (_url, pool) = common::database().await?;
    let run = unique_name("idp");
    let ns = unique_name("team");
    common::ensure_namespace(&client, &ns).await?;
    let stub = StubIdp::start().await?;
    let ca = stub.ca_pem().to_string();
    let op = common::operator_with(&client, &pool, &run, |o| {
        o.outbound.allow_loopback = allow_loopback;
        o.outbound.extra_roots_pem = vec![ca];
        // Only watch events and the database's notifications make anything
        // look again.
        o.resync = common::HOUR;
    })
    .await?;
    let tenant = unique_name("acme");
    let tenants: Api<Tenant> = Api::all(client.clone());
    tenants
        .create(
            &PostParams::default(),
            &common::tenant(
                &tenant,
                &run,
                json!({"slug": tenant, "name": "Acme", "allowedNamespaces": [ns]}),
            )?,
        )
        .await?;
    common::wait_tenant(&tenants, &tenant, "Ready", |t| {
        common::has_condition(t, "Ready", "True", "Live")
    })
    .await?;
    Ok(World {
        client,
        pool,
        run,
        ns,
        tenant,
        stub,
        op,
    })
}

impl World {
    fn idps(&self) -> Api<IdentityProvider> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    fn mappings(&self) -> Api<GroupMapping> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    async fn put_secret(&self, name: &str, value: &str) -> anyhow::Result<()> {
        let secret: Secret = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name, "namespace": self.ns},
            "stringData": {"client-secret": value},
        }))?;
        Api::<Secret>::namespaced(self.client.clone(), &self.ns)
            .patch(name, &PatchParams::apply("e2e").force(), &Patch::Apply(&secret))
            .await?;
        Ok(())
    }

    fn oidc(
        &self,
        name: &str,
        display: &str,
        issuer: &str,
        extra: serde_json::Value,
    ) -> anyhow::Result<IdentityProvider> {
        let mut oidc = json!({
            "issuer": issuer, "clientId": "countersign",
            "clientSecret": {"name": format!("{name}-oidc"), "key": "client-secret"},
        });
        if let (Some(o), Some(e)) = (oidc.as_object_mut(), extra.as_object()) {
            o.extend(e.clone());
        }
        self.idp(
            name,
            json!({"tenantRef": {"name": self.tenant}, "displayName": display, "oidc": oidc}),
        )
    }

    fn idp(&self, name: &str, spec: serde_json::Value) -> anyhow::Result<IdentityProvider> {
        Ok(serde_json::from_value(json!({
            "apiVersion": "platform.countersign.dev/v1alpha1", "kind": "IdentityProvider",
            "metadata": {"name": name, "namespace": self.ns, "labels": {common::TEST_LABEL: self.run}},
            "spec": spec,
        }))?)
    }

    async fn wait_idp(
        &self,
        name: &str,
        what: &str,
        pred: impl Fn(&IdentityProvider) -> bool,
    ) -> anyhow::Result<IdentityProvider> {
        let api = self.idps();
        wait_for(
            &format!("IdentityProvider {name} {what}"),
            async || Ok(api.get_opt(name).await?),
            pred,
        )
        .await
    }

    async fn wait_mapping(
        &self,
        name: &str,
        what: &str,
        pred: impl Fn(&GroupMapping) -> bool,
    ) -> anyhow::Result<GroupMapping> {
        let api = self.mappings();
        wait_for(
            &format!("GroupMapping {name} {what}"),
            async || Ok(api.get_opt(name).await?),
            pred,
        )
        .await
    }

    fn mapping(&self, name: &str, provider: &str, group: &str, role: &str) -> anyhow::Result<GroupMapping> {
        Ok(serde_json::from_value(json!({
            "apiVersion": "platform.countersign.dev/v1alpha1", "kind": "GroupMapping",
            "metadata": {"name": name, "namespace": self.ns, "labels": {common::TEST_LABEL: self.run}},
            "spec": {"identityProviderRef": {"name": provider}, "groupName": group, "role": role},
        }))?)
    }
}

fn idp_has(idp: &IdentityProvider, type_: &str, status: &str, reason: &str) -> bool {
    status_has(
        idp.status.as_ref().map(|s| &s.common),
        idp.metadata.generation,
        type_,
        status,
        reason,
    )
}

fn gm_has(gm: &GroupMapping, type_: &str, status: &str, reason: &str) -> bool {
    status_has(gm.status.as_ref(), gm.metadata.generation, type_, status, reason)
}

fn live(idp: &IdentityProvider) -> bool {
    idp_has(idp, "Ready", "True", "Live")
}

fn message(status: Option<&IdentityProviderStatus>, type_: &str) -> String {
    status
        .and_then(|s| s.common.condition(type_))
        .map(|c| c.message.clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn an_oidc_provider_goes_live_after_discovery_with_its_secret_sealed_and_rotated() -> anyhow::Result<()> {
    let w = world(true).await?;
    let plaintext = format!("s3cret-{}", uuid::Uuid::new_v4().simple());
    w.put_secret("sso-oidc", &plaintext).await?;
    let idp = w.oidc(
        "sso",
        "Acme SSO",
        &w.stub.issuer(),
        json!({"allowedEmailDomains": ["acme.example"]}),
    )?;
    w.idps().create(&PostParams::default(), &idp).await?;
    let live_idp = w.wait_idp("sso", "live", live).await?;
    let status = live_idp.status.clone().unwrap_or_default();

    // The discovery checks, field by field as the reference reports them.
    let discovery = status.discovery.clone().expect("discovery result in status");
    assert!(discovery.discovery_succeeded && discovery.jwks_reachable && discovery.iss_param_supported);
    assert_eq!(discovery.issuer_echo.as_deref(), Some(w.stub.issuer().as_str()));
    assert_eq!(discovery.current_kids, ["key-1", "key-2"]);
    assert!(discovery.errors.is_empty());
    assert_eq!(discovery.observed_generation, live_idp.metadata.generation);
    let fingerprint = status.secret_fingerprint.clone().expect("fingerprint in status");
    assert!(fingerprint.starts_with("hmac-sha256:"), "{fingerprint}");

    // The row, with the reference defaults, exposed through the public view.
    let row = sqlx::query(
        "SELECT id::text AS id, status, protocol, issuer_url, scopes, iat_window_seconds, jwks_cache_ttl_seconds,
                groups_claim_path, groups_claim_format, allowed_email_domains, client_secret_ref
           FROM identity_providers WHERE name = 'Acme SSO'",
    )
    .fetch_one(&w.pool)
    .await?;
    assert_eq!(
        status.common.database_id.as_deref(),
        Some(row.get::<String, _>("id").as_str())
    );
    assert_eq!(row.get::<String, _>("status"), "ACTIVE");
    assert_eq!(row.get::<String, _>("protocol"), "OIDC");
    assert_eq!(row.get::<Vec<String>, _>("scopes"), ["openid", "email", "profile"]);
    assert_eq!(row.get::<i32, _>("iat_window_seconds"), 300);
    assert_eq!(row.get::<i32, _>("jwks_cache_ttl_seconds"), 3600);
    assert_eq!(row.get::<String, _>("groups_claim_format"), "string_array");
    assert_eq!(row.get::<Vec<String>, _>("allowed_email_domains"), ["acme.example"]);
    let public: i64 = sqlx::query_scalar("SELECT count(*) FROM public_identity_providers WHERE name = 'Acme SSO'")
        .fetch_one(&w.pool)
        .await?;
    assert_eq!(public, 1);

    // The stored secret opens to the plaintext only with the operator's key.
    let first_ref: uuid::Uuid = row.get("client_secret_ref");
    let sealed = countersign_reconcilers::secrets::load(&w.pool, first_ref)
        .await?
        .expect("sealed secret");
    assert_eq!(common::test_key().open(&sealed)?, plaintext.as_bytes());
    assert_eq!(sealed.fingerprint, fingerprint);

    // A no-op resync writes nothing.
    let audit_before: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log")
        .fetch_one(&w.pool)
        .await?;

    // Rotation: changing the Secret re-reconciles and replaces the stored value.
    let rotated = format!("r0tated-{}", uuid::Uuid::new_v4().simple());
    w.put_secret("sso-oidc", &rotated).await?;
    let after = w
        .wait_idp("sso", "with a new fingerprint", |i| {
            i.status
                .as_ref()
                .and_then(|s| s.secret_fingerprint.as_deref())
                .is_some_and(|f| f != fingerprint)
        })
        .await?;
    assert!(live(&after), "rotation keeps the provider live");
    let new_ref: uuid::Uuid =
        sqlx::query_scalar("SELECT client_secret_ref FROM identity_providers WHERE name = 'Acme SSO'")
            .fetch_one(&w.pool)
            .await?;
    assert_ne!(new_ref, first_ref);
    let old_revoked: bool = sqlx::query_scalar("SELECT revoked_at IS NOT NULL FROM encrypted_secrets WHERE id = $1")
        .bind(first_ref)
        .fetch_one(&w.pool)
        .await?;
    assert!(old_revoked, "the old secret stops working at once");
    let sealed = countersign_reconcilers::secrets::load(&w.pool, new_ref)
        .await?
        .expect("sealed secret");
    assert_eq!(common::test_key().open(&sealed)?, rotated.as_bytes());
    let audit_after: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log")
        .fetch_one(&w.pool)
        .await?;
    assert_eq!(audit_after, audit_before + 1, "one audit entry for the rotation");
    let action: String = sqlx::query_scalar("SELECT action FROM audit_log ORDER BY seq DESC LIMIT 1")
        .fetch_one(&w.pool)
        .await?;
    assert_eq!(action, "rotate-secret");

    // No plaintext anywhere: database, status, events, logs.
    let db = common::secrets::database_text(&w.pool).await?;
    let idp_json = serde_json::to_string(&w.idps().get("sso").await?)?;
    let events = format!("{:?}", common::events_for(&w.client, "sso").await?);
    let logs = common::secrets::logs_text();
    assert!(
        logs.contains("sso") || logs.contains("reconcil"),
        "the log capture works"
    );
    for secret in [&plaintext, &rotated] {
        assert!(!db.contains(secret.as_str()), "secret in the database");
        assert!(
            !idp_json.contains(secret.as_str()),
            "secret in the object or its status"
        );
        assert!(!events.contains(secret.as_str()), "secret in events");
        assert!(!logs.contains(secret.as_str()), "secret in the logs");
    }
    w.op.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_missing_secret_is_a_clear_condition_until_it_appears() -> anyhow::Result<()> {
    let w = world(true).await?;
    w.idps()
        .create(
            &PostParams::default(),
            &w.oidc("late", "Late SSO", &w.stub.issuer(), json!({}))?,
        )
        .await?;
    let waiting = w
        .wait_idp("late", "SecretNotFound", |i| {
            idp_has(i, "Ready", "False", "SecretNotFound")
        })
        .await?;
    assert!(message(waiting.status.as_ref(), "Ready").contains("spec.oidc.clientSecret"));
    assert_eq!(
        common::count(&w.pool, "managed_objects").await?,
        1,
        "only the tenant's row"
    );
    // A Secret without the key.
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "late-oidc", "namespace": w.ns}, "stringData": {"other": "x"}}))?;
    Api::<Secret>::namespaced(w.client.clone(), &w.ns)
        .create(&PostParams::default(), &secret)
        .await?;
    w.wait_idp("late", "SecretKeyNotFound", |i| {
        idp_has(i, "Ready", "False", "SecretKeyNotFound")
    })
    .await?;
    w.put_secret("late-oidc", "now-it-exists").await?;
    w.wait_idp("late", "live", live).await?;
    w.op.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_failing_discovery_keeps_the_previous_configuration_live() -> anyhow::Result<()> {
    let w = world(true).await?;
    w.put_secret("sso-oidc", "value").await?;
    w.idps()
        .create(
            &PostParams::default(),
            &w.oidc("sso", "Acme SSO", &w.stub.issuer(), json!({}))?,
        )
        .await?;
    let first = w.wait_idp("sso", "live", live).await?;
    let live_digest = first.status.as_ref().and_then(|s| s.common.live_digest.clone());

    // The provider now lies about its issuer; a spec change must not go live.
    w.stub
        .set(|b| b.issuer_override = Some("https://evil.example/realms/test".into()));
    w.idps()
        .patch(
            "sso",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"oidc": {"scopes": ["openid", "email", "profile", "groups"]}}})),
        )
        .await?;
    let failed = w
        .wait_idp("sso", "DiscoveryFailed", |i| {
            idp_has(i, "Ready", "False", "DiscoveryFailed")
        })
        .await?;
    let status = failed.status.clone().unwrap_or_default();
    assert_eq!(
        status.common.live_digest, live_digest,
        "the old configuration is what is live"
    );
    let discovery = status.discovery.expect("discovery result");
    assert_eq!(
        discovery.issuer_echo.as_deref(),
        Some("https://evil.example/realms/test")
    );
    assert!(
        discovery.errors.iter().any(|e| e.contains("issuer")),
        "{:?}",
        discovery.errors
    );
    assert!(message(failed.status.as_ref(), "Ready").contains("previous configuration stays live"));
    let scopes: Vec<String> = sqlx::query_scalar("SELECT scopes FROM identity_providers WHERE name = 'Acme SSO'")
        .fetch_one(&w.pool)
        .await?;
    assert_eq!(
        scopes,
        ["openid", "email", "profile"],
        "the row still holds the approved configuration"
    );

    // `none` among the signing algorithms is refused the same way.
    w.stub.set(|b| {
        b.issuer_override = None;
        b.algs = vec!["RS256".into(), "none".into()];
    });
    w.idps()
        .patch(
            "sso",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"oidc": {"iatWindowSeconds": 120}}})),
        )
        .await?;
    let none = w
        .wait_idp("sso", "DiscoveryFailed for alg none", |i| {
            idp_has(i, "Ready", "False", "DiscoveryFailed")
                && i.status
                    .as_ref()
                    .and_then(|s| s.discovery.as_ref())
                    .is_some_and(|d| d.supported_alg_values.iter().any(|a| a == "none"))
        })
        .await?;
    assert!(message(none.status.as_ref(), "Ready").contains("none"));

    // Once the provider is healthy the new configuration goes live.
    w.stub.reset();
    w.idps()
        .patch(
            "sso",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"retry": "1"}}})),
        )
        .await?;
    let healed = w.wait_idp("sso", "live again", live).await?;
    assert_ne!(
        healed.status.as_ref().and_then(|s| s.common.live_digest.clone()),
        live_digest
    );
    let row = sqlx::query("SELECT scopes, iat_window_seconds FROM identity_providers WHERE name = 'Acme SSO'")
        .fetch_one(&w.pool)
        .await?;
    assert_eq!(
        row.get::<Vec<String>, _>("scopes"),
        ["openid", "email", "profile", "groups"]
    );
    assert_eq!(row.get::<i32, _>("iat_window_seconds"), 120);
    w.op.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn outbound_calls_to_loopback_and_metadata_addresses_are_refused() -> anyhow::Result<()> {
    // This operator is NOT allowed to reach loopback.
    let w = world(false).await?;
    let cases = [
        ("literal", w.stub.issuer(), "loopback"),
        ("byname", w.stub.localhost_issuer(), "loopback"),
        (
            "metadata",
            "https://169.254.169.254/latest".to_string(),
            "169.254.169.254",
        ),
    ];
    for (name, issuer, _) in &cases {
        w.put_secret(&format!("{name}-oidc"), "value").await?;
        w.idps()
            .create(
                &PostParams::default(),
                &w.oidc(name, &format!("SSRF {name}"), issuer, json!({}))?,
            )
            .await?;
    }
    for (name, _, mentions) in &cases {
        let refused = w
            .wait_idp(name, "refused", |i| idp_has(i, "Ready", "False", "DiscoveryFailed"))
            .await?;
        let errors = refused
            .status
            .as_ref()
            .and_then(|s| s.discovery.as_ref())
            .map(|d| d.errors.join("; "))
            .unwrap_or_default();
        assert!(errors.contains("AddressNotAllowed"), "{name}: {errors}");
        assert!(errors.contains(mentions), "{name}: {errors}");
    }
    assert_eq!(
        w.stub.hits("/realms/test/.well-known/openid-configuration"),
        0,
        "nothing reached the stub"
    );
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM identity_providers")
        .fetch_one(&w.pool)
        .await?;
    assert_eq!(rows, 0, "nothing was written");

    // Plain HTTP never gets past the API server.
    let err = w
        .idps()
        .create(
            &PostParams::default(),
            &w.oidc("plain", "Plain", "http://idp.example/realms/a", json!({}))?,
        )
        .await
        .expect_err("http issuer must be rejected");
    assert!(
        err.to_string().contains("spec.oidc.issuer must be an https:// URL"),
        "{err}"
    );
    w.op.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_provider_cannot_attach_to_a_tenant_that_does_not_list_its_namespace() -> anyhow::Result<()> {
    let w = world(true).await?;
    let other_ns = unique_name("intruder");
    common::ensure_namespace(&w.client, &other_ns).await?;
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "x-oidc", "namespace": other_ns}, "stringData": {"client-secret": "v"}}))?;
    Api::<Secret>::namespaced(w.client.clone(), &other_ns)
        .create(&PostParams::default(), &secret)
        .await?;
    let mut idp = w.oidc("x", "Hijack", &w.stub.issuer(), json!({}))?;
    idp.metadata.namespace = Some(other_ns.clone());
    let api: Api<IdentityProvider> = Api::namespaced(w.client.clone(), &other_ns);
    api.create(&PostParams::default(), &idp).await?;
    let refused = wait_for(
        "TenantNotPermitted",
        async || Ok(api.get_opt("x").await?),
        |i| idp_has(i, "Ready", "False", "TenantNotPermitted") && idp_has(i, "Stalled", "True", "TenantNotPermitted"),
    )
    .await?;
    let msg = message(refused.status.as_ref(), "Ready");
    assert!(msg.contains(&other_ns) && msg.contains("spec.tenantRef"), "{msg}");
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM identity_providers")
        .fetch_one(&w.pool)
        .await?;
    assert_eq!(rows, 0);
    assert_eq!(
        w.stub.hits("/realms/test/.well-known/openid-configuration"),
        0,
        "not even checked"
    );

    // A provider for a tenant that does not exist yet waits, then goes live.
    let later = unique_name("later");
    w.put_secret("w-oidc", "v").await?;
    let mut waiting = w.oidc("w", "Waiting", &w.stub.issuer(), json!({}))?;
    waiting.spec.tenant_ref.name = later.clone();
    w.idps().create(&PostParams::default(), &waiting).await?;
    w.wait_idp("w", "WaitingForDependency", |i| {
        idp_has(i, "Ready", "False", "WaitingForDependency")
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
    let was_live = w.wait_idp("w", "live", live).await?;
    let database_id = was_live.status.as_ref().and_then(|s| s.common.database_id.clone());

    // The tenant stops allowing the namespace: the provider says so, and
    // still reports the row it wrote, which stays as it was.
    Api::<Tenant>::all(w.client.clone())
        .patch(
            &later,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"allowedNamespaces": []}})),
        )
        .await?;
    let revoked = w
        .wait_idp("w", "TenantNotPermitted", |i| {
            idp_has(i, "Ready", "False", "TenantNotPermitted")
        })
        .await?;
    assert!(message(revoked.status.as_ref(), "Ready").contains("stays as it was"));
    assert_eq!(
        revoked.status.as_ref().and_then(|s| s.common.database_id.clone()),
        database_id
    );
    w.op.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn saml_metadata_is_checked_and_names_are_unique_per_tenant() -> anyhow::Result<()> {
    let w = world(true).await?;
    let saml = |entity: String| {
        json!({"tenantRef": {"name": w.tenant}, "displayName": "Acme SAML",
               "saml": {"metadataUrl": w.stub.metadata_url(), "entityId": entity, "ssoUrl": w.stub.sso_url()}})
    };
    w.idps()
        .create(&PostParams::default(), &w.idp("saml", saml(w.stub.saml_entity_id()))?)
        .await?;
    let ok = w.wait_idp("saml", "live", live).await?;
    let check = ok.status.and_then(|s| s.saml_metadata).expect("SAML result");
    assert!(check.metadata_fetched && check.sso_url_listed && check.errors.is_empty());
    let row =
        sqlx::query("SELECT protocol, entity_id, sso_url, status FROM identity_providers WHERE name = 'Acme SAML'")
            .fetch_one(&w.pool)
            .await?;
    assert_eq!(row.get::<String, _>("protocol"), "SAML");
    assert_eq!(row.get::<String, _>("status"), "ACTIVE");

    // A second provider with the same name for the same tenant conflicts.
    w.idps()
        .create(
            &PostParams::default(),
            &w.idp("saml-copy", saml(w.stub.saml_entity_id()))?,
        )
        .await?;
    let conflict = w
        .wait_idp("saml-copy", "Conflict", |i| idp_has(i, "Ready", "False", "Conflict"))
        .await?;
    assert!(message(conflict.status.as_ref(), "Ready").contains(&format!("{}/saml", w.ns)));

    // An entity ID the metadata does not declare is refused.
    w.idps()
        .create(
            &PostParams::default(),
            &w.idp("saml-wrong", {
                let mut s = saml("urn:someone-else".into());
                s["displayName"] = json!("Other SAML");
                s
            })?,
        )
        .await?;
    let wrong = w
        .wait_idp("saml-wrong", "DiscoveryFailed", |i| {
            idp_has(i, "Ready", "False", "DiscoveryFailed")
        })
        .await?;
    let errors = wrong
        .status
        .and_then(|s| s.saml_metadata)
        .map(|m| m.errors.join("; "))
        .unwrap_or_default();
    assert!(errors.contains("entity"), "{errors}");
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM identity_providers")
        .fetch_one(&w.pool)
        .await?;
    assert_eq!(rows, 1, "neither the duplicate nor the mismatch was written");
    w.op.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn group_mappings_wait_for_their_provider_conflict_and_block_its_deletion() -> anyhow::Result<()> {
    let w = world(true).await?;
    // The mapping comes first (Argo CD applies in any order) and waits.
    w.mappings()
        .create(
            &PostParams::default(),
            &w.mapping("admins", "sso", "acme-admins", "CLIENT_ADMIN")?,
        )
        .await?;
    w.wait_mapping("admins", "WaitingForDependency", |m| {
        gm_has(m, "Ready", "False", "WaitingForDependency")
    })
    .await?;
    w.put_secret("sso-oidc", "v").await?;
    w.idps()
        .create(
            &PostParams::default(),
            &w.oidc("sso", "Acme SSO", &w.stub.issuer(), json!({}))?,
        )
        .await?;
    w.wait_idp("sso", "live", live).await?;
    w.wait_mapping("admins", "live", |m| gm_has(m, "Ready", "True", "Live"))
        .await?;
    let row = sqlx::query(
        "SELECT g.role, g.group_name FROM group_mappings g JOIN identity_providers p ON p.id = g.identity_provider_id
          WHERE p.name = 'Acme SSO' AND g.deleted_at IS NULL",
    )
    .fetch_one(&w.pool)
    .await?;
    assert_eq!(row.get::<String, _>("role"), "CLIENT_ADMIN");

    // The same group mapped twice on one provider: the second conflicts.
    w.mappings()
        .create(
            &PostParams::default(),
            &w.mapping("admins-again", "sso", "acme-admins", "AUDITOR")?,
        )
        .await?;
    w.wait_mapping("admins-again", "Conflict", |m| gm_has(m, "Ready", "False", "Conflict"))
        .await?;
    // A role outside the closed set never reaches the database.
    let bad: kube::api::DynamicObject = serde_json::from_value(json!({
        "apiVersion": "platform.countersign.dev/v1alpha1", "kind": "GroupMapping",
        "metadata": {"name": "root", "namespace": w.ns},
        "spec": {"identityProviderRef": {"name": "sso"}, "groupName": "x", "role": "SUPERUSER"},
    }))?;
    let err = common::create_dynamic(&w.client, &bad, false)
        .await
        .expect_err("unknown role");
    assert!(err.to_string().contains("Unsupported value"), "{err}");

    // Deleting the provider while mappings reference it is refused.
    w.mappings().delete("admins-again", &DeleteParams::default()).await?;
    w.idps().delete("sso", &DeleteParams::default()).await?;
    let in_use = w
        .wait_idp("sso", "InUse", |i| {
            i.status
                .as_ref()
                .and_then(|s| s.common.condition("Stalled"))
                .is_some_and(|c| c.reason == "InUse" && c.status.as_str() == "True")
        })
        .await?;
    assert!(message(in_use.status.as_ref(), "Stalled").contains("Cascade"));
    let alive: i64 =
        sqlx::query_scalar("SELECT count(*) FROM identity_providers WHERE name = 'Acme SSO' AND deleted_at IS NULL")
            .fetch_one(&w.pool)
            .await?;
    assert_eq!(alive, 1, "the provider stays while referenced");

    // Removing the mapping releases the deletion.
    w.mappings().delete("admins", &DeleteParams::default()).await?;
    wait_for(
        "the provider to be gone",
        async || Ok(w.idps().get_opt("sso").await?.map(|_| json!(1)).or(Some(json!(0)))),
        |v| *v == json!(0),
    )
    .await?;
    let deleted: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM identity_providers WHERE name = 'Acme SSO' AND deleted_at IS NOT NULL",
    )
    .fetch_one(&w.pool)
    .await?;
    assert_eq!(deleted, 1, "soft-deleted");
    w.op.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn provider_and_mapping_rows_edited_in_the_database_are_restored_when_it_happens() -> anyhow::Result<()> {
    let w = world(true).await?;
    w.put_secret("sso-oidc", "v").await?;
    w.idps()
        .create(
            &PostParams::default(),
            &w.oidc("sso", "Acme SSO", &w.stub.issuer(), json!({}))?,
        )
        .await?;
    w.mappings()
        .create(
            &PostParams::default(),
            &w.mapping("admins", "sso", "acme-admins", "CLIENT_ADMIN")?,
        )
        .await?;
    w.wait_idp("sso", "live", live).await?;
    w.wait_mapping("admins", "live", |m| gm_has(m, "Ready", "True", "Live"))
        .await?;

    // Someone with database access widens the provider and elevates the mapping.
    sqlx::query("UPDATE identity_providers SET allowed_email_domains = '{evil.example}' WHERE name = 'Acme SSO'")
        .execute(&w.pool)
        .await?;
    sqlx::query("UPDATE group_mappings SET role = 'PLATFORM_ADMIN' WHERE group_name = 'acme-admins'")
        .execute(&w.pool)
        .await?;
    common::wait_row(
        &w.pool,
        "SELECT array_to_string(allowed_email_domains, ',') FROM identity_providers WHERE name = $1 AND deleted_at IS NULL",
        "Acme SSO",
        "",
        Duration::from_secs(5),
    )
    .await?;
    common::wait_row(
        &w.pool,
        "SELECT role FROM group_mappings WHERE group_name = $1 AND deleted_at IS NULL",
        "acme-admins",
        "CLIENT_ADMIN",
        Duration::from_secs(5),
    )
    .await?;
    let provider = common::drifted_events(&w.client, "sso").await?;
    assert!(
        provider.len() == 1 && provider[0].contains("(allowed_email_domains)") && !provider[0].contains("evil"),
        "{provider:?}"
    );
    let mapping = common::drifted_events(&w.client, "admins").await?;
    assert!(
        mapping.len() == 1 && mapping[0].contains("(role)") && !mapping[0].contains("PLATFORM_ADMIN"),
        "{mapping:?}"
    );
    for kind in ["IdentityProvider", "GroupMapping"] {
        assert_eq!(
            common::metric(&w.op, &format!("countersign_drift_corrections_total{{kind=\"{kind}\"")).await?,
            1.0,
            "{kind}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_cascading_provider_takes_its_mappings_with_it() -> anyhow::Result<()> {
    let w = world(true).await?;
    w.put_secret("sso-oidc", "v").await?;
    w.idps()
        .create(&PostParams::default(), &{
            let mut i = w.oidc("sso", "Acme SSO", &w.stub.issuer(), json!({}))?;
            i.spec.deletion_policy = countersign_crds::identity_provider::IdpDeletionPolicy::Cascade;
            i
        })
        .await?;
    w.wait_idp("sso", "live", live).await?;
    w.mappings()
        .create(&PostParams::default(), &w.mapping("ops", "sso", "ops", "CLIENT_TECH")?)
        .await?;
    w.wait_mapping("ops", "live", |m| gm_has(m, "Ready", "True", "Live"))
        .await?;
    w.idps().delete("sso", &DeleteParams::default()).await?;
    wait_for(
        "the provider to be gone",
        async || Ok(w.idps().get_opt("sso").await?.map(|_| json!(1)).or(Some(json!(0)))),
        |v| *v == json!(0),
    )
    .await?;
    let live_mappings: i64 = sqlx::query_scalar("SELECT count(*) FROM group_mappings WHERE deleted_at IS NULL")
        .fetch_one(&w.pool)
        .await?;
    let trail: Vec<(String, String, String)> =
        sqlx::query_as("SELECT kind, action, at::text FROM audit_log ORDER BY seq")
            .fetch_all(&w.pool)
            .await?;
    let rows: Vec<(String, Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT g.created_at::text, g.deleted_at::text, p.deleted_at::text FROM group_mappings g
           JOIN identity_providers p ON p.id = g.identity_provider_id",
    )
    .fetch_all(&w.pool)
    .await?;
    assert_eq!(
        live_mappings, 0,
        "the mapping was soft-deleted with its provider: {rows:?} {trail:?}"
    );
    let detail: serde_json::Value =
        sqlx::query_scalar("SELECT detail FROM audit_log WHERE kind = 'IdentityProvider' AND action = 'delete'")
            .fetch_one(&w.pool)
            .await?;
    assert_eq!(detail["cascaded_group_mappings"], 1);
    // The orphaned GroupMapping object now waits for a provider again.
    w.wait_mapping("ops", "WaitingForDependency", |m| {
        gm_has(m, "Ready", "False", "WaitingForDependency")
    })
    .await?;
    w.op.shutdown().await;
    Ok(())
}

/// Attack 7: privilege from a team namespace. A GroupMapping used to be
/// accepted from a namespace its provider's tenant had removed, and could
/// grant the platform-wide (master-realm) roles of reference 000 from any
/// tenant. Nothing reaches the database in either case.
#[tokio::test]
async fn a_team_namespace_cannot_grant_platform_roles_or_map_for_a_tenant_that_left_it() -> anyhow::Result<()> {
    let w = world(true).await?;
    w.put_secret("sso-oidc", "v").await?;
    w.idps()
        .create(
            &PostParams::default(),
            &w.oidc("sso", "Acme SSO", &w.stub.issuer(), json!({}))?,
        )
        .await?;
    w.wait_idp("sso", "live", live).await?;
    let before = common::approvals::guarded_tables(&w.pool).await?;

    // Platform-wide roles through an ordinary tenant's provider are refused.
    for (name, role) in [("root", "PLATFORM_ADMIN"), ("billing", "BILLING_OPERATOR")] {
        w.mappings()
            .create(&PostParams::default(), &w.mapping(name, "sso", name, role)?)
            .await?;
        let refused = w
            .wait_mapping(name, "PlatformRoleNotPermitted", |m| {
                gm_has(m, "Ready", "False", "PlatformRoleNotPermitted")
                    && gm_has(m, "Stalled", "True", "PlatformRoleNotPermitted")
            })
            .await?;
        let text = common::condition_of(refused.status.as_ref(), "Ready")
            .map(|c| c.message.clone())
            .unwrap_or_default();
        assert!(
            text.contains("spec.role") && text.contains(role) && text.contains(&w.tenant),
            "{text}"
        );
    }
    assert_eq!(common::approvals::guarded_tables(&w.pool).await?, before);

    // The tenant stops allowing the namespace: a new mapping from it is refused.
    let tenants: Api<Tenant> = Api::all(w.client.clone());
    tenants
        .patch(
            &w.tenant,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"allowedNamespaces": ["somewhere-else"]}})),
        )
        .await?;
    wait_for(
        "the tenant row to drop the namespace",
        async || {
            let allowed: Vec<String> = sqlx::query_scalar("SELECT allowed_namespaces FROM tenants WHERE slug = $1")
                .bind(&w.tenant)
                .fetch_one(&w.pool)
                .await?;
            Ok(Some(json!(allowed)))
        },
        |v| *v == json!(["somewhere-else"]),
    )
    .await?;
    let before = common::approvals::guarded_tables(&w.pool).await?;
    w.mappings()
        .create(
            &PostParams::default(),
            &w.mapping("late", "sso", "acme-staff", "CLIENT_ADMIN")?,
        )
        .await?;
    let refused = w
        .wait_mapping("late", "TenantNotPermitted", |m| {
            gm_has(m, "Ready", "False", "TenantNotPermitted")
        })
        .await?;
    let text = common::condition_of(refused.status.as_ref(), "Ready")
        .map(|c| c.message.clone())
        .unwrap_or_default();
    assert!(text.contains("allowedNamespaces") && text.contains(&w.ns), "{text}");
    assert_eq!(common::approvals::guarded_tables(&w.pool).await?, before);
    w.op.shutdown().await;
    Ok(())
}
