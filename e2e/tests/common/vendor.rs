//! A license vendor with a throwaway Ed25519 key, signing grants the way the
//! README tells vendors to, independently of the operator's code. Keys are
//! generated per run; none is committed.

use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde_json::{Value, json};

/// A license vendor with a throwaway key.
pub struct Vendor {
    /// The key ID its signatures name.
    pub key_id: String,
    pair: Ed25519KeyPair,
}

impl Vendor {
    /// A fresh key under `key_id`.
    pub fn new(key_id: &str) -> Self {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).expect("key generation");
        Self {
            key_id: key_id.into(),
            pair: Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("generated key parses"),
        }
    }

    /// The raw 32-byte public key, as the operator's keyring holds it.
    pub fn public_key(&self) -> Vec<u8> {
        self.pair.public_key().as_ref().to_vec()
    }

    /// Signs a spec: the spec without `signature`, `addendumOf` and
    /// `revokes` null when absent, plus `format`, as sorted compact JSON.
    pub fn sign(&self, spec: &mut Value) {
        let mut doc = spec.as_object().cloned().expect("spec is an object");
        doc.remove("signature");
        for optional in ["addendumOf", "revokes"] {
            doc.entry(optional).or_insert(Value::Null);
        }
        doc.insert("format".into(), json!("countersign.dev/license-grant/v1"));
        // serde_json's Map is a BTreeMap here: keys come out sorted.
        let bytes = serde_json::to_vec(&Value::Object(doc)).expect("encodes");
        let value = base64::engine::general_purpose::STANDARD.encode(self.pair.sign(&bytes).as_ref());
        spec["signature"] = json!({"keyId": self.key_id, "value": value});
    }
}
