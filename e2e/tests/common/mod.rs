//! Helpers shared by the end-to-end tests: CRD installation, applying YAML,
//! an in-process operator scoped to one test, and waiting on conditions.

#![allow(dead_code)]

pub mod approvals;
pub mod secrets;
pub mod vendor;

use anyhow::{Context as _, anyhow};
use countersign_crds::{ResourceStatus, Tenant};
use countersign_operator::run::{RunOptions, Running, start};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::discovery::{Discovery, Scope};
use kube::{Client, ResourceExt};
use sqlx::PgPool;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The label every object of one test carries, so its operator sees only them.
pub const TEST_LABEL: &str = "countersign.dev/test-run";

/// Repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A resync no test lives to see: with it, only a watch event or the
/// database's row-change notification can explain a reconcile.
pub const HOUR: Duration = Duration::from_secs(3600);

/// Polls `sql` (one text or JSON-as-text column, one row) until it returns
/// `expected`; fails after `within` with what it returned last.
pub async fn wait_row(
    pool: &PgPool,
    sql: &str,
    bind: &str,
    expected: &str,
    within: Duration,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    loop {
        let got: Option<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()))
            .bind(bind)
            .fetch_optional(pool)
            .await?;
        if got.as_deref() == Some(expected) {
            return Ok(started.elapsed());
        }
        if started.elapsed() > within {
            return Err(anyhow!(
                "{sql} ({bind}) returned {got:?}, not {expected:?}, for {within:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The notes of the `Drifted` events recorded about `name` (see [`events_with_reason`]).
pub async fn drifted_events(client: &Client, name: &str) -> anyhow::Result<Vec<String>> {
    events_with_reason(client, name, "Drifted").await
}

/// The notes of the events with `reason` recorded about `name`, waiting up
/// to 10 s for the first: the operator records an event after the status or
/// row it is about, so a test that saw the status may list events too early.
pub async fn events_with_reason(client: &Client, name: &str, reason: &str) -> anyhow::Result<Vec<String>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let notes: Vec<String> = events_for(client, name)
            .await?
            .into_iter()
            .filter(|(r, _)| r == reason)
            .map(|(_, note)| note)
            .collect();
        if !notes.is_empty() || Instant::now() >= deadline {
            return Ok(notes);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The namespace the chart installs the operator into.
pub const OPERATOR_NAMESPACE: &str = "countersign-system";
/// The chart's ServiceAccount as the API server names it: every test
/// operator acts as it, so every end-to-end test proves the chart's RBAC is
/// enough for what it exercises.
pub const OPERATOR_IDENTITY: &str = "system:serviceaccount:countersign-system:countersign";
/// The chart's ServiceAccount's name in [`OPERATOR_NAMESPACE`].
pub const OPERATOR_SERVICE_ACCOUNT: &str = "countersign";

/// `helm template` of the chart (release `countersign` in
/// [`OPERATOR_NAMESPACE`]) with extra arguments.
pub fn render_chart(extra: &[&str]) -> anyhow::Result<String> {
    let chart = repo_root().join("charts/countersign").display().to_string();
    let mut args = vec![
        "template",
        "countersign",
        chart.as_str(),
        "--namespace",
        OPERATOR_NAMESPACE,
    ];
    args.extend_from_slice(extra);
    let home = std::env::temp_dir().join("countersign-e2e-helm");
    let out = std::process::Command::new(countersign_e2e::tools_dir()?.join("helm"))
        .args(&args)
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .output()
        .context("run helm template")?;
    anyhow::ensure!(
        out.status.success(),
        "helm template {extra:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// Installs the chart's ServiceAccount and the operator's ClusterRole and
/// binding, exactly as the chart renders them.
pub async fn install_operator_rbac(client: &Client) -> anyhow::Result<()> {
    static RENDERED: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let rendered = match RENDERED.get() {
        Some(r) => r,
        None => {
            let r = render_chart(&[
                "--show-only",
                "templates/serviceaccount.yaml",
                "--show-only",
                "templates/operator-rbac.yaml",
            ])?;
            RENDERED.get_or_init(|| r)
        }
    };
    ensure_namespace(client, OPERATOR_NAMESPACE).await?;
    apply_yaml(client, rendered).await
}

/// The chart's namespaced Role (lease and audit anchor), rendered for this
/// test's own lease and anchor names and bound under a name of its own, so
/// tests running side by side do not share one lease.
pub async fn grant_operator_role(client: &Client, lease: &str, anchor: &str) -> anyhow::Result<()> {
    install_operator_rbac(client).await?;
    let rendered = render_chart(&[
        "--show-only",
        "templates/operator-rbac.yaml",
        "--set",
        &format!("leaderElection.leaseName={lease}"),
        "--set",
        &format!("auditAnchor.configMapName={anchor}"),
    ])?;
    let unique = countersign_e2e::unique_name("countersign-operator");
    for mut obj in parse_yaml(&rendered)? {
        let kind = obj.types.as_ref().map(|t| t.kind.clone()).unwrap_or_default();
        if kind != "Role" && kind != "RoleBinding" {
            continue;
        }
        obj.metadata.name = Some(unique.clone());
        if kind == "RoleBinding" {
            obj.data["roleRef"]["name"] = serde_json::Value::String(unique.clone());
        }
        apply_yaml(client, &serde_json::to_string(&obj)?).await?;
    }
    Ok(())
}

/// Sends every request through `admin` as the chart's ServiceAccount
/// (Impersonate-User and -Group headers), so RBAC judges it as it judges
/// the operator's pod.
#[derive(Clone)]
struct AsChartServiceAccount(Client);

impl tower_service::Service<http::Request<kube::client::Body>> for AsChartServiceAccount {
    type Response = http::Response<kube::client::Body>;
    type Error = kube::Error;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: http::Request<kube::client::Body>) -> Self::Future {
        let headers = request.headers_mut();
        headers.insert("Impersonate-User", http::HeaderValue::from_static(OPERATOR_IDENTITY));
        for group in ["system:serviceaccounts", "system:serviceaccounts:countersign-system"] {
            headers.append("Impersonate-Group", http::HeaderValue::from_static(group));
        }
        let admin = self.0.clone();
        Box::pin(async move { admin.send(request).await })
    }
}

/// A client that acts as the chart's ServiceAccount, through `admin`.
pub fn as_operator(admin: &Client) -> Client {
    Client::new(AsChartServiceAccount(admin.clone()), "default")
}

/// Installs (or refreshes) every CRD with server-side apply and waits until
/// established, with the chart's RBAC for the operator.
pub async fn install_crds(client: &Client) -> anyhow::Result<()> {
    install_operator_rbac(client).await?;
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in countersign_crds::all_crds() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        api.patch(
            &name,
            &PatchParams::apply("countersign-e2e").force(),
            &Patch::Apply(&crd),
        )
        .await
        .with_context(|| format!("apply CRD {name}"))?;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    for crd in countersign_crds::all_crds() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        loop {
            let established = api
                .get(&name)
                .await?
                .status
                .and_then(|s| s.conditions)
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Established" && c.status == "True"));
            if established {
                break;
            }
            if Instant::now() > deadline {
                return Err(anyhow!("CRD {name} not established in time"));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

/// Admin client of the shared control plane, with CRDs installed.
pub async fn cluster() -> anyhow::Result<Client> {
    let cp = countersign_e2e::shared_control_plane().await;
    let client = cp.client().await?;
    install_crds(&client).await?;
    Ok(client)
}

/// A fresh, migrated database.
pub async fn database() -> anyhow::Result<(String, PgPool)> {
    let url = countersign_e2e::test_database_url().await?;
    let pool = countersign_reconcilers::db::connect(&url).await?;
    countersign_reconcilers::db::migrate(&pool).await?;
    Ok((url, pool))
}

/// A login role in `countersign_runtime`, made as a deployer would make the
/// operator's (`CREATE ROLE … LOGIN PASSWORD … IN ROLE countersign_runtime`),
/// with its URL for the database at `url` and a pool connected as it.
pub struct RuntimeRole {
    /// The role's name (unique: roles are shared by every database on the server).
    pub name: String,
    /// `url` with the role's credentials.
    pub url: String,
    /// A pool connected as the role.
    pub pool: PgPool,
}

/// Creates a [`RuntimeRole`] for the migrated database at `url`, using `owner`
/// (a superuser connection) to create it.
pub async fn runtime_role(url: &str, owner: &PgPool) -> anyhow::Result<RuntimeRole> {
    let name = format!("countersign_operator_{}", uuid::Uuid::new_v4().simple());
    let password = uuid::Uuid::new_v4().simple().to_string();
    // Both are made of [a-z0-9_] only, so formatting them into SQL is safe.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE ROLE {name} LOGIN PASSWORD '{password}' IN ROLE countersign_runtime"
    )))
    .execute(owner)
    .await?;
    let (scheme, rest) = url.split_once("://").ok_or_else(|| anyhow!("not a URL: {url}"))?;
    let (_, host) = rest.split_once('@').ok_or_else(|| anyhow!("no user in the URL"))?;
    let url = format!("{scheme}://{name}:{password}@{host}");
    let pool = countersign_reconcilers::db::connect(&url).await?;
    Ok(RuntimeRole { name, url, pool })
}

/// Starts an operator that reconciles only objects labelled with `run_id`.
pub async fn operator(client: &Client, pool: &PgPool, run_id: &str) -> anyhow::Result<Running> {
    operator_with_resync(client, pool, run_id, Duration::from_secs(300)).await
}

/// Like [`operator`], with a custom drift-check interval.
pub async fn operator_with_resync(
    client: &Client,
    pool: &PgPool,
    run_id: &str,
    resync: Duration,
) -> anyhow::Result<Running> {
    operator_with(client, pool, run_id, |o| o.resync = resync).await
}

/// Like [`operator`], with options adjusted by `adjust`. The operator acts
/// as the chart's ServiceAccount (through `client`, an admin).
pub async fn operator_with(
    client: &Client,
    pool: &PgPool,
    run_id: &str,
    adjust: impl FnOnce(&mut RunOptions),
) -> anyhow::Result<Running> {
    operator_authenticated_as(&as_operator(client), pool, run_id, adjust).await
}

/// Like [`operator_with`], with `client` used as it is (for a client that
/// already authenticates as the operator, e.g. with a ServiceAccount token).
pub async fn operator_authenticated_as(
    client: &Client,
    pool: &PgPool,
    run_id: &str,
    adjust: impl FnOnce(&mut RunOptions),
) -> anyhow::Result<Running> {
    let mut options = RunOptions {
        health_addr: "127.0.0.1:0".parse()?,
        selector: Some(format!("{TEST_LABEL}={run_id}")),
        actor: "countersign".into(),
        instance: Some(format!("e2e-{run_id}")),
        resync: Duration::from_secs(300),
        leader_election: None,
        secret_key: std::sync::Arc::new(test_key()),
        outbound: Default::default(),
        licensing: Default::default(),
        rule: Default::default(),
        audit_anchor: None,
        max_concurrent_reconciles: countersign_operator::run::DEFAULT_MAX_CONCURRENT_RECONCILES,
        database_pool_size: u32::from(countersign_operator::run::DEFAULT_MAX_CONCURRENT_RECONCILES) + 2,
    };
    adjust(&mut options);
    Ok(start(client.clone(), pool.clone(), options).await?)
}

/// The encryption key every test operator of this binary seals secrets
/// under: random per run, never committed.
pub fn test_key_bytes() -> &'static [u8] {
    static KEY: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    KEY.get_or_init(|| [*uuid::Uuid::new_v4().as_bytes(), *uuid::Uuid::new_v4().as_bytes()].concat())
}

/// [`test_key_bytes`] as a key.
pub fn test_key() -> countersign_reconcilers::secrets::SecretKey {
    countersign_reconcilers::secrets::SecretKey::from_bytes(test_key_bytes()).expect("32 bytes")
}

/// Polls `get` until `pred` holds (90 s); the error shows the last value.
pub async fn wait_for<K: serde::Serialize + Clone>(
    what: &str,
    mut get: impl AsyncFnMut() -> anyhow::Result<Option<K>>,
    pred: impl Fn(&K) -> bool,
) -> anyhow::Result<K> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let current = get().await?;
        if let Some(obj) = &current
            && pred(obj)
        {
            return Ok(obj.clone());
        }
        if Instant::now() > deadline {
            return Err(anyhow!(
                "timed out waiting for {what}; last seen: {}",
                serde_json::to_string_pretty(&current).unwrap_or_default()
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Whether `status` has condition `type_` with `status_` and `reason`, current for `generation`.
pub fn status_has(
    status: Option<&ResourceStatus>,
    generation: Option<i64>,
    type_: &str,
    status_: &str,
    reason: &str,
) -> bool {
    condition_of(status, type_)
        .is_some_and(|c| c.status.as_str() == status_ && c.reason == reason && c.observed_generation == generation)
}

/// Parses one or more YAML documents into dynamic objects.
pub fn parse_yaml(text: &str) -> anyhow::Result<Vec<DynamicObject>> {
    let mut out = Vec::new();
    for doc in serde_norway::Deserializer::from_str(text) {
        let value: serde_json::Value = serde::Deserialize::deserialize(doc)?;
        if value.is_null() {
            continue;
        }
        out.push(serde_json::from_value(value)?);
    }
    Ok(out)
}

/// The API serving an object's kind, found through discovery.
pub async fn api_for(client: &Client, obj: &DynamicObject) -> Result<Api<DynamicObject>, kube::Error> {
    let types = obj.types.clone().unwrap_or_default();
    let (group, version) = types
        .api_version
        .split_once('/')
        .unwrap_or(("", types.api_version.as_str()));
    let discovery = Discovery::new(client.clone()).filter(&[group]).run().await?;
    let gvk = kube::api::GroupVersionKind::gvk(group, version, &types.kind);
    let (resource, caps) = discovery
        .resolve_gvk(&gvk)
        .ok_or_else(|| kube::Error::Discovery(kube::error::DiscoveryError::MissingResource(types.kind.clone())))?;
    Ok(match caps.scope {
        Scope::Namespaced => Api::namespaced_with(
            client.clone(),
            obj.namespace().as_deref().unwrap_or("default"),
            &resource,
        ),
        Scope::Cluster => Api::all_with(client.clone(), &resource),
    })
}

/// Creates an object through discovery (dry-run when asked); returns the API's answer.
pub async fn create_dynamic(client: &Client, obj: &DynamicObject, dry_run: bool) -> Result<DynamicObject, kube::Error> {
    let pp = PostParams {
        dry_run,
        field_manager: Some("countersign-e2e".into()),
    };
    api_for(client, obj).await?.create(&pp, obj).await
}

/// Applies every document of a YAML text with server-side apply.
pub async fn apply_yaml(client: &Client, text: &str) -> anyhow::Result<()> {
    for obj in parse_yaml(text)? {
        let kind = obj.types.as_ref().map(|t| t.kind.clone()).unwrap_or_default();
        api_for(client, &obj)
            .await?
            .patch(
                &obj.name_any(),
                &PatchParams::apply("countersign").force(),
                &Patch::Apply(&obj),
            )
            .await
            .with_context(|| format!("apply {kind} {}", obj.name_any()))?;
    }
    Ok(())
}

/// A cluster-scoped dynamic API for one kind.
pub fn dynamic_api(client: &Client, group: &str, version: &str, kind: &str) -> Api<DynamicObject> {
    let resource = kube::api::ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk(group, version, kind));
    Api::all_with(client.clone(), &resource)
}

/// Creates a namespace if it does not exist.
pub async fn ensure_namespace(client: &Client, name: &str) -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::Namespace;
    let api: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": name}}))?;
    match api.create(&PostParams::default(), &ns).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// A Tenant labelled for `run_id`.
pub fn tenant(name: &str, run_id: &str, spec: serde_json::Value) -> anyhow::Result<Tenant> {
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "platform.countersign.dev/v1alpha1",
        "kind": "Tenant",
        "metadata": {"name": name, "labels": {TEST_LABEL: run_id}},
        "spec": spec,
    }))?)
}

/// Waits until the Tenant's status satisfies `pred`; the error shows the last status.
pub async fn wait_tenant(
    api: &Api<Tenant>,
    name: &str,
    what: &str,
    pred: impl Fn(&Tenant) -> bool,
) -> anyhow::Result<Tenant> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let t = api.get_opt(name).await?;
        if let Some(t) = &t
            && pred(t)
        {
            return Ok(t.clone());
        }
        if Instant::now() > deadline {
            return Err(anyhow!(
                "timed out waiting for Tenant {name} to be {what}; last status: {}",
                serde_json::to_string_pretty(&t.and_then(|t| t.status)).unwrap_or_default()
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until the object is gone.
pub async fn wait_gone(api: &Api<Tenant>, name: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while api.get_opt(name).await?.is_some() {
        if Instant::now() > deadline {
            return Err(anyhow!("Tenant {name} still exists"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// Whether condition `type_` has `status` and `reason` and is current for the object's generation.
pub fn has_condition(t: &Tenant, type_: &str, status: &str, reason: &str) -> bool {
    condition_of(t.status.as_ref(), type_).is_some_and(|c| {
        c.status.as_str() == status && c.reason == reason && c.observed_generation == t.metadata.generation
    })
}

/// The condition of a type.
pub fn condition_of<'a>(status: Option<&'a ResourceStatus>, type_: &str) -> Option<&'a countersign_crds::Condition> {
    status.and_then(|s| s.condition(type_))
}

/// Scrapes one counter value from the operator's /metrics.
pub async fn metric(running: &Running, series: &str) -> anyhow::Result<f64> {
    let body = reqwest::get(format!("http://{}/metrics", running.health_addr))
        .await?
        .text()
        .await?;
    Ok(body
        .lines()
        .filter(|l| l.starts_with(series))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// Events recorded for an object, as (reason, note).
pub async fn events_for(client: &Client, name: &str) -> anyhow::Result<Vec<(String, String)>> {
    use k8s_openapi::api::events::v1::Event;
    let api: Api<Event> = Api::all(client.clone());
    let list = api.list(&Default::default()).await?;
    Ok(list
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
        .collect())
}

/// The object's `countersign.dev/requested-by` annotation.
pub fn requester(t: &Tenant) -> Option<&str> {
    t.annotations().get("countersign.dev/requested-by").map(String::as_str)
}

/// Count of rows in a table.
pub async fn count(pool: &PgPool, table: &str) -> anyhow::Result<i64> {
    let sql = match table {
        "tenants" => "SELECT count(*) FROM tenants",
        "audit_log" => "SELECT count(*) FROM audit_log",
        // Entries about the objects a test changes, not about the ApprovalPolicies in force.
        "object_audit" => "SELECT count(*) FROM audit_log WHERE kind <> 'ApprovalPolicy'",
        "managed_objects" => "SELECT count(*) FROM managed_objects",
        other => return Err(anyhow!("no count query for {other}")),
    };
    Ok(sqlx::query_scalar(sql).fetch_one(pool).await?)
}
