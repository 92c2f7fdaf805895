//! Checks an identity provider before it goes live: OIDC discovery + JWKS, or SAML metadata.
//!
//! Modelled on the reference's `OIDCTestDiscoveryResult` (test-discovery): every check is
//! reported on its own, and `errors` names the field of every failed rule, so status can show
//! what to fix. The pure `evaluate_*` functions judge documents; `check_*` fetch them through
//! the [`OutboundClient`], whose refusals become `errors` entries carrying the reason word.
//! Nothing here panics on any input.

use serde_json::Value;

use crate::outbound::{OutboundClient, OutboundError, safe};

/// The SAML 2.0 metadata namespace.
pub const SAML_METADATA_NS: &str = "urn:oasis:names:tc:SAML:2.0:metadata";

/// What the OIDC discovery check found: the CRD's status type, so the result
/// goes into `status.discovery` as it is (the reference's `OIDCTestDiscoveryResult`).
pub type OidcDiscoveryResult = countersign_crds::identity_provider::OidcDiscoveryStatus;

/// What the SAML metadata check found (`status.samlMetadata`).
pub type SamlMetadataResult = countersign_crds::identity_provider::SamlMetadataStatus;

fn oidc_failed(error: String) -> OidcDiscoveryResult {
    OidcDiscoveryResult {
        errors: vec![error],
        ..OidcDiscoveryResult::default()
    }
}

fn saml_failed(error: String) -> SamlMetadataResult {
    SamlMetadataResult {
        errors: vec![error],
        ..SamlMetadataResult::default()
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

/// Whether the provider may go live: metadata parsed, its entity ID equals the declared
/// one, and it lists the declared SSO URL.
pub fn saml_passed(result: &SamlMetadataResult) -> bool {
    result.metadata_fetched && result.entity_id_echo.is_some() && result.sso_url_listed && result.errors.is_empty()
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
fn is_jwk_set(body: &[u8]) -> bool {
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

fn refusal(field: &str, err: &OutboundError) -> String {
    format!("{field}: {}: {err}", err.reason())
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

/// Judges SAML 2.0 metadata against the declared entity ID and SSO URL.
///
/// The root may be an `EntityDescriptor` or an `EntitiesDescriptor` aggregate (then the
/// descriptor with the declared entity ID is used). Element names are matched in the SAML
/// metadata namespace, whatever prefix the document uses. DTDs are refused by the parser, so
/// entity expansion attacks cannot apply.
pub fn evaluate_saml_metadata(declared_entity_id: &str, declared_sso_url: &str, xml: &[u8]) -> SamlMetadataResult {
    let Ok(text) = std::str::from_utf8(xml) else {
        return saml_failed("metadata: not UTF-8 text".to_owned());
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let doc = match roxmltree::Document::parse(text) {
        Ok(doc) => doc,
        Err(err) => {
            return saml_failed(format!("metadata: not well-formed XML: {}", safe(&err.to_string())));
        }
    };
    let mut result = SamlMetadataResult {
        metadata_fetched: true,
        ..SamlMetadataResult::default()
    };
    let md = |name: &'static str| (SAML_METADATA_NS, name);
    let root = doc.root_element();
    let candidates: Vec<roxmltree::Node<'_, '_>> = if root.has_tag_name(md("EntityDescriptor")) {
        vec![root]
    } else if root.has_tag_name(md("EntitiesDescriptor")) {
        root.descendants()
            .filter(|node| node.has_tag_name(md("EntityDescriptor")))
            .collect()
    } else {
        result.errors.push(format!(
            "metadata: the root element is {:?}, not a SAML 2.0 metadata EntityDescriptor",
            safe(root.tag_name().name())
        ));
        return result;
    };
    let entity = candidates
        .iter()
        .find(|node| node.attribute("entityID") == Some(declared_entity_id))
        .or(if candidates.len() == 1 {
            candidates.first()
        } else {
            None
        });
    let Some(entity) = entity else {
        result.errors.push(format!(
            "entityID: none of the metadata's {} EntityDescriptors has spec.saml.entityId {:?}",
            candidates.len(),
            safe(declared_entity_id)
        ));
        return result;
    };

    match entity.attribute("entityID") {
        Some(entity_id) => {
            result.entity_id_echo = Some(safe(entity_id));
            if entity_id != declared_entity_id {
                result.errors.push(format!(
                    "entityID: metadata says {:?} but spec.saml.entityId is {:?}",
                    safe(entity_id),
                    safe(declared_entity_id)
                ));
            }
        }
        None => result
            .errors
            .push("entityID: missing from the EntityDescriptor".to_owned()),
    }

    let idp_descriptors: Vec<_> = entity
        .children()
        .filter(|node| node.has_tag_name(md("IDPSSODescriptor")))
        .collect();
    if idp_descriptors.is_empty() {
        result
            .errors
            .push("IDPSSODescriptor: missing; the metadata does not describe an identity provider".to_owned());
        return result;
    }
    let locations: Vec<&str> = idp_descriptors
        .iter()
        .flat_map(|descriptor| descriptor.children())
        .filter(|node| node.has_tag_name(md("SingleSignOnService")))
        .filter_map(|node| node.attribute("Location"))
        .collect();
    result.sso_url_listed = locations.contains(&declared_sso_url);
    if locations.is_empty() {
        result
            .errors
            .push("SingleSignOnService: the IDPSSODescriptor lists none".to_owned());
    } else if !result.sso_url_listed {
        let mut listed: Vec<&str> = Vec::new();
        for location in &locations {
            if !listed.contains(location) {
                listed.push(location);
            }
        }
        let listed: Vec<String> = listed.iter().map(|l| format!("{l:?}")).collect();
        result.errors.push(format!(
            "ssoUrl: spec.saml.ssoUrl {:?} is not a SingleSignOnService Location of the metadata (it lists {})",
            safe(declared_sso_url),
            safe(&listed.join(", "))
        ));
    }
    result
}

/// Fetches SAML metadata through `client` and judges it.
///
/// Never fails: refusals, network errors and bad documents all end up in `errors`.
pub async fn check_saml(
    client: &OutboundClient,
    metadata_url: &str,
    declared_entity_id: &str,
    declared_sso_url: &str,
) -> SamlMetadataResult {
    match client.get(metadata_url).await {
        Err(err) => saml_failed(refusal("metadataUrl", &err)),
        Ok(fetched) if !fetched.is_success() => {
            saml_failed(format!("metadataUrl: the IdP answered HTTP {}", fetched.status))
        }
        Ok(fetched) => evaluate_saml_metadata(declared_entity_id, declared_sso_url, &fetched.body),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ISSUER: &str = "https://idp.example.com/realms/test";

    fn good_doc() -> Value {
        json!({
            "issuer": ISSUER,
            "authorization_endpoint": "https://idp.example.com/realms/test/protocol/openid-connect/auth",
            "token_endpoint": "https://idp.example.com/realms/test/protocol/openid-connect/token",
            "jwks_uri": "https://idp.example.com/realms/test/protocol/openid-connect/certs",
            "id_token_signing_alg_values_supported": ["RS256", "ES256"],
            "authorization_response_iss_parameter_supported": true,
        })
    }

    fn evaluate(doc: &Value) -> (OidcDiscoveryResult, Option<String>) {
        evaluate_discovery_document(ISSUER, doc.to_string().as_bytes())
    }

    fn with_jwks(mut result: OidcDiscoveryResult, kids: &[&str]) -> OidcDiscoveryResult {
        result.jwks_reachable = true;
        result.current_kids = kids.iter().map(|k| (*k).to_owned()).collect();
        result
    }

    #[test]
    fn good_discovery_document_passes() {
        let (result, jwks_uri) = evaluate(&good_doc());
        assert_eq!(result.errors, Vec::<String>::new());
        assert!(result.discovery_succeeded);
        assert_eq!(result.issuer_echo.as_deref(), Some(ISSUER));
        assert_eq!(result.supported_alg_values, vec!["RS256", "ES256"]);
        assert!(result.iss_param_supported);
        assert_eq!(
            jwks_uri.as_deref(),
            Some("https://idp.example.com/realms/test/protocol/openid-connect/certs")
        );
        assert!(!oidc_passed(&result), "no JWKS yet");
        assert!(oidc_passed(&with_jwks(result, &["k1"])));
    }

    #[test]
    fn issuer_must_match_exactly() {
        for other in [
            "https://evil.example.com/realms/test",
            "https://idp.example.com/realms/test/",
            "https://IDP.example.com/realms/test",
        ] {
            let mut doc = good_doc();
            doc["issuer"] = json!(other);
            let (result, _) = evaluate(&doc);
            assert_eq!(result.issuer_echo.as_deref(), Some(other));
            assert_eq!(
                result.errors,
                vec![format!(
                    "issuer: discovery document says {other:?} but spec.oidc.issuer is {ISSUER:?}"
                )]
            );
            assert!(!oidc_passed(&with_jwks(result, &["k1"])), "{other}");
        }
    }

    #[test]
    fn missing_issuer_fails() {
        let mut doc = good_doc();
        doc.as_object_mut().expect("object").remove("issuer");
        let (result, _) = evaluate(&doc);
        assert_eq!(result.issuer_echo, None);
        assert_eq!(result.errors, vec!["issuer: missing from the discovery document"]);
        assert!(!oidc_passed(&with_jwks(result, &["k1"])));
    }

    #[test]
    fn alg_none_fails() {
        for none in ["none", "NONE", " none"] {
            let mut doc = good_doc();
            doc["id_token_signing_alg_values_supported"] = json!(["RS256", none]);
            let (result, _) = evaluate(&doc);
            assert!(
                result
                    .errors
                    .iter()
                    .any(|e| e.starts_with("id_token_signing_alg_values_supported includes \"none\"")),
                "{:?}",
                result.errors
            );
            let mut cleared = with_jwks(result, &["k1"]);
            assert!(!oidc_passed(&cleared));
            // passed() refuses `none` on its own, even if errors were cleared.
            cleared.errors.clear();
            assert!(!oidc_passed(&cleared));
        }
    }

    #[test]
    fn algs_missing_or_malformed_fail() {
        let cases = [
            (
                None,
                "id_token_signing_alg_values_supported: missing from the discovery document",
            ),
            (
                Some(json!("RS256")),
                "id_token_signing_alg_values_supported: not an array of strings",
            ),
            (
                Some(json!(["RS256", 7])),
                "id_token_signing_alg_values_supported: not an array of strings",
            ),
            (Some(json!([])), "id_token_signing_alg_values_supported: empty"),
        ];
        for (value, want) in cases {
            let mut doc = good_doc();
            match value {
                Some(value) => doc["id_token_signing_alg_values_supported"] = value,
                None => {
                    doc.as_object_mut()
                        .expect("object")
                        .remove("id_token_signing_alg_values_supported");
                }
            }
            let (result, _) = evaluate(&doc);
            assert_eq!(result.errors, vec![want.to_owned()]);
        }
    }

    #[test]
    fn iss_parameter_is_reported_not_required() {
        let mut doc = good_doc();
        doc.as_object_mut()
            .expect("object")
            .remove("authorization_response_iss_parameter_supported");
        let (result, _) = evaluate(&doc);
        assert!(!result.iss_param_supported);
        assert!(oidc_passed(&with_jwks(result, &["k1"])));
        let mut doc = good_doc();
        doc["authorization_response_iss_parameter_supported"] = json!("true");
        assert!(!evaluate(&doc).0.iss_param_supported);
    }

    #[test]
    fn missing_jwks_uri_fails() {
        let mut doc = good_doc();
        doc.as_object_mut().expect("object").remove("jwks_uri");
        let (result, jwks_uri) = evaluate(&doc);
        assert_eq!(jwks_uri, None);
        assert_eq!(result.errors, vec!["jwks_uri: missing from the discovery document"]);
        let mut doc = good_doc();
        doc["jwks_uri"] = json!(42);
        let (result, jwks_uri) = evaluate(&doc);
        assert_eq!(jwks_uri, None);
        assert_eq!(result.errors, vec!["jwks_uri: not a non-empty string"]);
    }

    #[test]
    fn missing_endpoints_fail() {
        let mut doc = good_doc();
        doc.as_object_mut().expect("object").remove("token_endpoint");
        let (result, _) = evaluate(&doc);
        assert_eq!(
            result.errors,
            vec!["token_endpoint: missing from the discovery document"]
        );
    }

    #[test]
    fn bad_json_fails() {
        for body in [
            &b"<html>oops</html>"[..],
            b"",
            b"[1,2]",
            b"\"issuer\"",
            &[0xff, 0xfe, 0x00],
        ] {
            let (result, jwks_uri) = evaluate_discovery_document(ISSUER, body);
            assert!(!result.discovery_succeeded);
            assert_eq!(jwks_uri, None);
            assert_eq!(result.errors.len(), 1, "{:?}", result.errors);
            assert!(result.errors[0].starts_with("discovery: "), "{:?}", result.errors);
            assert!(!oidc_passed(&result));
        }
    }

    #[test]
    fn long_external_values_are_cut() {
        let mut doc = good_doc();
        let long = format!("https://{}.example.com", "a".repeat(1000));
        doc["issuer"] = json!(long);
        let (result, _) = evaluate(&doc);
        assert!(
            result
                .issuer_echo
                .as_deref()
                .is_some_and(|echo| echo.chars().count() <= 201)
        );
        assert!(result.errors[0].chars().count() < 600, "{}", result.errors[0]);
    }

    #[test]
    fn jwks_kids() {
        let jwks = json!({"keys": [
            {"kty": "RSA", "kid": "key-1", "n": "AQAB", "e": "AQAB"},
            {"kty": "EC", "kid": "key-2", "crv": "P-256", "x": "AA", "y": "AA"},
            {"kty": "RSA", "kid": "key-1", "use": "enc", "n": "AQAB", "e": "AQAB"},
        ]});
        assert_eq!(
            evaluate_jwks(jwks.to_string().as_bytes()),
            Ok(vec!["key-1".to_owned(), "key-2".to_owned()])
        );
    }

    #[test]
    fn bad_jwks_fail() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (json!({"keys": []}).to_string().into_bytes(), "jwks_uri: no keys"),
            (
                json!({}).to_string().into_bytes(),
                "jwks_uri: the document has no \"keys\" array",
            ),
            (
                json!({"keys": {}}).to_string().into_bytes(),
                "jwks_uri: the document has no \"keys\" array",
            ),
            (
                json!({"keys": [{"kid": "a"}]}).to_string().into_bytes(),
                "jwks_uri: keys[0] is not a JWK (no \"kty\")",
            ),
            (
                json!({"keys": [{"kty": "RSA", "kid": "a"}, {"kty": "RSA"}]})
                    .to_string()
                    .into_bytes(),
                "jwks_uri: keys[1] has no \"kid\"",
            ),
            (b"not json".to_vec(), "jwks_uri: not a JSON document"),
        ];
        for (body, want) in cases {
            let got = evaluate_jwks(&body).expect_err(want);
            assert!(got.starts_with(want), "{got:?} should start with {want:?}");
        }
        assert!(is_jwk_set(br#"{"keys": []}"#));
        assert!(!is_jwk_set(b"{}"));
    }

    #[test]
    fn discovery_url_drops_one_trailing_slash() {
        assert_eq!(
            discovery_url("https://idp.example.com/realms/test"),
            "https://idp.example.com/realms/test/.well-known/openid-configuration"
        );
        assert_eq!(
            discovery_url("https://idp.example.com/"),
            "https://idp.example.com/.well-known/openid-configuration"
        );
    }

    const ENTITY: &str = "https://idp.example.com/saml/idp";
    const SSO: &str = "https://idp.example.com/saml/sso";

    fn metadata(prefix: &str, entity_id: &str, sso: &str) -> String {
        let p = if prefix.is_empty() {
            String::new()
        } else {
            format!("{prefix}:")
        };
        let xmlns = if prefix.is_empty() {
            "xmlns".to_owned()
        } else {
            format!("xmlns:{prefix}")
        };
        format!(
            r#"<?xml version="1.0"?>
<{p}EntityDescriptor {xmlns}="urn:oasis:names:tc:SAML:2.0:metadata" entityID="{entity_id}">
  <{p}IDPSSODescriptor protocolSupportEnumeration="urn:oasis:names:tc:SAML:2.0:protocol">
    <{p}SingleSignOnService Binding="urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect" Location="{sso}"/>
  </{p}IDPSSODescriptor>
</{p}EntityDescriptor>"#
        )
    }

    #[test]
    fn saml_metadata_matches() {
        for prefix in ["md", "", "saml2md"] {
            let result = evaluate_saml_metadata(ENTITY, SSO, metadata(prefix, ENTITY, SSO).as_bytes());
            assert_eq!(result.errors, Vec::<String>::new(), "prefix {prefix:?}");
            assert!(saml_passed(&result), "prefix {prefix:?}");
            assert_eq!(result.entity_id_echo.as_deref(), Some(ENTITY));
        }
    }

    #[test]
    fn saml_entity_id_mismatch_fails() {
        let result = evaluate_saml_metadata(ENTITY, SSO, metadata("md", "https://evil.example/idp", SSO).as_bytes());
        assert!(result.metadata_fetched);
        assert!(result.sso_url_listed);
        assert_eq!(result.entity_id_echo.as_deref(), Some("https://evil.example/idp"));
        assert_eq!(
            result.errors,
            vec![format!(
                "entityID: metadata says \"https://evil.example/idp\" but spec.saml.entityId is {ENTITY:?}"
            )]
        );
        assert!(!saml_passed(&result));
    }

    #[test]
    fn saml_sso_url_not_listed_fails() {
        let result = evaluate_saml_metadata(
            ENTITY,
            SSO,
            metadata("md", ENTITY, "https://other.example/sso").as_bytes(),
        );
        assert!(!result.sso_url_listed);
        assert_eq!(result.errors.len(), 1);
        assert!(result.errors[0].starts_with("ssoUrl: "), "{:?}", result.errors);
        assert!(
            result.errors[0].contains("https://other.example/sso"),
            "{:?}",
            result.errors
        );
        assert!(!saml_passed(&result));
    }

    #[test]
    fn saml_wrong_namespace_fails() {
        let xml = metadata("md", ENTITY, SSO).replace("urn:oasis:names:tc:SAML:2.0:metadata", "urn:example:not-saml");
        let result = evaluate_saml_metadata(ENTITY, SSO, xml.as_bytes());
        assert!(result.metadata_fetched);
        assert!(
            result.errors[0].starts_with("metadata: the root element is"),
            "{:?}",
            result.errors
        );
        assert!(!saml_passed(&result));
    }

    #[test]
    fn saml_aggregate_picks_the_declared_entity() {
        let xml = format!(
            r#"<md:EntitiesDescriptor xmlns:md="{SAML_METADATA_NS}">
  <md:EntityDescriptor entityID="https://a.example/idp"><md:IDPSSODescriptor><md:SingleSignOnService Location="https://a.example/sso"/></md:IDPSSODescriptor></md:EntityDescriptor>
  <md:EntityDescriptor entityID="{ENTITY}"><md:IDPSSODescriptor><md:SingleSignOnService Location="{SSO}"/></md:IDPSSODescriptor></md:EntityDescriptor>
</md:EntitiesDescriptor>"#
        );
        assert!(saml_passed(&evaluate_saml_metadata(ENTITY, SSO, xml.as_bytes())));
        let result = evaluate_saml_metadata("https://c.example/idp", SSO, xml.as_bytes());
        assert!(!saml_passed(&result));
        assert!(
            result.errors[0].starts_with("entityID: none of the metadata's 2"),
            "{:?}",
            result.errors
        );
    }

    #[test]
    fn saml_without_idp_descriptor_fails() {
        let xml = format!(
            r#"<EntityDescriptor xmlns="{SAML_METADATA_NS}" entityID="{ENTITY}"><SPSSODescriptor/></EntityDescriptor>"#
        );
        let result = evaluate_saml_metadata(ENTITY, SSO, xml.as_bytes());
        assert!(
            result.errors[0].starts_with("IDPSSODescriptor: missing"),
            "{:?}",
            result.errors
        );
        assert!(!saml_passed(&result));
    }

    #[test]
    fn saml_garbage_fails() {
        let billion_laughs = r#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;">]><EntityDescriptor xmlns="urn:oasis:names:tc:SAML:2.0:metadata" entityID="&lol2;"/>"#;
        for body in [
            &b"not xml at all"[..],
            b"",
            b"{\"json\": true}",
            b"<unclosed>",
            &[0xff, 0xfe],
            billion_laughs.as_bytes(),
        ] {
            let result = evaluate_saml_metadata(ENTITY, SSO, body);
            assert!(!result.metadata_fetched, "{body:?}");
            assert_eq!(result.errors.len(), 1);
            assert!(result.errors[0].starts_with("metadata: "), "{:?}", result.errors);
            assert!(!saml_passed(&result));
        }
    }
}
