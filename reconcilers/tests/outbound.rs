//! The outbound policy client and the discovery checks against a real HTTPS stub IdP on
//! loopback (no network beyond 127.0.0.1 is needed).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use countersign_e2e::stub_idp::StubIdp;
use countersign_reconcilers::discovery::{check_oidc, check_saml, oidc_passed, saml_passed};
use countersign_reconcilers::outbound::{
    AddressClass, LookupFuture, NameLookup, OutboundClient, OutboundError, OutboundPolicy, SystemLookup,
};

async fn stub() -> StubIdp {
    StubIdp::start().await.expect("starting the stub IdP")
}

/// What tests of the operator use: loopback allowed, the stub's CA trusted.
fn loopback_policy(stub: &StubIdp) -> OutboundPolicy {
    OutboundPolicy {
        allow_loopback: true,
        extra_roots_pem: vec![stub.ca_pem().to_owned()],
        ..OutboundPolicy::default()
    }
}

fn client(policy: OutboundPolicy) -> OutboundClient {
    OutboundClient::new(policy).expect("building the outbound client")
}

/// Answers from a fixed map, counting lookups; other names go to the system resolver.
#[derive(Default)]
struct MapLookup {
    names: HashMap<String, Vec<IpAddr>>,
    lookups: AtomicUsize,
}

impl MapLookup {
    fn with(name: &str, addrs: &[IpAddr]) -> Self {
        let mut lookup = MapLookup::default();
        lookup.names.insert(name.to_owned(), addrs.to_vec());
        lookup
    }
}

impl NameLookup for MapLookup {
    fn lookup(&self, host: &str) -> LookupFuture {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        match self.names.get(host) {
            Some(addrs) => {
                let addrs = addrs.clone();
                Box::pin(async move { Ok(addrs) })
            }
            None => SystemLookup.lookup(host),
        }
    }
}

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

const DISCOVERY_PATH: &str = "/realms/test/.well-known/openid-configuration";
const JWKS_PATH: &str = "/realms/test/protocol/openid-connect/certs";

#[tokio::test]
async fn discovery_against_the_stub_passes() {
    let stub = stub().await;
    let result = check_oidc(&client(loopback_policy(&stub)), &stub.issuer()).await;
    assert!(oidc_passed(&result), "{result:?}");
    assert!(result.discovery_succeeded && result.jwks_reachable);
    assert_eq!(result.current_kids, vec!["key-1", "key-2"]);
    assert!(result.iss_param_supported);
    assert_eq!(result.supported_alg_values, vec!["RS256", "ES256"]);
    assert_eq!(result.issuer_echo, Some(stub.issuer()));
    assert_eq!(stub.hits(DISCOVERY_PATH), 1);
    assert_eq!(stub.hits(JWKS_PATH), 1);
}

#[tokio::test]
async fn issuer_trailing_slash_is_dropped_for_the_url_but_not_the_comparison() {
    let stub = stub().await;
    let result = check_oidc(&client(loopback_policy(&stub)), &format!("{}/", stub.issuer())).await;
    assert!(result.discovery_succeeded, "{result:?}");
    assert!(!oidc_passed(&result));
    assert!(result.errors.iter().any(|e| e.starts_with("issuer: ")), "{result:?}");
}

#[tokio::test]
async fn lying_issuer_fails() {
    let stub = stub().await;
    stub.set(|b| b.issuer_override = Some("https://evil.example.com/realms/test".to_owned()));
    let result = check_oidc(&client(loopback_policy(&stub)), &stub.issuer()).await;
    assert!(!oidc_passed(&result));
    assert_eq!(
        result.issuer_echo.as_deref(),
        Some("https://evil.example.com/realms/test")
    );
    assert_eq!(
        result.errors,
        vec![format!(
            "issuer: discovery document says \"https://evil.example.com/realms/test\" but spec.oidc.issuer is {:?}",
            stub.issuer()
        )]
    );
}

#[tokio::test]
async fn alg_none_fails() {
    let stub = stub().await;
    stub.set(|b| b.algs = vec!["RS256".to_owned(), "none".to_owned()]);
    let result = check_oidc(&client(loopback_policy(&stub)), &stub.issuer()).await;
    assert!(!oidc_passed(&result));
    assert!(result.jwks_reachable, "{result:?}");
    assert!(
        result.errors.iter().any(|e| e.contains("includes \"none\"")),
        "{result:?}"
    );
}

#[tokio::test]
async fn empty_jwks_fails() {
    let stub = stub().await;
    stub.set(|b| b.jwks_keys.clear());
    let result = check_oidc(&client(loopback_policy(&stub)), &stub.issuer()).await;
    assert!(!oidc_passed(&result));
    assert!(result.jwks_reachable);
    assert!(result.current_kids.is_empty());
    assert_eq!(result.errors, vec!["jwks_uri: no keys"]);
}

#[tokio::test]
async fn jwks_error_status_fails() {
    let stub = stub().await;
    stub.set(|b| b.jwks_status = 503);
    let result = check_oidc(&client(loopback_policy(&stub)), &stub.issuer()).await;
    assert!(!oidc_passed(&result));
    assert!(!result.jwks_reachable);
    assert_eq!(result.errors, vec!["jwks_uri: the IdP answered HTTP 503"]);
}

#[tokio::test]
async fn discovery_error_status_fails() {
    let stub = stub().await;
    stub.set(|b| b.discovery_status = 500);
    let result = check_oidc(&client(loopback_policy(&stub)), &stub.issuer()).await;
    assert!(!result.discovery_succeeded);
    assert!(!oidc_passed(&result));
    assert_eq!(result.errors.len(), 1);
    assert!(result.errors[0].contains("HTTP 500"), "{result:?}");
    assert_eq!(stub.hits(JWKS_PATH), 0);
}

#[tokio::test]
async fn jwks_uri_goes_through_the_same_policy() {
    let stub = stub().await;
    let client = client(loopback_policy(&stub));
    for (uri, reason) in [
        (
            "https://169.254.169.254/latest/meta-data/".to_owned(),
            "AddressNotAllowed",
        ),
        (stub.jwks_url().replace("https://", "http://"), "InsecureUrl"),
    ] {
        stub.set(|b| b.jwks_uri_override = Some(uri.clone()));
        let result = check_oidc(&client, &stub.issuer()).await;
        assert!(!oidc_passed(&result));
        assert!(!result.jwks_reachable);
        assert_eq!(result.errors.len(), 1, "{result:?}");
        assert!(
            result.errors[0].starts_with(&format!("jwks_uri: {reason}: ")),
            "{uri}: {result:?}"
        );
    }
    assert_eq!(stub.hits(JWKS_PATH), 0);
}

#[tokio::test]
async fn loopback_is_refused_unless_allowed() {
    let stub = stub().await;
    let strict = client(OutboundPolicy {
        extra_roots_pem: vec![stub.ca_pem().to_owned()],
        ..OutboundPolicy::default()
    });
    let err = strict.get(&stub.discovery_url()).await.expect_err("127.0.0.1 refused");
    assert_eq!(err.reason(), "AddressNotAllowed");
    assert!(
        matches!(
            err,
            OutboundError::AddressNotAllowed {
                class: AddressClass::Loopback,
                ..
            }
        ),
        "{err:?}"
    );

    let result = check_oidc(&strict, &stub.issuer()).await;
    assert!(!result.discovery_succeeded);
    assert!(
        result.errors[0].starts_with("discovery: AddressNotAllowed: "),
        "{result:?}"
    );
    assert_eq!(stub.hits(DISCOVERY_PATH), 0);
}

#[tokio::test]
async fn a_name_resolving_to_loopback_is_refused_after_resolution() {
    let stub = stub().await;
    let policy = OutboundPolicy {
        extra_roots_pem: vec![stub.ca_pem().to_owned()],
        ..OutboundPolicy::default()
    };
    // The URL check passes (a name, no allowlist); only resolution reveals loopback.
    policy
        .check_url(&stub.localhost_issuer())
        .expect("a host name passes the URL check");
    let result = check_oidc(&client(policy), &stub.localhost_issuer()).await;
    assert!(!result.discovery_succeeded);
    assert_eq!(result.errors.len(), 1);
    // getaddrinfo may answer 127.0.0.1 or ::1 first; either is loopback.
    assert!(
        result.errors[0].starts_with("discovery: AddressNotAllowed: localhost resolves to ")
            && result.errors[0].contains("a loopback address"),
        "{result:?}"
    );
    assert_eq!(stub.hits(DISCOVERY_PATH), 0);

    // Allowed, the same name works: the vetted addresses are the ones connected to.
    let result = check_oidc(&client(loopback_policy(&stub)), &stub.localhost_issuer()).await;
    assert!(oidc_passed(&result), "{result:?}");
}

#[tokio::test]
async fn plain_http_is_refused() {
    let stub = stub().await;
    let err = client(loopback_policy(&stub))
        .get(&stub.discovery_url().replace("https://", "http://"))
        .await
        .expect_err("http refused");
    assert_eq!(err.reason(), "InsecureUrl");
}

#[tokio::test]
async fn allowlist_is_enforced() {
    let stub = stub().await;
    let miss = client(OutboundPolicy {
        allowed_hosts: vec!["idp.example.com".to_owned(), "*.example.com".to_owned()],
        ..loopback_policy(&stub)
    });
    let err = miss.get(&stub.discovery_url()).await.expect_err("not listed");
    assert_eq!(err.reason(), "HostNotAllowed");
    assert_eq!(err.to_string(), "host 127.0.0.1 is not in the outbound allowlist");

    let hit = client(OutboundPolicy {
        allowed_hosts: vec!["127.0.0.1".to_owned()],
        ..loopback_policy(&stub)
    });
    let fetched = hit.get(&stub.discovery_url()).await.expect("listed");
    assert_eq!(fetched.status, 200);
    assert_eq!(fetched.content_type.as_deref(), Some("application/json"));
    assert_eq!(stub.hits(DISCOVERY_PATH), 1);
}

#[tokio::test]
async fn a_name_resolving_to_the_metadata_endpoint_is_refused() {
    let lookup = Arc::new(MapLookup::with("metadata.internal.test", &[v4(169, 254, 169, 254)]));
    // Even the most permissive policy keeps the metadata endpoint closed.
    let client = client(OutboundPolicy {
        allow_loopback: true,
        allow_private: true,
        ..OutboundPolicy::default()
    })
    .with_lookup(lookup.clone())
    .expect("client with the test lookup");
    let err = client
        .get("https://metadata.internal.test/latest/meta-data/iam/security-credentials/")
        .await
        .expect_err("metadata refused");
    assert_eq!(
        err,
        OutboundError::AddressNotAllowed {
            host: "metadata.internal.test".to_owned(),
            addr: v4(169, 254, 169, 254),
            class: AddressClass::Metadata,
        }
    );
    assert!(!err.to_string().contains("security-credentials"), "{err}");
    assert_eq!(lookup.lookups.load(Ordering::SeqCst), 1);
    // vet() judges a URL stored for later (a webhook endpoint) the same way, without connecting.
    let vetted = client
        .vet("https://metadata.internal.test/hook")
        .await
        .expect_err("refused");
    assert!(
        vetted.is_policy_refusal() && vetted.reason() == "AddressNotAllowed",
        "{vetted}"
    );
    assert_eq!(lookup.lookups.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn vet_passes_a_public_name_and_leaves_unresolvable_names_to_the_caller() {
    let lookup = Arc::new(MapLookup::with("hooks.public.test", &[v4(93, 184, 215, 14)]));
    let client = client(OutboundPolicy::default())
        .with_lookup(lookup)
        .expect("client with the test lookup");
    assert_eq!(client.vet("https://hooks.public.test/x").await, Ok(()));
    let unresolved = client
        .vet("https://nowhere.public.test/x")
        .await
        .expect_err("does not resolve");
    assert!(
        !unresolved.is_policy_refusal() && unresolved.is_transient(),
        "{unresolved}"
    );
    let literal = client.vet("https://127.0.0.1/x").await.expect_err("loopback literal");
    assert!(literal.is_policy_refusal(), "{literal}");
    let plain = client.vet("http://hooks.public.test/x").await.expect_err("plain http");
    assert_eq!(plain.reason(), "InsecureUrl");
}

#[tokio::test]
async fn a_name_with_any_internal_address_is_refused() {
    let lookup = Arc::new(MapLookup::with("mixed.test", &[v4(93, 184, 215, 14), v4(10, 0, 0, 7)]));
    let client = client(OutboundPolicy::default())
        .with_lookup(lookup)
        .expect("client with the test lookup");
    let err = client
        .get("https://mixed.test/")
        .await
        .expect_err("mixed answers refused");
    assert!(
        matches!(
            err,
            OutboundError::AddressNotAllowed {
                class: AddressClass::Private,
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn the_test_lookup_is_what_the_client_connects_with() {
    let stub = stub().await;
    let lookup = Arc::new(MapLookup::with("localhost", &[v4(127, 0, 0, 1)]));
    let client = client(loopback_policy(&stub))
        .with_lookup(lookup.clone())
        .expect("client with the test lookup");
    let result = check_oidc(&client, &stub.localhost_issuer()).await;
    assert!(oidc_passed(&result), "{result:?}");
    assert!(lookup.lookups.load(Ordering::SeqCst) >= 1);
}

#[tokio::test]
async fn metadata_literal_is_refused() {
    let client = client(OutboundPolicy {
        allow_loopback: true,
        allow_private: true,
        ..OutboundPolicy::default()
    });
    for url in [
        "https://169.254.169.254/",
        "https://[::ffff:169.254.169.254]/",
        "https://[fd00:ec2::254]/",
    ] {
        let err = client.get(url).await.expect_err(url);
        assert_eq!(err.reason(), "AddressNotAllowed", "{url}");
    }
}

#[tokio::test]
async fn untrusted_certificate_fails_tls() {
    let stub = stub().await;
    let client = client(OutboundPolicy {
        allow_loopback: true,
        ..OutboundPolicy::default()
    });
    let err = client.get(&stub.discovery_url()).await.expect_err("unknown CA");
    assert_eq!(err.reason(), "TlsFailed", "{err:?}");
    assert!(err.to_string().contains("certificate"), "{err}");
    // Someone else's CA does not help either.
    let other = stub_other_ca().await;
    let client = OutboundClient::new(OutboundPolicy {
        allow_loopback: true,
        extra_roots_pem: vec![other],
        ..OutboundPolicy::default()
    })
    .expect("client");
    let err = client.get(&stub.discovery_url()).await.expect_err("wrong CA");
    assert_eq!(err.reason(), "TlsFailed", "{err:?}");
}

async fn stub_other_ca() -> String {
    StubIdp::start().await.expect("second stub").ca_pem().to_owned()
}

#[tokio::test]
async fn redirects_are_checked_hop_by_hop() {
    let stub = stub().await;
    let client = client(loopback_policy(&stub));
    let base = stub.base_url();
    stub.set(|b| {
        b.redirects
            .insert("/to-discovery".to_owned(), format!("{base}{DISCOVERY_PATH}"));
        b.redirects.insert(
            "/to-http".to_owned(),
            format!("{}{DISCOVERY_PATH}", base.replace("https://", "http://")),
        );
        b.redirects
            .insert("/to-metadata".to_owned(), "https://169.254.169.254/latest/".to_owned());
        for hop in 0..5 {
            b.redirects
                .insert(format!("/loop{hop}"), format!("{base}/loop{}", hop + 1));
        }
    });

    let fetched = client.get(&format!("{base}/to-discovery")).await.expect("one redirect");
    assert_eq!(fetched.status, 200);
    assert_eq!(stub.hits(DISCOVERY_PATH), 1);

    let err = client.get(&format!("{base}/to-http")).await.expect_err("to http");
    assert_eq!(err.reason(), "InsecureUrl");
    let err = client
        .get(&format!("{base}/to-metadata"))
        .await
        .expect_err("to metadata");
    assert_eq!(err.reason(), "AddressNotAllowed");
    let err = client.get(&format!("{base}/loop0")).await.expect_err("too many");
    assert_eq!(err.reason(), "TooManyRedirects");
    // The original request and three followed hops; the fourth redirect is refused.
    assert_eq!(stub.hits("/loop3"), 1);
    assert_eq!(stub.hits("/loop4"), 0);
    assert_eq!(stub.hits(DISCOVERY_PATH), 1);

    // POST never follows: the caller sees the redirect.
    let fetched = client
        .post(&format!("{base}/to-metadata"), &[], b"{}".to_vec())
        .await
        .expect("redirect returned");
    assert_eq!(fetched.status, 302);
}

#[tokio::test]
async fn post_sends_headers_and_body() {
    let stub = stub().await;
    let client = client(loopback_policy(&stub));
    let headers = vec![
        ("Content-Type".to_owned(), "application/json".to_owned()),
        ("X-Countersign-Signature".to_owned(), "sha256=abc".to_owned()),
    ];
    let fetched = client
        .post(&format!("{}/hook", stub.base_url()), &headers, b"{}".to_vec())
        .await
        .expect("post");
    assert_eq!(fetched.status, 404);
    assert!(!fetched.is_success());
    assert_eq!(stub.hits("/hook"), 1);

    let bad = vec![("X-Token".to_owned(), "secret\nvalue".to_owned())];
    let err = client
        .post(&format!("{}/hook", stub.base_url()), &bad, Vec::new())
        .await
        .expect_err("bad header value");
    assert_eq!(err.reason(), "InvalidRequest");
    assert!(!err.to_string().contains("secret"), "{err}");
}

#[tokio::test]
async fn slow_answers_time_out() {
    let stub = stub().await;
    stub.set(|b| b.response_delay = Duration::from_secs(5));
    let client = client(OutboundPolicy {
        timeout: Duration::from_millis(300),
        ..loopback_policy(&stub)
    });
    let err = client.get(&stub.discovery_url()).await.expect_err("slow");
    assert_eq!(err.reason(), "Timeout", "{err:?}");
}

#[tokio::test]
async fn large_bodies_are_refused() {
    let stub = stub().await;
    let client = client(OutboundPolicy {
        max_body_bytes: 64,
        ..loopback_policy(&stub)
    });
    let err = client.get(&stub.jwks_url()).await.expect_err("too large");
    assert_eq!(err.reason(), "BodyTooLarge", "{err:?}");
}

#[tokio::test]
async fn connection_refused_is_a_transport_failure() {
    let stub = stub().await;
    let url = stub.discovery_url();
    let client = client(loopback_policy(&stub));
    drop(stub);
    // Give the aborted server task a moment to release the port.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let err = client.get(&url).await.expect_err("stub stopped");
    assert_eq!(err.reason(), "TransportFailed", "{err:?}");
    assert!(!err.to_string().contains(".well-known"), "{err}");
    assert!(err.is_transient());
}

#[tokio::test]
async fn saml_metadata_matches() {
    let stub = stub().await;
    let result = check_saml(
        &client(loopback_policy(&stub)),
        &stub.metadata_url(),
        &stub.saml_entity_id(),
        &stub.sso_url(),
    )
    .await;
    assert!(saml_passed(&result), "{result:?}");
    assert_eq!(result.entity_id_echo, Some(stub.saml_entity_id()));
    assert!(result.sso_url_listed);
}

#[tokio::test]
async fn saml_entity_id_override_fails() {
    let stub = stub().await;
    stub.set(|b| b.saml_entity_id_override = Some("https://evil.example/idp".to_owned()));
    let client = client(loopback_policy(&stub));
    let result = check_saml(&client, &stub.metadata_url(), &stub.saml_entity_id(), &stub.sso_url()).await;
    assert!(!saml_passed(&result));
    assert!(result.metadata_fetched);
    assert_eq!(result.entity_id_echo.as_deref(), Some("https://evil.example/idp"));
    assert!(result.errors[0].starts_with("entityID: metadata says"), "{result:?}");

    stub.set(|b| b.metadata_status = 500);
    let result = check_saml(&client, &stub.metadata_url(), &stub.saml_entity_id(), &stub.sso_url()).await;
    assert!(!result.metadata_fetched);
    assert_eq!(result.errors, vec!["metadataUrl: the IdP answered HTTP 500"]);
}

#[tokio::test]
async fn saml_metadata_url_is_policed() {
    let stub = stub().await;
    let strict = client(OutboundPolicy {
        extra_roots_pem: vec![stub.ca_pem().to_owned()],
        ..OutboundPolicy::default()
    });
    let result = check_saml(&strict, &stub.metadata_url(), &stub.saml_entity_id(), &stub.sso_url()).await;
    assert!(!saml_passed(&result));
    assert!(
        result.errors[0].starts_with("metadataUrl: AddressNotAllowed: "),
        "{result:?}"
    );
}
