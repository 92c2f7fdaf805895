//! The `countersign` binary's database commands against a real PostgreSQL.

use std::process::Command;

fn countersign(database_url: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_countersign"))
        .args(args)
        .env("DATABASE_URL", database_url)
        .env_remove("KUBECONFIG")
        .output()
        .expect("the binary runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test]
async fn migrate_check_schema_and_verify_audit() -> anyhow::Result<()> {
    let url = countersign_e2e::test_database_url().await?;

    let (ok, text) = countersign(&url, &["check-schema"]);
    assert!(!ok && text.contains("run `countersign migrate`"), "{text}");
    let (ok, text) = countersign(&url, &["run", "--health-addr", "127.0.0.1:0"]);
    assert!(
        !ok && text.contains("run `countersign migrate`"),
        "run must refuse an unmigrated database: {text}"
    );

    let (ok, text) = countersign(&url, &["migrate"]);
    // Whatever the newest migration is: kinds add their own.
    let latest = format!("schema version {}", countersign_reconcilers::db::latest_known_version());
    assert!(ok && text.contains(&latest), "{text}");
    let (ok, text) = countersign(&url, &["check-schema"]);
    assert!(ok, "{text}");

    let pool = countersign_reconcilers::db::connect(&url).await?;
    // The operator's key as its Secret holds it: 32 raw bytes.
    let key_bytes: [u8; 32] = rand::random();
    let key = countersign_reconcilers::secrets::SecretKey::from_bytes(&key_bytes)?;
    for action in ["create", "update"] {
        let mut tx = pool.begin().await?;
        let entry = countersign_reconcilers::audit::Entry::now("Tenant", "acme", action, "countersign");
        countersign_reconcilers::audit::append(&mut tx, key.audit_chain_key(), &entry).await?;
        tx.commit().await?;
    }
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("verify-audit-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let key_file = dir.join("key");
    std::fs::write(&key_file, key_bytes)?;
    let key_file = key_file.to_str().expect("UTF-8 path");
    let other_file = dir.join("other-key");
    std::fs::write(&other_file, [7u8; 32])?;
    let other_file = other_file.to_str().expect("UTF-8 path");

    let (ok, text) = countersign(&url, &["verify-audit"]);
    assert!(
        !ok && text.contains("--encryption-key-file"),
        "the key is required: {text}"
    );
    let (ok, text) = countersign(&url, &["verify-audit", "--encryption-key-file", key_file]);
    assert!(ok && text.contains("audit chain intact: 2 entries verified"), "{text}");
    assert!(!text.contains("predate keyed links"), "{text}");
    // Another key cannot vouch for the chain.
    let (ok, text) = countersign(&url, &["verify-audit", "--encryption-key-file", other_file]);
    assert!(!ok && text.contains("audit chain broken at seq 1"), "{text}");

    sqlx::query("ALTER TABLE audit_log DISABLE TRIGGER audit_log_no_update")
        .execute(&pool)
        .await?;
    sqlx::query("UPDATE audit_log SET actor = 'mallory' WHERE seq = 1")
        .execute(&pool)
        .await?;
    let (ok, text) = countersign(&url, &["verify-audit", "--encryption-key-file", key_file]);
    assert!(!ok && text.contains("audit chain broken at seq 1"), "{text}");
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// `countersign verify-audit --audit-anchor` reads the anchor ConfigMap
/// through the kubeconfig and reports a log shorter than its anchor.
#[tokio::test]
async fn verify_audit_reports_a_deleted_tail_against_the_anchor() -> anyhow::Result<()> {
    use countersign_reconcilers::audit::{self, Anchor, Entry};
    let cp = countersign_e2e::shared_control_plane().await;
    let client = cp.client().await?;
    let url = countersign_e2e::test_database_url().await?;
    let pool = countersign_reconcilers::db::connect(&url).await?;
    countersign_reconcilers::db::migrate(&pool).await?;
    let key_bytes: [u8; 32] = rand::random();
    let key = countersign_reconcilers::secrets::SecretKey::from_bytes(&key_bytes)?;
    let mut head = String::new();
    for action in ["create", "update", "delete"] {
        let mut tx = pool.begin().await?;
        head = audit::append(
            &mut tx,
            key.audit_chain_key(),
            &Entry::now("Tenant", "acme", action, "countersign"),
        )
        .await?;
        tx.commit().await?;
    }
    // The anchor as the operator would have left it after the third entry.
    let name = countersign_e2e::unique_name("audit-anchor");
    let anchor = Anchor::sign(key.audit_chain_key(), 3, &head, 3);
    let map: k8s_openapi::api::core::v1::ConfigMap = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name}, "data": anchor.to_data(),
    }))?;
    kube::Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(client, "default")
        .create(&Default::default(), &map)
        .await?;
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("anchor-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let key_file = dir.join("key");
    std::fs::write(&key_file, key_bytes)?;
    let reference = format!("default/{name}");
    let verify = || {
        let out = Command::new(env!("CARGO_BIN_EXE_countersign"))
            .args(["verify-audit", "--encryption-key-file"])
            .arg(&key_file)
            .args(["--audit-anchor", &reference])
            .env("DATABASE_URL", &url)
            .env("KUBECONFIG", cp.kubeconfig_path())
            .output()
            .expect("the binary runs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    let (ok, text) = verify();
    assert!(ok && text.contains("matches the anchor at seq 3 (3 entries)"), "{text}");

    sqlx::query("ALTER TABLE audit_log DISABLE TRIGGER audit_log_no_update")
        .execute(&pool)
        .await?;
    sqlx::query("DELETE FROM audit_log WHERE seq = 3")
        .execute(&pool)
        .await?;
    let (ok, text) = verify();
    assert!(
        !ok && text.contains("audit chain broken at seq 3") && text.contains("truncated"),
        "{text}"
    );
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// `countersign license canonical` without a database or kubeconfig.
fn license_canonical(args: &[&str]) -> (bool, Vec<u8>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_countersign"))
        .args(["license", "canonical"])
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("KUBECONFIG")
        .output()
        .expect("the binary runs");
    (
        out.status.success(),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn license_canonical_prints_what_the_readme_says_the_vendor_signs() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let example = root.join("examples/50-license-grant.yaml");
    let example = example.to_str().expect("UTF-8 path");
    let (ok, stdout, stderr) = license_canonical(&[example, "--name", "acme-wipe-seats"]);
    assert!(ok, "{stderr}");
    // The README quotes the signed bytes of this grant; they must stay true.
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README");
    let quoted = readme
        .lines()
        .find(|l| l.starts_with(r#"{"addendumOf":null,"#))
        .expect("the README quotes the signed bytes");
    assert_eq!(String::from_utf8(stdout).expect("UTF-8"), quoted);

    // Several grants and no choice: an error naming them.
    let (ok, _, stderr) = license_canonical(&[example]);
    assert!(
        !ok && stderr.contains("acme-wipe-seats, acme-wipe-seats-more"),
        "{stderr}"
    );

    // --out-dir: one file per grant, the paths on stdout.
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("canonical-{}", std::process::id()));
    let (ok, stdout, stderr) = license_canonical(&[example, "--out-dir", dir.to_str().expect("UTF-8 path")]);
    assert!(ok, "{stderr}");
    let listed: Vec<String> = String::from_utf8(stdout)
        .expect("UTF-8")
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(listed.len(), 2, "{listed:?}");
    let first = std::fs::read_to_string(dir.join("acme-wipe-seats.bin")).expect("written");
    assert_eq!(first, quoted);
    let second = std::fs::read_to_string(dir.join("acme-wipe-seats-more.bin")).expect("written");
    assert!(second.contains(r#""grantType":"ADDENDUM""#), "{second}");
    std::fs::remove_dir_all(&dir).expect("cleaned up");
}
