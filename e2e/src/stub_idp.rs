//! A local HTTPS identity provider for tests of the operator's outbound checks.
//!
//! [`StubIdp::start`] generates a throwaway CA and a serving certificate for `localhost` and
//! `127.0.0.1`, and serves on a free loopback port:
//!
//! - OIDC discovery at `{issuer}/.well-known/openid-configuration` and a JWKS at
//!   `{issuer}/protocol/openid-connect/certs`, shaped like Keycloak's (realm `test`);
//! - SAML 2.0 metadata (an `EntityDescriptor` with an `IDPSSODescriptor`) at
//!   [`StubIdp::metadata_url`].
//!
//! A test changes what the IdP answers while it runs with [`StubIdp::set`] (wrong issuer,
//! `none` among the algorithms, an empty JWKS, error statuses, redirects, slow answers) and
//! counts requests with [`StubIdp::hits`]. Clients must trust [`StubIdp::ca_pem`]. Everything is
//! in memory; dropping the value stops the server and closes its connections.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Response, StatusCode, Uri, header};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use crate::loopback_tls::{bind_loopback, serve, tls_acceptor};

/// The realm path, as Keycloak lays out its issuers.
const REALM_PATH: &str = "/realms/test";
const DISCOVERY_PATH: &str = "/realms/test/.well-known/openid-configuration";
const JWKS_PATH: &str = "/realms/test/protocol/openid-connect/certs";
const METADATA_PATH: &str = "/saml/metadata";
const SSO_PATH: &str = "/saml/sso";
const ENTITY_PATH: &str = "/saml/idp";

/// What the stub answers; [`Default`] is a healthy IdP. Change it while the stub runs with
/// [`StubIdp::set`].
#[derive(Clone, Debug)]
pub struct StubBehaviour {
    /// The `issuer` the discovery document claims instead of the real one (a lying or
    /// misconfigured IdP).
    pub issuer_override: Option<String>,
    /// HTTP status of the discovery document; anything but 200 sends a short error body.
    pub discovery_status: u16,
    /// `id_token_signing_alg_values_supported`.
    pub algs: Vec<String>,
    /// `authorization_response_iss_parameter_supported` (RFC 9207).
    pub iss_param_supported: bool,
    /// The `jwks_uri` the discovery document advertises instead of the real one.
    pub jwks_uri_override: Option<String>,
    /// HTTP status of the JWKS; anything but 200 sends a short error body.
    pub jwks_status: u16,
    /// The JWKS `keys`; empty publishes a key set without keys.
    pub jwks_keys: Vec<Value>,
    /// The `entityID` the SAML metadata claims instead of [`StubIdp::saml_entity_id`].
    pub saml_entity_id_override: Option<String>,
    /// HTTP status of the SAML metadata; anything but 200 sends a short error body.
    pub metadata_status: u16,
    /// Paths answered with `302 Found` and this `Location`, before anything else.
    pub redirects: HashMap<String, String>,
    /// Waited before every answer (to test client timeouts).
    pub response_delay: Duration,
}

impl Default for StubBehaviour {
    fn default() -> Self {
        StubBehaviour {
            issuer_override: None,
            discovery_status: 200,
            algs: vec!["RS256".to_owned(), "ES256".to_owned()],
            iss_param_supported: true,
            jwks_uri_override: None,
            jwks_status: 200,
            jwks_keys: default_keys(),
            saml_entity_id_override: None,
            metadata_status: 200,
            redirects: HashMap::new(),
            response_delay: Duration::ZERO,
        }
    }
}

/// The two keys a healthy stub publishes: `key-1` (RSA, RS256) and `key-2` (EC P-256, ES256).
///
/// They are well-formed public JWKs, but nothing is ever signed with them: the stub serves
/// discovery, not tokens.
pub fn default_keys() -> Vec<Value> {
    // A fixed 2048-bit "modulus" with the top bit set: shaped like an RSA key, never used.
    let modulus: Vec<u8> = (0u32..256)
        .map(|i| {
            let byte = (i.wrapping_mul(2_654_435_761) >> 13) as u8;
            if i == 0 { byte | 0x80 } else { byte }
        })
        .collect();
    // An uncompressed P-256 point (the generator), so x and y are real coordinates.
    let x = hex_bytes("6b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296");
    let y = hex_bytes("4fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5");
    vec![
        json!({
            "kty": "RSA",
            "kid": "key-1",
            "use": "sig",
            "alg": "RS256",
            "n": URL_SAFE_NO_PAD.encode(&modulus),
            "e": "AQAB",
        }),
        json!({
            "kty": "EC",
            "kid": "key-2",
            "use": "sig",
            "alg": "ES256",
            "crv": "P-256",
            "x": URL_SAFE_NO_PAD.encode(&x),
            "y": URL_SAFE_NO_PAD.encode(&y),
        }),
    ]
}

fn hex_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .filter_map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

#[derive(Debug, Default)]
struct State {
    behaviour: StubBehaviour,
    hits: HashMap<String, usize>,
}

#[derive(Clone)]
struct Shared {
    state: Arc<Mutex<State>>,
    port: u16,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A handler that panicked mid-update cannot leave State inconsistent (plain fields).
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A running stub identity provider; see the [module docs](self).
pub struct StubIdp {
    shared: Shared,
    ca_pem: String,
    server: JoinHandle<()>,
}

impl std::fmt::Debug for StubIdp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StubIdp")
            .field("base_url", &self.base_url())
            .finish_non_exhaustive()
    }
}

impl StubIdp {
    /// Generates the PKI and starts serving on `127.0.0.1` on a free port.
    ///
    /// Must be called inside a tokio runtime; the server runs on it until the value is dropped.
    pub async fn start() -> anyhow::Result<StubIdp> {
        let (ca_pem, acceptor) = tls_acceptor("countersign-stub-idp")?;
        let (listener, port) = bind_loopback("stub IdP").await?;
        let shared = Shared {
            state: Arc::new(Mutex::new(State::default())),
            port,
        };
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let server = tokio::spawn(serve(listener, acceptor, app));
        Ok(StubIdp { shared, ca_pem, server })
    }

    /// The CA certificate (PEM) that issued the serving certificate; clients must trust it.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The port the stub listens on (on `127.0.0.1`).
    pub fn port(&self) -> u16 {
        self.shared.port
    }

    /// `https://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.shared.port)
    }

    /// The OIDC issuer, `https://127.0.0.1:PORT/realms/test`.
    pub fn issuer(&self) -> String {
        format!("{}{REALM_PATH}", self.base_url())
    }

    /// The same issuer under the name `localhost`, which resolves to loopback: a policy that
    /// refuses loopback must refuse it after resolution, not by looking at the name.
    pub fn localhost_issuer(&self) -> String {
        format!("https://localhost:{}{REALM_PATH}", self.shared.port)
    }

    /// The discovery document's URL for [`StubIdp::issuer`].
    pub fn discovery_url(&self) -> String {
        format!("{}{DISCOVERY_PATH}", self.base_url())
    }

    /// The JWKS URL the discovery document advertises (unless overridden).
    pub fn jwks_url(&self) -> String {
        format!("{}{JWKS_PATH}", self.base_url())
    }

    /// The SAML metadata URL.
    pub fn metadata_url(&self) -> String {
        format!("{}{METADATA_PATH}", self.base_url())
    }

    /// The SAML entity ID the metadata declares (unless overridden).
    pub fn saml_entity_id(&self) -> String {
        format!("{}{ENTITY_PATH}", self.base_url())
    }

    /// The SAML single sign-on URL the metadata lists.
    pub fn sso_url(&self) -> String {
        format!("{}{SSO_PATH}", self.base_url())
    }

    /// Changes what the stub answers from the next request on.
    pub fn set(&self, change: impl FnOnce(&mut StubBehaviour)) {
        change(&mut self.shared.lock().behaviour);
    }

    /// Restores the healthy defaults.
    pub fn reset(&self) {
        self.shared.lock().behaviour = StubBehaviour::default();
    }

    /// How many requests reached `path` (the path only, without query; e.g.
    /// `/realms/test/.well-known/openid-configuration`), whatever the answer was.
    pub fn hits(&self, path: &str) -> usize {
        self.shared.lock().hits.get(path).copied().unwrap_or(0)
    }
}

impl Drop for StubIdp {
    fn drop(&mut self) {
        // The server task owns the listener and every connection task (JoinSet), so aborting
        // it closes them all.
        self.server.abort();
    }
}

fn respond(status: StatusCode, content_type: &str, body: impl Into<Body>) -> Response<Body> {
    let mut response = Response::new(body.into());
    *response.status_mut() = status;
    if let Ok(value) = header::HeaderValue::from_str(content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    response
}

fn status_or_500(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

async fn handle(
    axum::extract::State(shared): axum::extract::State<Shared>,
    uri: Uri,
    headers: HeaderMap,
) -> Response<Body> {
    let path = uri.path().to_owned();
    let behaviour = {
        let mut state = shared.lock();
        *state.hits.entry(path.clone()).or_insert(0) += 1;
        state.behaviour.clone()
    };
    if !behaviour.response_delay.is_zero() {
        tokio::time::sleep(behaviour.response_delay).await;
    }
    if let Some(location) = behaviour.redirects.get(&path) {
        let mut response = respond(StatusCode::FOUND, "text/plain", "redirect");
        if let Ok(value) = header::HeaderValue::from_str(location) {
            response.headers_mut().insert(header::LOCATION, value);
        }
        return response;
    }
    // Documents name the stub the way the client did (127.0.0.1 or localhost), as a real IdP
    // behind one DNS name would.
    let authority = headers
        .get(header::HOST)
        .and_then(|host| host.to_str().ok())
        .filter(|host| matches!(host.split(':').next(), Some("127.0.0.1" | "localhost")))
        .map(str::to_owned)
        .unwrap_or_else(|| format!("127.0.0.1:{}", shared.port));
    let base = format!("https://{authority}");
    match path.as_str() {
        DISCOVERY_PATH => {
            if behaviour.discovery_status != 200 {
                return respond(
                    status_or_500(behaviour.discovery_status),
                    "text/plain",
                    "discovery failed",
                );
            }
            let issuer = behaviour
                .issuer_override
                .clone()
                .unwrap_or_else(|| format!("{base}{REALM_PATH}"));
            let jwks_uri = behaviour
                .jwks_uri_override
                .clone()
                .unwrap_or_else(|| format!("{base}{JWKS_PATH}"));
            let doc = json!({
                "issuer": issuer,
                "authorization_endpoint": format!("{base}{REALM_PATH}/protocol/openid-connect/auth"),
                "token_endpoint": format!("{base}{REALM_PATH}/protocol/openid-connect/token"),
                "userinfo_endpoint": format!("{base}{REALM_PATH}/protocol/openid-connect/userinfo"),
                "jwks_uri": jwks_uri,
                "response_types_supported": ["code"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": behaviour.algs,
                "authorization_response_iss_parameter_supported": behaviour.iss_param_supported,
            });
            respond(StatusCode::OK, "application/json", doc.to_string())
        }
        JWKS_PATH => {
            if behaviour.jwks_status != 200 {
                return respond(status_or_500(behaviour.jwks_status), "text/plain", "jwks failed");
            }
            let jwks = json!({ "keys": behaviour.jwks_keys });
            respond(StatusCode::OK, "application/jwk-set+json", jwks.to_string())
        }
        METADATA_PATH => {
            if behaviour.metadata_status != 200 {
                return respond(
                    status_or_500(behaviour.metadata_status),
                    "text/plain",
                    "metadata failed",
                );
            }
            let entity_id = behaviour
                .saml_entity_id_override
                .clone()
                .unwrap_or_else(|| format!("{base}{ENTITY_PATH}"));
            respond(
                StatusCode::OK,
                "application/samlmetadata+xml",
                saml_metadata(&entity_id, &format!("{base}{SSO_PATH}")),
            )
        }
        _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found"),
    }
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn saml_metadata(entity_id: &str, sso_url: &str) -> String {
    let entity_id = xml_escape(entity_id);
    let sso_url = xml_escape(sso_url);
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<md:EntityDescriptor xmlns:md="urn:oasis:names:tc:SAML:2.0:metadata" xmlns:ds="http://www.w3.org/2000/09/xmldsig#" entityID="{entity_id}">
  <md:IDPSSODescriptor WantAuthnRequestsSigned="false" protocolSupportEnumeration="urn:oasis:names:tc:SAML:2.0:protocol">
    <md:NameIDFormat>urn:oasis:names:tc:SAML:1.1:nameid-format:unspecified</md:NameIDFormat>
    <md:SingleSignOnService Binding="urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect" Location="{sso_url}"/>
    <md:SingleSignOnService Binding="urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST" Location="{sso_url}"/>
  </md:IDPSSODescriptor>
</md:EntityDescriptor>
"#
    )
}
