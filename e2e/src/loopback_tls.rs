//! What the loopback HTTPS test doubles ([`crate::stub_idp`],
//! [`crate::webhook_receiver`]) share: a throwaway CA with a serving
//! certificate for `localhost` and `127.0.0.1`, and an accept loop.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

/// A client that connects and never finishes the handshake must not keep a task forever.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

fn distinguished_name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

/// A fresh CA (returned as PEM) named `{name}-ca` and an acceptor serving a
/// certificate it issued (named `name`) for `localhost` and `127.0.0.1`.
pub(crate) fn tls_acceptor(name: &str) -> anyhow::Result<(String, TlsAcceptor)> {
    let ca_key = KeyPair::generate().context("generating the test CA key")?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.distinguished_name = distinguished_name(&format!("{name}-ca"));
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params.not_before = rcgen::date_time_ymd(2000, 1, 1);
    ca_params.not_after = rcgen::date_time_ymd(2099, 12, 31);
    let ca_cert = ca_params.self_signed(&ca_key).context("self-signing the test CA")?;
    let ca_pem = ca_cert.pem();
    let issuer = Issuer::new(ca_params, ca_key);

    let key = KeyPair::generate().context("generating the serving key")?;
    let mut params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .context("serving certificate names")?;
    params.distinguished_name = distinguished_name(name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = rcgen::date_time_ymd(2000, 1, 1);
    params.not_after = rcgen::date_time_ymd(2099, 12, 31);
    let cert = params
        .signed_by(&key, &issuer)
        .context("signing the serving certificate")?;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .context("TLS server configuration")?;
    Ok((ca_pem, TlsAcceptor::from(Arc::new(config))))
}

/// A listener on a free port of `127.0.0.1`, and that port.
pub(crate) async fn bind_loopback(what: &str) -> anyhow::Result<(TcpListener, u16)> {
    let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .await
        .with_context(|| format!("binding the {what}'s port"))?;
    let port = listener
        .local_addr()
        .with_context(|| format!("the {what}'s local address"))?
        .port();
    Ok((listener, port))
}

/// Accepts connections until aborted; handshakes run in their own tasks so one stalled client
/// cannot hold up the others.
pub(crate) async fn serve(listener: TcpListener, acceptor: TlsAcceptor, app: Router) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((tcp, _peer)) = accepted else {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let acceptor = acceptor.clone();
                let service = TowerToHyperService::new(app.clone());
                connections.spawn(async move {
                    // Clients that refuse our certificate end here; that is expected in tests.
                    let Ok(Ok(tls)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await else {
                        return;
                    };
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}
