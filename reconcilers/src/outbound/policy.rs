//! The outbound policy: what may be fetched, and its command-line and Helm form.

use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

use reqwest::Url;

use super::*;

/// What the operator may fetch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboundPolicy {
    /// Hosts that may be contacted. Empty means any host whose addresses pass the address
    /// rules. An entry is an exact host name (`idp.example.com`), an IP literal (`10.0.0.5`,
    /// `::1`), or `*.example.com`, which matches any subdomain at any depth but not
    /// `example.com` itself. Matching ignores case and a trailing dot; internationalised names
    /// must be given in their ASCII (`xn--`) form.
    pub allowed_hosts: Vec<String>,
    /// Allow loopback addresses (127.0.0.0/8, ::1). For tests and local development.
    pub allow_loopback: bool,
    /// Allow private addresses: RFC 1918, unique local fc00::/7 and shared 100.64.0.0/10 (used
    /// by some cluster networks), for identity providers running inside the cluster.
    /// Link-local addresses and cloud metadata endpoints stay refused even then: no identity
    /// provider lives there, and they are the classic target of request forgery.
    pub allow_private: bool,
    /// PEM CA certificates trusted in addition to the system roots (several per string are
    /// fine).
    pub extra_roots_pem: Vec<String>,
    /// Total time for one request: resolution, connection, TLS, redirects and the body.
    pub timeout: Duration,
    /// Largest response body accepted, in bytes.
    pub max_body_bytes: usize,
}

impl Default for OutboundPolicy {
    /// Any public host over HTTPS with the system roots; loopback and private addresses
    /// refused; 10 s timeout; 1 MiB body limit.
    fn default() -> Self {
        OutboundPolicy {
            allowed_hosts: Vec::new(),
            allow_loopback: false,
            allow_private: false,
            extra_roots_pem: Vec::new(),
            timeout: Duration::from_secs(10),
            max_body_bytes: 1024 * 1024,
        }
    }
}

impl OutboundPolicy {
    /// Checks the policy itself: allowlist entries well formed, timeout and body limit
    /// non-zero. ([`OutboundClient::new`] also checks the extra roots.)
    pub fn validate(&self) -> Result<(), OutboundError> {
        for (index, entry) in self.allowed_hosts.iter().enumerate() {
            if let Err(why) = validate_allowlist_entry(entry) {
                return Err(OutboundError::InvalidPolicy {
                    detail: format!("allowed_hosts[{index}] {:?}: {why}", safe(entry)),
                });
            }
        }
        if self.timeout.is_zero() {
            return Err(OutboundError::InvalidPolicy {
                detail: "timeout must be greater than zero".to_owned(),
            });
        }
        if self.max_body_bytes == 0 {
            return Err(OutboundError::InvalidPolicy {
                detail: "max_body_bytes must be greater than zero".to_owned(),
            });
        }
        Ok(())
    }

    /// Whether `host` (a name or IP literal, IPv6 with or without brackets) passes the
    /// allowlist.
    pub fn host_allowed(&self, host: &str) -> bool {
        self.allowed_hosts.is_empty() || self.allowed_hosts.iter().any(|pattern| host_matches(pattern, host))
    }

    /// Whether the policy lets the client connect to an address of this class.
    pub fn permits(&self, class: AddressClass) -> bool {
        match class {
            AddressClass::Public => true,
            AddressClass::Loopback => self.allow_loopback,
            AddressClass::Private => self.allow_private,
            AddressClass::LinkLocal | AddressClass::Metadata | AddressClass::Reserved => false,
        }
    }

    /// Whether the policy lets the client connect to `addr`.
    pub fn address_allowed(&self, addr: IpAddr) -> bool {
        self.permits(classify(addr))
    }

    /// Parses `url` and checks everything that can be checked without DNS: scheme,
    /// credentials, allowlist, and the address of an IP-literal host.
    pub fn check_url(&self, url: &str) -> Result<Url, OutboundError> {
        let parsed = Url::parse(url).map_err(|err| OutboundError::InvalidUrl {
            // The url crate's messages describe the problem without echoing the input.
            detail: safe(&err.to_string()),
        })?;
        self.check_parsed_url(&parsed)?;
        Ok(parsed)
    }

    /// [`OutboundPolicy::check_url`] for an already parsed URL (used for redirect hops).
    pub fn check_parsed_url(&self, url: &Url) -> Result<(), OutboundError> {
        if url.scheme() != "https" {
            return Err(OutboundError::InsecureUrl {
                detail: format!("scheme {:?} is not allowed, only https", safe(url.scheme())),
            });
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(OutboundError::InsecureUrl {
                detail: "the URL carries a user name or password".to_owned(),
            });
        }
        let Some(raw_host) = url.host_str() else {
            return Err(OutboundError::InvalidUrl {
                detail: "the URL has no host".to_owned(),
            });
        };
        let host = normalise_host(raw_host);
        if host.is_empty() {
            return Err(OutboundError::InvalidUrl {
                detail: "the URL has an empty host".to_owned(),
            });
        }
        if !self.host_allowed(&host) {
            return Err(OutboundError::HostNotAllowed { host: safe(&host) });
        }
        // The url crate normalises every IPv4 spelling (0x7f.1, 2130706433, ...) to dotted
        // form for https URLs, so parsing the host catches them all. Literals never reach the
        // resolver, so this is their only check.
        if let Ok(addr) = host.parse::<IpAddr>() {
            let class = classify(addr);
            if !self.permits(class) {
                return Err(OutboundError::AddressNotAllowed {
                    host: safe(&host),
                    addr,
                    class,
                });
            }
        }
        Ok(())
    }
}

/// Why an allowlist entry is malformed, if it is.
fn validate_allowlist_entry(entry: &str) -> Result<(), &'static str> {
    let entry = entry.trim();
    if entry.is_empty() {
        return Err("empty entry");
    }
    if entry.contains("://") || entry.contains('/') {
        return Err("a host name, not a URL");
    }
    if entry.chars().any(char::is_whitespace) {
        return Err("contains whitespace");
    }
    if normalise_host(entry).parse::<Ipv6Addr>().is_ok() {
        return Ok(());
    }
    if entry.contains(':') {
        return Err("a host name without a port");
    }
    let name = entry.strip_prefix("*.").unwrap_or(entry);
    if name.is_empty() || name.contains('*') {
        return Err("a wildcard is only allowed as a leading \"*.\" label");
    }
    Ok(())
}

/// Lowercases, drops IPv6 brackets and one trailing dot.
pub(super) fn normalise_host(host: &str) -> String {
    let host = host.trim();
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    let host = host.strip_suffix('.').unwrap_or(host);
    host.to_ascii_lowercase()
}

/// Whether `host` matches the allowlist entry `pattern` (see
/// [`OutboundPolicy::allowed_hosts`]).
pub fn host_matches(pattern: &str, host: &str) -> bool {
    let pattern = normalise_host(pattern);
    let host = normalise_host(host);
    if host.is_empty() {
        return false;
    }
    match pattern.strip_prefix('*') {
        // `suffix` keeps its leading dot, so `*.example.com` cannot match `badexample.com`.
        Some(suffix) if suffix.starts_with('.') && suffix.len() > 1 => {
            host.len() > suffix.len() && host.ends_with(suffix) && host.parse::<IpAddr>().is_err()
        }
        Some(_) => false,
        None => match (pattern.parse::<IpAddr>(), host.parse::<IpAddr>()) {
            // Compare addresses, not spellings (`::1` and `0:0::1`).
            (Ok(a), Ok(b)) => a == b,
            _ => pattern == host,
        },
    }
}
