//! Argo CD health (charts/countersign/files/argocd/health.lua) and Flux's
//! kstatus, checked against real objects: every kind is driven through the
//! real API server and operator into each state, captured exactly as the API
//! server returns it, written to `<target>/health-fixtures/<kind>-<state>.json`
//! and fed to the Go checker (e2e/controlplane/health), which runs the script
//! the way Argo CD's util/lua does and kstatus' `status.Compute`.
//!
//! States: fresh (before the operator's first status write: the CRD's status
//! default observedGeneration -1), ready, awaiting (Approved=False
//! AwaitingApproval under an ApprovalPolicy), stalled, lagging (spec changed
//! while the operator is stopped), deleting (deletionTimestamp set while the
//! finalizer holds it, operator stopped) and, for IdentityProvider,
//! deleting-stalled (a deletion held InUse by a live GroupMapping).

mod common;

use chrono::{SecondsFormat, Utc};
use common::TEST_LABEL;
use common::approvals::{APPROVERS, EDITORS, GITOPS};
use common::vendor::Vendor;
use countersign_e2e::stub_idp::StubIdp;
use countersign_e2e::unique_name;
use countersign_e2e::webhook_receiver::{KeySource, WebhookReceiver};
use countersign_operator::controller::Licensing;
use countersign_operator::run::Running;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use sqlx::PgPool;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const VENDOR: &str = "Exaion";
const OPERATOR: &str = "Example Operator";
const KEY_ID: &str = "exaion-2027";
/// The control plane's admin user, who creates and changes everything here.
const ADMIN: &str = "countersign-admin";
/// Once an ApprovalPolicy exists the requester guard wants whoever changes a
/// spec to name themselves, so every object names the admin from the start.
const REQUESTED_BY: &str = "countersign.dev/requested-by";

/// The kinds, their plural and whether they are namespaced.
const KINDS: [(&str, &str, bool); 7] = [
    ("Tenant", "tenants", false),
    ("ApprovalPolicy", "approvalpolicies", false),
    ("IdentityProvider", "identityproviders", true),
    ("GroupMapping", "groupmappings", true),
    ("WebhookSubscription", "webhooksubscriptions", true),
    ("FrontingLink", "frontinglinks", false),
    ("LicenseGrant", "licensegrants", false),
];

const STATES: [&str; 7] = [
    "fresh",
    "ready",
    "awaiting",
    "stalled",
    "lagging",
    "deleting",
    "deleting-stalled",
];

fn at(offset: chrono::Duration) -> String {
    (Utc::now() + offset).to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Condition `type_` of a raw object.
fn condition<'a>(obj: &'a Value, type_: &str) -> Option<&'a Value> {
    obj.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

/// Whether the object has condition `type_` = `status` (with `reason`, unless
/// empty), computed for its current generation.
fn has(obj: &Value, type_: &str, status: &str, reason: &str) -> bool {
    let generation = &obj["metadata"]["generation"];
    obj["status"]["observedGeneration"] == *generation
        && condition(obj, type_).is_some_and(|c| {
            c["status"] == status
                && (reason.is_empty() || c["reason"] == reason)
                && c["observedGeneration"] == *generation
        })
}

fn message(obj: &Value, type_: &str) -> String {
    condition(obj, type_)
        .and_then(|c| c["message"].as_str())
        .unwrap_or_default()
        .to_string()
}

/// The API resource of a kind, and whether it is namespaced.
fn resource(kind: &str) -> (ApiResource, bool) {
    let (_, plural, namespaced) = KINDS.iter().find(|k| k.0 == kind).copied().expect("known kind");
    let resource = ApiResource {
        group: "platform.countersign.dev".into(),
        version: "v1alpha1".into(),
        api_version: "platform.countersign.dev/v1alpha1".into(),
        kind: kind.into(),
        plural: plural.into(),
    };
    (resource, namespaced)
}

struct World {
    cp: &'static countersign_e2e::ControlPlane,
    client: Client,
    pool: PgPool,
    run: String,
    ns: String,
    stub: StubIdp,
    receiver: WebhookReceiver,
    /// A second endpoint, for the subscription made under the policy.
    receiver2: WebhookReceiver,
    vendor: Vendor,
    op: Option<Running>,
    /// (kind, state) → the object as the API server returned it.
    captured: BTreeMap<(String, String), Value>,
}

impl World {
    fn api(&self, kind: &str) -> Api<DynamicObject> {
        let (resource, namespaced) = resource(kind);
        if namespaced {
            Api::namespaced_with(self.client.clone(), &self.ns, &resource)
        } else {
            Api::all_with(self.client.clone(), &resource)
        }
    }

    /// Creates an object of `kind` labelled for this run.
    async fn create(&self, kind: &str, name: &str, spec: Value) -> anyhow::Result<()> {
        let mut obj: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "platform.countersign.dev/v1alpha1", "kind": kind,
            "metadata": {"name": name, "namespace": self.ns, "labels": {TEST_LABEL: self.run},
                         "annotations": {REQUESTED_BY: ADMIN}},
            "spec": spec,
        }))?;
        if !KINDS.iter().any(|k| k.0 == kind && k.2) {
            obj.metadata.namespace = None;
        }
        self.api(kind).create(&PostParams::default(), &obj).await?;
        Ok(())
    }

    async fn get(&self, kind: &str, name: &str) -> anyhow::Result<Value> {
        Ok(serde_json::to_value(self.api(kind).get(name).await?)?)
    }

    async fn wait(&self, kind: &str, name: &str, what: &str, pred: impl Fn(&Value) -> bool) -> anyhow::Result<Value> {
        let api = self.api(kind);
        common::wait_for(
            &format!("{kind} {name} {what}"),
            async || {
                Ok(api
                    .get_opt(name)
                    .await?
                    .map(|o| serde_json::to_value(o).unwrap_or_default()))
            },
            pred,
        )
        .await
    }

    fn keep(&mut self, kind: &str, state: &str, obj: Value) {
        self.captured.insert((kind.to_string(), state.to_string()), obj);
    }

    async fn capture(&mut self, kind: &str, name: &str, state: &str) -> anyhow::Result<()> {
        let obj = self.get(kind, name).await?;
        self.keep(kind, state, obj);
        Ok(())
    }

    async fn wait_and_keep(
        &mut self,
        kind: &str,
        name: &str,
        state: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<()> {
        let obj = self.wait(kind, name, state, pred).await?;
        self.keep(kind, state, obj);
        Ok(())
    }

    async fn patch(&self, kind: &str, name: &str, patch: Value) -> anyhow::Result<()> {
        self.api(kind)
            .patch(name, &PatchParams::default(), &Patch::Merge(patch))
            .await?;
        Ok(())
    }

    async fn start_operator(&mut self) -> anyhow::Result<()> {
        let roots = vec![
            self.stub.ca_pem().to_string(),
            self.receiver.ca_pem().to_string(),
            self.receiver2.ca_pem().to_string(),
        ];
        let keyring = BTreeMap::from([(KEY_ID.to_string(), self.vendor.public_key())]);
        let op = common::operator_with(&self.client, &self.pool, &self.run, |o| {
            o.outbound.allow_loopback = true;
            o.outbound.extra_roots_pem = roots;
            o.licensing = Licensing {
                keyring,
                vendor: Some(VENDOR.into()),
                operator: Some(OPERATOR.into()),
            };
            // Platform resources live only in the database, which has no watch.
            o.resync = Duration::from_secs(2);
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

    async fn put_secret(&self, ns: &str, name: &str) -> anyhow::Result<()> {
        let secret: Secret = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name, "namespace": ns},
            "stringData": {"client-secret": "not-a-real-secret"},
        }))?;
        Api::<Secret>::namespaced(self.client.clone(), ns)
            .patch(name, &PatchParams::apply("e2e").force(), &Patch::Apply(&secret))
            .await?;
        Ok(())
    }

    fn oidc(&self, display: &str, secret: &str) -> Value {
        json!({"tenantRef": {"name": self.n("acme")}, "displayName": display, "oidc": {
            "issuer": self.stub.issuer(), "clientId": "countersign",
            "clientSecret": {"name": secret, "key": "client-secret"}}})
    }

    fn grant(&self, quantity: i64) -> Value {
        let tenant = self.n("acme");
        let mut spec = json!({
            "tenantRef": {"name": tenant},
            "grantId": uuid::Uuid::new_v4().to_string(),
            "grantType": "GRANT",
            "instanceFingerprint": format!("sha256:{tenant}-instance"),
            "licenseType": "wipe-seat",
            "quantity": quantity,
            "validFrom": at(chrono::Duration::days(-1)),
            "validUntil": at(chrono::Duration::days(365)),
            "commercialChain": [VENDOR, "Acme Reseller", OPERATOR],
        });
        self.vendor.sign(&mut spec);
        spec
    }

    fn link(&self, source: &str, target: &str, map: Value) -> Value {
        json!({"sourceSlug": self.n(source), "targetSlug": self.n(target), "scopeMap": map})
    }

    /// A name unique to this run (several kinds are cluster-scoped).
    fn n(&self, base: &str) -> String {
        format!("{base}-{}", self.run)
    }

    async fn resource(&self, slug: &str, scopes: &[&str]) -> anyhow::Result<()> {
        sqlx::query("INSERT INTO platform_resources (slug, name, scopes) VALUES ($1, $1, $2)")
            .bind(self.n(slug))
            .bind(scopes.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// bob (an approver) approves or rejects the digest pending on an ApprovalPolicy.
    async fn decide_policy(&self, name: &str, approve: bool) -> anyhow::Result<()> {
        let obj = self.get("ApprovalPolicy", name).await?;
        let digest = obj["status"]["pendingDigest"].as_str().unwrap_or_default().to_string();
        let annotations = if approve {
            json!({"countersign.dev/approved-by": "bob", "countersign.dev/approved-digest": digest})
        } else {
            json!({"countersign.dev/rejected-by": "bob", "countersign.dev/rejected-digest": digest,
                   "countersign.dev/rejected-reason": "not this one"})
        };
        let bob = self.cp.client_as("bob", &[EDITORS, APPROVERS]).await?;
        Api::<countersign_crds::ApprovalPolicy>::all(bob)
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"annotations": annotations}})),
            )
            .await?;
        Ok(())
    }
}

fn ready(o: &Value) -> bool {
    has(o, "Ready", "True", "") && !has(o, "Reconciling", "True", "") && !has(o, "Stalled", "True", "")
}

fn stalled(reason: &'static str) -> impl Fn(&Value) -> bool {
    move |o: &Value| has(o, "Stalled", "True", reason)
}

fn awaiting(o: &Value) -> bool {
    has(o, "Approved", "False", "AwaitingApproval") && o["status"]["pendingDigest"].is_string()
}

/// Drives every kind through every state it can reach and keeps the objects.
async fn capture_everything() -> anyhow::Result<BTreeMap<(String, String), Value>> {
    let cp = countersign_e2e::shared_control_plane().await;
    let client = common::cluster().await?;
    // RBAC, people, the approval guard (needed once an ApprovalPolicy applies).
    common::approvals::install(&client, false).await?;
    let (_url, pool) = common::database().await?;
    let run = unique_name("health");
    let ns = unique_name("team");
    let intruder = unique_name("intruder");
    common::ensure_namespace(&client, &ns).await?;
    common::ensure_namespace(&client, &intruder).await?;
    let mut w = World {
        cp,
        client,
        pool,
        run,
        ns,
        stub: StubIdp::start().await?,
        receiver: WebhookReceiver::start(KeySource::None).await?,
        receiver2: WebhookReceiver::start(KeySource::None).await?,
        vendor: Vendor::new(KEY_ID),
        op: None,
        captured: BTreeMap::new(),
    };
    for secret in ["sso-oidc", "sso2-oidc"] {
        w.put_secret(&w.ns, secret).await?;
    }
    w.put_secret(&intruder, "x-oidc").await?;
    for (slug, scopes) in [
        ("gw", &["gw:read", "gw:write"]),
        ("api", &["api:read", "api:write"]),
        ("gw2", &["gw:read", "gw:write"]),
        ("api2", &["api:read", "api:write"]),
        ("gw3", &["gw:read", "gw:write"]),
        ("api3", &["api:read", "api:write"]),
    ] {
        w.resource(slug, scopes).await?;
    }

    // (a) Everything is created while no operator runs: the API server
    // returns the CRD's status default, observedGeneration -1.
    let (acme, spare) = (w.n("acme"), w.n("spare"));
    w.create(
        "Tenant",
        &acme,
        json!({"slug": acme, "name": "Acme", "allowedNamespaces": [w.ns],
               "instanceFingerprint": format!("sha256:{acme}-instance")}),
    )
    .await?;
    w.create("Tenant", &spare, json!({"slug": spare, "name": "Spare"}))
        .await?;
    w.create("Tenant", &w.n("blank"), json!({"slug": w.n("blank"), "name": "   "}))
        .await?;
    w.create("IdentityProvider", "sso", w.oidc("Acme SSO", "sso-oidc"))
        .await?;
    w.create(
        "GroupMapping",
        "admins",
        json!({"identityProviderRef": {"name": "sso"}, "groupName": "acme-admins", "role": "CLIENT_ADMIN"}),
    )
    .await?;
    w.create(
        "GroupMapping",
        "viewers",
        json!({"identityProviderRef": {"name": "sso"}, "groupName": "acme-viewers", "role": "AUDITOR"}),
    )
    .await?;
    w.create(
        "GroupMapping",
        "root",
        json!({"identityProviderRef": {"name": "sso"}, "groupName": "root", "role": "PLATFORM_ADMIN"}),
    )
    .await?;
    w.create(
        "WebhookSubscription",
        "hook",
        json!({"tenantRef": {"name": acme}, "url": w.receiver.url(), "events": ["certificate.issued"]}),
    )
    .await?;
    w.create(
        "WebhookSubscription",
        "metadata",
        json!({"tenantRef": {"name": acme}, "url": "https://169.254.169.254/latest/hook",
               "events": ["certificate.issued"]}),
    )
    .await?;
    w.create(
        "FrontingLink",
        &w.n("front"),
        w.link("gw", "api", json!({"gw:read": ["api:read"]})),
    )
    .await?;
    w.create(
        "FrontingLink",
        &w.n("badscope"),
        w.link("gw2", "api2", json!({"gw:admin": ["api:read"]})),
    )
    .await?;
    w.create("LicenseGrant", &w.n("grant"), w.grant(100)).await?;
    let mut tampered = w.grant(100);
    tampered["quantity"] = json!(100_000);
    w.create("LicenseGrant", &w.n("tampered"), tampered).await?;
    // An IdentityProvider in a namespace its tenant does not list.
    let mut x = w.oidc("Hijack", "x-oidc");
    x["displayName"] = json!("Hijack");
    let x: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "platform.countersign.dev/v1alpha1", "kind": "IdentityProvider",
        "metadata": {"name": "x", "namespace": intruder, "labels": {TEST_LABEL: w.run},
                     "annotations": {REQUESTED_BY: ADMIN}},
        "spec": x,
    }))?;
    let intruder_idps: Api<DynamicObject> =
        Api::namespaced_with(w.client.clone(), &intruder, &resource("IdentityProvider").0);
    intruder_idps.create(&PostParams::default(), &x).await?;

    for (kind, name) in [
        ("Tenant", acme.clone()),
        ("IdentityProvider", "sso".into()),
        ("GroupMapping", "admins".into()),
        ("WebhookSubscription", "hook".into()),
        ("FrontingLink", w.n("front")),
        ("LicenseGrant", w.n("grant")),
    ] {
        w.capture(kind, &name, "fresh").await?;
    }

    // (b) and (d): the operator makes them live, or stalls the bad ones.
    w.start_operator().await?;
    for (kind, name) in [
        ("Tenant", acme.clone()),
        ("Tenant", spare.clone()),
        ("IdentityProvider", "sso".into()),
        ("GroupMapping", "admins".into()),
        ("GroupMapping", "viewers".into()),
        ("WebhookSubscription", "hook".into()),
        ("FrontingLink", w.n("front")),
        ("LicenseGrant", w.n("grant")),
    ] {
        let obj = w.wait(kind, &name, "ready", ready).await?;
        if name != spare && name != "viewers" {
            w.keep(kind, "ready", obj);
        }
    }
    w.wait_and_keep("Tenant", &w.n("blank"), "stalled", stalled("InvalidSpec"))
        .await?;
    w.wait_and_keep("GroupMapping", "root", "stalled", stalled("PlatformRoleNotPermitted"))
        .await?;
    w.wait_and_keep("WebhookSubscription", "metadata", "stalled", stalled("OutboundRefused"))
        .await?;
    w.wait_and_keep("FrontingLink", &w.n("badscope"), "stalled", stalled("UnknownScope"))
        .await?;
    w.wait_and_keep("LicenseGrant", &w.n("tampered"), "stalled", stalled("InvalidSignature"))
        .await?;
    let x = common::wait_for(
        "IdentityProvider x TenantNotPermitted",
        async || {
            Ok(intruder_idps
                .get_opt("x")
                .await?
                .map(|o| serde_json::to_value(o).unwrap_or_default()))
        },
        stalled("TenantNotPermitted"),
    )
    .await?;
    w.keep("IdentityProvider", "stalled", x);

    // ApprovalPolicy: created while no operator runs (a); trusting a GitOps
    // account loosens the rule, so each waits for a second person (c); bob
    // approves one (b) and rejects the other (d).
    w.stop_operator().await;
    let covered = json!([{"kinds": ["Tenant", "IdentityProvider", "GroupMapping", "WebhookSubscription",
                                    "FrontingLink", "LicenseGrant"], "operations": ["create"]}]);
    let (policy, rejected) = (w.n("policy"), w.n("rejected"));
    // Each trusts its own GitOps account, so each stays a loosening whatever
    // the other's fate.
    for (name, account) in [
        (&policy, GITOPS),
        (&rejected, "system:serviceaccount:flux-system:kustomize-controller"),
    ] {
        w.create(
            "ApprovalPolicy",
            name,
            json!({"rules": covered, "gitopsServiceAccounts": [account]}),
        )
        .await?;
    }
    w.capture("ApprovalPolicy", &policy, "fresh").await?;
    w.start_operator().await?;
    w.wait_and_keep("ApprovalPolicy", &policy, "awaiting", awaiting).await?;
    w.wait("ApprovalPolicy", &rejected, "awaiting", awaiting).await?;
    w.decide_policy(&rejected, false).await?;
    w.decide_policy(&policy, true).await?;
    w.wait_and_keep("ApprovalPolicy", &policy, "ready", |o| {
        ready(o) && o["status"]["pendingDigest"].is_null()
    })
    .await?;
    w.wait_and_keep("ApprovalPolicy", &rejected, "stalled", stalled("Rejected"))
        .await?;

    // (c) With the policy in force, a new object of every other kind waits
    // for a second person.
    let later = w.n("later");
    w.create("Tenant", &later, json!({"slug": later, "name": "Later"}))
        .await?;
    w.create("IdentityProvider", "sso2", w.oidc("Acme SSO 2", "sso2-oidc"))
        .await?;
    w.create(
        "GroupMapping",
        "ops",
        json!({"identityProviderRef": {"name": "sso"}, "groupName": "acme-ops", "role": "AUDITOR"}),
    )
    .await?;
    w.create(
        "WebhookSubscription",
        "hook2",
        json!({"tenantRef": {"name": acme}, "url": w.receiver2.url(), "events": ["tenant.changed"]}),
    )
    .await?;
    w.create(
        "FrontingLink",
        &w.n("front2"),
        w.link("gw3", "api3", json!({"gw:read": ["api:read"]})),
    )
    .await?;
    w.create("LicenseGrant", &w.n("grant2"), w.grant(5)).await?;
    for (kind, name) in [
        ("Tenant", later),
        ("IdentityProvider", "sso2".into()),
        ("GroupMapping", "ops".into()),
        ("WebhookSubscription", "hook2".into()),
        ("FrontingLink", w.n("front2")),
        ("LicenseGrant", w.n("grant2")),
    ] {
        w.wait_and_keep(kind, &name, "awaiting", awaiting).await?;
    }

    // (f) Specs change while the operator is stopped: observedGeneration lags.
    w.stop_operator().await;
    let lagging = [
        ("Tenant", acme.clone(), json!({"spec": {"name": "Acme Renamed"}})),
        (
            "ApprovalPolicy",
            policy.clone(),
            json!({"spec": {"requestTtlSeconds": 3600}}),
        ),
        (
            "IdentityProvider",
            "sso".into(),
            json!({"spec": {"displayName": "Acme SSO Renamed"}}),
        ),
        ("GroupMapping", "admins".into(), json!({"spec": {"role": "AUDITOR"}})),
        (
            "WebhookSubscription",
            "hook".into(),
            json!({"spec": {"events": ["certificate.issued", "tenant.changed"]}}),
        ),
        (
            "FrontingLink",
            w.n("front"),
            json!({"spec": {"scopeMap": {"gw:read": ["api:read"], "gw:write": ["api:write"]}}}),
        ),
        ("LicenseGrant", w.n("grant"), json!({"spec": {"quantity": 101}})),
    ];
    for (kind, name, patch) in &lagging {
        w.patch(kind, name, patch.clone()).await?;
        let obj = w.get(kind, name).await?;
        anyhow::ensure!(
            obj["metadata"]["generation"].as_i64() > obj["status"]["observedGeneration"].as_i64(),
            "{kind} {name} does not lag: {obj}"
        );
        w.keep(kind, "lagging", obj);
    }

    // (e) Deletions while the operator is stopped: the finalizer holds them.
    let deleting = [
        ("Tenant", spare.clone()),
        ("ApprovalPolicy", rejected.clone()),
        ("IdentityProvider", "sso".to_string()),
        ("GroupMapping", "admins".to_string()),
        ("WebhookSubscription", "hook".to_string()),
        ("FrontingLink", w.n("front")),
        ("LicenseGrant", w.n("grant")),
    ];
    for (kind, name) in &deleting {
        w.api(kind).delete(name, &DeleteParams::default()).await?;
        match w.api(kind).get_opt(name).await? {
            Some(obj) => {
                let obj = serde_json::to_value(obj)?;
                anyhow::ensure!(obj["metadata"]["deletionTimestamp"].is_string(), "{kind} {name}: {obj}");
                w.keep(kind, "deleting", obj);
            }
            None => anyhow::bail!("{kind} {name} was deleted at once: no finalizer held it"),
        }
    }

    // The provider's deletion is refused while the live mapping "viewers"
    // uses it: Stalled=True InUse with the deletionTimestamp set.
    w.start_operator().await?;
    w.wait_and_keep("IdentityProvider", "sso", "deleting-stalled", |o| {
        o["metadata"]["deletionTimestamp"].is_string() && has(o, "Stalled", "True", "InUse")
    })
    .await?;
    w.stop_operator().await;
    Ok(w.captured)
}

/// The directory the captured objects are written to.
fn fixtures_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| common::repo_root().join("target"));
    target.join("health-fixtures")
}

#[derive(serde::Deserialize, Debug, Clone)]
struct Verdict {
    status: String,
    #[serde(default)]
    message: String,
}

#[derive(serde::Deserialize, Debug)]
struct Checked {
    source: String,
    argo: Verdict,
    lua: Verdict,
    kstatus: Verdict,
}

/// Runs the Go checker (built by build.sh beside kube-apiserver) on `dir`.
/// The binary sits beside kube-apiserver, in the directory build.sh printed.
async fn check(dir: &std::path::Path) -> anyhow::Result<BTreeMap<String, Checked>> {
    let cp_bin = countersign_e2e::shared_control_plane().await.bin_dir();
    let script = common::repo_root().join("charts/countersign/files/argocd/health.lua");
    let out = std::process::Command::new(cp_bin.join("countersign-health"))
        .arg("-script")
        .arg(&script)
        .arg(dir)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "countersign-health failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut results = BTreeMap::new();
    for line in String::from_utf8(out.stdout)?.lines() {
        let checked: Checked = serde_json::from_str(line)?;
        let stem = PathBuf::from(&checked.source)
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_default();
        results.insert(stem, checked);
    }
    Ok(results)
}

#[tokio::test]
async fn argo_cd_health_and_kstatus_read_every_kind_in_every_state() -> anyhow::Result<()> {
    let started = Instant::now();
    let captured = capture_everything().await?;
    let captured_in = started.elapsed();

    let dir = fixtures_dir();
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    for ((kind, state), obj) in &captured {
        std::fs::write(
            dir.join(format!("{}-{state}.json", kind.to_lowercase())),
            serde_json::to_string_pretty(obj)?,
        )?;
    }
    let results = check(&dir).await?;

    let mut table = String::from("| kind | state | Argo CD health | script alone | kstatus |\n|---|---|---|---|---|\n");
    let mut failures = Vec::new();
    for (kind, _, _) in KINDS {
        for state in STATES {
            let Some(obj) = captured.get(&(kind.to_string(), state.to_string())) else {
                continue;
            };
            let stem = format!("{}-{state}", kind.to_lowercase());
            let r = results
                .get(&stem)
                .ok_or_else(|| anyhow::anyhow!("no verdict for {stem}"))?;
            table.push_str(&format!(
                "| {kind} | {state} | {} | {} | {} |\n",
                r.argo.status, r.lua.status, r.kstatus.status
            ));
            let stalled_message = message(obj, "Stalled");
            let digest = obj["status"]["pendingDigest"].as_str().unwrap_or_default().to_string();
            let mut expect = |ok: bool, what: &str| {
                if !ok {
                    failures.push(format!("{stem}: {what}; got {r:?}"));
                }
            };
            match state {
                "fresh" => {
                    expect(
                        obj["status"]["observedGeneration"] == -1,
                        "the CRD defaults status.observedGeneration to -1",
                    );
                    expect(r.argo.status == "Progressing", "Argo Progressing");
                    expect(r.kstatus.status == "InProgress", "kstatus InProgress");
                }
                "ready" => {
                    expect(r.argo.status == "Healthy", "Argo Healthy");
                    expect(r.argo.message == message(obj, "Ready"), "Argo message is Ready's");
                    expect(r.kstatus.status == "Current", "kstatus Current");
                }
                "awaiting" => {
                    expect(!digest.is_empty(), "a pending digest");
                    expect(r.argo.status == "Suspended", "Argo Suspended");
                    expect(
                        r.argo.message.contains(&digest),
                        "Argo message names the pending digest",
                    );
                    expect(r.kstatus.status == "InProgress", "kstatus InProgress");
                }
                "stalled" => {
                    expect(!stalled_message.is_empty(), "a Stalled message");
                    expect(r.argo.status == "Degraded", "Argo Degraded");
                    expect(r.argo.message.contains(&stalled_message), "Argo message has Stalled's");
                    expect(r.kstatus.status == "Failed", "kstatus Failed");
                }
                "lagging" => {
                    expect(r.argo.status == "Progressing", "Argo Progressing");
                    expect(r.kstatus.status == "InProgress", "kstatus InProgress");
                }
                "deleting" | "deleting-stalled" => {
                    // Argo CD answers for any object being deleted before running a script.
                    expect(
                        r.argo.status == "Progressing" && r.argo.message == "Pending deletion",
                        "Argo Progressing: Pending deletion",
                    );
                    // The script alone: a deletion held by Stalled (InUse, or a
                    // rejected policy's) needs a person; any other is under way.
                    if condition(obj, "Stalled").is_some_and(|c| c["status"] == "True") {
                        expect(r.lua.status == "Degraded", "the script alone: Degraded");
                        expect(r.lua.message.contains(&stalled_message), "its message has Stalled's");
                    } else {
                        expect(state == "deleting", "deleting-stalled is Stalled");
                        expect(r.lua.status == "Progressing", "the script alone: Progressing");
                    }
                    expect(r.kstatus.status == "Terminating", "kstatus Terminating");
                }
                other => unreachable!("{other}"),
            }
        }
    }
    println!("{table}");
    println!(
        "captured {} objects in {:.1} s into {}",
        captured.len(),
        captured_in.as_secs_f64(),
        dir.display()
    );
    anyhow::ensure!(failures.is_empty(), "{}\n{table}", failures.join("\n"));
    // Every kind reaches every state but deleting-stalled, which only an
    // IdentityProvider reaches (InUse); see the module comment.
    assert_eq!(captured.len(), KINDS.len() * 6 + 1, "{table}");
    Ok(())
}
