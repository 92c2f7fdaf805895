//! The one HTTPS client for every URL the operator fetches from outside the cluster (OIDC
//! discovery, JWKS, SAML metadata, webhook test deliveries).
//!
//! Those URLs come from tenants' custom resources, so each request is a potential server-side
//! request forgery. [`OutboundClient`] enforces an [`OutboundPolicy`]:
//!
//! - `https://` only, no credentials in the URL;
//! - the host must match the allowlist (when one is set);
//! - every address a name resolves to must be public, unless the policy allows loopback or
//!   private ranges; IP-literal hosts are checked the same way before connecting;
//! - timeouts and a response size limit.
//!
//! The address check runs inside the client's DNS resolver ([`reqwest::dns::Resolve`]), so the
//! connection goes to exactly the addresses that were vetted: a name cannot resolve to a public
//! address for a check and to a private one for the connection (DNS rebinding). If any address
//! of a name is refused the whole name is, because a mix of public and internal answers is
//! what a rebinding attack looks like.
//!
//! Redirects: [`OutboundClient::get`] follows at most [`MAX_REDIRECTS`], each hop checked like
//! the first URL (scheme, credentials, allowlist, IP literals here; resolved addresses in the
//! resolver). [`OutboundClient::post`] never follows redirects: a webhook delivery that is
//! redirected reports the 3xx to the caller rather than re-sending the body elsewhere.
//!
//! Error messages are meant for Kubernetes status: they name the host (never the path or query,
//! which may hold tokens), never include response bodies, and cut anything external to
//! [`MAX_DETAIL_CHARS`] characters.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use reqwest::redirect;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// How many redirects [`OutboundClient::get`] follows before giving up.
pub const MAX_REDIRECTS: usize = 3;

/// The longest piece of external text (host names, peer error messages, content types) an
/// error message or [`Fetched::content_type`] carries.
pub const MAX_DETAIL_CHARS: usize = 200;

const USER_AGENT: &str = concat!("countersign/", env!("CARGO_PKG_VERSION"));

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
fn normalise_host(host: &str) -> String {
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

/// What kind of network an address belongs to, for the policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AddressClass {
    /// Globally routable unicast.
    Public,
    /// 127.0.0.0/8, ::1.
    Loopback,
    /// 10/8, 172.16/12, 192.168/16, 100.64/10 (shared address space), fc00::/7.
    Private,
    /// 169.254/16, fe80::/10.
    LinkLocal,
    /// Cloud instance metadata endpoints (169.254.169.254, 169.254.170.2, fd00:ec2::254,
    /// 100.100.100.200), whatever range they sit in.
    Metadata,
    /// Everything that is no host to fetch from: unspecified, "this network", broadcast,
    /// multicast, documentation, benchmarking, reserved and IETF protocol ranges, and
    /// translation prefixes that embed a non-public IPv4 address.
    Reserved,
}

impl AddressClass {
    /// Words for error messages: "a loopback address", ...
    pub fn describe(self) -> &'static str {
        match self {
            AddressClass::Public => "a public address",
            AddressClass::Loopback => "a loopback address",
            AddressClass::Private => "a private address",
            AddressClass::LinkLocal => "a link-local address",
            AddressClass::Metadata => "a cloud metadata endpoint",
            AddressClass::Reserved => "a special-purpose address",
        }
    }
}

impl std::fmt::Display for AddressClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.describe())
    }
}

/// Classifies an address (IPv4-mapped IPv6 addresses as the IPv4 address they carry).
pub fn classify(addr: IpAddr) -> AddressClass {
    match addr {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(addr: Ipv4Addr) -> AddressClass {
    match addr.octets() {
        [169, 254, 169, 254] | [169, 254, 170, 2] | [100, 100, 100, 200] => AddressClass::Metadata,
        [127, ..] => AddressClass::Loopback,
        [10, ..] | [192, 168, ..] => AddressClass::Private,
        [172, second, ..] if (16..=31).contains(&second) => AddressClass::Private,
        [100, second, ..] if (64..=127).contains(&second) => AddressClass::Private,
        [169, 254, ..] => AddressClass::LinkLocal,
        // 0/8 "this network" (incl. 0.0.0.0), IETF protocol assignments, documentation,
        // benchmarking, the old 6to4 relay anycast, and multicast + 240/4 + broadcast.
        [0, ..]
        | [192, 0, 0, _]
        | [192, 0, 2, _]
        | [198, 51, 100, _]
        | [203, 0, 113, _]
        | [198, 18 | 19, ..]
        | [192, 88, 99, _] => AddressClass::Reserved,
        [first, ..] if first >= 224 => AddressClass::Reserved,
        _ => AddressClass::Public,
    }
}

/// A prefix that embeds an IPv4 address is only as public as that address.
fn embedded_v4(v4: Ipv4Addr) -> AddressClass {
    match classify_v4(v4) {
        AddressClass::Public => AddressClass::Public,
        _ => AddressClass::Reserved,
    }
}

fn classify_v6(addr: Ipv6Addr) -> AddressClass {
    if addr.is_unspecified() {
        return AddressClass::Reserved;
    }
    if addr.is_loopback() {
        return AddressClass::Loopback;
    }
    if let Some(v4) = addr.to_ipv4_mapped() {
        return classify_v4(v4);
    }
    let s = addr.segments();
    let o = addr.octets();
    match s {
        [0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254] => AddressClass::Metadata,
        [first, ..] if first & 0xfe00 == 0xfc00 => AddressClass::Private,
        [first, ..] if first & 0xffc0 == 0xfe80 => AddressClass::LinkLocal,
        // NAT64 well-known prefix 64:ff9b::/96.
        [0x0064, 0xff9b, 0, 0, 0, 0, _, _] => embedded_v4(Ipv4Addr::new(o[12], o[13], o[14], o[15])),
        // 6to4 2002::/16 carries the IPv4 address in bits 16..48.
        [0x2002, ..] => embedded_v4(Ipv4Addr::new(o[2], o[3], o[4], o[5])),
        // 2001::/23 (Teredo, benchmarking, ORCHID, ...), 2001:db8::/32 and 3fff::/20
        // documentation.
        [0x2001, second, ..] if second < 0x0200 || second == 0x0db8 => AddressClass::Reserved,
        [0x3fff, second, ..] if second < 0x1000 => AddressClass::Reserved,
        [first, ..] if first & 0xe000 == 0x2000 => AddressClass::Public,
        // Outside global unicast 2000::/3: multicast, site-local, IPv4-compatible, discard, ...
        _ => AddressClass::Reserved,
    }
}

/// `text` without control characters, cut to [`MAX_DETAIL_CHARS`] characters.
pub(crate) fn safe(text: &str) -> String {
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_DETAIL_CHARS)
        .collect();
    if text.chars().count() > MAX_DETAIL_CHARS {
        out.push('…');
    }
    out
}

/// Why an outbound request was refused or failed. Messages are safe to show in status.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OutboundError {
    /// The URL does not parse or has no host.
    #[error("invalid URL: {detail}")]
    InvalidUrl {
        /// What is wrong.
        detail: String,
    },
    /// Not `https://`, or credentials in the URL.
    #[error("insecure URL: {detail}")]
    InsecureUrl {
        /// What is wrong.
        detail: String,
    },
    /// The host does not match the allowlist.
    #[error("host {host} is not in the outbound allowlist")]
    HostNotAllowed {
        /// The refused host.
        host: String,
    },
    /// The host is, or resolves to, an address the policy refuses.
    #[error("{}", address_refusal(host, addr, *class))]
    AddressNotAllowed {
        /// The host as written in the URL.
        host: String,
        /// The refused address.
        addr: IpAddr,
        /// Its class.
        class: AddressClass,
    },
    /// The name did not resolve.
    #[error("could not resolve {host}: {detail}")]
    ResolveFailed {
        /// The host.
        host: String,
        /// The resolver's message.
        detail: String,
    },
    /// The request took longer than the policy's timeout.
    #[error("{host} did not answer in time")]
    Timeout {
        /// The host.
        host: String,
    },
    /// The TLS handshake failed (untrusted certificate, wrong name, protocol mismatch).
    #[error("TLS with {host} failed: {detail}")]
    TlsFailed {
        /// The host.
        host: String,
        /// The TLS library's message.
        detail: String,
    },
    /// Connecting or talking HTTP failed.
    #[error("request to {host} failed: {detail}")]
    TransportFailed {
        /// The host.
        host: String,
        /// The transport's messages.
        detail: String,
    },
    /// More than [`MAX_REDIRECTS`] redirects.
    #[error("{host} redirected more than {MAX_REDIRECTS} times")]
    TooManyRedirects {
        /// The host that sent the last redirect.
        host: String,
    },
    /// The body exceeds the policy's limit.
    #[error("the response from {host} is larger than {limit} bytes")]
    BodyTooLarge {
        /// The host.
        host: String,
        /// The limit.
        limit: usize,
    },
    /// A request header name or value is malformed.
    #[error("invalid request: {detail}")]
    InvalidRequest {
        /// What is wrong.
        detail: String,
    },
    /// The policy is malformed or the HTTP client could not be built from it.
    #[error("invalid outbound policy: {detail}")]
    InvalidPolicy {
        /// What is wrong.
        detail: String,
    },
}

fn address_refusal(host: &str, addr: &IpAddr, class: AddressClass) -> String {
    if host.parse::<IpAddr>().is_ok_and(|literal| literal == *addr) {
        format!("{host} is {class}, which the outbound policy refuses")
    } else {
        format!("{host} resolves to {addr}, {class}, which the outbound policy refuses")
    }
}

impl OutboundError {
    /// One CamelCase word for condition reasons and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            OutboundError::InvalidUrl { .. } => "InvalidUrl",
            OutboundError::InsecureUrl { .. } => "InsecureUrl",
            OutboundError::HostNotAllowed { .. } => "HostNotAllowed",
            OutboundError::AddressNotAllowed { .. } => "AddressNotAllowed",
            OutboundError::ResolveFailed { .. } => "ResolveFailed",
            OutboundError::Timeout { .. } => "Timeout",
            OutboundError::TlsFailed { .. } => "TlsFailed",
            OutboundError::TransportFailed { .. } => "TransportFailed",
            OutboundError::TooManyRedirects { .. } => "TooManyRedirects",
            OutboundError::BodyTooLarge { .. } => "BodyTooLarge",
            OutboundError::InvalidRequest { .. } => "InvalidRequest",
            OutboundError::InvalidPolicy { .. } => "InvalidPolicy",
        }
    }

    /// Whether the policy refused the URL itself: only a change of the URL or
    /// of the policy can help.
    pub fn is_policy_refusal(&self) -> bool {
        matches!(
            self,
            OutboundError::InvalidUrl { .. }
                | OutboundError::InsecureUrl { .. }
                | OutboundError::HostNotAllowed { .. }
                | OutboundError::AddressNotAllowed { .. }
        )
    }

    /// Whether retrying later can succeed without a change (the network, not the policy).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            OutboundError::ResolveFailed { .. } | OutboundError::Timeout { .. } | OutboundError::TransportFailed { .. }
        )
    }
}

/// A response: any status (non-2xx is not an error here; the caller decides).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fetched {
    /// HTTP status code.
    pub status: u16,
    /// The `Content-Type` header, cut to [`MAX_DETAIL_CHARS`], if present and text.
    pub content_type: Option<String>,
    /// The body, at most [`OutboundPolicy::max_body_bytes`].
    pub body: Vec<u8>,
}

impl Fetched {
    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// The future [`NameLookup::lookup`] returns.
pub type LookupFuture = Pin<Box<dyn Future<Output = std::io::Result<Vec<IpAddr>>> + Send>>;

/// Resolves host names to addresses; the policy vets whatever it returns. The seam lets tests
/// map names to chosen addresses.
pub trait NameLookup: Send + Sync {
    /// All addresses of `host` (a DNS name, never an IP literal).
    fn lookup(&self, host: &str) -> LookupFuture;
}

/// The system resolver (`getaddrinfo` on a blocking thread, via tokio).
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemLookup;

impl NameLookup for SystemLookup {
    fn lookup(&self, host: &str) -> LookupFuture {
        let host = host.to_owned();
        Box::pin(async move {
            let addrs = tokio::net::lookup_host((host.as_str(), 0)).await?;
            Ok(addrs.map(|addr| addr.ip()).collect())
        })
    }
}

/// The reqwest resolver: looks the name up and hands reqwest only vetted addresses.
struct VettingResolver {
    policy: Arc<OutboundPolicy>,
    lookup: Arc<dyn NameLookup>,
}

impl Resolve for VettingResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = Arc::clone(&self.policy);
        let lookup = Arc::clone(&self.lookup);
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs = vet_name(&policy, lookup.as_ref(), &host).await?;
            // Port 0 tells reqwest to use the URL's port.
            let addrs: Addrs = Box::new(addrs.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}

async fn vet_name(policy: &OutboundPolicy, lookup: &dyn NameLookup, host: &str) -> Result<Vec<IpAddr>, OutboundError> {
    let normalised = normalise_host(host);
    // Already checked on the URL; repeated here because this is the last gate before connect.
    if !policy.host_allowed(&normalised) {
        return Err(OutboundError::HostNotAllowed {
            host: safe(&normalised),
        });
    }
    let addrs = lookup.lookup(host).await.map_err(|err| OutboundError::ResolveFailed {
        host: safe(&normalised),
        detail: safe(&err.to_string()),
    })?;
    if addrs.is_empty() {
        return Err(OutboundError::ResolveFailed {
            host: safe(&normalised),
            detail: "no addresses".to_owned(),
        });
    }
    for &addr in &addrs {
        let class = classify(addr);
        if !policy.permits(class) {
            return Err(OutboundError::AddressNotAllowed {
                host: safe(&normalised),
                addr,
                class,
            });
        }
    }
    Ok(addrs)
}

/// The policy-enforcing HTTPS client; see the [module docs](self). Cheap to clone.
#[derive(Clone)]
pub struct OutboundClient {
    inner: Arc<Inner>,
}

struct Inner {
    policy: Arc<OutboundPolicy>,
    lookup: Arc<dyn NameLookup>,
    tls: rustls::ClientConfig,
    /// Follows up to [`MAX_REDIRECTS`] vetted redirects.
    get: reqwest::Client,
    /// Never follows redirects.
    post: reqwest::Client,
}

impl std::fmt::Debug for OutboundClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboundClient")
            .field("policy", &self.inner.policy)
            .finish_non_exhaustive()
    }
}

impl OutboundClient {
    /// A client for `policy`, trusting the system roots plus the policy's extra roots and
    /// resolving names with the system resolver.
    ///
    /// Also installs ring as the process-wide rustls provider if none is installed yet. Our
    /// own clients never need it (they carry their provider), but cargo unifies reqwest's
    /// features across the process, and any other reqwest client built without a process
    /// default (say a plain-HTTP one in a test) would otherwise panic.
    pub fn new(policy: OutboundPolicy) -> Result<Self, OutboundError> {
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            // Losing a race to another installer is fine: some provider is then installed.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        policy.validate()?;
        let tls = tls_config(&policy.extra_roots_pem)?;
        Self::build(Arc::new(policy), tls, Arc::new(SystemLookup))
    }

    /// The same client resolving names with `lookup` instead (a test seam: make a name
    /// resolve to an internal address and watch it be refused).
    pub fn with_lookup(self, lookup: Arc<dyn NameLookup>) -> Result<Self, OutboundError> {
        Self::build(Arc::clone(&self.inner.policy), self.inner.tls.clone(), lookup)
    }

    fn build(
        policy: Arc<OutboundPolicy>,
        tls: rustls::ClientConfig,
        lookup: Arc<dyn NameLookup>,
    ) -> Result<Self, OutboundError> {
        let redirect_policy = {
            let policy = Arc::clone(&policy);
            redirect::Policy::custom(move |attempt| {
                // `previous` holds the original URL and every hop already followed.
                if attempt.previous().len() > MAX_REDIRECTS {
                    let host = safe(&normalise_host(attempt.url().host_str().unwrap_or_default()));
                    return attempt.error(OutboundError::TooManyRedirects { host });
                }
                match policy.check_parsed_url(attempt.url()) {
                    Ok(()) => attempt.follow(),
                    Err(err) => attempt.error(err),
                }
            })
        };
        let get = http_client(&policy, &lookup, &tls, redirect_policy)?;
        let post = http_client(&policy, &lookup, &tls, redirect::Policy::none())?;
        Ok(OutboundClient {
            inner: Arc::new(Inner {
                policy,
                lookup,
                tls,
                get,
                post,
            }),
        })
    }

    /// The policy this client enforces.
    pub fn policy(&self) -> &OutboundPolicy {
        &self.inner.policy
    }

    /// Judges `url` as a request to it would be judged, name resolution
    /// included, without connecting: for URLs stored for someone else to
    /// call later (a webhook endpoint), so a refused address is reported
    /// when it is declared.
    pub async fn vet(&self, url: &str) -> Result<(), OutboundError> {
        let parsed = self.inner.policy.check_url(url)?;
        let host = parsed.host_str().unwrap_or_default();
        // IP literals were judged by check_url; names are judged by what they resolve to.
        if normalise_host(host).parse::<IpAddr>().is_err() {
            vet_name(&self.inner.policy, self.inner.lookup.as_ref(), host).await?;
        }
        Ok(())
    }

    /// GET `url`, following up to [`MAX_REDIRECTS`] vetted redirects.
    pub async fn get(&self, url: &str) -> Result<Fetched, OutboundError> {
        let parsed = self.inner.policy.check_url(url)?;
        let host = safe(&normalise_host(parsed.host_str().unwrap_or_default()));
        let request = self.inner.get.get(parsed);
        self.execute(request, &host).await
    }

    /// POST `body` to `url` with `headers`; redirects are returned, not followed.
    pub async fn post(&self, url: &str, headers: &[(String, String)], body: Vec<u8>) -> Result<Fetched, OutboundError> {
        let parsed = self.inner.policy.check_url(url)?;
        let host = safe(&normalise_host(parsed.host_str().unwrap_or_default()));
        let mut request = self.inner.post.post(parsed).body(body);
        for (name, value) in headers {
            let header_name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| OutboundError::InvalidRequest {
                detail: format!("header name {:?} is not valid", safe(name)),
            })?;
            // The value may be a secret (a signature, a token): the message names the header only.
            let header_value = HeaderValue::from_str(value).map_err(|_| OutboundError::InvalidRequest {
                detail: format!("the value of header {header_name} is not valid"),
            })?;
            request = request.header(header_name, header_value);
        }
        self.execute(request, &host).await
    }

    async fn execute(&self, request: reqwest::RequestBuilder, host: &str) -> Result<Fetched, OutboundError> {
        let limit = self.inner.policy.max_body_bytes;
        let mut response = request.send().await.map_err(|err| map_reqwest_error(host, err))?;
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .map(safe);
        let too_large = || OutboundError::BodyTooLarge {
            host: host.to_owned(),
            limit,
        };
        if response
            .content_length()
            .is_some_and(|length| length > u64::try_from(limit).unwrap_or(u64::MAX))
        {
            return Err(too_large());
        }
        let mut body = Vec::new();
        // Read chunk by chunk so a lying or absent Content-Length cannot make us buffer more
        // than the limit.
        while let Some(chunk) = response.chunk().await.map_err(|err| map_reqwest_error(host, err))? {
            if body.len().saturating_add(chunk.len()) > limit {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Fetched {
            status,
            content_type,
            body,
        })
    }
}

fn http_client(
    policy: &Arc<OutboundPolicy>,
    lookup: &Arc<dyn NameLookup>,
    tls: &rustls::ClientConfig,
    redirects: redirect::Policy,
) -> Result<reqwest::Client, OutboundError> {
    let resolver = VettingResolver {
        policy: Arc::clone(policy),
        lookup: Arc::clone(lookup),
    };
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls.clone())
        .dns_resolver(resolver)
        .redirect(redirects)
        .https_only(true)
        // A proxy would resolve the name itself, past the vetting resolver.
        .no_proxy()
        // The Referer would leak the previous URL (path and query) to a redirect target.
        .referer(false)
        .timeout(policy.timeout)
        .user_agent(USER_AGENT)
        .build()
        .map_err(|err| OutboundError::InvalidPolicy {
            detail: safe(&err.without_url().to_string()),
        })
}

/// The system trust store as the outbound client loads it (`SSL_CERT_FILE` / `SSL_CERT_DIR`
/// when set, else the platform's usual bundle, e.g. `/etc/ssl/certs/ca-certificates.crt`).
pub struct SystemRoots {
    /// The certificates that parsed as trust anchors.
    pub store: rustls::RootCertStore,
    /// Certificates found but not usable as trust anchors.
    pub ignored: usize,
    /// Files or directories that could not be read.
    pub errors: Vec<String>,
}

/// Loads the system trust store every outbound HTTPS call trusts (besides a policy's
/// `extra_roots_pem`). Empty means no public OIDC provider or webhook endpoint can be reached:
/// `countersign check-schema` refuses that.
pub fn system_roots() -> SystemRoots {
    let mut store = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for err in &native.errors {
        tracing::debug!(error = %err, "skipping unreadable system CA certificates");
    }
    let (added, ignored) = store.add_parsable_certificates(native.certs);
    tracing::debug!(added, ignored, "loaded system CA certificates");
    SystemRoots {
        store,
        ignored,
        errors: native.errors.iter().map(ToString::to_string).collect(),
    }
}

/// A rustls client configuration with the ring provider, trusting the system roots plus
/// `extra_roots_pem`.
fn tls_config(extra_roots_pem: &[String]) -> Result<rustls::ClientConfig, OutboundError> {
    let mut roots = system_roots().store;
    for (index, pem) in extra_roots_pem.iter().enumerate() {
        let invalid = |why: String| OutboundError::InvalidPolicy {
            detail: format!("extra_roots_pem[{index}]: {}", safe(&why)),
        };
        let mut count = 0usize;
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            let cert = cert.map_err(|err| invalid(err.to_string()))?;
            roots.add(cert).map_err(|err| invalid(err.to_string()))?;
            count += 1;
        }
        if count == 0 {
            return Err(invalid("no PEM certificate found".to_owned()));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| OutboundError::InvalidPolicy {
            detail: safe(&err.to_string()),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

/// Maps a reqwest error to ours: our own refusals (from the resolver or the redirect policy)
/// come back as they were, then timeouts, TLS failures and everything else.
fn map_reqwest_error(host: &str, err: reqwest::Error) -> OutboundError {
    // Without the URL: its path and query may hold tokens.
    let err = err.without_url();
    let mut tls_detail: Option<String> = None;
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(&err);
    while let Some(error) = current {
        if let Some(ours) = error.downcast_ref::<OutboundError>() {
            return ours.clone();
        }
        if let Some(tls) = error.downcast_ref::<rustls::Error>() {
            tls_detail.get_or_insert_with(|| tls.to_string());
        }
        current = next_cause(error);
    }
    let host = host.to_owned();
    if err.is_timeout() {
        return OutboundError::Timeout { host };
    }
    if let Some(detail) = tls_detail {
        return OutboundError::TlsFailed {
            host,
            detail: safe(&detail),
        };
    }
    OutboundError::TransportFailed {
        host,
        detail: safe(&error_chain(&err)),
    }
}

/// The error `error` wraps. `io::Error::source` skips the error an `io::Error` wraps (it
/// returns that error's source), and TLS failures arrive as io errors nested in io errors, so
/// step into the wrapped error instead.
fn next_cause<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a (dyn std::error::Error + 'static)> {
    if let Some(inner) = error.downcast_ref::<std::io::Error>().and_then(std::io::Error::get_ref) {
        return Some(inner);
    }
    error.source()
}

/// The messages of `err` and its sources joined with ": ", skipping a message the previous one
/// already contains.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut current = Some(err);
    while let Some(error) = current {
        let message = error.to_string();
        if !parts.last().is_some_and(|last| last.contains(&message)) {
            parts.push(message);
        }
        current = error.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
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
}
