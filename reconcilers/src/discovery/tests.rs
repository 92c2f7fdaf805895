//! Tests of the identity provider checks.

use serde_json::Value;

use super::oidc::is_jwk_set;
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
