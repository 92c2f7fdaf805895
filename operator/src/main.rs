//! `countersign`: the operator binary.

use clap::{Parser, Subcommand};
use countersign_operator::RunOptions;
use countersign_operator::run::LeaderElection;
use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Countersign: reconciles platform admin objects from Kubernetes into the API database.
#[derive(Parser)]
#[command(name = "countersign", version, about)]
struct Cli {
    /// PostgreSQL URL of the platform's API database.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    database_url: Option<String>,
    /// Log as JSON lines instead of human-readable text.
    #[arg(long, env = "COUNTERSIGN_LOG_JSON", global = true)]
    log_json: bool,
    /// Threads that run the operator's asynchronous work. Its work is mostly
    /// waiting on the API server and the database: one thread keeps up with
    /// far more than an API server accepts, and more threads mostly wake
    /// each other (measured by `scripts/bench.sh`).
    #[arg(long, env = "COUNTERSIGN_WORKER_THREADS", global = true, default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..))]
    worker_threads: u16,
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start-up; boxing the big variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    #[command(flatten)]
    Database(DatabaseCommand),
    /// License grant tools (no database or cluster needed).
    License {
        #[command(subcommand)]
        command: LicenseCommand,
    },
}

/// The commands that work on the API database.
// Parsed once at start-up; boxing the big variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum DatabaseCommand {
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
        /// Seconds between looks at settled objects, a safety net behind the
        /// watches and the database's change notifications (spread by ±10%).
        #[arg(long, env = "COUNTERSIGN_RESYNC_SECONDS", default_value_t = 3600)]
        resync_seconds: u64,
        /// How many reconciles run at once, across every kind. Each holds at
        /// most one database connection, so the pool must be larger.
        #[arg(long, env = "COUNTERSIGN_MAX_CONCURRENT_RECONCILES",
              default_value_t = countersign_operator::run::DEFAULT_MAX_CONCURRENT_RECONCILES,
              value_parser = clap::value_parser!(u16).range(1..))]
        max_concurrent_reconciles: u16,
        /// Connections in the database pool; at least
        /// `--max-concurrent-reconciles` + 2 (the drift listener and the
        /// audit anchor hold one each). Default: exactly that.
        #[arg(long, env = "COUNTERSIGN_DATABASE_POOL_SIZE")]
        database_pool_size: Option<u32>,
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
        /// client and signing secrets are sealed under in the database and
        /// the audit log is chained under (required).
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
        /// A PEM file of CA certificates trusted for outbound calls besides the
        /// system roots; repeat for several files.
        #[arg(long, env = "COUNTERSIGN_OUTBOUND_CA_FILE")]
        outbound_ca_file: Vec<PathBuf>,
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
        /// The slug of the platform's own tenant: only its identity providers
        /// may map groups to the platform-wide roles PLATFORM_ADMIN and
        /// BILLING_OPERATOR. Without it, no GroupMapping may grant them.
        #[arg(long, env = "COUNTERSIGN_PLATFORM_TENANT")]
        platform_tenant: Option<String>,
        /// The approval floor: a new or changed IdentityProvider and any
        /// GroupMapping granting a platform-wide role always wait for a second
        /// person, whatever the ApprovalPolicies say (policies add to it, they
        /// cannot remove it). `--approval-floor=false` turns it off.
        #[arg(long, env = "COUNTERSIGN_APPROVAL_FLOOR", default_value_t = true, action = clap::ArgAction::Set)]
        approval_floor: bool,
        /// A username prefix the API server adds to people's names (its
        /// `--oidc-username-prefix`), dropped before the operator compares
        /// requester, declarer and approvers; repeat or comma-separate.
        /// Prefixes ending in `:` or `#` are dropped anyway.
        #[arg(long, env = "COUNTERSIGN_USERNAME_PREFIXES", value_delimiter = ',')]
        username_prefix: Vec<String>,
        /// The ConfigMap (namespace/name, in the operator's namespace) where
        /// the audit chain's head is anchored, so `verify-audit` can tell a
        /// truncated log. Without it a deleted tail goes unnoticed.
        #[arg(long, env = "COUNTERSIGN_AUDIT_ANCHOR")]
        audit_anchor: Option<String>,
        /// Seconds between looks at the audit log for new entries to anchor.
        #[arg(long, default_value_t = 10)]
        audit_anchor_seconds: u64,
    },
    /// Apply pending schema migrations to the API database.
    Migrate,
    /// Check that the database is at the schema version this build understands,
    /// and that the system trust store outbound HTTPS uses (SSL_CERT_FILE /
    /// SSL_CERT_DIR, else /etc/ssl/certs/ca-certificates.crt) holds at least one
    /// CA certificate: without one no public OIDC provider, SAML metadata or
    /// webhook endpoint can be reached. Exits non-zero if either is wrong.
    CheckSchema,
    /// Verify the audit log's keyed hash chain and report the first broken link.
    VerifyAudit {
        #[command(flatten)]
        key: KeySource,
        /// The operator's audit anchor ConfigMap (namespace/name), read through
        /// the kubeconfig: a chain shorter than its anchor is reported.
        #[arg(long, env = "COUNTERSIGN_AUDIT_ANCHOR")]
        audit_anchor: Option<String>,
    },
}

/// Where `verify-audit` reads the operator's encryption key from: the audit
/// chain is keyed under a key derived from it.
#[derive(clap::Args)]
#[group(required = true, multiple = false)]
struct KeySource {
    /// The operator's encryption-key Secret (namespace/name, key `key`), read
    /// through the kubeconfig.
    #[arg(long, env = "COUNTERSIGN_ENCRYPTION_KEY_SECRET")]
    encryption_key_secret: Option<String>,
    /// A file holding the same 32 raw key bytes (for verifying away from the cluster).
    #[arg(long)]
    encryption_key_file: Option<PathBuf>,
}

impl KeySource {
    async fn load(self) -> anyhow::Result<countersign_reconcilers::secrets::SecretKey> {
        match (self.encryption_key_secret, self.encryption_key_file) {
            (_, Some(path)) => {
                let bytes = std::fs::read(&path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
                countersign_reconcilers::secrets::SecretKey::from_bytes(&bytes)
                    .map_err(|e| anyhow::anyhow!("--encryption-key-file {}: {e}", path.display()))
            }
            (Some(reference), None) => {
                let client = countersign_operator::kube_client::infer().await?;
                Ok(countersign_operator::secret_key::load(&client, &reference).await?)
            }
            (None, None) => Err(anyhow::anyhow!(
                "verify-audit needs the operator's key: --encryption-key-secret or --encryption-key-file"
            )),
        }
    }
}

#[derive(Subcommand)]
enum LicenseCommand {
    /// Print the exact bytes a vendor signs (Ed25519) for a LicenseGrant manifest:
    /// the only grant in FILE, or the one named by --name; with --out-dir, write
    /// every grant's bytes to DIR/<name>.bin and print the paths.
    Canonical {
        /// A YAML file of one or more documents (`-` for standard input); other kinds are skipped.
        file: PathBuf,
        /// The metadata.name of the grant to print, when the file has several.
        #[arg(long, conflicts_with = "out_dir")]
        name: Option<String>,
        /// Write each grant's bytes to DIR/<metadata.name>.bin instead (DIR is created).
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_json);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(usize::from(cli.worker_threads))
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::License {
            command: LicenseCommand::Canonical { file, name, out_dir },
        } => {
            license_canonical(&file, name.as_deref(), out_dir.as_deref())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Database(command) => with_database(cli.database_url, command).await,
    }
}

async fn with_database(database_url: Option<String>, command: DatabaseCommand) -> anyhow::Result<ExitCode> {
    let url = database_url.ok_or_else(|| anyhow::anyhow!("no database: set --database-url or DATABASE_URL"))?;
    let pool = countersign_reconcilers::db::connect(&url).await?;
    match command {
        DatabaseCommand::Migrate => {
            countersign_reconcilers::db::migrate(&pool).await?;
            let version = countersign_reconcilers::db::check_schema(&pool).await?;
            println!("API database at schema version {version}");
        }
        DatabaseCommand::CheckSchema => {
            let version = countersign_reconcilers::db::check_schema(&pool).await?;
            println!("API database at schema version {version}, as this build expects");
            check_trust_store()?;
        }
        DatabaseCommand::VerifyAudit { key, audit_anchor } => {
            let key = key.load().await?;
            let key = key.audit_chain_key();
            let (v, anchor) = match audit_anchor {
                None => (countersign_reconcilers::audit::verify(&pool, key).await?, None),
                Some(reference) => {
                    use countersign_operator::audit_anchor;
                    let (namespace, name) = audit_anchor::parse_reference("--audit-anchor", &reference)?;
                    let client = countersign_operator::kube_client::infer().await?;
                    let anchor = audit_anchor::load(&client, &namespace, &name)
                        .await?
                        .ok_or_else(|| anyhow::anyhow!("the audit anchor ConfigMap {reference} does not exist"))?;
                    let v = countersign_reconcilers::audit::verify_anchored(&pool, key, &anchor).await?;
                    (v, Some(anchor))
                }
            };
            match v.broken {
                None => {
                    println!("audit chain intact: {} entries verified", v.entries);
                    match (anchor, v.after_anchor) {
                        (Some(anchor), Some(after)) => println!(
                            "matches the anchor at seq {} ({} entries); {after} entries written since",
                            anchor.seq, anchor.count
                        ),
                        _ => println!(
                            "note: no --audit-anchor given: entries deleted from the end of the log, or a \
                             TRUNCATE, would go unnoticed"
                        ),
                    }
                    if v.legacy > 0 {
                        println!(
                            "note: the first {} entries predate keyed links (plain SHA-256): anyone with write \
                             access to the database could have rewritten them",
                            v.legacy
                        );
                    }
                }
                Some(b) => {
                    println!("audit chain broken at seq {}: {}", b.seq, b.problem);
                    return Ok(ExitCode::FAILURE);
                }
            }
        }
        DatabaseCommand::Run {
            health_addr,
            selector,
            actor,
            instance,
            resync_seconds,
            max_concurrent_reconciles,
            database_pool_size,
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
            platform_tenant,
            approval_floor,
            username_prefix,
            audit_anchor,
            audit_anchor_seconds,
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
            let reference = encryption_key_secret.ok_or_else(|| {
                anyhow::anyhow!(
                    "run needs --encryption-key-secret: secrets are sealed and the audit log is chained under that key"
                )
            })?;
            let audit_anchor = match audit_anchor {
                Some(reference) => {
                    let (namespace, name) =
                        countersign_operator::audit_anchor::parse_reference("--audit-anchor", &reference)?;
                    Some(countersign_operator::audit_anchor::AnchorTarget {
                        namespace,
                        name,
                        interval: std::time::Duration::from_secs(audit_anchor_seconds.max(1)),
                    })
                }
                None => {
                    tracing::warn!(
                        "no --audit-anchor: a truncated audit log, or one missing its last entries, cannot be told"
                    );
                    None
                }
            };
            let client = countersign_operator::kube_client::infer().await?;
            let secret_key = std::sync::Arc::new(countersign_operator::secret_key::load(&client, &reference).await?);
            let extra_roots_pem = outbound_ca_file
                .iter()
                .map(|path| {
                    std::fs::read_to_string(path)
                        .map_err(|e| anyhow::anyhow!("cannot read --outbound-ca-file {}: {e}", path.display()))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
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
                    rule: countersign_operator::controller::RuleConfig {
                        platform_tenant,
                        approval_floor,
                        username_prefixes: username_prefix,
                    },
                    audit_anchor,
                    max_concurrent_reconciles,
                    database_pool_size: pool_size(max_concurrent_reconciles, database_pool_size)?,
                },
            )
            .await?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The operator's pool size: `--database-pool-size`, or by default one
/// connection per reconcile slot plus one for the row-change listener and one
/// for the rest. A smaller pool would make a burst of reconciles time out on
/// the pool and report the database unavailable when it is not.
fn pool_size(max_concurrent_reconciles: u16, requested: Option<u32>) -> anyhow::Result<u32> {
    let needed = u32::from(max_concurrent_reconciles) + 2;
    let size = requested.unwrap_or(needed);
    anyhow::ensure!(
        size >= needed,
        "--database-pool-size {size} is too small for --max-concurrent-reconciles {max_concurrent_reconciles}: \
         it needs at least {needed} (one connection per reconcile, one for the row-change listener, one for the rest)"
    );
    Ok(size)
}

/// The system trust store behind every outbound HTTPS call (the same loader as
/// [`countersign_reconcilers::outbound`]): at least one CA certificate, or an error.
fn check_trust_store() -> anyhow::Result<()> {
    let roots = countersign_reconcilers::outbound::system_roots();
    if roots.store.is_empty() {
        let mut why = String::new();
        for var in ["SSL_CERT_FILE", "SSL_CERT_DIR"] {
            if let Some(value) = std::env::var_os(var) {
                why.push_str(&format!("; {var}={}", value.to_string_lossy()));
            }
        }
        for err in &roots.errors {
            why.push_str("; ");
            why.push_str(err);
        }
        anyhow::bail!(
            "the system trust store has no CA certificate (looked at SSL_CERT_FILE / SSL_CERT_DIR, else \
             /etc/ssl/certs/ca-certificates.crt and the platform's other usual places{why}): outbound HTTPS \
             could reach no public OIDC provider, SAML metadata or webhook endpoint"
        );
    }
    println!(
        "system trust store: {} CA certificates for outbound HTTPS{}",
        roots.store.len(),
        match roots.ignored {
            0 => String::new(),
            n => format!(" ({n} unusable ones skipped)"),
        }
    );
    Ok(())
}

/// `countersign license canonical`: see [`countersign_operator::license`].
fn license_canonical(file: &Path, name: Option<&str>, out_dir: Option<&Path>) -> anyhow::Result<()> {
    let yaml = if file == Path::new("-") {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text)?;
        text
    } else {
        std::fs::read_to_string(file).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?
    };
    let grants = countersign_operator::license::canonical_documents(&yaml)?;
    let mut stdout = std::io::stdout().lock();
    match out_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
            for grant in grants {
                let path = dir.join(format!("{}.bin", grant.name));
                std::fs::write(&path, &grant.bytes)
                    .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
                writeln!(stdout, "{}", path.display())?;
            }
        }
        // Exactly the signed bytes: no trailing newline.
        None => stdout.write_all(&countersign_operator::license::select(grants, name)?.bytes)?,
    }
    stdout.flush()?;
    Ok(())
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
