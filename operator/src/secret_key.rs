//! Loads the operator's key material: the encryption key from a Secret and
//! the trusted license-signing keys from a ConfigMap.

use crate::Error;
use countersign_reconcilers::secrets::{KEY_LEN, SecretKey};
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::Api;

/// The key inside the Secret that holds the 32 key bytes.
pub const DATA_KEY: &str = "key";

/// Reads `namespace/name` and builds the key from its `key` entry.
pub async fn load(client: &Client, reference: &str) -> Result<SecretKey, Error> {
    let Some((namespace, name)) = reference.split_once('/') else {
        return Err(Error::Startup(format!(
            "--encryption-key-secret {reference:?} must be namespace/name"
        )));
    };
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let secret = api
        .get_opt(name)
        .await?
        .ok_or_else(|| Error::Startup(format!("the encryption key Secret {reference} does not exist")))?;
    let bytes = secret
        .data
        .and_then(|mut d| d.remove(DATA_KEY))
        .ok_or_else(|| Error::Startup(format!("the encryption key Secret {reference} has no key {DATA_KEY:?}")))?;
    SecretKey::from_bytes(&bytes.0).map_err(|e| {
        Error::Startup(format!(
            "the encryption key Secret {reference}: {e} (create it with {KEY_LEN} random bytes, \
             e.g. `head -c {KEY_LEN} /dev/urandom`)"
        ))
    })
}

/// Reads the ConfigMap `namespace/name` of trusted license-signing keys: key
/// ID → base64 Ed25519 public key (32 bytes). A malformed entry refuses start.
pub async fn load_keyring(
    client: &Client,
    reference: &str,
) -> Result<std::collections::BTreeMap<String, Vec<u8>>, Error> {
    use base64::Engine;
    use k8s_openapi::api::core::v1::ConfigMap;
    let Some((namespace, name)) = reference.split_once('/') else {
        return Err(Error::Startup(format!(
            "--license-keyring {reference:?} must be namespace/name"
        )));
    };
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let map = api
        .get_opt(name)
        .await?
        .ok_or_else(|| Error::Startup(format!("the license keyring ConfigMap {reference} does not exist")))?;
    let mut keyring = std::collections::BTreeMap::new();
    for (key_id, value) in map.data.unwrap_or_default() {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(value.trim())
            .ok()
            .filter(|b| b.len() == 32)
            .ok_or_else(|| {
                Error::Startup(format!(
                    "license keyring {reference}: {key_id:?} is not a base64 Ed25519 public key (32 bytes)"
                ))
            })?;
        keyring.insert(key_id, bytes);
    }
    Ok(keyring)
}
