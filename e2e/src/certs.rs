//! Test PKI for the control plane, generated with rcgen.

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// A PEM certificate and its PEM (PKCS#8) private key.
#[derive(Clone, Debug)]
pub struct CertAndKey {
    /// The certificate, PEM encoded.
    pub cert_pem: String,
    /// The private key, PEM encoded (PKCS#8).
    pub key_pem: String,
}

/// Everything the control plane needs: a CA, the apiserver serving certificate, an admin client
/// certificate and the service-account token signing key pair. All keys are ECDSA P-256.
#[derive(Clone, Debug)]
pub struct Pki {
    /// The CA that issued the serving and client certificates (also the `--client-ca-file`).
    pub ca: CertAndKey,
    /// Serving certificate for `localhost`, `127.0.0.1` and the in-cluster service names.
    pub serving: CertAndKey,
    /// Client certificate with `CN=countersign-admin`, `O=system:masters`.
    pub admin: CertAndKey,
    /// Service-account token signing key, PEM (PKCS#8).
    pub service_account_key_pem: String,
    /// Service-account token verification (public) key, PEM (SPKI).
    pub service_account_public_pem: String,
}

/// The admin user's name (certificate common name).
pub const ADMIN_USER: &str = "countersign-admin";
/// The admin user's group (certificate organization); bound to `cluster-admin` by default RBAC.
pub const ADMIN_GROUP: &str = "system:masters";

fn distinguished_name(common_name: &str, organization: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    if let Some(org) = organization {
        dn.push(DnType::OrganizationName, org);
    }
    dn
}

fn validity(params: &mut CertificateParams) {
    params.not_before = rcgen::date_time_ymd(2000, 1, 1);
    params.not_after = rcgen::date_time_ymd(2099, 12, 31);
}

impl Pki {
    /// Generates a fresh PKI.
    pub fn generate() -> anyhow::Result<Pki> {
        let ca_key = KeyPair::generate().context("generating CA key")?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.distinguished_name = distinguished_name("countersign-e2e-ca", None);
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut ca_params);
        let ca_cert = ca_params.self_signed(&ca_key).context("self-signing CA certificate")?;
        let ca = CertAndKey {
            cert_pem: ca_cert.pem(),
            key_pem: ca_key.serialize_pem(),
        };
        let issuer = Issuer::new(ca_params, ca_key);

        let serving_key = KeyPair::generate().context("generating serving key")?;
        let mut serving_params = CertificateParams::new(vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "10.0.0.1".to_owned(),
            "kubernetes".to_owned(),
            "kubernetes.default".to_owned(),
            "kubernetes.default.svc".to_owned(),
            "kubernetes.default.svc.cluster.local".to_owned(),
        ])
        .context("serving certificate names")?;
        serving_params.distinguished_name = distinguished_name("kube-apiserver", None);
        serving_params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        serving_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        serving_params.use_authority_key_identifier_extension = true;
        validity(&mut serving_params);
        let serving = CertAndKey {
            cert_pem: serving_params
                .signed_by(&serving_key, &issuer)
                .context("signing serving certificate")?
                .pem(),
            key_pem: serving_key.serialize_pem(),
        };

        let admin = client_cert(&issuer, ADMIN_USER, Some(ADMIN_GROUP))?;

        let sa_key = KeyPair::generate().context("generating service-account key")?;
        Ok(Pki {
            ca,
            serving,
            admin,
            service_account_key_pem: sa_key.serialize_pem(),
            service_account_public_pem: sa_key.public_key_pem(),
        })
    }
}

/// Issues a client certificate for `user`, optionally in `group` (the `O=` attribute; rcgen
/// supports one value per attribute type, so at most one group).
fn client_cert(issuer: &Issuer<'_, KeyPair>, user: &str, group: Option<&str>) -> anyhow::Result<CertAndKey> {
    let key = KeyPair::generate().context("generating client key")?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = distinguished_name(user, group);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params);
    Ok(CertAndKey {
        cert_pem: params
            .signed_by(&key, issuer)
            .with_context(|| format!("signing client certificate for {user}"))?
            .pem(),
        key_pem: key.serialize_pem(),
    })
}
