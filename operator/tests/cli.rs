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
    for action in ["create", "update"] {
        let mut tx = pool.begin().await?;
        let entry = countersign_reconcilers::audit::Entry::now("Tenant", "acme", action, "countersign");
        countersign_reconcilers::audit::append(&mut tx, &entry).await?;
        tx.commit().await?;
    }
    let (ok, text) = countersign(&url, &["verify-audit"]);
    assert!(ok && text.contains("audit chain intact: 2 entries verified"), "{text}");

    sqlx::query("ALTER TABLE audit_log DISABLE TRIGGER audit_log_no_update")
        .execute(&pool)
        .await?;
    sqlx::query("UPDATE audit_log SET actor = 'mallory' WHERE seq = 1")
        .execute(&pool)
        .await?;
    let (ok, text) = countersign(&url, &["verify-audit"]);
    assert!(!ok && text.contains("audit chain broken at seq 1"), "{text}");
    Ok(())
}
