//! The policy-enforcing HTTPS client and the trust store it loads.

use std::net::IpAddr;
use std::sync::Arc;

use reqwest::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use reqwest::redirect;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use super::error::map_reqwest_error;
use super::policy::normalise_host;
use super::resolver::{VettingResolver, vet_name};
use super::*;

const USER_AGENT: &str = concat!("countersign/", env!("CARGO_PKG_VERSION"));

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

/// The policy-enforcing HTTPS client; see the [module docs](super). Cheap to clone.
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
pub(super) fn tls_config(extra_roots_pem: &[String]) -> Result<rustls::ClientConfig, OutboundError> {
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
