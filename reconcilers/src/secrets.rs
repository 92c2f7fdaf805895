//! Secret material at rest (ADR 0005): sealed with AES-256-GCM under the
//! key the operator is given, referenced by an opaque row id, and described
//! to people only by a keyed fingerprint.
//!
//! The fingerprint is an HMAC under a key derived from the operator's key, not
//! a plain hash: a client secret is often short enough that a bare SHA-256 in
//! status would let anyone who can read the object guess it offline.

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use ring::{hkdf, hmac};
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

/// The length of the operator's key, in bytes.
pub const KEY_LEN: usize = 32;

/// Why a secret could not be sealed or opened.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    /// The operator's key has the wrong length.
    #[error("the encryption key must be exactly {KEY_LEN} bytes, got {0}")]
    KeyLength(usize),
    /// The system random generator failed.
    #[error("the system random generator failed")]
    Random,
    /// The ciphertext was sealed under another key, or was altered.
    #[error("the stored secret {0} cannot be opened with this key (wrong key or tampered)")]
    Open(Uuid),
}

/// The operator's encryption key, with the keys derived from it.
pub struct SecretKey {
    id: String,
    aead: LessSafeKey,
    fingerprint: hmac::Key,
    audit_chain: crate::audit::ChainKey,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// The HKDF output length marker for one 32-byte key.
struct Len32;

impl hkdf::KeyType for Len32 {
    fn len(&self) -> usize {
        KEY_LEN
    }
}

impl SecretKey {
    /// Builds the key from the operator's 32 secret bytes. Its id (stored
    /// with every ciphertext, so a later key rotation knows which key sealed
    /// what) is derived from the key and reveals nothing about it.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SecretError> {
        if bytes.len() != KEY_LEN {
            return Err(SecretError::KeyLength(bytes.len()));
        }
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"countersign.dev/secrets/v1").extract(bytes);
        let derive = |info: &'static [u8]| -> Result<[u8; KEY_LEN], SecretError> {
            let mut out = [0u8; KEY_LEN];
            prk.expand(&[info], Len32)
                .and_then(|okm| okm.fill(&mut out))
                .map_err(|_| SecretError::Random)?;
            Ok(out)
        };
        let aead_key = derive(b"aead")?;
        let fingerprint_key = derive(b"fingerprint")?;
        let id_material = derive(b"key-id")?;
        // Its own label, so the audit chain's key reveals nothing about the
        // sealing or fingerprint keys and can be handed to a verifier's code
        // path without them.
        let audit_chain_key = derive(b"countersign audit chain v1")?;
        let audit_anchor_key = derive(b"countersign audit anchor v1")?;
        let aead = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &aead_key).map_err(|_| SecretError::Random)?);
        Ok(Self {
            id: format!("k1-{}", hex::encode(&id_material[..6])),
            aead,
            fingerprint: hmac::Key::new(hmac::HMAC_SHA256, &fingerprint_key),
            audit_chain: crate::audit::ChainKey::from_derived(&audit_chain_key, &audit_anchor_key),
        })
    }

    /// The key's public identifier.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The key the audit log's links are MACed under, derived from this key.
    pub fn audit_chain_key(&self) -> &crate::audit::ChainKey {
        &self.audit_chain
    }

    /// A fingerprint of `plaintext` that changes when it does and cannot be
    /// reversed without the operator's key: `hmac-sha256:` + 16 hex digits.
    pub fn fingerprint(&self, plaintext: &[u8]) -> String {
        let tag = hmac::sign(&self.fingerprint, plaintext);
        format!("hmac-sha256:{}", hex::encode(&tag.as_ref()[..8]))
    }

    /// Seals `plaintext` for the row `id`; the id is the associated data, so a
    /// ciphertext copied into another row does not open.
    pub fn seal(&self, id: Uuid, plaintext: &[u8]) -> Result<Sealed, SecretError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new().fill(&mut nonce).map_err(|_| SecretError::Random)?;
        let mut ciphertext = plaintext.to_vec();
        self.aead
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(id.as_bytes()),
                &mut ciphertext,
            )
            .map_err(|_| SecretError::Random)?;
        Ok(Sealed {
            id,
            key_id: self.id.clone(),
            nonce: nonce.to_vec(),
            ciphertext,
            fingerprint: self.fingerprint(plaintext),
        })
    }

    /// Opens a sealed secret.
    pub fn open(&self, sealed: &Sealed) -> Result<Vec<u8>, SecretError> {
        let nonce: [u8; NONCE_LEN] = sealed
            .nonce
            .as_slice()
            .try_into()
            .map_err(|_| SecretError::Open(sealed.id))?;
        let mut buf = sealed.ciphertext.clone();
        let plain = self
            .aead
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(sealed.id.as_bytes()),
                &mut buf,
            )
            .map_err(|_| SecretError::Open(sealed.id))?;
        Ok(plain.to_vec())
    }
}

/// A secret sealed for storage (table `encrypted_secrets`).
#[derive(Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Sealed {
    /// Row id, also the AEAD associated data.
    pub id: Uuid,
    /// Which key sealed it.
    pub key_id: String,
    /// The AES-GCM nonce.
    pub nonce: Vec<u8>,
    /// Ciphertext with the authentication tag.
    pub ciphertext: Vec<u8>,
    /// The keyed fingerprint of the plaintext.
    pub fingerprint: String,
}

impl std::fmt::Debug for Sealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealed")
            .field("id", &self.id)
            .field("key_id", &self.key_id)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

/// Stores a sealed secret.
pub async fn store(tx: &mut Transaction<'_, Postgres>, sealed: &Sealed) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO encrypted_secrets (id, key_id, nonce, ciphertext, fingerprint) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(sealed.id)
    .bind(&sealed.key_id)
    .bind(&sealed.nonce)
    .bind(&sealed.ciphertext)
    .bind(&sealed.fingerprint)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Marks a stored secret revoked: the platform stops accepting it at once.
pub async fn revoke(tx: &mut Transaction<'_, Postgres>, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE encrypted_secrets SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL")
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The fingerprint of a stored, unrevoked secret.
pub async fn fingerprint_of<'e, E: sqlx::PgExecutor<'e>>(executor: E, id: Uuid) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT fingerprint FROM encrypted_secrets WHERE id = $1 AND revoked_at IS NULL")
        .bind(id)
        .fetch_optional(executor)
        .await
}

/// Loads a stored secret (for the platform side and tests; the operator never
/// needs to read one back).
pub async fn load<'e, E: sqlx::PgExecutor<'e>>(executor: E, id: Uuid) -> Result<Option<Sealed>, sqlx::Error> {
    sqlx::query_as("SELECT id, key_id, nonce, ciphertext, fingerprint FROM encrypted_secrets WHERE id = $1")
        .bind(id)
        .fetch_optional(executor)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> SecretKey {
        SecretKey::from_bytes(&[byte; KEY_LEN]).expect("32 bytes")
    }

    #[test]
    fn a_sealed_secret_opens_only_with_its_key_and_row() {
        let k = key(1);
        let id = Uuid::new_v4();
        let sealed = k.seal(id, b"s3cr3t-value").expect("seal");
        assert!(
            !sealed.ciphertext.windows(6).any(|w| w == b"s3cr3t"),
            "plaintext visible"
        );
        assert_eq!(k.open(&sealed).expect("open"), b"s3cr3t-value");
        assert_eq!(key(2).open(&sealed), Err(SecretError::Open(id)), "other key");
        let moved = Sealed {
            id: Uuid::new_v4(),
            ..sealed.clone()
        };
        assert!(
            k.open(&moved).is_err(),
            "ciphertext copied to another row must not open"
        );
        let mut tampered = sealed.clone();
        tampered.ciphertext[0] ^= 1;
        assert!(k.open(&tampered).is_err(), "tampered ciphertext must not open");
    }

    #[test]
    fn fingerprints_are_keyed_stable_and_change_with_the_secret() {
        let k = key(1);
        assert_eq!(k.fingerprint(b"a"), k.fingerprint(b"a"));
        assert_ne!(k.fingerprint(b"a"), k.fingerprint(b"b"));
        assert_ne!(k.fingerprint(b"a"), key(2).fingerprint(b"a"), "keyed");
        assert!(k.fingerprint(b"a").starts_with("hmac-sha256:"));
        assert_eq!(k.fingerprint(b"a").len(), "hmac-sha256:".len() + 16);
    }

    #[test]
    fn nonces_differ_between_seals() {
        let k = key(1);
        let id = Uuid::new_v4();
        assert_ne!(
            k.seal(id, b"x").expect("seal").nonce,
            k.seal(id, b"x").expect("seal").nonce
        );
    }

    #[test]
    fn the_key_must_be_32_bytes_and_its_id_hides_it() {
        assert_eq!(SecretKey::from_bytes(&[0; 16]).err(), Some(SecretError::KeyLength(16)));
        let k = key(7);
        assert!(k.id().starts_with("k1-"));
        assert!(!format!("{k:?}").contains("07070707"));
        assert_eq!(k.id(), key(7).id());
        assert_ne!(k.id(), key(8).id());
    }
}
