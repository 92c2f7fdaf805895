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

mod address;
mod client;
mod error;
mod policy;
mod resolver;
#[cfg(test)]
mod tests;

pub use address::{AddressClass, classify};
pub use client::{Fetched, OutboundClient, SystemRoots, system_roots};
pub use error::OutboundError;
pub(crate) use error::safe;
pub use policy::{OutboundPolicy, host_matches};
pub use resolver::{LookupFuture, NameLookup, SystemLookup};

/// How many redirects [`OutboundClient::get`] follows before giving up.
pub const MAX_REDIRECTS: usize = 3;

/// The longest piece of external text (host names, peer error messages, content types) an
/// error message or [`Fetched::content_type`] carries.
pub const MAX_DETAIL_CHARS: usize = 200;
