//! Starts a local control plane (kube-apiserver + etcd), PostgreSQL and a
//! local HTTPS identity provider for `scripts/up.sh`, writes a shell
//! environment file describing them, and keeps them running until SIGINT or
//! SIGTERM.

use anyhow::Context as _;
use countersign_e2e::stub_idp::StubIdp;
use countersign_e2e::{ControlPlane, Postgres};
use std::path::PathBuf;

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
    let env = format!(
        "export KUBECONFIG='{}'\nexport DATABASE_URL='{}'\nexport PATH='{}':\"$PATH\"\nexport COUNTERSIGN_APISERVER_LOG='{}'\n\
         export DEV_IDP_CA_FILE='{}'\nexport DEV_IDP_ISSUER='{}'\nexport DEV_IDP_METADATA_URL='{}'\n\
         export DEV_IDP_ENTITY_ID='{}'\nexport DEV_IDP_SSO_URL='{}'\n",
        control_plane.kubeconfig_path().display(),
        database_url,
        control_plane.bin_dir().display(),
        control_plane.apiserver_log_path().display(),
        ca_file.display(),
        idp.issuer(),
        idp.metadata_url(),
        idp.saml_entity_id(),
        idp.sso_url(),
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
    }
    drop(idp);
    drop(postgres);
    drop(control_plane);
    Ok(())
}
