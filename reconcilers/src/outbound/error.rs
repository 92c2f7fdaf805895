//! Why an outbound request was refused or failed, in words safe for a status message.

use std::net::IpAddr;

use super::*;

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

/// Maps a reqwest error to ours: our own refusals (from the resolver or the redirect policy)
/// come back as they were, then timeouts, TLS failures and everything else.
pub(super) fn map_reqwest_error(host: &str, err: reqwest::Error) -> OutboundError {
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
