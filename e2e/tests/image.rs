//! The operator image as CI builds it from the Containerfile (`scripts/image.sh`, no container
//! engine): its OCI config, its root filesystem, and the binary run from that filesystem as the
//! image's own numeric user against a real PostgreSQL.
//!
//! `scripts/test.sh` builds the image first and passes `COUNTERSIGN_IMAGE_ROOTFS` (and
//! `COUNTERSIGN_IMAGE_LAYOUT`); without them this file runs `scripts/image.sh` itself, once, into
//! the target directory (slow the first time, but never skipped).

mod common;

use anyhow::{Context as _, anyhow, bail};
use serde_json::Value;
use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The user the Containerfile declares.
const IMAGE_USER: &str = "65532:65532";

struct Image {
    rootfs: PathBuf,
    layout: PathBuf,
}

/// The image under test: the one `scripts/test.sh` built, or one built here.
fn image() -> &'static Image {
    static IMAGE: OnceLock<Result<Image, String>> = OnceLock::new();
    IMAGE
        .get_or_init(|| locate_or_build().map_err(|e| format!("{e:#}")))
        .as_ref()
        .unwrap_or_else(|e| panic!("no image to test: {e}"))
}

fn locate_or_build() -> anyhow::Result<Image> {
    if let Some(rootfs) = std::env::var_os("COUNTERSIGN_IMAGE_ROOTFS").filter(|v| !v.is_empty()) {
        let rootfs = PathBuf::from(rootfs);
        let layout = match std::env::var_os("COUNTERSIGN_IMAGE_LAYOUT").filter(|v| !v.is_empty()) {
            Some(layout) => PathBuf::from(layout),
            // scripts/image.sh writes both side by side.
            None => rootfs.join("../oci"),
        };
        return Ok(Image { rootfs, layout });
    }
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("image");
    eprintln!(
        "COUNTERSIGN_IMAGE_ROOTFS is not set: building the image with scripts/image.sh --out {}",
        out.display()
    );
    let mut cmd = Command::new("bash");
    cmd.arg(common::repo_root().join("scripts/image.sh"))
        .arg("--out")
        .arg(&out);
    // What cargo sets for this test, not for a build: ring's build script tracks
    // CARGO_MANIFEST_DIR, so leaving them would make the next plain build start over.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        let from_cargo_test = name == "CARGO"
            || name == "OUT_DIR"
            || [
                "CARGO_MANIFEST_",
                "CARGO_PKG_",
                "CARGO_BIN_",
                "CARGO_CRATE_",
                "CARGO_PRIMARY_",
                "CARGO_TARGET_TMPDIR",
            ]
            .iter()
            .any(|prefix| name.starts_with(prefix));
        if from_cargo_test {
            cmd.env_remove(&*name);
        }
    }
    let status = cmd.status().context("run scripts/image.sh")?;
    if !status.success() {
        bail!("scripts/image.sh failed ({status})");
    }
    Ok(Image {
        rootfs: out.join("rootfs"),
        layout: out.join("oci"),
    })
}

/// Whether this process runs with effective uid 0 (`/proc/self` is owned by the euid).
fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Runs `/countersign ARGS` inside `rootfs` as the image's user, with only `env` in the
/// environment (nothing of the host's leaks in, e.g. SSL_CERT_FILE). Returns success and
/// stdout+stderr.
fn in_image(rootfs: &Path, args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<(bool, String)> {
    // Found on the host's PATH: the child's environment is cleared.
    let chroot = on_path("chroot")?;
    let mut cmd = if is_root() {
        let mut cmd = Command::new(&chroot);
        cmd.arg(format!("--userspec={IMAGE_USER}"));
        cmd
    } else {
        // Unprivileged: a user namespace where we are root may chroot, but only our own uid is
        // mapped, so the binary runs as that (namespace-)root rather than 65532.
        let mut cmd = Command::new(on_path("unshare")?);
        cmd.args(["--map-root-user", "--"]).arg(&chroot);
        cmd
    };
    cmd.arg(rootfs).arg("/countersign").args(args).env_clear();
    cmd.envs(env.iter().copied());
    let out = cmd.output().with_context(|| {
        format!("run {cmd:?} (chroot as root, or unshare --map-root-user otherwise, is needed to run the image)")
    })?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{args:?} in {}: {}\n{text}", rootfs.display(), out.status);
    if !is_root() && text.contains("unshare: ") {
        bail!("cannot run the image without root: {text}");
    }
    Ok((out.status.success(), text))
}

/// The absolute path of `program` on this process's PATH.
fn on_path(program: &str) -> anyhow::Result<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|dir| dir.join(program))
        .find(|path| path.is_file())
        .ok_or_else(|| anyhow!("{program} is not on PATH: it is needed to run the image's binary"))
}

/// A blob of the OCI layout, its digest checked.
fn blob(layout: &Path, digest: &str) -> anyhow::Result<Vec<u8>> {
    let hex = digest
        .strip_prefix("sha256:")
        .ok_or_else(|| anyhow!("digest {digest} is not sha256"))?;
    let bytes = std::fs::read(layout.join("blobs/sha256").join(hex)).with_context(|| format!("blob {digest}"))?;
    let actual: String = ring::digest::digest(&ring::digest::SHA256, &bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if actual != hex {
        bail!("blob {digest} has digest sha256:{actual}");
    }
    Ok(bytes)
}

/// The image's manifest and config, from the layout's only image.
fn manifest_and_config(layout: &Path) -> anyhow::Result<(Value, Value)> {
    let index: Value = serde_json::from_slice(&std::fs::read(layout.join("index.json")).context("index.json")?)?;
    let manifests = index["manifests"].as_array().context("index.json has no manifests")?;
    anyhow::ensure!(manifests.len() == 1, "one image in the layout: {index}");
    let digest = manifests[0]["digest"].as_str().context("manifest digest")?;
    let manifest: Value = serde_json::from_slice(&blob(layout, digest)?)?;
    let config_digest = manifest["config"]["digest"].as_str().context("config digest")?;
    let config: Value = serde_json::from_slice(&blob(layout, config_digest)?)?;
    for layer in manifest["layers"].as_array().context("layers")? {
        blob(layout, layer["digest"].as_str().context("layer digest")?)?;
    }
    Ok((manifest, config))
}

/// Every path under `root` (relative, `/`-separated), directories with a trailing `/`.
fn tree(root: &Path) -> anyhow::Result<BTreeSet<String>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<String>) -> anyhow::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let path = entry.path();
            let rel = path.strip_prefix(root)?.to_string_lossy().into_owned();
            if entry.file_type()?.is_dir() {
                out.insert(format!("{rel}/"));
                walk(root, &path, out)?;
            } else {
                out.insert(rel);
            }
        }
        Ok(())
    }
    let mut out = BTreeSet::new();
    walk(root, root, &mut out)?;
    Ok(out)
}

/// The ELF program header types of a 64-bit little-endian x86-64 executable.
fn program_header_types(elf: &[u8]) -> anyhow::Result<Vec<u32>> {
    anyhow::ensure!(elf.len() > 64 && &elf[..4] == b"\x7fELF", "not an ELF file");
    anyhow::ensure!(elf[4] == 2 && elf[5] == 1, "not 64-bit little-endian ELF");
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]);
    anyhow::ensure!(u16_at(0x12) == 62, "not x86-64 (e_machine {})", u16_at(0x12));
    let phoff = usize::try_from(u64::from_le_bytes(elf[0x20..0x28].try_into()?))?;
    let (phentsize, phnum) = (usize::from(u16_at(0x36)), usize::from(u16_at(0x38)));
    (0..phnum)
        .map(|i| {
            let at = phoff + i * phentsize;
            let bytes = elf.get(at..at + 4).context("program header past the end")?;
            Ok(u32::from_le_bytes(bytes.try_into()?))
        })
        .collect()
}

#[test]
fn the_image_runs_as_a_numeric_non_root_user_with_one_static_binary_and_no_shell() -> anyhow::Result<()> {
    let image = image();
    let (manifest, config) = manifest_and_config(&image.layout)?;
    assert_eq!(
        manifest["mediaType"], "application/vnd.oci.image.manifest.v1+json",
        "{manifest}"
    );
    assert_eq!(
        (&config["os"], &config["architecture"]),
        (&"linux".into(), &"amd64".into())
    );
    let c = &config["config"];
    assert_eq!(
        c["User"], IMAGE_USER,
        "numeric uid:gid, so runAsNonRoot can check it: {c}"
    );
    assert_eq!(c["Entrypoint"], serde_json::json!(["/countersign"]), "{c}");
    assert_eq!(c["Cmd"], serde_json::json!(["run"]), "{c}");
    assert_eq!(c["Labels"]["org.opencontainers.image.licenses"], "Apache-2.0", "{c}");
    assert!(c["ExposedPorts"].get("8080/tcp").is_some(), "{c}");

    // Exactly these files: no shell, no package manager, no libc.
    let files = tree(&image.rootfs)?;
    let expected: BTreeSet<String> = [
        "countersign",
        "etc/",
        "etc/group",
        "etc/passwd",
        "etc/ssl/",
        "etc/ssl/certs/",
        "etc/ssl/certs/ca-certificates.crt",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(files, expected);
    assert!(!image.rootfs.join("bin/sh").exists());

    let binary = image.rootfs.join("countersign");
    let meta = std::fs::metadata(&binary)?;
    assert_eq!(meta.permissions().mode() & 0o7777, 0o755);
    let bundle = std::fs::metadata(image.rootfs.join("etc/ssl/certs/ca-certificates.crt"))?;
    assert_eq!(bundle.permissions().mode() & 0o7777, 0o644);
    assert!(bundle.len() > 1000, "a real CA bundle");
    if is_root() {
        // Extracted with the layers' owners: root may replace the binary, the user may not.
        assert_eq!((meta.uid(), meta.gid(), bundle.uid()), (0, 0, 0));
    }

    // Statically linked: no PT_INTERP (3), so no dynamic loader or shared libraries.
    let headers = program_header_types(&std::fs::read(&binary)?)?;
    assert!(!headers.is_empty() && !headers.contains(&3), "{headers:?}");

    let passwd = std::fs::read_to_string(image.rootfs.join("etc/passwd"))?;
    assert!(
        passwd.lines().any(|l| l.starts_with("countersign:x:65532:65532:")),
        "{passwd}"
    );
    let group = std::fs::read_to_string(image.rootfs.join("etc/group"))?;
    assert!(group.lines().any(|l| l.starts_with("countersign:x:65532:")), "{group}");
    Ok(())
}

#[tokio::test]
async fn the_image_prints_its_version_and_checks_a_real_schema_as_its_user() -> anyhow::Result<()> {
    let rootfs = &image().rootfs;
    let (ok, text) = in_image(rootfs, &["--version"], &[])?;
    assert!(ok, "{text}");
    assert_eq!(text.trim(), format!("countersign {}", env!("CARGO_PKG_VERSION")));

    let (url, _pool) = common::database().await?;
    let (ok, text) = in_image(rootfs, &["check-schema"], &[("DATABASE_URL", &url)])?;
    let latest = countersign_reconcilers::db::latest_known_version();
    assert!(
        ok && text.contains(&format!("schema version {latest}, as this build expects")),
        "{text}"
    );
    let roots: usize = text
        .split("system trust store: ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no trust store count in: {text}"))?;
    assert!(roots > 10, "the image's CA bundle: {text}");

    let unmigrated = countersign_e2e::test_database_url().await?;
    let (ok, text) = in_image(rootfs, &["check-schema"], &[("DATABASE_URL", &unmigrated)])?;
    assert!(!ok && text.contains("run `countersign migrate`"), "{text}");
    Ok(())
}

#[tokio::test]
async fn check_schema_fails_in_an_image_without_the_ca_bundle() -> anyhow::Result<()> {
    let rootfs = &image().rootfs;
    let bare = tempfile::tempdir()?;
    // chroot lands the user in this directory: it must be traversable, like the image's root.
    std::fs::set_permissions(bare.path(), std::fs::Permissions::from_mode(0o755))?;
    for rel in ["countersign", "etc/passwd", "etc/group"] {
        let to = bare.path().join(rel);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::copy(rootfs.join(rel), &to)?;
    }
    let (url, _pool) = common::database().await?;
    let (ok, text) = in_image(bare.path(), &["check-schema"], &[("DATABASE_URL", &url)])?;
    assert!(
        !ok && text.contains("system trust store has no CA certificate") && text.contains("ca-certificates.crt"),
        "{text}"
    );

    // The same when a bundle is configured but empty (SSL_CERT_FILE is honoured).
    std::fs::create_dir_all(bare.path().join("etc/ssl/certs"))?;
    std::fs::write(bare.path().join("etc/ssl/certs/empty.pem"), "")?;
    let (ok, text) = in_image(
        bare.path(),
        &["check-schema"],
        &[("DATABASE_URL", &url), ("SSL_CERT_FILE", "/etc/ssl/certs/empty.pem")],
    )?;
    assert!(
        !ok && text.contains("system trust store has no CA certificate"),
        "{text}"
    );
    Ok(())
}
