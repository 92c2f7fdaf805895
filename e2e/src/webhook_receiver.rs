//! A local HTTPS webhook receiver for tests of signed deliveries.
//!
//! [`WebhookReceiver::start`] serves on a free loopback port with a throwaway CA (clients must
//! trust [`WebhookReceiver::ca_pem`]). It checks every delivery the way a real receiving system
//! should, with its own HMAC-SHA256 implementation (ring), not the operator's:
//!
//! - `X-Countersign-Timestamp` is a Unix time within five minutes of the receiver's clock;
//! - `X-Countersign-Signature` holds `v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`.
//!
//! The secret comes from a [`KeySource`]: a fixed value, or a Kubernetes Secret read at the
//! moment a delivery arrives (as a receiving system that mounts the Secret would). A delivery
//! whose signature does not verify is answered `401`; one that verifies gets the status set
//! with [`WebhookReceiver::answer_with`] (`204` by default). Every delivery is recorded with its
//! headers, body and verdict ([`WebhookReceiver::deliveries`]). Dropping the value stops the
//! server.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Response, StatusCode, Uri};
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use tokio::task::JoinHandle;

use crate::loopback_tls::{bind_loopback, serve, tls_acceptor};

/// The path deliveries are expected at.
const HOOK_PATH: &str = "/hooks/countersign";
/// How far a delivery's timestamp may be from the receiver's clock, in seconds.
pub const TOLERANCE_SECONDS: u64 = 300;

/// The future a [`KeySource::Dynamic`] returns.
pub type KeyFuture = Pin<Box<dyn Future<Output = Option<Vec<u8>>> + Send>>;

/// Where the receiver takes the signing secret from.
#[derive(Clone)]
pub enum KeySource {
    /// No secret: every delivery is refused as unverifiable.
    None,
    /// A fixed secret.
    Fixed(Vec<u8>),
    /// Looked up for every delivery (e.g. read from a Kubernetes Secret).
    Dynamic(Arc<dyn Fn() -> KeyFuture + Send + Sync>),
}

impl std::fmt::Debug for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::None => "None",
            Self::Fixed(_) => "Fixed(<redacted>)",
            Self::Dynamic(_) => "Dynamic",
        })
    }
}

impl KeySource {
    /// The value of `key` in the Secret `namespace/name`, read through `client` whenever a
    /// delivery arrives.
    pub fn kubernetes_secret(client: kube::Client, namespace: &str, name: &str, key: &str) -> Self {
        let api: Api<Secret> = Api::namespaced(client, namespace);
        let (name, key) = (name.to_owned(), key.to_owned());
        KeySource::Dynamic(Arc::new(move || {
            let (api, name, key) = (api.clone(), name.clone(), key.clone());
            Box::pin(async move {
                let secret = api.get_opt(&name).await.ok()??;
                secret.data?.remove(&key).map(|b| b.0)
            })
        }))
    }

    async fn get(&self) -> Option<Vec<u8>> {
        match self {
            Self::None => None,
            Self::Fixed(k) => Some(k.clone()),
            Self::Dynamic(f) => f().await,
        }
    }
}

/// One delivery as the receiver saw it.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// Request path.
    pub path: String,
    /// Headers, names lowercased.
    pub headers: BTreeMap<String, String>,
    /// The raw body.
    pub body: Vec<u8>,
    /// Whether the timestamp and signature verified with the secret of the moment.
    pub signature_valid: bool,
    /// Why not, when not.
    pub rejection: Option<String>,
    /// The status the receiver answered with.
    pub answered: u16,
}

impl Delivery {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(&name.to_ascii_lowercase()).map(String::as_str)
    }

    /// The body as JSON (Null when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

#[derive(Debug)]
struct State {
    key: KeySource,
    status: u16,
    deliveries: Vec<Delivery>,
}

#[derive(Clone)]
struct Shared(Arc<Mutex<State>>);

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Plain fields: a panicking handler cannot leave them inconsistent.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A running webhook receiver; see the [module docs](self).
pub struct WebhookReceiver {
    shared: Shared,
    ca_pem: String,
    port: u16,
    server: JoinHandle<()>,
}

impl std::fmt::Debug for WebhookReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookReceiver")
            .field("url", &self.url())
            .finish_non_exhaustive()
    }
}

impl WebhookReceiver {
    /// Generates the PKI and starts serving on `127.0.0.1` on a free port, verifying with `key`.
    ///
    /// Must be called inside a tokio runtime; the server runs on it until the value is dropped.
    pub async fn start(key: KeySource) -> anyhow::Result<WebhookReceiver> {
        let (ca_pem, acceptor) = tls_acceptor("countersign-webhook-receiver")?;
        let (listener, port) = bind_loopback("webhook receiver").await?;
        let shared = Shared(Arc::new(Mutex::new(State {
            key,
            status: 204,
            deliveries: Vec::new(),
        })));
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let server = tokio::spawn(serve(listener, acceptor, app));
        Ok(WebhookReceiver {
            shared,
            ca_pem,
            port,
            server,
        })
    }

    /// The CA certificate (PEM) that issued the serving certificate; clients must trust it.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// `https://127.0.0.1:PORT/hooks/countersign`.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}{HOOK_PATH}", self.port)
    }

    /// The same endpoint under the name `localhost` (which resolves to loopback).
    pub fn localhost_url(&self) -> String {
        format!("https://localhost:{}{HOOK_PATH}", self.port)
    }

    /// Changes where the secret comes from, from the next delivery on.
    pub fn set_key(&self, key: KeySource) {
        self.shared.lock().key = key;
    }

    /// The status a correctly signed delivery is answered with from now on (e.g. 500).
    pub fn answer_with(&self, status: u16) {
        self.shared.lock().status = status;
    }

    /// Every delivery so far, oldest first.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.shared.lock().deliveries.clone()
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        // The server task owns the listener and every connection task.
        self.server.abort();
    }
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The receiver's own check of a delivery: Err says why it is refused.
fn check(key: Option<&[u8]>, headers: &HeaderMap, body: &[u8]) -> Result<(), String> {
    let key = key.ok_or("the receiver has no signing secret")?;
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let timestamp: u64 = header("x-countersign-timestamp")
        .ok_or("no X-Countersign-Timestamp")?
        .parse()
        .map_err(|_| "the timestamp is not a Unix time")?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|_| "the clock is before 1970")?
        .as_secs();
    if now.abs_diff(timestamp) > TOLERANCE_SECONDS {
        return Err(format!("timestamp {timestamp} is too far from now ({now})"));
    }
    let signatures = header("x-countersign-signature").ok_or("no X-Countersign-Signature")?;
    let mut signed = format!("{timestamp}.").into_bytes();
    signed.extend_from_slice(body);
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    let valid = signatures
        .split(',')
        .filter_map(|s| s.trim().strip_prefix("v1="))
        .filter_map(decode_hex)
        .any(|tag| ring::hmac::verify(&key, &signed, &tag).is_ok());
    if valid {
        Ok(())
    } else {
        Err("no v1 signature matches the secret".into())
    }
}

async fn handle(
    axum::extract::State(shared): axum::extract::State<Shared>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response<Body> {
    let (source, configured) = {
        let state = shared.lock();
        (state.key.clone(), state.status)
    };
    let key = source.get().await;
    let verdict = check(key.as_deref(), &headers, &body);
    let answered = if verdict.is_ok() { configured } else { 401 };
    let delivery = Delivery {
        path: uri.path().to_owned(),
        headers: headers
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap_or_default().to_owned()))
            .collect(),
        body: body.to_vec(),
        signature_valid: verdict.is_ok(),
        rejection: verdict.err(),
        answered,
    };
    shared.lock().deliveries.push(delivery);
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::from_u16(answered).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_check_follows_the_documented_scheme() {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        let body = br#"{"id":"1"}"#;
        let mut signed = format!("{now}.").into_bytes();
        signed.extend_from_slice(body);
        let tag = ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"k"), &signed);
        let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        let mut headers = HeaderMap::new();
        headers.insert("x-countersign-timestamp", now.to_string().parse().expect("header"));
        headers.insert("x-countersign-signature", format!("v1={hex}").parse().expect("header"));
        assert_eq!(check(Some(b"k"), &headers, body), Ok(()));
        assert!(check(Some(b"other"), &headers, body).is_err());
        assert!(check(None, &headers, body).is_err());
        assert!(check(Some(b"k"), &headers, b"{}").is_err());
    }
}
