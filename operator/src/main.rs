//! `countersign`: the operator binary.

use clap::{Parser, Subcommand};
use countersign_operator::RunOptions;
use countersign_operator::run::LeaderElection;
use std::net::SocketAddr;
use std::process::ExitCode;

/// Countersign: reconciles platform admin objects from Kubernetes into the API database.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// PostgreSQL URL of the platform's API database.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    database_url: Option<String>,
    /// Log as JSON lines instead of human-readable text.
    #[arg(long, env = "COUNTERSIGN_LOG_JSON", global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start-up; boxing the big variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run the controllers (kubeconfig from KUBECONFIG or in-cluster).
    Run {
        /// Address of /healthz, /readyz and /metrics.
        #[arg(long, env = "COUNTERSIGN_HEALTH_ADDR", default_value = "0.0.0.0:8080")]
        health_addr: SocketAddr,
        /// Only reconcile objects whose labels match this selector.
        #[arg(long, env = "COUNTERSIGN_SELECTOR")]
        selector: Option<String>,
        /// The identity written to the audit log as actor.
        #[arg(long, env = "COUNTERSIGN_ACTOR", default_value = "countersign")]
        actor: String,
        /// This instance's name (e.g. the pod name), shown on events.
        #[arg(long, env = "POD_NAME")]
        instance: Option<String>,
        /// Seconds between drift checks of settled objects against the database.
        #[arg(long, env = "COUNTERSIGN_RESYNC_SECONDS", default_value_t = 300)]
        resync_seconds: u64,
        /// Run the controllers only while holding the leader lease, so several
        /// replicas can run with one active.
        #[arg(long, env = "COUNTERSIGN_LEADER_ELECT")]
        leader_elect: bool,
        /// Namespace of the leader lease.
        #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
        leader_election_namespace: String,
        /// Name of the leader lease.
        #[arg(long, default_value = "countersign-leader")]
        lease_name: String,
        /// Seconds a leader lease stays valid without renewal.
        #[arg(long, default_value_t = 15)]
        lease_duration_seconds: u64,
        /// The Secret (namespace/name) whose key `key` holds the 32-byte key
        /// client and signing secrets are sealed under in the database.
        #[arg(long, env = "COUNTERSIGN_ENCRYPTION_KEY_SECRET")]
        encryption_key_secret: Option<String>,
        /// Hosts outbound calls (OIDC discovery, SAML metadata, webhooks) may
        /// reach: exact names or `*.example.com`; repeat or comma-separate.
        /// Without any, every public host may be reached.
        #[arg(long, env = "COUNTERSIGN_OUTBOUND_ALLOW_HOSTS", value_delimiter = ',')]
        outbound_allow_host: Vec<String>,
        /// Let outbound calls reach loopback addresses (local development and tests only).
        #[arg(long)]
        outbound_allow_loopback: bool,
        /// Let outbound calls reach private addresses (providers inside the cluster network).
        /// Link-local and cloud-metadata addresses stay refused.
        #[arg(long, env = "COUNTERSIGN_OUTBOUND_ALLOW_PRIVATE")]
        outbound_allow_private: bool,
        /// A PEM file of CA certificates trusted for outbound calls besides the system roots.
        #[arg(long, env = "COUNTERSIGN_OUTBOUND_CA_FILE")]
        outbound_ca_file: Option<std::path::PathBuf>,
        /// The ConfigMap (namespace/name) of trusted license-signing keys: each
        /// key is a key ID, each value a base64 Ed25519 public key (32 bytes).
        #[arg(long, env = "COUNTERSIGN_LICENSE_KEYRING")]
        license_keyring: Option<String>,
        /// The vendor every license grant's commercial chain must start with.
        #[arg(long, env = "COUNTERSIGN_LICENSE_VENDOR")]
        license_vendor: Option<String>,
        /// The platform operator every license grant's commercial chain must end with.
        #[arg(long, env = "COUNTERSIGN_LICENSE_OPERATOR")]
        license_operator: Option<String>,
    },
    /// Apply pending schema migrations to the API database.
    Migrate,
    /// Check that the database is at the schema version this build understands.
    CheckSchema,
    /// Verify the audit log's hash chain and report the first broken link.
    VerifyAudit,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_json);
    match dispatch(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let url = cli
        .database_url
        .ok_or_else(|| anyhow::anyhow!("no database: set --database-url or DATABASE_URL"))?;
    let pool = countersign_reconcilers::db::connect(&url).await?;
    match cli.command {
        Command::Migrate => {
            countersign_reconcilers::db::migrate(&pool).await?;
            let version = countersign_reconcilers::db::check_schema(&pool).await?;
            println!("API database at schema version {version}");
        }
        Command::CheckSchema => {
            let version = countersign_reconcilers::db::check_schema(&pool).await?;
            println!("API database at schema version {version}, as this build expects");
        }
        Command::VerifyAudit => {
            let v = countersign_reconcilers::audit::verify(&pool).await?;
            match v.broken {
                None => println!("audit chain intact: {} entries verified", v.entries),
                Some(b) => {
                    println!("audit chain broken at seq {}: {}", b.seq, b.problem);
                    return Ok(ExitCode::FAILURE);
                }
            }
        }
        Command::Run {
            health_addr,
            selector,
            actor,
            instance,
            resync_seconds,
            leader_elect,
            leader_election_namespace,
            lease_name,
            lease_duration_seconds,
            encryption_key_secret,
            outbound_allow_host,
            outbound_allow_loopback,
            outbound_allow_private,
            outbound_ca_file,
            license_keyring,
            license_vendor,
            license_operator,
        } => {
            let leader_election = leader_elect.then(|| LeaderElection {
                namespace: leader_election_namespace,
                lease_name,
                // Two pods may both be pid 1: fall back to a random identity.
                identity: instance
                    .clone()
                    .unwrap_or_else(|| format!("countersign-{:016x}", rand::random::<u64>())),
                duration_seconds: lease_duration_seconds,
            });
            // Refuse an unknown schema before touching the cluster.
            countersign_reconcilers::db::check_schema(&pool).await?;
            let client = kube::Client::try_default().await?;
            let secret_key = match encryption_key_secret {
                Some(reference) => Some(std::sync::Arc::new(
                    countersign_operator::secret_key::load(&client, &reference).await?,
                )),
                None => None,
            };
            let extra_roots_pem = match outbound_ca_file {
                Some(path) => vec![
                    std::fs::read_to_string(&path)
                        .map_err(|e| anyhow::anyhow!("cannot read --outbound-ca-file {}: {e}", path.display()))?,
                ],
                None => Vec::new(),
            };
            let outbound = countersign_reconcilers::outbound::OutboundPolicy {
                allowed_hosts: outbound_allow_host,
                allow_loopback: outbound_allow_loopback,
                allow_private: outbound_allow_private,
                extra_roots_pem,
                ..Default::default()
            };
            let licensing = countersign_operator::controller::Licensing {
                keyring: match license_keyring {
                    Some(reference) => countersign_operator::secret_key::load_keyring(&client, &reference).await?,
                    None => Default::default(),
                },
                vendor: license_vendor,
                operator: license_operator,
            };
            countersign_operator::run(
                client,
                pool,
                RunOptions {
                    health_addr,
                    selector,
                    actor,
                    instance,
                    resync: std::time::Duration::from_secs(resync_seconds),
                    leader_election,
                    secret_key,
                    outbound,
                    licensing,
                },
            )
            .await?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn init_tracing(json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,kube=warn,sqlx=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
