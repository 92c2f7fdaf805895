//! The DNS resolver that vets every address a name resolves to before the client connects.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use super::policy::normalise_host;
use super::*;

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
pub(super) struct VettingResolver {
    pub(super) policy: Arc<OutboundPolicy>,
    pub(super) lookup: Arc<dyn NameLookup>,
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

pub(super) async fn vet_name(
    policy: &OutboundPolicy,
    lookup: &dyn NameLookup,
    host: &str,
) -> Result<Vec<IpAddr>, OutboundError> {
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
