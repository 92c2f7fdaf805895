//! The append-only, hash-chained audit log. Entries are written in the same
//! transaction as the change they record; `verify` recomputes the chain and
//! reports the first broken link.
//!
//! Each link is an HMAC-SHA256 under a key derived from the operator's
//! encryption key ([`ChainKey`]), which the database never holds: someone who
//! can write to the database can still edit a row, but cannot recompute the
//! links after it. Rows written before keyed links existed carry the legacy
//! scheme (plain SHA-256, which anyone can recompute); they are accepted only
//! as the contiguous prefix before the first keyed row, so a rewrite cannot
//! be hidden by downgrading rows to the legacy scheme.

use crate::digest::{canonical_json, sha256_hex};
use chrono::{DateTime, SubsecRound, Utc};
use ring::hmac;
use serde::Serialize;
use sqlx::{PgPool, Postgres, Row, Transaction};
use uuid::Uuid;

/// The hash the first entry chains from.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Serialises writers of the chain so each entry links to its true predecessor.
const CHAIN_LOCK: i64 = 0x436f_756e_7465_7273; // "Counters"

/// How a row's link hash is computed (column `audit_log.scheme`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// Plain SHA-256: rows written before links were keyed. Anyone can
    /// recompute these, so they prove nothing against a database writer.
    Legacy,
    /// HMAC-SHA256 under the [`ChainKey`]: every row this build writes.
    Keyed,
}

impl Scheme {
    /// The value stored in `audit_log.scheme`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Legacy => "sha256",
            Self::Keyed => "hmac-sha256-v1",
        }
    }

    /// The scheme a stored value names, if it is one this build knows.
    pub fn parse(value: &str) -> Option<Self> {
        [Self::Legacy, Self::Keyed].into_iter().find(|s| s.as_str() == value)
    }
}

/// The key audit links are MACed under. It is derived from the operator's
/// encryption key (see [`crate::secrets::SecretKey::audit_chain_key`]) and is
/// never logged, stored in the database or shown in status.
#[derive(Clone)]
pub struct ChainKey {
    link: hmac::Key,
    anchor: hmac::Key,
    /// The hash of the last entry appended under this key by this process,
    /// shared by every clone. Only a hint: [`append`] links to it only if the
    /// log's head still is that entry when the insert runs.
    head_hint: std::sync::Arc<std::sync::Mutex<Option<String>>>,
}

impl std::fmt::Debug for ChainKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChainKey").finish_non_exhaustive()
    }
}

impl ChainKey {
    /// A chain key from derived key material (32 bytes each from HKDF): one
    /// for the links, one for the [`Anchor`].
    pub(crate) fn from_derived(link: &[u8], anchor: &[u8]) -> Self {
        Self {
            link: hmac::Key::new(hmac::HMAC_SHA256, link),
            anchor: hmac::Key::new(hmac::HMAC_SHA256, anchor),
            head_hint: Default::default(),
        }
    }

    fn head_hint(&self) -> Option<String> {
        self.head_hint.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn remember_head(&self, hash: &str) {
        *self.head_hint.lock().unwrap_or_else(|p| p.into_inner()) = Some(hash.to_string());
    }
}

/// Who writes audit entries: the operator's identity, recorded as actor, and
/// the key its entries are chained under. Every pipeline that writes takes
/// one, so no write can reach the log unkeyed.
#[derive(Clone, Debug)]
pub struct Actor {
    name: String,
    key: ChainKey,
}

impl Actor {
    /// The actor `name` chaining under `key`.
    pub fn new(name: impl Into<String>, key: ChainKey) -> Self {
        Self { name: name.into(), key }
    }

    /// The identity recorded as actor.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key entries are chained under.
    pub fn key(&self) -> &ChainKey {
        &self.key
    }
}

/// One audit entry, before it is chained.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Entry {
    /// When the change happened (microsecond precision, as stored).
    pub at: DateTime<Utc>,
    /// The kind of object changed.
    pub kind: String,
    /// namespace/name (or name for cluster-scoped kinds).
    pub object_key: String,
    /// The row changed, if any.
    pub row_id: Option<Uuid>,
    /// What happened: create, update, correct-drift, adopt, delete, orphan, ….
    pub action: String,
    /// Who wrote it (the operator's identity).
    pub actor: String,
    /// Who asked for the change.
    pub requester: Option<String>,
    /// Who approved it, under the two-person rule.
    pub approver: Option<String>,
    /// Digest of the configuration written.
    pub digest: Option<String>,
    /// Additional structured detail (never secrets).
    pub detail: serde_json::Value,
}

impl Entry {
    /// An entry stamped now.
    pub fn now(kind: &str, object_key: &str, action: &str, actor: &str) -> Self {
        Self {
            at: Utc::now().trunc_subsecs(6),
            kind: kind.into(),
            object_key: object_key.into(),
            row_id: None,
            action: action.into(),
            actor: actor.into(),
            requester: None,
            approver: None,
            digest: None,
            detail: serde_json::json!({}),
        }
    }

    /// What a link hash covers: the previous hash and this entry's canonical JSON.
    fn link_message(&self, prev_hash: &str) -> Result<String, serde_json::Error> {
        Ok(format!("{prev_hash}\n{}", canonical_json(self)?))
    }

    /// The legacy link hash: plain SHA-256 over the link message. Only
    /// checked for old rows; nothing writes it any more.
    pub fn chain_hash(&self, prev_hash: &str) -> Result<String, serde_json::Error> {
        Ok(sha256_hex(self.link_message(prev_hash)?.as_bytes()))
    }

    /// The keyed link hash: HMAC-SHA256 under `key` over the link message.
    pub fn keyed_hash(&self, key: &ChainKey, prev_hash: &str) -> Result<String, serde_json::Error> {
        let tag = hmac::sign(&key.link, self.link_message(prev_hash)?.as_bytes());
        Ok(hex::encode(tag.as_ref()))
    }

    /// Whether `hash` is this entry's keyed link hash after `prev_hash`
    /// (compared in constant time by ring).
    pub fn keyed_hash_matches(&self, key: &ChainKey, prev_hash: &str, hash: &str) -> Result<bool, serde_json::Error> {
        let Ok(tag) = hex::decode(hash) else {
            return Ok(false);
        };
        Ok(hmac::verify(&key.link, self.link_message(prev_hash)?.as_bytes(), &tag).is_ok())
    }
}

/// Appends an entry, keyed under `key`, inside the caller's transaction.
///
/// The chain lock orders appenders; the entry links to the newest row as
/// seen after the lock is held. When this process appended the newest entry
/// it knows (the head hint), the insert links to that and checks in the same
/// statement that it still is the head, saving a round trip; if another
/// writer appended since (or the transaction that wrote the hint rolled
/// back), nothing is inserted and the head is read.
pub async fn append(tx: &mut Transaction<'_, Postgres>, key: &ChainKey, entry: &Entry) -> Result<String, crate::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(CHAIN_LOCK)
        .execute(&mut **tx)
        .await?;
    if let Some(prev) = key.head_hint() {
        let hash = entry.keyed_hash(key, &prev)?;
        if insert_link(tx, entry, &prev, &hash, true).await? {
            key.remember_head(&hash);
            return Ok(hash);
        }
    }
    let prev: Option<String> = sqlx::query_scalar("SELECT hash FROM audit_log ORDER BY seq DESC LIMIT 1")
        .fetch_optional(&mut **tx)
        .await?;
    let prev = prev.unwrap_or_else(|| GENESIS.to_string());
    let hash = entry.keyed_hash(key, &prev)?;
    insert_link(tx, entry, &prev, &hash, false).await?;
    key.remember_head(&hash);
    Ok(hash)
}

/// Inserts the link; with `if_head`, only if `prev` is the newest row's hash
/// (the statement's snapshot is taken after the chain lock is held). Returns
/// whether it inserted.
async fn insert_link(
    tx: &mut Transaction<'_, Postgres>,
    entry: &Entry,
    prev: &str,
    hash: &str,
    if_head: bool,
) -> Result<bool, crate::Error> {
    // `$14` false: insert unconditionally (the caller read `prev` under the lock).
    let sql = "INSERT INTO audit_log (at, kind, object_key, row_id, action, actor, requester, approver, digest, detail,
                                      prev_hash, hash, scheme)
               SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13
                WHERE NOT $14 OR (SELECT hash FROM audit_log ORDER BY seq DESC LIMIT 1) = $11";
    let done = sqlx::query(sql)
        .bind(entry.at)
        .bind(&entry.kind)
        .bind(&entry.object_key)
        .bind(entry.row_id)
        .bind(&entry.action)
        .bind(&entry.actor)
        .bind(&entry.requester)
        .bind(&entry.approver)
        .bind(&entry.digest)
        .bind(&entry.detail)
        .bind(prev)
        .bind(hash)
        .bind(Scheme::Keyed.as_str())
        .bind(if_head)
        .execute(&mut **tx)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// One stored row of the log, as read back.
#[derive(Clone, Debug, PartialEq)]
pub struct Link {
    /// Sequence number.
    pub seq: i64,
    /// The stored scheme name (checked, not trusted).
    pub scheme: String,
    /// The entry's content.
    pub entry: Entry,
    /// The hash the row claims to follow.
    pub prev_hash: String,
    /// The row's own hash.
    pub hash: String,
}

/// Checks links one at a time, in sequence order: the pure core of [`verify`].
#[derive(Debug)]
pub struct ChainCheck<'k> {
    key: &'k ChainKey,
    expected_prev: String,
    entries: u64,
    legacy: u64,
    keyed_seen: bool,
}

impl<'k> ChainCheck<'k> {
    /// A check starting at the genesis hash.
    pub fn new(key: &'k ChainKey) -> Self {
        Self {
            key,
            expected_prev: GENESIS.to_string(),
            entries: 0,
            legacy: 0,
            keyed_seen: false,
        }
    }

    /// A check continuing after a head already vouched for: `count` entries
    /// ending in `hash`, the last of them keyed or not.
    pub fn resume(key: &'k ChainKey, hash: &str, count: u64, keyed: bool) -> Self {
        Self {
            key,
            expected_prev: hash.to_string(),
            entries: count,
            legacy: 0,
            keyed_seen: keyed,
        }
    }

    /// Entries accepted so far.
    pub fn entries(&self) -> u64 {
        self.entries
    }

    /// Of those, the legacy (unkeyed) ones: always a prefix of the chain.
    pub fn legacy(&self) -> u64 {
        self.legacy
    }

    /// Accepts the next link, or says what is wrong with it.
    pub fn push(&mut self, link: &Link) -> Result<(), String> {
        if link.prev_hash != self.expected_prev {
            return Err(
                "prev_hash does not match the previous entry's hash (an entry was removed or reordered)".into(),
            );
        }
        let scheme = Scheme::parse(&link.scheme).ok_or_else(|| format!("unknown hash scheme {:?}", link.scheme))?;
        match scheme {
            // A legacy link anyone can compute must not follow a keyed one:
            // otherwise rewriting a row and re-hashing everything after it
            // unkeyed would pass.
            Scheme::Legacy if self.keyed_seen => {
                return Err(
                    "an unkeyed (legacy SHA-256) entry follows keyed entries: the chain was rewritten \
                            without the operator's key"
                        .into(),
                );
            }
            Scheme::Legacy => {
                if link.entry.chain_hash(&link.prev_hash).map_err(encoding)? != link.hash {
                    return Err("content does not match its hash (the entry was modified)".into());
                }
                self.legacy += 1;
            }
            Scheme::Keyed => {
                if !link
                    .entry
                    .keyed_hash_matches(self.key, &link.prev_hash, &link.hash)
                    .map_err(encoding)?
                {
                    return Err(
                        "content does not match its keyed hash (the entry was modified, or its hash was \
                                recomputed without the operator's key)"
                            .into(),
                    );
                }
                self.keyed_seen = true;
            }
        }
        self.entries += 1;
        self.expected_prev = link.hash.clone();
        Ok(())
    }
}

fn encoding(e: serde_json::Error) -> String {
    format!("the entry cannot be encoded canonically: {e}")
}

/// The first entry whose link does not hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokenLink {
    /// Sequence number of the entry.
    pub seq: i64,
    /// What is wrong with it.
    pub problem: String,
}

/// The result of checking the whole chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verification {
    /// Entries checked and found intact.
    pub entries: u64,
    /// Of those, the legacy unkeyed entries at the start of the chain: their
    /// links hold, but anyone with database access could have rewritten them.
    pub legacy: u64,
    /// The first broken link, if any.
    pub broken: Option<BrokenLink>,
    /// When checked against an [`Anchor`] that matched: how many entries
    /// follow the anchored one (written since the anchor was last moved).
    pub after_anchor: Option<u64>,
}

/// Reads every row of the log, in sequence order.
pub async fn links(pool: &PgPool) -> Result<Vec<Link>, crate::Error> {
    let rows = sqlx::query(
        "SELECT seq, scheme, at, kind, object_key, row_id, action, actor, requester, approver, digest, detail,
                prev_hash, hash
           FROM audit_log ORDER BY seq",
    )
    .fetch_all(pool)
    .await?;
    rows.iter().map(link_of).collect()
}

fn link_of(row: &sqlx::postgres::PgRow) -> Result<Link, crate::Error> {
    Ok(Link {
        seq: row.try_get("seq")?,
        scheme: row.try_get("scheme")?,
        entry: Entry {
            at: row.try_get("at")?,
            kind: row.try_get("kind")?,
            object_key: row.try_get("object_key")?,
            row_id: row.try_get("row_id")?,
            action: row.try_get("action")?,
            actor: row.try_get("actor")?,
            requester: row.try_get("requester")?,
            approver: row.try_get("approver")?,
            digest: row.try_get("digest")?,
            detail: row.try_get("detail")?,
        },
        prev_hash: row.try_get("prev_hash")?,
        hash: row.try_get("hash")?,
    })
}

/// Recomputes every link in order under `key`.
pub async fn verify(pool: &PgPool, key: &ChainKey) -> Result<Verification, crate::Error> {
    Ok(check(key, &links(pool).await?))
}

/// Checks a whole chain, read in sequence order.
pub fn check(key: &ChainKey, links: &[Link]) -> Verification {
    let mut chain = ChainCheck::new(key);
    let broken = links.iter().find_map(|link| {
        chain
            .push(link)
            .err()
            .map(|problem| BrokenLink { seq: link.seq, problem })
    });
    Verification {
        entries: chain.entries(),
        legacy: chain.legacy(),
        broken,
        after_anchor: None,
    }
}

/// The head of the chain as the operator last vouched for it: the seq and
/// hash of an entry and how many entries the chain had up to it, MACed under
/// the chain key. It is kept outside the database (a ConfigMap), so
/// deleting entries from the end of the log, or emptying it, shows as a chain
/// shorter than its anchor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Anchor {
    /// Sequence number of the anchored entry.
    pub seq: i64,
    /// Its hash.
    pub hash: String,
    /// Entries in the chain up to and including it.
    pub count: u64,
    /// HMAC-SHA256 over the three, under the chain key's anchor key.
    pub mac: String,
}

/// Why stored anchor data cannot be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AnchorError {
    /// A field is missing or not of its type.
    #[error("the audit anchor's {0:?} is missing or malformed")]
    Field(&'static str),
}

impl Anchor {
    /// The anchor of entry `seq` with `hash`, the `count`th of the chain.
    pub fn sign(key: &ChainKey, seq: i64, hash: &str, count: u64) -> Self {
        let tag = hmac::sign(&key.anchor, Self::message(seq, hash, count).as_bytes());
        Self {
            seq,
            hash: hash.to_string(),
            count,
            mac: hex::encode(tag.as_ref()),
        }
    }

    fn message(seq: i64, hash: &str, count: u64) -> String {
        format!("{seq}\n{hash}\n{count}")
    }

    /// Whether the anchor was written under `key` and not altered since.
    pub fn is_authentic(&self, key: &ChainKey) -> bool {
        hex::decode(&self.mac).is_ok_and(|tag| {
            hmac::verify(
                &key.anchor,
                Self::message(self.seq, &self.hash, self.count).as_bytes(),
                &tag,
            )
            .is_ok()
        })
    }

    /// The anchor as ConfigMap data.
    pub fn to_data(&self) -> std::collections::BTreeMap<String, String> {
        [
            ("seq", self.seq.to_string()),
            ("hash", self.hash.clone()),
            ("count", self.count.to_string()),
            ("mac", self.mac.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Reads an anchor back from ConfigMap data (not yet checked: see
    /// [`Anchor::is_authentic`]).
    pub fn from_data(data: &std::collections::BTreeMap<String, String>) -> Result<Self, AnchorError> {
        let get = |field: &'static str| data.get(field).ok_or(AnchorError::Field(field));
        Ok(Self {
            seq: get("seq")?.parse().map_err(|_| AnchorError::Field("seq"))?,
            hash: get("hash")?.clone(),
            count: get("count")?.parse().map_err(|_| AnchorError::Field("count"))?,
            mac: get("mac")?.clone(),
        })
    }
}

/// Checks a whole chain, read in sequence order, and that it still holds
/// the entry `anchor` vouches for, at the same position.
pub fn check_anchored(key: &ChainKey, links: &[Link], anchor: &Anchor) -> Verification {
    let mut v = check(key, links);
    if v.broken.is_some() {
        return v;
    }
    let broken = |problem: String| {
        Some(BrokenLink {
            seq: anchor.seq,
            problem,
        })
    };
    if !anchor.is_authentic(key) {
        v.broken = broken("the anchor was not written under this key (forged, altered, or another key)".into());
        return v;
    }
    match links.iter().position(|l| l.seq == anchor.seq) {
        None => {
            let end = links.last().map_or(String::new(), |l| format!(" up to seq {}", l.seq));
            v.broken = broken(format!(
                "the chain has {} entries{end} but the anchor records {} entries up to seq {}: \
                 entries were deleted or the log was truncated",
                links.len(),
                anchor.count,
                anchor.seq
            ));
        }
        Some(i) if links[i].hash != anchor.hash => {
            v.broken = broken("the entry does not have the anchored hash: the chain was rewritten".into());
        }
        Some(i) if i as u64 + 1 != anchor.count => {
            v.broken = broken(format!(
                "{} entries lead up to the anchored entry but the anchor records {}: entries were removed",
                i + 1,
                anchor.count
            ));
        }
        Some(i) => v.after_anchor = Some((links.len() - i - 1) as u64),
    }
    v
}

/// Recomputes every link under `key` and checks the chain against `anchor`.
pub async fn verify_anchored(pool: &PgPool, key: &ChainKey, anchor: &Anchor) -> Result<Verification, crate::Error> {
    Ok(check_anchored(key, &links(pool).await?, anchor))
}

/// What moving the anchor found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Advance {
    /// No entry was written since the anchor.
    Unchanged,
    /// The chain grew and every new link holds: anchor it here.
    To(Anchor),
    /// The chain no longer extends the anchored head; the anchor must stay
    /// where it is, as the evidence.
    Refused(BrokenLink),
}

/// Checks the entries written since `current` (all of them without one)
/// and says where the anchor may move. Never moves it backwards: a chain
/// that lost or changed the anchored entry is refused, so emptying the log
/// cannot also reset its anchor.
pub async fn advance(pool: &PgPool, key: &ChainKey, current: Option<&Anchor>) -> Result<Advance, crate::Error> {
    let mut chain = match current {
        None => ChainCheck::new(key),
        Some(anchor) => {
            let head: Option<(String, String)> = sqlx::query_as("SELECT hash, scheme FROM audit_log WHERE seq = $1")
                .bind(anchor.seq)
                .fetch_optional(pool)
                .await?;
            match head {
                Some((hash, scheme)) if hash == anchor.hash => {
                    ChainCheck::resume(key, &hash, anchor.count, Scheme::parse(&scheme) == Some(Scheme::Keyed))
                }
                Some(_) => {
                    return Ok(Advance::Refused(BrokenLink {
                        seq: anchor.seq,
                        problem: "the anchored entry's hash changed: the chain was rewritten".into(),
                    }));
                }
                None => {
                    return Ok(Advance::Refused(BrokenLink {
                        seq: anchor.seq,
                        problem: "the anchored entry is gone: entries were deleted or the log was truncated".into(),
                    }));
                }
            }
        }
    };
    let rows = sqlx::query(
        "SELECT seq, scheme, at, kind, object_key, row_id, action, actor, requester, approver, digest, detail,
                prev_hash, hash
           FROM audit_log WHERE seq > $1 ORDER BY seq",
    )
    .bind(current.map_or(0, |a| a.seq))
    .fetch_all(pool)
    .await?;
    let mut last = None;
    for row in &rows {
        let link = link_of(row)?;
        if let Err(problem) = chain.push(&link) {
            return Ok(Advance::Refused(BrokenLink { seq: link.seq, problem }));
        }
        last = Some(link);
    }
    Ok(match last {
        None => Advance::Unchanged,
        Some(link) => Advance::To(Anchor::sign(key, link.seq, &link.hash, chain.entries())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> ChainKey {
        ChainKey::from_derived(&[byte; 32], &[byte ^ 0xff; 32])
    }

    fn entry(action: &str) -> Entry {
        Entry::now("Tenant", "acme", action, "countersign")
    }

    /// A chain of `schemes.len()` links, each hashed as its scheme says.
    fn chain(key: &ChainKey, schemes: &[Scheme]) -> Vec<Link> {
        let mut prev = GENESIS.to_string();
        schemes
            .iter()
            .enumerate()
            .map(|(i, scheme)| {
                let entry = entry(&format!("action-{i}"));
                let hash = match scheme {
                    Scheme::Legacy => entry.chain_hash(&prev),
                    Scheme::Keyed => entry.keyed_hash(key, &prev),
                }
                .expect("hash");
                let link = Link {
                    seq: i as i64 + 1,
                    scheme: scheme.as_str().into(),
                    entry,
                    prev_hash: prev.clone(),
                    hash: hash.clone(),
                };
                prev = hash;
                link
            })
            .collect()
    }

    /// Recomputes every link from `from` (0-based) on, as `scheme` under `key`.
    fn rehash(links: &mut [Link], from: usize, key: &ChainKey, scheme: Scheme) {
        let mut prev = if from == 0 {
            GENESIS.to_string()
        } else {
            links[from - 1].hash.clone()
        };
        for link in &mut links[from..] {
            link.prev_hash = prev.clone();
            link.scheme = scheme.as_str().into();
            link.hash = match scheme {
                Scheme::Legacy => link.entry.chain_hash(&prev),
                Scheme::Keyed => link.entry.keyed_hash(key, &prev),
            }
            .expect("hash");
            prev = link.hash.clone();
        }
    }

    #[test]
    fn the_hash_covers_content_and_predecessor() {
        let entry = entry("create");
        let h = entry.chain_hash(GENESIS).expect("hash");
        assert_ne!(h, entry.chain_hash(&h).expect("hash"));
        let mut changed = entry.clone();
        changed.approver = Some("mallory".into());
        assert_ne!(h, changed.chain_hash(GENESIS).expect("hash"));
    }

    #[test]
    fn keyed_links_depend_on_the_key_and_differ_from_legacy_ones() {
        let entry = entry("create");
        let k = entry.keyed_hash(&key(1), GENESIS).expect("hash");
        assert_eq!(k, entry.keyed_hash(&key(1), GENESIS).expect("hash"));
        assert_ne!(k, entry.keyed_hash(&key(2), GENESIS).expect("hash"));
        assert_ne!(k, entry.chain_hash(GENESIS).expect("hash"));
        assert_eq!(k.len(), 64);
        assert!(!format!("{:?}", key(1)).contains("01"), "the key is never shown");
    }

    #[test]
    fn a_legacy_prefix_then_keyed_links_verify() {
        let k = key(1);
        let links = chain(&k, &[Scheme::Legacy, Scheme::Legacy, Scheme::Keyed, Scheme::Keyed]);
        assert_eq!(
            check(&k, &links),
            Verification {
                entries: 4,
                legacy: 2,
                broken: None,
                after_anchor: None,
            }
        );
        assert_eq!(check(&k, &[]).entries, 0);
    }

    #[test]
    fn rewriting_a_keyed_entry_and_rehashing_without_the_key_is_caught() {
        let k = key(1);
        let mut links = chain(&k, &[Scheme::Legacy, Scheme::Keyed, Scheme::Keyed, Scheme::Keyed]);
        links[2].entry.approver = Some("mallory".into());
        // Recomputed with plain SHA-256 from the rewritten entry on: a legacy
        // row after keyed ones.
        let mut downgraded = links.clone();
        rehash(&mut downgraded, 2, &k, Scheme::Legacy);
        let broken = check(&k, &downgraded).broken.expect("caught");
        assert_eq!(broken.seq, 3);
        assert!(
            broken.problem.contains("without the operator's key"),
            "{}",
            broken.problem
        );
        // Recomputed keyed, but under a key the attacker made up.
        let mut forged = links.clone();
        rehash(&mut forged, 2, &key(9), Scheme::Keyed);
        let broken = check(&k, &forged).broken.expect("caught");
        assert_eq!(broken.seq, 3);
        assert!(broken.problem.contains("modified"), "{}", broken.problem);
        // Claiming a scheme this build does not know.
        let mut unknown = chain(&k, &[Scheme::Keyed]);
        unknown[0].scheme = "none".into();
        assert!(check(&k, &unknown).broken.is_some());
    }

    #[test]
    fn the_anchor_catches_a_shortened_emptied_or_wholly_rewritten_chain() {
        let k = key(1);
        let links = chain(&k, &[Scheme::Keyed; 4]);
        let anchor = Anchor::sign(&k, 3, &links[2].hash, 3);
        let v = check_anchored(&k, &links, &anchor);
        assert_eq!((v.broken, v.after_anchor), (None, Some(1)));
        assert_eq!(Anchor::from_data(&anchor.to_data()), Ok(anchor.clone()));

        // The last entries deleted, or everything: the plain check cannot tell.
        for kept in [2, 0] {
            assert_eq!(check(&k, &links[..kept]).broken, None);
            let broken = check_anchored(&k, &links[..kept], &anchor).broken.expect("caught");
            assert_eq!(broken.seq, 3);
            assert!(broken.problem.contains("truncated"), "{}", broken.problem);
        }
        // Every entry re-hashed unkeyed: a consistent legacy chain, but not
        // the one anchored.
        let mut rewritten = links.clone();
        rewritten[1].entry.approver = Some("mallory".into());
        rehash(&mut rewritten, 0, &k, Scheme::Legacy);
        assert_eq!(check(&k, &rewritten).broken, None);
        let broken = check_anchored(&k, &rewritten, &anchor).broken.expect("caught");
        assert!(broken.problem.contains("rewritten"), "{}", broken.problem);
        // An anchor made up, or moved, without the key.
        let forged = Anchor::sign(&key(2), 2, &links[1].hash, 2);
        assert!(check_anchored(&k, &links, &forged).broken.is_some());
        let moved = Anchor {
            count: 2,
            ..anchor.clone()
        };
        assert!(!moved.is_authentic(&k));
        assert_eq!(Anchor::from_data(&Default::default()), Err(AnchorError::Field("seq")));
    }

    #[test]
    fn scheme_names_round_trip() {
        for s in [Scheme::Legacy, Scheme::Keyed] {
            assert_eq!(Scheme::parse(s.as_str()), Some(s));
        }
        assert_eq!(Scheme::parse("md5"), None);
    }
}
