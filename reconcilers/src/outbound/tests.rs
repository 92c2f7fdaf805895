//! Tests of the outbound client, its policy and its address checks.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use super::client::tls_config;
use super::*;

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

fn v6(text: &str) -> IpAddr {
    IpAddr::V6(text.parse().expect("test IPv6 literal"))
}

#[test]
fn classifies_addresses() {
    use AddressClass::*;
    let cases: Vec<(IpAddr, AddressClass)> = vec![
        (v4(8, 8, 8, 8), Public),
        (v4(1, 1, 1, 1), Public),
        (v4(127, 0, 0, 1), Loopback),
        (v4(127, 255, 255, 254), Loopback),
        (v4(10, 0, 0, 1), Private),
        (v4(172, 16, 0, 1), Private),
        (v4(172, 31, 255, 255), Private),
        (v4(172, 32, 0, 1), Public),
        (v4(172, 15, 0, 1), Public),
        (v4(192, 168, 1, 1), Private),
        (v4(100, 64, 0, 1), Private),
        (v4(100, 127, 255, 255), Private),
        (v4(100, 128, 0, 1), Public),
        (v4(100, 100, 100, 200), Metadata),
        (v4(169, 254, 169, 254), Metadata),
        (v4(169, 254, 170, 2), Metadata),
        (v4(169, 254, 1, 1), LinkLocal),
        (v4(0, 0, 0, 0), Reserved),
        (v4(0, 1, 2, 3), Reserved),
        (v4(255, 255, 255, 255), Reserved),
        (v4(224, 0, 0, 1), Reserved),
        (v4(239, 255, 255, 250), Reserved),
        (v4(240, 0, 0, 1), Reserved),
        (v4(192, 0, 2, 10), Reserved),
        (v4(198, 51, 100, 10), Reserved),
        (v4(203, 0, 113, 10), Reserved),
        (v4(198, 18, 0, 1), Reserved),
        (v4(198, 19, 255, 1), Reserved),
        (v4(198, 20, 0, 1), Public),
        (v4(192, 0, 0, 8), Reserved),
        (v4(192, 88, 99, 1), Reserved),
        (v6("2606:4700:4700::1111"), Public),
        (v6("2a00:1450:4001:82a::200e"), Public),
        (v6("::1"), Loopback),
        (v6("::"), Reserved),
        (v6("::ffff:127.0.0.1"), Loopback),
        (v6("::ffff:10.1.2.3"), Private),
        (v6("::ffff:169.254.169.254"), Metadata),
        (v6("::ffff:8.8.8.8"), Public),
        (v6("::127.0.0.1"), Reserved),
        (v6("fc00::1"), Private),
        (v6("fd12:3456::1"), Private),
        (v6("fd00:ec2::254"), Metadata),
        (v6("fe80::1"), LinkLocal),
        (v6("febf::1"), LinkLocal),
        (v6("fec0::1"), Reserved),
        (v6("ff02::1"), Reserved),
        (v6("2001:db8::1"), Reserved),
        (v6("2001::1"), Reserved),
        (v6("2001:2::1"), Reserved),
        (v6("3fff::1"), Reserved),
        (v6("64:ff9b::8.8.8.8"), Public),
        (v6("64:ff9b::10.0.0.1"), Reserved),
        (v6("64:ff9b::169.254.169.254"), Reserved),
        (v6("2002:0808:0808::1"), Public),
        (v6("2002:7f00:0001::1"), Reserved),
        (v6("2002:a9fe:a9fe::1"), Reserved),
        (v6("100::1"), Reserved),
    ];
    for (addr, want) in cases {
        assert_eq!(classify(addr), want, "{addr}");
    }
}

#[test]
fn policy_permits_by_class() {
    use AddressClass::*;
    let strict = OutboundPolicy::default();
    let loopback = OutboundPolicy {
        allow_loopback: true,
        ..OutboundPolicy::default()
    };
    let private = OutboundPolicy {
        allow_private: true,
        ..OutboundPolicy::default()
    };
    let all = OutboundPolicy {
        allow_loopback: true,
        allow_private: true,
        ..OutboundPolicy::default()
    };
    // (class, strict, loopback, private, both)
    let cases = [
        (Public, true, true, true, true),
        (Loopback, false, true, false, true),
        (Private, false, false, true, true),
        (LinkLocal, false, false, false, false),
        (Metadata, false, false, false, false),
        (Reserved, false, false, false, false),
    ];
    for (class, s, l, p, a) in cases {
        assert_eq!(strict.permits(class), s, "strict {class:?}");
        assert_eq!(loopback.permits(class), l, "loopback {class:?}");
        assert_eq!(private.permits(class), p, "private {class:?}");
        assert_eq!(all.permits(class), a, "both {class:?}");
    }
}

#[test]
fn matches_allowlist_entries() {
    let cases = [
        ("idp.example.com", "idp.example.com", true),
        ("idp.example.com", "IDP.Example.COM", true),
        ("idp.example.com", "idp.example.com.", true),
        ("IDP.example.com.", "idp.example.com", true),
        ("idp.example.com", "other.example.com", false),
        ("idp.example.com", "idp.example.com.evil.test", false),
        ("idp.example.com", "xidp.example.com", false),
        ("*.example.com", "idp.example.com", true),
        ("*.example.com", "a.b.example.com", true),
        ("*.example.com", "example.com", false),
        ("*.example.com", "badexample.com", false),
        ("*.example.com", "example.com.evil.test", false),
        ("*.example.com", ".example.com", false),
        ("*example.com", "badexample.com", false),
        ("*", "anything.test", false),
        ("10.0.0.5", "10.0.0.5", true),
        ("10.0.0.5", "10.0.0.6", false),
        ("::1", "[::1]", true),
        ("[0:0::1]", "::1", true),
        ("*.0.0.1", "127.0.0.1", false),
        ("idp.example.com", "", false),
    ];
    for (pattern, host, want) in cases {
        assert_eq!(host_matches(pattern, host), want, "{pattern:?} vs {host:?}");
    }
}

#[test]
fn empty_allowlist_allows_any_host() {
    let policy = OutboundPolicy::default();
    assert!(policy.host_allowed("anything.example"));
    let policy = OutboundPolicy {
        allowed_hosts: vec!["a.example".to_owned(), "*.b.example".to_owned()],
        ..OutboundPolicy::default()
    };
    assert!(policy.host_allowed("a.example"));
    assert!(policy.host_allowed("x.b.example"));
    assert!(!policy.host_allowed("b.example"));
    assert!(!policy.host_allowed("c.example"));
}

#[test]
fn validates_policies() {
    let with_hosts = |hosts: &[&str]| OutboundPolicy {
        allowed_hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
        ..OutboundPolicy::default()
    };
    for good in [
        &["idp.example.com"][..],
        &["*.example.com"],
        &["10.0.0.5", "::1", "[fe80::1]"],
        &[],
    ] {
        assert_eq!(with_hosts(good).validate(), Ok(()), "{good:?}");
    }
    for bad in [
        "",
        " ",
        "https://idp.example.com",
        "idp.example.com/path",
        "idp.example.com:443",
        "*",
        "*.",
        "a.*.com",
        "**.example.com",
        "idp example.com",
    ] {
        let err = with_hosts(&[bad]).validate().expect_err(bad);
        assert_eq!(err.reason(), "InvalidPolicy", "{bad:?}");
    }
    let zero_timeout = OutboundPolicy {
        timeout: Duration::ZERO,
        ..OutboundPolicy::default()
    };
    assert!(zero_timeout.validate().is_err());
    let zero_body = OutboundPolicy {
        max_body_bytes: 0,
        ..OutboundPolicy::default()
    };
    assert!(zero_body.validate().is_err());
}

#[test]
fn default_policy_is_documented_one() {
    let policy = OutboundPolicy::default();
    assert!(policy.allowed_hosts.is_empty());
    assert!(!policy.allow_loopback);
    assert!(!policy.allow_private);
    assert_eq!(policy.timeout, Duration::from_secs(10));
    assert_eq!(policy.max_body_bytes, 1 << 20);
}

#[test]
fn checks_urls_before_connecting() {
    let strict = OutboundPolicy::default();
    let listed = OutboundPolicy {
        allowed_hosts: vec!["idp.example.com".to_owned(), "*.corp.example".to_owned()],
        ..OutboundPolicy::default()
    };
    let loopback = OutboundPolicy {
        allow_loopback: true,
        ..OutboundPolicy::default()
    };
    // (policy, url, Ok or the reason)
    let cases: Vec<(&OutboundPolicy, &str, Result<(), &str>)> = vec![
        (&strict, "https://idp.example.com/realms/x", Ok(())),
        (&strict, "https://idp.example.com:8443/", Ok(())),
        (&strict, "HTTPS://IDP.EXAMPLE.COM/", Ok(())),
        (&strict, "http://idp.example.com/", Err("InsecureUrl")),
        (&strict, "ftp://idp.example.com/", Err("InsecureUrl")),
        (&strict, "file:///etc/passwd", Err("InsecureUrl")),
        (&strict, "https://user:pw@idp.example.com/", Err("InsecureUrl")),
        (&strict, "https://user@idp.example.com/", Err("InsecureUrl")),
        (&strict, "not a url", Err("InvalidUrl")),
        (&strict, "https://", Err("InvalidUrl")),
        (&strict, "", Err("InvalidUrl")),
        (&strict, "https://127.0.0.1/", Err("AddressNotAllowed")),
        (&strict, "https://127.1/", Err("AddressNotAllowed")),
        (&strict, "https://0x7f000001/", Err("AddressNotAllowed")),
        (&strict, "https://2130706433/", Err("AddressNotAllowed")),
        (&strict, "https://[::1]/", Err("AddressNotAllowed")),
        (&strict, "https://[::ffff:127.0.0.1]/", Err("AddressNotAllowed")),
        (
            &strict,
            "https://169.254.169.254/latest/meta-data/",
            Err("AddressNotAllowed"),
        ),
        (&strict, "https://[fd00:ec2::254]/", Err("AddressNotAllowed")),
        (&strict, "https://10.0.0.1/", Err("AddressNotAllowed")),
        (&strict, "https://0.0.0.0/", Err("AddressNotAllowed")),
        (&strict, "https://8.8.8.8/", Ok(())),
        (&loopback, "https://127.0.0.1:8443/", Ok(())),
        (&loopback, "https://[::1]:8443/", Ok(())),
        (&loopback, "https://169.254.169.254/", Err("AddressNotAllowed")),
        (&loopback, "http://127.0.0.1/", Err("InsecureUrl")),
        (&listed, "https://idp.example.com/", Ok(())),
        (&listed, "https://idp.example.com./", Ok(())),
        (&listed, "https://sso.corp.example/", Ok(())),
        (&listed, "https://evil.example/", Err("HostNotAllowed")),
        (&listed, "https://idp.example.com.evil.example/", Err("HostNotAllowed")),
        (&listed, "https://8.8.8.8/", Err("HostNotAllowed")),
    ];
    for (policy, url, want) in cases {
        let got = policy.check_url(url).map(|_| ()).map_err(|err| err.reason());
        assert_eq!(got, want, "{url:?}");
    }
}

#[test]
fn messages_name_the_host_not_the_path() {
    let err = OutboundPolicy::default()
        .check_url("https://10.0.0.1/hooks/secret-token?key=hunter2")
        .expect_err("private literal");
    let message = err.to_string();
    assert!(message.contains("10.0.0.1"), "{message}");
    assert!(message.contains("a private address"), "{message}");
    assert!(
        !message.contains("secret-token") && !message.contains("hunter2"),
        "{message}"
    );
    let err = OutboundPolicy::default()
        .check_url("http://idp.example.com/secret-token")
        .expect_err("plain http");
    assert!(!err.to_string().contains("secret-token"), "{err}");
}

#[test]
fn safe_cuts_and_cleans_external_text() {
    assert_eq!(safe("short"), "short");
    assert_eq!(safe("a\nb\tc"), "a b c");
    let long = "x".repeat(500);
    let cut = safe(&long);
    assert_eq!(cut.chars().count(), MAX_DETAIL_CHARS + 1);
    assert!(cut.ends_with('…'));
    let multibyte = "é".repeat(300);
    assert_eq!(safe(&multibyte).chars().count(), MAX_DETAIL_CHARS + 1);
}

#[test]
fn reasons_are_single_camel_case_words() {
    let host = "h".to_owned();
    let errors = [
        OutboundError::InvalidUrl { detail: String::new() },
        OutboundError::InsecureUrl { detail: String::new() },
        OutboundError::HostNotAllowed { host: host.clone() },
        OutboundError::AddressNotAllowed {
            host: host.clone(),
            addr: v4(127, 0, 0, 1),
            class: AddressClass::Loopback,
        },
        OutboundError::ResolveFailed {
            host: host.clone(),
            detail: String::new(),
        },
        OutboundError::Timeout { host: host.clone() },
        OutboundError::TlsFailed {
            host: host.clone(),
            detail: String::new(),
        },
        OutboundError::TransportFailed {
            host: host.clone(),
            detail: String::new(),
        },
        OutboundError::TooManyRedirects { host: host.clone() },
        OutboundError::BodyTooLarge { host, limit: 1 },
        OutboundError::InvalidRequest { detail: String::new() },
        OutboundError::InvalidPolicy { detail: String::new() },
    ];
    let mut seen = std::collections::HashSet::new();
    for err in &errors {
        let reason = err.reason();
        assert!(
            reason.chars().next().is_some_and(|c| c.is_ascii_uppercase()),
            "{reason}"
        );
        assert!(reason.chars().all(|c| c.is_ascii_alphanumeric()), "{reason}");
        assert!(seen.insert(reason), "duplicate {reason}");
    }
}

#[test]
fn rejects_malformed_extra_roots() {
    let err = tls_config(&["not a certificate".to_owned()]).expect_err("garbage PEM");
    assert_eq!(err.reason(), "InvalidPolicy");
    assert!(err.to_string().contains("extra_roots_pem[0]"), "{err}");
}
