//! A real kube-apiserver backed by etcd, running as local child processes.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::certs::Pki;
use crate::ports::{free_port, port_open};
use crate::process::{keep_tmp, kill_and_reap, log_file, log_tail, signal, spawn_watchdog};

/// How long to wait for `/readyz` to return 200.
const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// How long to wait for etcd to accept connections.
const ETCD_TIMEOUT: Duration = Duration::from_secs(30);
/// Number of log lines included in startup errors.
const TAIL_LINES: usize = 40;
/// Service CIDR given to the apiserver.
const SERVICE_CIDR: &str = "10.0.0.0/24";
/// Name of the kube-apiserver entry in [`Children`].
const APISERVER: &str = "kube-apiserver";
/// How long kube-apiserver may take to shut down after SIGTERM before it is killed.
///
/// Its own shutdown work (pre-shutdown hooks, closing the listener, draining short requests)
/// takes milliseconds, but then it waits up to `--request-timeout` (60 s) for HTTP/2
/// connections carrying watches to go idle, which they never do while a client (such as an
/// operator) is watching. So a restart with watchers always ends in SIGKILL; keep that short.
const APISERVER_STOP_GRACE: Duration = Duration::from_secs(5);
/// How long to wait for the apiserver port to stop accepting connections once it has exited.
const PORT_CLOSE_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts at starting kube-apiserver again when its port is (briefly) taken.
const RESTART_ATTEMPTS: u32 = 5;

/// A running kube-apiserver + etcd pair with RBAC enabled and an admin identity.
///
/// Everything lives in a private temp dir (certificates, etcd data, logs, kubeconfig). Dropping
/// the value kills both processes and removes the directory. If the test process exits without
/// running destructors (e.g. the value is in a `static`), watchdog processes do the same within
/// about a second. Set `COUNTERSIGN_E2E_KEEP_TMP=1` to keep the directory (logs) for debugging.
///
/// The value holds no async-runtime resources, so it can be shared between tests that each run
/// their own tokio runtime; clients are created per call.
///
/// [`restart_apiserver`](Self::restart_apiserver) restarts kube-apiserver in place (same port,
/// flags and certificates; etcd and therefore all objects are kept). Don't call it on the
/// shared control plane: other tests would see the outage.
pub struct ControlPlane {
    children: Mutex<Children>,
    /// Set while [`ControlPlane::restart_apiserver`] runs, so restarts never overlap.
    restarting: AtomicBool,
    port: u16,
    etcd_port: u16,
    kubeconfig: PathBuf,
    config: kube::Config,
    pki: Pki,
    bin: PathBuf,
    /// The exact kube-apiserver command-line flags, reused on restart.
    apiserver_args: Vec<String>,
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
    /// the client is bound to that runtime. Every client of the harness uses the operator's
    /// own transport ([`countersign_operator::kube_client`]), so the tests exercise it.
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        countersign_operator::kube_client::from_config(self.kube_config()).context("building admin kube client")
    }

    /// A new client that impersonates `user` in `groups` (via `Impersonate-User` /
    /// `Impersonate-Group` headers sent by the admin identity), so RBAC applies to `user`.
    pub async fn client_as(&self, user: &str, groups: &[&str]) -> anyhow::Result<kube::Client> {
        countersign_operator::kube_client::from_config(self.kube_config_as(user, groups))
            .with_context(|| format!("building kube client impersonating {user}"))
    }

    /// Restarts kube-apiserver in place, returning once `/readyz` reports ready again.
    ///
    /// The running process gets SIGTERM (graceful shutdown) and is killed if it has not exited
    /// within 5 s (it never does while clients hold watches open). Once its port no longer
    /// accepts connections, a new process is started with exactly the same flags, port and
    /// certificates, against the same (still running) etcd, so every object survives. Its
    /// output is appended to the same log file ([`Self::apiserver_log_path`]) and it is covered
    /// by a watchdog like the original.
    ///
    /// Existing clients keep their configuration (URL, CA, credentials stay valid); their open
    /// connections and watches are broken and must be re-established by the client.
    ///
    /// Fails if another restart of this control plane is in progress, or if the new process
    /// exits or is not ready within 90 s (with the log tail). If the returned future is dropped
    /// midway, the apiserver may be left stopped; calling this again starts it.
    pub async fn restart_apiserver(&self) -> anyhow::Result<()> {
        if self.restarting.swap(true, Ordering::AcqRel) {
            bail!("kube-apiserver on port {} is already being restarted", self.port);
        }
        let _restarting = ClearOnDrop(&self.restarting);
        self.stop_apiserver()
            .await
            .with_context(|| format!("stopping kube-apiserver on port {}", self.port))?;
        self.start_apiserver_again()
            .await
            .with_context(|| format!("starting kube-apiserver on port {} again", self.port))
    }

    fn lock_children(&self) -> MutexGuard<'_, Children> {
        self.children.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stops the apiserver (TERM, KILL after the grace period), reaps it and waits until its
    /// port is closed. A no-op for the process if it is not in the children list (already
    /// stopped by an interrupted restart).
    async fn stop_apiserver(&self) -> anyhow::Result<()> {
        let taken = self.lock_children().take(APISERVER);
        if let Some(entry) = taken {
            // Owned by a `Children` so the process is killed if this future is dropped.
            let mut stopping = Children(vec![entry]);
            let (_, child, _) = &mut stopping.0[0];
            if child.try_wait().context("polling kube-apiserver")?.is_none() {
                // Fails only if the process is already gone, which the loop below detects.
                let _ = signal(child.id(), "TERM");
                let deadline = Instant::now() + APISERVER_STOP_GRACE;
                while child.try_wait().context("polling kube-apiserver")?.is_none() {
                    if Instant::now() > deadline {
                        tracing::warn!(
                            "kube-apiserver did not exit within {APISERVER_STOP_GRACE:?} of SIGTERM; killing it"
                        );
                        kill_and_reap(child);
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        let deadline = Instant::now() + PORT_CLOSE_TIMEOUT;
        while port_open(self.port) {
            if Instant::now() > deadline {
                bail!(
                    "port {} still accepts connections {PORT_CLOSE_TIMEOUT:?} after kube-apiserver exited",
                    self.port
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Starts the apiserver with the original flags and waits for `/readyz`, retrying when the
    /// port is briefly taken by another process.
    async fn start_apiserver_again(&self) -> anyhow::Result<()> {
        let log = self.apiserver_log_path();
        let mut attempt = 1;
        loop {
            let child = spawn_apiserver(&self.bin, self.dir.path(), &self.apiserver_args, &log)?;
            self.lock_children().push(APISERVER, child, log.clone());
            match wait_ready(&self.config, &self.children, &log).await {
                Ok(()) => return Ok(()),
                Err(err) if attempt < RESTART_ATTEMPTS && format!("{err:#}").contains("address already in use") => {
                    tracing::warn!(attempt, "kube-apiserver port clash on restart, retrying: {err:#}");
                    // Reaps the exited process.
                    drop(self.lock_children().take(APISERVER).map(|entry| Children(vec![entry])));
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(err) => return Err(err),
            }
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        // Kill promptly; the temp dir field is removed afterwards by its own Drop.
        self.children
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .kill_all();
    }
}

/// Clears the flag when dropped (also when the owning future is cancelled).
struct ClearOnDrop<'a>(&'a AtomicBool);

impl Drop for ClearOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Named child processes with their log files; killed on drop.
struct Children(Vec<(&'static str, Child, PathBuf)>);

impl Children {
    fn push(&mut self, name: &'static str, child: Child, log: PathBuf) {
        self.0.push((name, child, log));
    }

    /// Removes and returns the (last) child called `name`, if any.
    fn take(&mut self, name: &str) -> Option<(&'static str, Child, PathBuf)> {
        let index = self.0.iter().rposition(|(n, _, _)| *n == name)?;
        Some(self.0.remove(index))
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

/// The directory of the Go-built tools (`kube-apiserver`, `etcd`, `kubectl`,
/// `helm`, ...), built by `e2e/controlplane/build.sh` on first use in this
/// process and cached across runs.
pub fn tools_dir() -> anyhow::Result<&'static Path> {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    if let Some(dir) = DIR.get() {
        return Ok(dir);
    }
    let dir = build_binaries()?;
    Ok(DIR.get_or_init(|| dir))
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
    let url = format!("https://127.0.0.1:{port}");
    let apiserver_args = vec![
        format!("--etcd-servers={client_url}"),
        format!("--cert-dir={}", certs.display()),
        format!("--tls-cert-file={}", serving_crt.display()),
        format!("--tls-private-key-file={}", serving_key.display()),
        format!("--secure-port={port}"),
        "--bind-address=127.0.0.1".to_owned(),
        "--advertise-address=127.0.0.1".to_owned(),
        // The endpoints reconciler would try to publish 127.0.0.1 as the endpoint of the
        // `kubernetes` Service, which validation rejects (loopback), logging an error every
        // 10 s. Nothing in-cluster needs it, so don't reconcile.
        "--endpoint-reconciler-type=none".to_owned(),
        format!("--service-cluster-ip-range={SERVICE_CIDR}"),
        "--allow-privileged=true".to_owned(),
        "--disable-admission-plugins=ServiceAccount".to_owned(),
        "--authorization-mode=RBAC".to_owned(),
        format!("--client-ca-file={}", ca_crt.display()),
        format!("--service-account-issuer={url}"),
        format!("--service-account-key-file={}", sa_pub.display()),
        format!("--service-account-signing-key-file={}", sa_key.display()),
    ];
    let apiserver = spawn_apiserver(bin, &root, &apiserver_args, &apiserver_log)?;
    children.push(APISERVER, apiserver, apiserver_log.clone());
    let children = Mutex::new(children);

    let kubeconfig = write(&root, "kubeconfig", &admin_kubeconfig(&url, &pki))?;
    let config = load_kubeconfig(&kubeconfig).await?;

    wait_ready(&config, &children, &apiserver_log).await?;

    Ok(ControlPlane {
        children,
        restarting: AtomicBool::new(false),
        port,
        etcd_port,
        kubeconfig,
        config,
        pki,
        bin: bin.to_path_buf(),
        apiserver_args,
        dir,
    })
}

/// Spawns kube-apiserver in `dir` with `args`, appending its output to `log`, and starts a
/// watchdog that kills it once the test process has exited.
fn spawn_apiserver(bin: &Path, dir: &Path, args: &[String], log: &Path) -> anyhow::Result<Child> {
    let (out, err) = log_file(log)?;
    let mut child = Command::new(bin.join("kube-apiserver"))
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .context("spawning kube-apiserver")?;
    if let Err(err) = spawn_watchdog(Some(child.id()), None, None) {
        kill_and_reap(&mut child);
        return Err(err);
    }
    Ok(child)
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

/// Polls `GET /readyz` as admin until it returns 200, failing early if a child has exited.
async fn wait_ready(config: &kube::Config, children: &Mutex<Children>, log: &Path) -> anyhow::Result<()> {
    let mut config = config.clone();
    config.connect_timeout = Some(Duration::from_secs(2));
    config.read_timeout = Some(Duration::from_secs(5));
    let client = countersign_operator::kube_client::from_config(config).context("building readiness client")?;
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        children.lock().unwrap_or_else(PoisonError::into_inner).check_alive()?;
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
