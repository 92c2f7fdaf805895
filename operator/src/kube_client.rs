//! The operator's connection to the Kubernetes API server.
//!
//! kube's default client leaves Nagle's algorithm on. A request on a warm
//! connection goes out in one write and does not notice, but the first
//! request on a new TLS connection is written right after the handshake's
//! last message: Nagle holds it until the API server acknowledges that
//! message, and the server delays its acknowledgement (40 ms on Linux),
//! since it has nothing to send back. Both ends drop a connection idle for
//! 90 s, so after a quiet spell the operator's next status write paid those
//! 40 ms. This client is kube's stack (TLS, timeouts, the retry of 429, 503
//! and 504 with back-off, credentials, base URI, extra headers) on sockets
//! with `TCP_NODELAY`.

use hyper_timeout::TimeoutConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kube::client::ConfigExt as _;
use kube::client::retry::RetryPolicy;
use kube::{Client, Config};
use tower::retry::RetryLayer;
use tower::{BoxError, ServiceBuilder};

/// A client for the cluster kube would pick (in-cluster ServiceAccount,
/// `KUBECONFIG`, `~/.kube/config`), sending without Nagle's delay.
pub async fn infer() -> Result<Client, kube::Error> {
    let config = Config::infer().await.map_err(kube::Error::InferConfig)?;
    from_config(config)
}

/// A client for `config`, sending without Nagle's delay. A configuration that
/// goes through a proxy gets kube's own client, which knows the proxy
/// protocols.
pub fn from_config(config: Config) -> Result<Client, kube::Error> {
    if config.proxy_url.is_some() {
        return Client::try_from(config);
    }
    let mut tcp = HttpConnector::new();
    // The connector is wrapped in TLS below; `https` URLs must pass through it.
    tcp.enforce_http(false);
    tcp.set_nodelay(true);
    let mut connector = TimeoutConnector::new(config.rustls_https_connector_with_connector(tcp)?);
    connector.set_connect_timeout(config.connect_timeout);
    connector.set_read_timeout(config.read_timeout);
    connector.set_write_timeout(config.write_timeout);
    connector.set_reset_reader_on_write(config.reset_reader_on_write);
    let http = hyper_util::client::legacy::Builder::new(TokioExecutor::new()).build(connector);
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        // API priority and fairness answers 429 with a Retry-After: honoured.
        .option_layer(
            config
                .default_retry
                .then(|| RetryLayer::new(RetryPolicy::server_retry())),
        )
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .map_err(BoxError::from)
        .service(http);
    Ok(Client::new(service, config.default_namespace))
}
