//! Starts a local control plane (kube-apiserver + etcd), PostgreSQL, a local
//! HTTPS identity provider and a local HTTPS webhook receiver for
//! `scripts/up.sh`, writes a shell environment file describing them, and
//! keeps them running until SIGINT or SIGTERM.

use anyhow::Context as _;
use countersign_e2e::stub_idp::StubIdp;
use countersign_e2e::webhook_receiver::{Delivery, KeySource, WebhookReceiver};
use countersign_e2e::{ControlPlane, Postgres};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The example subscription whose generated signing secret the receiver
/// verifies with (`examples/30-webhook-subscription.yaml`): the operator
/// writes it into `<name>-signing-secret`, key `signing-secret`.
const WEBHOOK_SECRET: (&str, &str, &str) = ("team-acme", "acme-certificates-signing-secret", "signing-secret");

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let env_file: PathBuf = std::env::args()
        .nth(1)
        .context("usage: countersign-dev-stack ENV_FILE")?
        .into();
    let control_plane = ControlPlane::start().await?;
    let postgres = Postgres::start().await?;
    let database_url = postgres.create_database().await?;
    // The example identity providers are pointed at this one, so the demo
    // shows discovery passing without reaching the internet.
    let idp = StubIdp::start().await?;
    let ca_file = env_file.with_extension("idp-ca.pem");
    std::fs::write(&ca_file, idp.ca_pem())?;
    // The example webhook subscriptions are pointed at this receiver. It reads
    // the signing secret from the Kubernetes Secret at each delivery, as a
    // receiving system that mounts it would, and checks every signature with
    // its own HMAC code; what it saw goes to a log the demo prints.
    let (namespace, secret, key) = WEBHOOK_SECRET;
    let receiver = WebhookReceiver::start(KeySource::kubernetes_secret(
        control_plane.client().await?,
        namespace,
        secret,
        key,
    ))
    .await?;
    let webhook_ca_file = env_file.with_extension("webhook-ca.pem");
    std::fs::write(&webhook_ca_file, receiver.ca_pem())?;
    let webhook_log = env_file.with_extension("webhook-deliveries.log");
    std::fs::write(&webhook_log, "")?;
    let env = format!(
        "export KUBECONFIG='{}'\nexport DATABASE_URL='{}'\nexport PATH='{}':\"$PATH\"\nexport COUNTERSIGN_APISERVER_LOG='{}'\n\
         export DEV_IDP_CA_FILE='{}'\nexport DEV_IDP_ISSUER='{}'\nexport DEV_IDP_METADATA_URL='{}'\n\
         export DEV_IDP_ENTITY_ID='{}'\nexport DEV_IDP_SSO_URL='{}'\n\
         export DEV_WEBHOOK_URL='{}'\nexport DEV_WEBHOOK_CA_FILE='{}'\nexport DEV_WEBHOOK_LOG='{}'\n",
        control_plane.kubeconfig_path().display(),
        database_url,
        control_plane.bin_dir().display(),
        control_plane.apiserver_log_path().display(),
        ca_file.display(),
        idp.issuer(),
        idp.metadata_url(),
        idp.saml_entity_id(),
        idp.sso_url(),
        receiver.url(),
        webhook_ca_file.display(),
        webhook_log.display(),
    );
    // Written last and renamed into place, so its presence means "ready".
    let tmp = env_file.with_extension("tmp");
    std::fs::write(&tmp, env)?;
    std::fs::rename(&tmp, &env_file)?;
    eprintln!(
        "control plane at {} and PostgreSQL on port {} are up",
        control_plane.url(),
        postgres.port()
    );

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
        result = log_deliveries(&receiver, &webhook_log) => result?,
    }
    drop(receiver);
    drop(idp);
    drop(postgres);
    drop(control_plane);
    Ok(())
}

/// Appends one line per delivery the receiver records to `path` (the
/// receiver keeps them in memory; polling keeps its API unchanged). Runs
/// until an error.
async fn log_deliveries(receiver: &WebhookReceiver, path: &Path) -> anyhow::Result<()> {
    let mut logged = 0;
    loop {
        let deliveries = receiver.deliveries();
        if deliveries.len() > logged {
            let mut file = std::fs::OpenOptions::new().append(true).open(path)?;
            for delivery in &deliveries[logged..] {
                writeln!(file, "{}", describe(delivery))?;
            }
            logged = deliveries.len();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `<path> <event> <delivery id> signature=<verdict> answered=<status>`:
/// never the body or the signature.
fn describe(d: &Delivery) -> String {
    let verdict = match (&d.rejection, d.signature_valid) {
        (_, true) => "valid".to_owned(),
        (Some(why), false) => format!("refused ({why})"),
        (None, false) => "refused".to_owned(),
    };
    format!(
        "{} {} {} signature={verdict} answered={}",
        d.path,
        d.header("x-countersign-event").unwrap_or("-"),
        d.header("x-countersign-delivery").unwrap_or("-"),
        d.answered
    )
}
