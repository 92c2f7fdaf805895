//! A real kube-apiserver backed by etcd, running as local child processes.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::certs::Pki;
use crate::ports::{free_port, port_open};
use crate::process::{keep_tmp, kill_and_reap, log_file, log_tail, spawn_watchdog};

/// How long to wait for `/readyz` to return 200.
const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// How long to wait for etcd to accept connections.
const ETCD_TIMEOUT: Duration = Duration::from_secs(30);
/// Number of log lines included in startup errors.
const TAIL_LINES: usize = 40;
/// Service CIDR given to the apiserver.
const SERVICE_CIDR: &str = "10.0.0.0/24";

/// A running kube-apiserver + etcd pair with RBAC enabled and an admin identity.
///
/// Everything lives in a private temp dir (certificates, etcd data, logs, kubeconfig). Dropping
/// the value kills both processes and removes the directory. If the test process exits without
/// running destructors (e.g. the value is in a `static`), watchdog processes do the same within
/// about a second. Set `COUNTERSIGN_E2E_KEEP_TMP=1` to keep the directory (logs) for debugging.
///
/// The value holds no async-runtime resources, so it can be shared between tests that each run
/// their own tokio runtime; clients are created per call.
pub struct ControlPlane {
    children: Children,
    port: u16,
    etcd_port: u16,
    kubeconfig: PathBuf,
    config: kube::Config,
    pki: Pki,
    bin: PathBuf,
    // Declared last so it is removed after the children are killed.
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("url", &self.url())
            .field("etcd_port", &self.etcd_port)
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

impl ControlPlane {
    /// Builds (or reuses cached) binaries, generates a PKI and starts etcd and kube-apiserver,
    /// returning once `/readyz` reports ready.
    ///
    /// Child processes are plain `std::process` children, not tied to the calling runtime.
    /// Startup is retried (up to 3 attempts) when a port turned out to be taken.
    pub async fn start() -> anyhow::Result<ControlPlane> {
        let bin = tokio::task::spawn_blocking(build_binaries)
            .await
            .context("control plane build task panicked")??;
        let mut attempt = 1;
        loop {
            match start_once(&bin).await {
                Ok(cp) => return Ok(cp),
                Err(err) if attempt < 3 && format!("{err:#}").contains("address already in use") => {
                    tracing::warn!(attempt, "control plane port clash, retrying: {err:#}");
                    attempt += 1;
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// The apiserver URL, `https://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// The apiserver's secure port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory holding the control plane binaries printed by `build.sh` (`etcd`,
    /// `kube-apiserver` and whatever else the script builds there).
    pub fn bin_dir(&self) -> &Path {
        &self.bin
    }

    /// The etcd client URL, `http://127.0.0.1:<port>`.
    pub fn etcd_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.etcd_port)
    }

    /// Path of a kubeconfig for the admin user (`CN=countersign-admin, O=system:masters`), with
    /// all certificates embedded. Suitable for `KUBECONFIG` of child processes or `kubectl`.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// The temp dir holding certificates, etcd data and the logs (`etcd.log`,
    /// `kube-apiserver.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Path of the kube-apiserver log file.
    pub fn apiserver_log_path(&self) -> PathBuf {
        self.dir.path().join("kube-apiserver.log")
    }

    /// The last `lines` lines of the kube-apiserver log (for diagnostics).
    pub fn apiserver_log_tail(&self, lines: usize) -> String {
        log_tail(&self.apiserver_log_path(), lines)
    }

    /// PEM of the CA that signed the serving and admin certificates.
    pub fn ca_cert_pem(&self) -> &str {
        &self.pki.ca.cert_pem
    }

    /// The generated PKI (CA, serving, admin and service-account keys).
    pub fn pki(&self) -> &Pki {
        &self.pki
    }

    /// A `kube::Config` for the admin user (loaded from [`Self::kubeconfig_path`]).
    pub fn kube_config(&self) -> kube::Config {
        self.config.clone()
    }

    /// A `kube::Config` for the admin identity that impersonates `user` in `groups`.
    ///
    /// The apiserver adds `system:authenticated` to impersonated users on its own.
    pub fn kube_config_as(&self, user: &str, groups: &[&str]) -> kube::Config {
        let mut config = self.kube_config();
        config.auth_info.impersonate = Some(user.to_owned());
        config.auth_info.impersonate_groups = if groups.is_empty() {
            None
        } else {
            Some(groups.iter().map(|g| (*g).to_owned()).collect())
        };
        config
    }

    /// A new admin client (member of `system:masters`). Must be called inside a tokio runtime;
    /// the client is bound to that runtime.
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        kube::Client::try_from(self.kube_config()).context("building admin kube client")
    }

    /// A new client that impersonates `user` in `groups` (via `Impersonate-User` /
    /// `Impersonate-Group` headers sent by the admin identity), so RBAC applies to `user`.
    pub async fn client_as(&self, user: &str, groups: &[&str]) -> anyhow::Result<kube::Client> {
        kube::Client::try_from(self.kube_config_as(user, groups))
            .with_context(|| format!("building kube client impersonating {user}"))
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        // Kill promptly; the temp dir field is removed afterwards by its own Drop.
        self.children.kill_all();
    }
}

/// Named child processes with their log files; killed on drop.
struct Children(Vec<(&'static str, Child, PathBuf)>);

impl Children {
    fn push(&mut self, name: &'static str, child: Child, log: PathBuf) {
        self.0.push((name, child, log));
    }

    /// Fails if any child has exited, with the tail of its log.
    fn check_alive(&mut self) -> anyhow::Result<()> {
        for (name, child, log) in &mut self.0 {
            if let Some(status) = child.try_wait().with_context(|| format!("polling {name}"))? {
                bail!(
                    "{name} exited during startup with {status}; last {TAIL_LINES} lines of {}:\n{}",
                    log.display(),
                    log_tail(log, TAIL_LINES)
                );
            }
        }
        Ok(())
    }

    fn kill_all(&mut self) {
        // Reverse start order: apiserver first, then etcd.
        for (_, child, _) in self.0.iter_mut().rev() {
            kill_and_reap(child);
        }
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// Runs `e2e/controlplane/build.sh` and returns the directory holding `etcd` and
/// `kube-apiserver`.
fn build_binaries() -> anyhow::Result<PathBuf> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("controlplane/build.sh");
    let output = Command::new("bash")
        .arg(&script)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !output.status.success() {
        bail!("{} failed with {}", script.display(), output.status);
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let dir = stdout
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .ok_or_else(|| anyhow!("{} printed no binary directory", script.display()))?;
    let dir = PathBuf::from(dir);
    for bin in ["etcd", "kube-apiserver"] {
        if !dir.join(bin).is_file() {
            bail!("{} has no {bin} binary", dir.display());
        }
    }
    Ok(dir)
}

fn write(dir: &Path, name: &str, contents: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

async fn start_once(bin: &Path) -> anyhow::Result<ControlPlane> {
    let mut dir = tempfile::Builder::new()
        .prefix("countersign-cp-")
        .tempdir()
        .context("creating control plane temp dir")?;
    if keep_tmp() {
        dir.disable_cleanup(true);
        eprintln!("countersign-e2e: keeping control plane dir {}", dir.path().display());
    }
    let root = dir.path().to_path_buf();
    let certs = root.join("certs");
    std::fs::create_dir(&certs).context("creating certs dir")?;

    let pki = Pki::generate()?;
    let ca_crt = write(&certs, "ca.crt", &pki.ca.cert_pem)?;
    let serving_crt = write(&certs, "apiserver.crt", &pki.serving.cert_pem)?;
    let serving_key = write(&certs, "apiserver.key", &pki.serving.key_pem)?;
    write(&certs, "admin.crt", &pki.admin.cert_pem)?;
    write(&certs, "admin.key", &pki.admin.key_pem)?;
    let sa_key = write(&certs, "sa.key", &pki.service_account_key_pem)?;
    let sa_pub = write(&certs, "sa.pub", &pki.service_account_public_pem)?;

    let etcd_port = free_port();
    let peer_port = free_port();
    let port = free_port();
    let mut children = Children(Vec::new());

    // etcd
    let etcd_log = root.join("etcd.log");
    let (out, err) = log_file(&etcd_log)?;
    let client_url = format!("http://127.0.0.1:{etcd_port}");
    let peer_url = format!("http://127.0.0.1:{peer_port}");
    let etcd = Command::new(bin.join("etcd"))
        .arg("--name=countersign")
        .arg(format!("--data-dir={}", root.join("etcd").display()))
        .arg(format!("--listen-client-urls={client_url}"))
        .arg(format!("--advertise-client-urls={client_url}"))
        .arg(format!("--listen-peer-urls={peer_url}"))
        .arg(format!("--initial-advertise-peer-urls={peer_url}"))
        .arg(format!("--initial-cluster=countersign={peer_url}"))
        .arg("--unsafe-no-fsync")
        .arg("--log-level=warn")
        .current_dir(&root)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .context("spawning etcd")?;
    let etcd_pid = etcd.id();
    children.push("etcd", etcd, etcd_log);
    // etcd's watchdog also removes the temp dir (after killing etcd).
    spawn_watchdog(Some(etcd_pid), None, Some(&root))?;

    let deadline = Instant::now() + ETCD_TIMEOUT;
    while !port_open(etcd_port) {
        children.check_alive()?;
        if Instant::now() > deadline {
            bail!(
                "etcd did not listen on {client_url} within {ETCD_TIMEOUT:?}; log tail:\n{}",
                log_tail(&root.join("etcd.log"), TAIL_LINES)
            );
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }

    // kube-apiserver (klog's --log-file flags are gone; it logs to stderr).
    let apiserver_log = root.join("kube-apiserver.log");
    let (out, err) = log_file(&apiserver_log)?;
    let url = format!("https://127.0.0.1:{port}");
    let apiserver = Command::new(bin.join("kube-apiserver"))
        .arg(format!("--etcd-servers={client_url}"))
        .arg(format!("--cert-dir={}", certs.display()))
        .arg(format!("--tls-cert-file={}", serving_crt.display()))
        .arg(format!("--tls-private-key-file={}", serving_key.display()))
        .arg(format!("--secure-port={port}"))
        .arg("--bind-address=127.0.0.1")
        .arg("--advertise-address=127.0.0.1")
        // The endpoints reconciler would try to publish 127.0.0.1 as the endpoint of the
        // `kubernetes` Service, which validation rejects (loopback), logging an error every
        // 10 s. Nothing in-cluster needs it, so don't reconcile.
        .arg("--endpoint-reconciler-type=none")
        .arg(format!("--service-cluster-ip-range={SERVICE_CIDR}"))
        .arg("--allow-privileged=true")
        .arg("--disable-admission-plugins=ServiceAccount")
        .arg("--authorization-mode=RBAC")
        .arg(format!("--client-ca-file={}", ca_crt.display()))
        .arg(format!("--service-account-issuer={url}"))
        .arg(format!("--service-account-key-file={}", sa_pub.display()))
        .arg(format!("--service-account-signing-key-file={}", sa_key.display()))
        .current_dir(&root)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .context("spawning kube-apiserver")?;
    let apiserver_pid = apiserver.id();
    children.push("kube-apiserver", apiserver, apiserver_log.clone());
    spawn_watchdog(Some(apiserver_pid), None, None)?;

    let kubeconfig = write(&root, "kubeconfig", &admin_kubeconfig(&url, &pki))?;
    let config = load_kubeconfig(&kubeconfig).await?;

    wait_ready(&config, &mut children, &apiserver_log).await?;

    Ok(ControlPlane {
        children,
        port,
        etcd_port,
        kubeconfig,
        config,
        pki,
        bin: bin.to_path_buf(),
        dir,
    })
}

/// A self-contained admin kubeconfig.
fn admin_kubeconfig(url: &str, pki: &Pki) -> String {
    let mut s = String::new();
    // Writing to a String cannot fail.
    let _ = write!(
        s,
        "apiVersion: v1
kind: Config
clusters:
- name: countersign-e2e
  cluster:
    server: {url}
    certificate-authority-data: {ca}
users:
- name: {user}
  user:
    client-certificate-data: {cert}
    client-key-data: {key}
contexts:
- name: countersign-e2e
  context:
    cluster: countersign-e2e
    user: {user}
    namespace: default
current-context: countersign-e2e
",
        ca = BASE64.encode(&pki.ca.cert_pem),
        user = crate::certs::ADMIN_USER,
        cert = BASE64.encode(&pki.admin.cert_pem),
        key = BASE64.encode(&pki.admin.key_pem),
    );
    s
}

async fn load_kubeconfig(path: &Path) -> anyhow::Result<kube::Config> {
    let kubeconfig = Kubeconfig::read_from(path).with_context(|| format!("reading kubeconfig {}", path.display()))?;
    kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .with_context(|| format!("loading kubeconfig {}", path.display()))
}

/// Polls `GET /readyz` as admin until it returns 200.
async fn wait_ready(config: &kube::Config, children: &mut Children, log: &Path) -> anyhow::Result<()> {
    let mut config = config.clone();
    config.connect_timeout = Some(Duration::from_secs(2));
    config.read_timeout = Some(Duration::from_secs(5));
    let client = kube::Client::try_from(config).context("building readiness client")?;
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        children.check_alive()?;
        let request = http::Request::get("/readyz")
            .body(Vec::new())
            .context("building /readyz request")?;
        let last_error = match tokio::time::timeout(Duration::from_secs(5), client.request_text(request)).await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(err)) => err.to_string(),
            Err(_) => "request timed out".to_owned(),
        };
        if Instant::now() > deadline {
            bail!(
                "kube-apiserver not ready within {READY_TIMEOUT:?} (last /readyz error: \
                 {last_error}); last {TAIL_LINES} lines of {}:\n{}",
                log.display(),
                log_tail(log, TAIL_LINES)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
