//! The world: control plane, PostgreSQL, stub IdP, webhook receiver.

use crate::args::Set;
use crate::common;
use crate::metrics::{DbStats, db_stats};
use crate::objects::{IDP_SECRET, KEY_SECRET};
use crate::operator::write_operator_kubeconfig;
use crate::util::progress;
use crate::window::Outbound;
use anyhow::{Context as _, anyhow};
use countersign_e2e::stub_idp::StubIdp;
use countersign_e2e::webhook_receiver::{KeySource, WebhookReceiver};
use countersign_e2e::{ControlPlane, Postgres};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::Client;
use kube::api::{Api, PostParams};
use serde_json::json;
use sqlx::PgPool;
use std::path::PathBuf;

/// Everything the operators run against. Dropping it stops it all.
pub(crate) struct World {
    /// Admin client.
    pub(crate) client: Client,
    /// The bench database's URL as the superuser (its owner).
    owner_url: String,
    /// Connected to the `postgres` database, for statistics.
    pub(crate) monitor: PgPool,
    /// The bench database's name.
    database: String,
    /// The namespace of the operators' namespaced objects.
    pub(crate) namespace: String,
    /// The namespace of the bare baseline's objects.
    pub(crate) bare_namespace: String,
    /// The run id.
    pub(crate) run: String,
    /// Logs, kubeconfig and CA files.
    pub(crate) dir: PathBuf,
    /// OIDC issuer for IdentityProviders.
    pub(crate) stub: StubIdp,
    /// Endpoint of the WebhookSubscriptions.
    pub(crate) receiver: WebhookReceiver,
    /// The PostgreSQL server version.
    pub(crate) pg_version: String,
    /// The API server's version.
    pub(crate) kube_version: String,
    /// The operators' database URL (the runtime role).
    pub(crate) runtime_url: String,
    /// The kubeconfig the operators use.
    pub(crate) operator_kubeconfig: PathBuf,
    /// A client with the operators' identity, for the bare client's writes
    /// that stand for the operator's (the finalizer, the status).
    pub(crate) operator_client: Client,
    /// CA files of the stub IdP and the receiver.
    pub(crate) ca_files: Vec<PathBuf>,
    // Declared last: dropped (stopped) after everything that uses them.
    /// PostgreSQL.
    _pg: Postgres,
    /// kube-apiserver and etcd.
    _cp: ControlPlane,
}

impl World {
    /// Starts everything and prepares the cluster and the database.
    pub(crate) async fn start(set: Set) -> anyhow::Result<World> {
        let run = uuid::Uuid::new_v4().simple().to_string()[..6].to_owned();
        let dir = std::env::temp_dir().join(format!("countersign-bench-{run}"));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        progress(format!(
            "run {run}: starting kube-apiserver + etcd and PostgreSQL (logs in {})",
            dir.display()
        ));
        let (cp, pg) = tokio::try_join!(ControlPlane::start(), Postgres::start())?;
        let client = cp.client().await?;
        common::install_crds(&client).await?;
        let kube_version = client
            .apiserver_version()
            .await
            .map(|v| v.git_version)
            .unwrap_or_default();

        let owner_url = pg.create_database().await?;
        let database = owner_url
            .rsplit('/')
            .next()
            .ok_or_else(|| anyhow!("no database in {owner_url}"))?
            .to_owned();
        let owner = countersign_reconcilers::db::connect(&owner_url).await?;
        countersign_reconcilers::db::migrate(&owner).await?;
        let role = common::runtime_role(&owner_url, &owner).await?;
        role.pool.close().await;
        let pg_version: String = sqlx::query_scalar("SHOW server_version").fetch_one(&owner).await?;
        owner.close().await;
        let monitor = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect(&pg.url("postgres"))
            .await
            .context("connecting to the postgres database")?;

        let namespace = format!("bench-{run}");
        let bare_namespace = format!("bench-{run}-bare");
        for ns in [&namespace, &bare_namespace] {
            common::ensure_namespace(&client, ns).await?;
        }
        create_key_secret(&client).await?;
        let stub = StubIdp::start().await?;
        let receiver = WebhookReceiver::start(KeySource::None).await?;
        if set == Set::Mixed {
            create_idp_secret(&client, &namespace).await?;
        }
        let ca_files = vec![dir.join("stub-idp-ca.pem"), dir.join("webhook-receiver-ca.pem")];
        std::fs::write(&ca_files[0], stub.ca_pem())?;
        std::fs::write(&ca_files[1], receiver.ca_pem())?;
        let operator_kubeconfig = dir.join("operator.kubeconfig");
        let token = service_account_token(&client).await?;
        write_operator_kubeconfig(cp.kubeconfig_path(), &token, &operator_kubeconfig)?;
        let operator_client = client_from(&operator_kubeconfig).await?;
        Ok(World {
            client,
            owner_url,
            monitor,
            database,
            namespace,
            bare_namespace,
            run,
            dir,
            stub,
            receiver,
            pg_version,
            kube_version,
            runtime_url: role.url,
            operator_kubeconfig,
            operator_client,
            ca_files,
            _pg: pg,
            _cp: cp,
        })
    }

    /// A fresh connection pool to the bench database as its owner. Callers
    /// close it when done: a backend flushes its statistics when it exits.
    pub(crate) async fn owner(&self) -> anyhow::Result<PgPool> {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect(&self.owner_url)
            .await
            .context("connecting to the bench database")
    }

    /// The bench database's statistics.
    pub(crate) async fn db_stats(&self) -> anyhow::Result<DbStats> {
        db_stats(&self.monitor, &self.database).await
    }

    /// The requests the stub IdP and the webhook receiver have seen.
    pub(crate) fn outbound(&self) -> Outbound {
        let base = self.stub.base_url();
        let path = |url: String| url.strip_prefix(&base).map(str::to_owned).unwrap_or(url);
        Outbound {
            oidc: self.stub.hits(&path(self.stub.discovery_url())) + self.stub.hits(&path(self.stub.jwks_url())),
            webhook: self.receiver.deliveries().len(),
        }
    }
}

/// A token of the chart's ServiceAccount from the TokenRequest API, valid
/// for a day: longer than any run.
async fn service_account_token(client: &Client) -> anyhow::Result<String> {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), common::OPERATOR_NAMESPACE);
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(24 * 3600),
            ..Default::default()
        }),
        ..Default::default()
    };
    let issued = accounts
        .create_token_request(common::OPERATOR_SERVICE_ACCOUNT, &PostParams::default(), &request)
        .await
        .context("requesting a token of the chart's ServiceAccount")?;
    issued
        .status
        .and_then(|s| s.token)
        .ok_or_else(|| anyhow!("the TokenRequest came back without a token"))
}

/// A client from a kubeconfig file, on the operator's own transport (the
/// bare client's writes travel as the operator's do).
async fn client_from(path: &std::path::Path) -> anyhow::Result<Client> {
    let kubeconfig =
        kube::config::Kubeconfig::read_from(path).with_context(|| format!("reading {}", path.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
    Ok(countersign_operator::kube_client::from_config(config)?)
}

/// The operator's encryption key: 32 random bytes in a Secret, as `scripts/up.sh` makes it.
async fn create_key_secret(client: &Client) -> anyhow::Result<()> {
    use base64::Engine as _;
    use k8s_openapi::api::core::v1::Secret;
    let key = [*uuid::Uuid::new_v4().as_bytes(), *uuid::Uuid::new_v4().as_bytes()].concat();
    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": KEY_SECRET, "namespace": common::OPERATOR_NAMESPACE},
        "data": {"key": base64::engine::general_purpose::STANDARD.encode(key)},
    }))?;
    Api::<Secret>::namespaced(client.clone(), common::OPERATOR_NAMESPACE)
        .create(&PostParams::default(), &secret)
        .await
        .context("creating the encryption key Secret")?;
    Ok(())
}

/// The Secret every IdentityProvider reads its OIDC client secret from.
async fn create_idp_secret(client: &Client, namespace: &str) -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::Secret;
    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": IDP_SECRET, "namespace": namespace},
        "stringData": {"client-secret": format!("bench-{}", uuid::Uuid::new_v4().simple())},
    }))?;
    Api::<Secret>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &secret)
        .await
        .context("creating the IdentityProviders' client Secret")?;
    Ok(())
}
