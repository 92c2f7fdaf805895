//! OpenID Connect: the discovery document and the JWKS it points to.

use serde_json::Value;

use super::refusal;
use crate::outbound::{OutboundClient, safe};

/// What the OIDC discovery check found: the CRD's status type, so the result
/// goes into `status.discovery` as it is (the reference's `OIDCTestDiscoveryResult`).
pub type OidcDiscoveryResult = countersign_crds::identity_provider::OidcDiscoveryStatus;

fn oidc_failed(error: String) -> OidcDiscoveryResult {
    OidcDiscoveryResult {
        errors: vec![error],
        ..OidcDiscoveryResult::default()
    }
}

/// Whether the provider may go live: discovery succeeded, its issuer equals the declared
/// one exactly (the issuer mismatch is recorded in `errors`, as every failed rule is), the
/// JWKS holds at least one key, and `none` is not an accepted algorithm.
pub fn oidc_passed(result: &OidcDiscoveryResult) -> bool {
    result.discovery_succeeded
        && result.issuer_echo.is_some()
        && result.jwks_reachable
        && !result.current_kids.is_empty()
        && !result.supported_alg_values.iter().any(|alg| is_alg_none(alg))
        && result.errors.is_empty()
}

/// JOSE algorithm names are case-sensitive, but no real algorithm spells "none" otherwise, so
/// any spelling is refused.
fn is_alg_none(alg: &str) -> bool {
    alg.trim().eq_ignore_ascii_case("none")
}

/// `{issuer}/.well-known/openid-configuration`, with a trailing `/` of the issuer removed
/// first, as OpenID Connect Discovery 1.0 §4 prescribes.
pub fn discovery_url(issuer: &str) -> String {
    format!(
        "{}/.well-known/openid-configuration",
        issuer.strip_suffix('/').unwrap_or(issuer)
    )
}

/// Judges a discovery document against the declared issuer. Returns the result so far
/// (`jwks_reachable` and `current_kids` are left for the JWKS step) and the `jwks_uri` to
/// fetch, if the document has one.
///
/// The issuer must match exactly, byte for byte: OpenID Connect Discovery 1.0 §4.3 requires
/// the `issuer` to be identical to the URL the document was fetched under, and tokens'
/// `iss` are compared the same way.
pub fn evaluate_discovery_document(declared_issuer: &str, doc: &[u8]) -> (OidcDiscoveryResult, Option<String>) {
    let object = match serde_json::from_slice::<Value>(doc) {
        Ok(Value::Object(object)) => object,
        Ok(_) => {
            return (
                oidc_failed("discovery: the document is not a JSON object".to_owned()),
                None,
            );
        }
        Err(err) => {
            return (
                oidc_failed(format!("discovery: not a JSON document: {}", safe(&err.to_string()))),
                None,
            );
        }
    };
    let mut result = OidcDiscoveryResult {
        discovery_succeeded: true,
        ..OidcDiscoveryResult::default()
    };

    match object.get("issuer") {
        Some(Value::String(issuer)) => {
            result.issuer_echo = Some(safe(issuer));
            if issuer != declared_issuer {
                result.errors.push(format!(
                    "issuer: discovery document says {:?} but spec.oidc.issuer is {:?}",
                    safe(issuer),
                    safe(declared_issuer)
                ));
            }
        }
        Some(_) => result.errors.push("issuer: not a string".to_owned()),
        None => result
            .errors
            .push("issuer: missing from the discovery document".to_owned()),
    }

    for endpoint in ["authorization_endpoint", "token_endpoint"] {
        match object.get(endpoint) {
            Some(Value::String(value)) if !value.is_empty() => {}
            Some(_) => result.errors.push(format!("{endpoint}: not a non-empty string")),
            None => result
                .errors
                .push(format!("{endpoint}: missing from the discovery document")),
        }
    }

    const ALGS: &str = "id_token_signing_alg_values_supported";
    match object.get(ALGS) {
        Some(Value::Array(values)) => {
            let algs: Option<Vec<String>> = values.iter().map(|v| v.as_str().map(safe)).collect();
            match algs {
                Some(algs) => {
                    if algs.is_empty() {
                        result.errors.push(format!("{ALGS}: empty"));
                    }
                    if algs.iter().any(|alg| is_alg_none(alg)) {
                        result.errors.push(format!(
                            "{ALGS} includes \"none\": unsigned ID tokens would be accepted"
                        ));
                    }
                    result.supported_alg_values = algs;
                }
                None => result.errors.push(format!("{ALGS}: not an array of strings")),
            }
        }
        Some(_) => result.errors.push(format!("{ALGS}: not an array of strings")),
        None => result
            .errors
            .push(format!("{ALGS}: missing from the discovery document")),
    }

    // Absent means unsupported (RFC 9207 §3); it is reported, not a failure.
    result.iss_param_supported = matches!(
        object.get("authorization_response_iss_parameter_supported"),
        Some(Value::Bool(true))
    );

    let jwks_uri = match object.get("jwks_uri") {
        Some(Value::String(uri)) if !uri.is_empty() => Some(uri.clone()),
        Some(_) => {
            result.errors.push("jwks_uri: not a non-empty string".to_owned());
            None
        }
        None => {
            result
                .errors
                .push("jwks_uri: missing from the discovery document".to_owned());
            None
        }
    };
    (result, jwks_uri)
}

/// Whether `body` is a JWK Set document at all (`{"keys": [...]}`), keys or not.
pub(super) fn is_jwk_set(body: &[u8]) -> bool {
    serde_json::from_slice::<Value>(body)
        .ok()
        .is_some_and(|doc| doc.get("keys").is_some_and(Value::is_array))
}

/// The `kid`s of a JWK Set, or what is wrong with it (prefixed `jwks_uri:`).
///
/// Every key must have a `kty` and a `kid`: the operator tracks keys by `kid` to show
/// rotations, and ID tokens name their signing key by it.
pub fn evaluate_jwks(body: &[u8]) -> Result<Vec<String>, String> {
    let doc: Value = serde_json::from_slice(body)
        .map_err(|err| format!("jwks_uri: not a JSON document: {}", safe(&err.to_string())))?;
    let Some(keys) = doc.get("keys").and_then(Value::as_array) else {
        return Err("jwks_uri: the document has no \"keys\" array".to_owned());
    };
    if keys.is_empty() {
        return Err("jwks_uri: no keys".to_owned());
    }
    let mut kids: Vec<String> = Vec::with_capacity(keys.len());
    for (index, key) in keys.iter().enumerate() {
        if !key.get("kty").is_some_and(Value::is_string) {
            return Err(format!("jwks_uri: keys[{index}] is not a JWK (no \"kty\")"));
        }
        match key.get("kid").and_then(Value::as_str) {
            Some(kid) if !kid.is_empty() => {
                let kid = safe(kid);
                // One kid may be published for several uses; list it once.
                if !kids.contains(&kid) {
                    kids.push(kid);
                }
            }
            _ => return Err(format!("jwks_uri: keys[{index}] has no \"kid\"")),
        }
    }
    Ok(kids)
}

/// Fetches and judges the issuer's discovery document and its JWKS through `client`.
///
/// Never fails: refusals, network errors and bad documents all end up in `errors`.
pub async fn check_oidc(client: &OutboundClient, declared_issuer: &str) -> OidcDiscoveryResult {
    let fetched = match client.get(&discovery_url(declared_issuer)).await {
        Ok(fetched) => fetched,
        Err(err) => return oidc_failed(refusal("discovery", &err)),
    };
    if !fetched.is_success() {
        return oidc_failed(format!(
            "discovery: the IdP answered HTTP {} for /.well-known/openid-configuration",
            fetched.status
        ));
    }
    let (mut result, jwks_uri) = evaluate_discovery_document(declared_issuer, &fetched.body);
    let Some(jwks_uri) = jwks_uri else {
        return result;
    };
    // Same client, same policy: a discovery document cannot point us at an internal address.
    match client.get(&jwks_uri).await {
        Err(err) => result.errors.push(refusal("jwks_uri", &err)),
        Ok(fetched) if !fetched.is_success() => result
            .errors
            .push(format!("jwks_uri: the IdP answered HTTP {}", fetched.status)),
        Ok(fetched) => {
            result.jwks_reachable = is_jwk_set(&fetched.body);
            match evaluate_jwks(&fetched.body) {
                Ok(kids) => result.current_kids = kids,
                Err(error) => result.errors.push(error),
            }
        }
    }
    result
}
