//! The audit log's hash chain: verified intact, and a tampered row is found.

mod common;

use countersign_reconcilers::audit::{self, Entry};

#[tokio::test]
async fn verify_audit_reports_the_first_tampered_entry() -> anyhow::Result<()> {
    let (_url, pool) = common::database().await?;
    for (i, action) in ["create", "update", "delete"].iter().enumerate() {
        let mut tx = pool.begin().await?;
        let mut entry = Entry::now("Tenant", "acme", action, "countersign");
        entry.requester = Some("carol@example.com".into());
        entry.approver = (i == 1).then(|| "bob".to_string());
        entry.detail = serde_json::json!({"n": i, "nested": {"z": 1, "a": [1, 2]}});
        audit::append(&mut tx, &entry).await?;
        tx.commit().await?;
    }
    let ok = audit::verify(&pool).await?;
    assert_eq!((ok.entries, ok.broken), (3, None));

    // The log refuses edits outright...
    let refused = sqlx::query("UPDATE audit_log SET approver = 'mallory' WHERE seq = 2")
        .execute(&pool)
        .await;
    assert!(refused.is_err(), "audit_log must be append-only");
    // ...so a tamperer with superuser rights has to switch the guard off first.
    sqlx::query("ALTER TABLE audit_log DISABLE TRIGGER audit_log_no_update")
        .execute(&pool)
        .await?;
    sqlx::query("UPDATE audit_log SET approver = 'mallory' WHERE seq = 2")
        .execute(&pool)
        .await?;
    let broken = audit::verify(&pool).await?;
    let link = broken.broken.expect("the edit is detected");
    assert_eq!(link.seq, 2);
    assert!(link.problem.contains("modified"), "{}", link.problem);

    // Deleting an entry breaks the link of the one after it.
    sqlx::query("UPDATE audit_log SET approver = 'bob' WHERE seq = 2")
        .execute(&pool)
        .await?;
    assert_eq!(
        audit::verify(&pool).await?.broken,
        None,
        "restoring the row restores the chain"
    );
    sqlx::query("DELETE FROM audit_log WHERE seq = 2")
        .execute(&pool)
        .await?;
    let link = audit::verify(&pool).await?.broken.expect("the removal is detected");
    assert_eq!(link.seq, 3);
    assert!(link.problem.contains("removed"), "{}", link.problem);
    Ok(())
}
