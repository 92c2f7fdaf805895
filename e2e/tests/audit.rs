//! The audit log's keyed hash chain: verified intact, and tampering by
//! someone with full rights on the database is found.

mod common;

use countersign_reconcilers::audit::{self, ChainKey, Entry, Link, Scheme};
use countersign_reconcilers::secrets::SecretKey;
use sqlx::PgPool;

/// The chain key of the test operator's encryption key.
fn chain_key() -> ChainKey {
    common::test_key().audit_chain_key().clone()
}

/// Appends `actions` as entries about `acme`, the second one approved by bob.
async fn append_entries(pool: &PgPool, key: &ChainKey, actions: &[&str]) -> anyhow::Result<()> {
    for (i, action) in actions.iter().enumerate() {
        let mut tx = pool.begin().await?;
        let mut entry = Entry::now("Tenant", "acme", action, "countersign");
        entry.requester = Some("carol@example.com".into());
        entry.approver = (i == 1).then(|| "bob".to_string());
        entry.detail = serde_json::json!({"n": i, "nested": {"z": 1, "a": [1, 2]}});
        audit::append(&mut tx, key, &entry).await?;
        tx.commit().await?;
    }
    Ok(())
}

/// What a superuser can do: switch the append-only guard off.
async fn disable_guards(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::query("ALTER TABLE audit_log DISABLE TRIGGER USER")
        .execute(pool)
        .await?;
    Ok(())
}

/// Rewrites the approver of `seq` and recomputes every link from there on
/// with `rehash`, storing `scheme` as the rows' scheme: what someone with the
/// database but not the operator's key would do to hide the edit.
async fn rewrite_approver(
    pool: &PgPool,
    seq: i64,
    scheme: Scheme,
    rehash: impl Fn(&Entry, &str) -> String,
) -> anyhow::Result<()> {
    disable_guards(pool).await?;
    let links: Vec<Link> = audit::links(pool).await?;
    let mut prev = None::<String>;
    for mut link in links {
        if link.seq == seq {
            link.entry.approver = Some("mallory".into());
        }
        if link.seq >= seq {
            let prev_hash = prev.clone().unwrap_or(link.prev_hash.clone());
            let hash = rehash(&link.entry, &prev_hash);
            sqlx::query("UPDATE audit_log SET approver = $2, prev_hash = $3, hash = $4, scheme = $5 WHERE seq = $1")
                .bind(link.seq)
                .bind(&link.entry.approver)
                .bind(&prev_hash)
                .bind(&hash)
                .bind(scheme.as_str())
                .execute(pool)
                .await?;
            link.hash = hash;
        }
        prev = Some(link.hash);
    }
    Ok(())
}

#[tokio::test]
async fn verify_audit_reports_the_first_tampered_entry() -> anyhow::Result<()> {
    let (_url, pool) = common::database().await?;
    let key = chain_key();
    append_entries(&pool, &key, &["create", "update", "delete"]).await?;
    let ok = audit::verify(&pool, &key).await?;
    assert_eq!((ok.entries, ok.legacy, ok.broken), (3, 0, None));

    // The log refuses edits outright...
    let refused = sqlx::query("UPDATE audit_log SET approver = 'mallory' WHERE seq = 2")
        .execute(&pool)
        .await;
    assert!(refused.is_err(), "audit_log must be append-only");
    // ...so a tamperer with superuser rights has to switch the guard off first.
    disable_guards(&pool).await?;
    sqlx::query("UPDATE audit_log SET approver = 'mallory' WHERE seq = 2")
        .execute(&pool)
        .await?;
    let broken = audit::verify(&pool, &key).await?;
    let link = broken.broken.expect("the edit is detected");
    assert_eq!(link.seq, 2);
    assert!(link.problem.contains("modified"), "{}", link.problem);

    // Deleting an entry breaks the link of the one after it.
    sqlx::query("UPDATE audit_log SET approver = 'bob' WHERE seq = 2")
        .execute(&pool)
        .await?;
    assert_eq!(
        audit::verify(&pool, &key).await?.broken,
        None,
        "restoring the row restores the chain"
    );
    sqlx::query("DELETE FROM audit_log WHERE seq = 2")
        .execute(&pool)
        .await?;
    let link = audit::verify(&pool, &key)
        .await?
        .broken
        .expect("the removal is detected");
    assert_eq!(link.seq, 3);
    assert!(link.problem.contains("removed"), "{}", link.problem);
    Ok(())
}

/// An append links to the head its process remembers only if that still is
/// the head: two processes (two keys, each with its own memory of the head)
/// appending in turn and at once, and an append rolled back after it was
/// remembered, still leave one intact chain with no two entries claiming the
/// same predecessor.
#[tokio::test]
async fn appenders_that_interleave_or_roll_back_keep_one_chain() -> anyhow::Result<()> {
    let (_url, pool) = common::database().await?;
    let (first, second) = (chain_key(), chain_key());
    append_entries(&pool, &first, &["create"]).await?;
    append_entries(&pool, &second, &["update"]).await?;
    // `first` remembers its own entry, which is no longer the head.
    append_entries(&pool, &first, &["update"]).await?;
    // Remembered, then rolled back: the next append must not link to it.
    let mut tx = pool.begin().await?;
    audit::append(
        &mut tx,
        &first,
        &Entry::now("Tenant", "acme", "rolled-back", "countersign"),
    )
    .await?;
    tx.rollback().await?;
    append_entries(&pool, &first, &["update"]).await?;
    let mut writers = tokio::task::JoinSet::new();
    for i in 0..40 {
        let (pool, key) = (pool.clone(), if i % 2 == 0 { first.clone() } else { second.clone() });
        writers.spawn(async move { append_entries(&pool, &key, &["concurrent"]).await });
    }
    while let Some(done) = writers.join_next().await {
        done??;
    }
    let verified = audit::verify(&pool, &first).await?;
    assert_eq!((verified.entries, verified.legacy, verified.broken), (44, 0, None));
    let forks: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT prev_hash FROM audit_log GROUP BY prev_hash HAVING count(*) > 1) AS f",
    )
    .fetch_one(&pool)
    .await?;
    assert_eq!(forks, 0, "two entries claim the same predecessor");
    let rolled_back: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE action = 'rolled-back'")
        .fetch_one(&pool)
        .await?;
    assert_eq!(rolled_back, 0);
    Ok(())
}

#[tokio::test]
async fn rewriting_the_approver_and_recomputing_the_chain_with_plain_sha256_is_caught() -> anyhow::Result<()> {
    let (_url, pool) = common::database().await?;
    let key = chain_key();
    append_entries(&pool, &key, &["create", "update", "delete"]).await?;

    // Recomputed with plain SHA-256, rows still claiming to be keyed.
    rewrite_approver(&pool, 2, Scheme::Keyed, |e, prev| e.chain_hash(prev).expect("hash")).await?;
    let link = audit::verify(&pool, &key).await?.broken.expect("caught");
    assert_eq!(link.seq, 2);
    assert!(link.problem.contains("keyed hash"), "{}", link.problem);

    // Recomputed with plain SHA-256 and the rows downgraded to the legacy
    // scheme: a legacy row after a keyed one.
    rewrite_approver(&pool, 2, Scheme::Legacy, |e, prev| e.chain_hash(prev).expect("hash")).await?;
    let link = audit::verify(&pool, &key).await?.broken.expect("caught");
    assert_eq!(link.seq, 2);
    assert!(link.problem.contains("without the operator's key"), "{}", link.problem);
    Ok(())
}

#[tokio::test]
async fn rewriting_the_approver_and_recomputing_the_chain_with_a_wrong_key_is_caught() -> anyhow::Result<()> {
    let (_url, pool) = common::database().await?;
    let key = chain_key();
    append_entries(&pool, &key, &["create", "update", "delete"]).await?;
    let wrong = SecretKey::from_bytes(&[7; 32])?;
    let wrong = wrong.audit_chain_key().clone();
    rewrite_approver(&pool, 2, Scheme::Keyed, |e, prev| {
        e.keyed_hash(&wrong, prev).expect("hash")
    })
    .await?;
    let link = audit::verify(&pool, &key).await?.broken.expect("caught");
    assert_eq!(link.seq, 2);
    assert!(link.problem.contains("modified"), "{}", link.problem);
    // Under the wrong key the rewritten chain looks whole: the key decides.
    let with_wrong = audit::verify(&pool, &wrong).await?;
    assert_eq!(with_wrong.broken.map(|b| b.seq), Some(1));
    Ok(())
}

#[tokio::test]
async fn entries_written_before_keyed_links_verify_as_a_legacy_prefix() -> anyhow::Result<()> {
    // A database at the schema before keyed links, with entries an older
    // operator wrote under plain SHA-256.
    let url = countersign_e2e::test_database_url().await?;
    let pool = countersign_reconcilers::db::connect(&url).await?;
    let before = countersign_reconcilers::db::MIGRATOR
        .iter()
        .filter(|m| m.version <= 3)
        .cloned()
        .collect();
    sqlx::migrate::Migrator::with_migrations(before).run(&pool).await?;
    let mut prev = audit::GENESIS.to_string();
    for action in ["create", "update"] {
        let entry = Entry::now("Tenant", "acme", action, "countersign");
        let hash = entry.chain_hash(&prev)?;
        sqlx::query(
            "INSERT INTO audit_log (at, kind, object_key, action, actor, detail, prev_hash, hash)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(entry.at)
        .bind(&entry.kind)
        .bind(&entry.object_key)
        .bind(&entry.action)
        .bind(&entry.actor)
        .bind(&entry.detail)
        .bind(&prev)
        .bind(&hash)
        .execute(&pool)
        .await?;
        prev = hash;
    }

    // Upgraded: the old rows are legacy, new ones keyed, the chain whole.
    countersign_reconcilers::db::migrate(&pool).await?;
    let key = chain_key();
    append_entries(&pool, &key, &["delete"]).await?;
    let v = audit::verify(&pool, &key).await?;
    assert_eq!((v.entries, v.legacy, v.broken), (3, 2, None));

    // A legacy row after the first keyed one is a break, even if its own
    // hash is right: that is how a rewrite would be re-hashed without the key.
    let last: (i64, String) = sqlx::query_as("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
        .fetch_one(&pool)
        .await?;
    let entry = Entry::now("Tenant", "acme", "create", "countersign");
    sqlx::query(
        "INSERT INTO audit_log (at, kind, object_key, action, actor, detail, prev_hash, hash, scheme)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'sha256')",
    )
    .bind(entry.at)
    .bind(&entry.kind)
    .bind(&entry.object_key)
    .bind(&entry.action)
    .bind(&entry.actor)
    .bind(&entry.detail)
    .bind(&last.1)
    .bind(entry.chain_hash(&last.1)?)
    .execute(&pool)
    .await?;
    let link = audit::verify(&pool, &key).await?.broken.expect("caught");
    assert_eq!(link.seq, last.0 + 1);
    assert!(link.problem.contains("legacy"), "{}", link.problem);
    Ok(())
}

/// Polls the anchor until it records `count` entries.
async fn wait_anchor(client: &kube::Client, name: &str, count: u64) -> anyhow::Result<audit::Anchor> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let anchor = countersign_operator::audit_anchor::load(client, common::OPERATOR_NAMESPACE, name).await?;
        if let Some(anchor) = anchor.filter(|a| a.count == count) {
            return Ok(anchor);
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!("the anchor never reached {count} entries");
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_deleted_tail_or_a_truncated_log_is_reported_against_the_operators_anchor() -> anyhow::Result<()> {
    use countersign_crds::Tenant;
    use kube::api::{Api, Patch, PatchParams, PostParams};
    let client = common::cluster().await?;
    let (_url, pool) = common::database().await?;
    let key = chain_key();
    let run = countersign_e2e::unique_name("anchor");
    let anchor_name = countersign_e2e::unique_name("audit-anchor");
    common::grant_operator_role(&client, "countersign-leader", &anchor_name).await?;
    let interval = std::time::Duration::from_millis(200);
    let op = common::operator_with(&client, &pool, &run, |o| {
        o.audit_anchor = Some(countersign_operator::audit_anchor::AnchorTarget {
            namespace: common::OPERATOR_NAMESPACE.into(),
            name: anchor_name.clone(),
            interval,
        })
    })
    .await?;
    let api: Api<Tenant> = Api::all(client.clone());
    let slug = countersign_e2e::unique_name("acme");
    api.create(
        &PostParams::default(),
        &common::tenant(&slug, &run, serde_json::json!({"slug": slug, "name": "Acme"}))?,
    )
    .await?;
    common::wait_tenant(&api, &slug, "Ready", |t| {
        common::has_condition(t, "Ready", "True", "Live")
    })
    .await?;
    api.patch(
        &slug,
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"name": "Acme Renamed"}})),
    )
    .await?;
    common::wait_tenant(&api, &slug, "Ready at generation 2", |t| {
        common::has_condition(t, "Ready", "True", "Live") && t.metadata.generation == Some(2)
    })
    .await?;
    // Two entries, and the operator has anchored both.
    let anchor = wait_anchor(&client, &anchor_name, 2).await?;
    let v = audit::verify_anchored(&pool, &key, &anchor).await?;
    assert_eq!((v.entries, v.broken, v.after_anchor), (2, None, Some(0)));

    // A superuser deletes the last entry: the chain that is left is whole...
    sqlx::query("ALTER TABLE audit_log DISABLE TRIGGER audit_log_no_update")
        .execute(&pool)
        .await?;
    sqlx::query("DELETE FROM audit_log WHERE seq = (SELECT max(seq) FROM audit_log)")
        .execute(&pool)
        .await?;
    assert_eq!(audit::verify(&pool, &key).await?.broken, None);
    // ...but shorter than its anchor.
    let link = audit::verify_anchored(&pool, &key, &anchor)
        .await?
        .broken
        .expect("the lost entry is reported");
    assert_eq!(link.seq, anchor.seq);
    assert!(link.problem.contains("anchor records 2 entries"), "{}", link.problem);
    // The operator does not move its anchor back over the loss.
    tokio::time::sleep(interval * 5).await;
    let kept = countersign_operator::audit_anchor::load(&client, common::OPERATOR_NAMESPACE, &anchor_name).await?;
    assert_eq!(kept.as_ref(), Some(&anchor), "the anchor stays as evidence");

    // TRUNCATE is refused even for a superuser while the trigger is on...
    let refused = sqlx::query("TRUNCATE audit_log").execute(&pool).await;
    let message = format!("{:?}", refused.expect_err("TRUNCATE is refused"));
    assert!(message.contains("append-only"), "{message}");
    // ...and with it switched off, the emptied log is reported against the anchor.
    sqlx::query("ALTER TABLE audit_log DISABLE TRIGGER audit_log_no_truncate")
        .execute(&pool)
        .await?;
    sqlx::query("TRUNCATE audit_log").execute(&pool).await?;
    assert_eq!(audit::verify(&pool, &key).await?.entries, 0);
    let link = audit::verify_anchored(&pool, &key, &anchor)
        .await?
        .broken
        .expect("the truncation is reported");
    assert!(link.problem.contains("truncated"), "{}", link.problem);
    op.shutdown().await;
    Ok(())
}
