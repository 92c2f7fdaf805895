//! Starts a local control plane (kube-apiserver + etcd) and PostgreSQL for
//! `scripts/up.sh`, writes a shell environment file describing them, and keeps
//! them running until SIGINT or SIGTERM.

use anyhow::Context as _;
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
    let env = format!(
        "export KUBECONFIG='{}'\nexport DATABASE_URL='{}'\nexport PATH='{}':\"$PATH\"\nexport COUNTERSIGN_APISERVER_LOG='{}'\n",
        control_plane.kubeconfig_path().display(),
        database_url,
        control_plane.bin_dir().display(),
        control_plane.apiserver_log_path().display(),
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
    drop(postgres);
    drop(control_plane);
    Ok(())
}
