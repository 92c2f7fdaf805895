//! Pure validation of an IdentityProvider beyond the CRD schema, and the
//! translation of its spec into the row it should produce (reference 002
//! `OIDCProviderRequest`, 003 `TenantIdp`, 000 SAML IdP).

use crate::validation::{Invalid, https_url, invalid};
use countersign_crds::identity_provider::{GroupsClaimFormat, IdentityProviderSpec};

/// The protocol-specific columns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// OpenID Connect.
    Oidc(OidcValues),
    /// SAML 2.0.
    Saml(SamlValues),
}

/// The OIDC columns (the client secret is handled separately, sealed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OidcValues {
    /// Issuer URL.
    pub issuer_url: String,
    /// Client ID.
    pub client_id: String,
    /// Scopes, in the order given.
    pub scopes: Vec<String>,
    /// Subject claim.
    pub subject_claim: String,
    /// Email claim.
    pub email_claim: String,
    /// Display-name claim.
    pub display_name_claim: String,
    /// Groups claim path.
    pub groups_claim_path: String,
    /// Groups claim format, as the reference spells it (`string_array`, …).
    pub groups_claim_format: String,
    /// Whether to call userinfo.
    pub fetch_userinfo: bool,
    /// Allowed email-domain suffixes, lowercased and sorted.
    pub allowed_email_domains: Vec<String>,
    /// iat window.
    pub iat_window_seconds: i32,
    /// JWKS cache TTL.
    pub jwks_cache_ttl_seconds: i32,
}

/// The SAML columns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SamlValues {
    /// Metadata URL.
    pub metadata_url: String,
    /// Entity ID.
    pub entity_id: String,
    /// SSO URL.
    pub sso_url: String,
}

/// The provider row the spec asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredIdp {
    /// The Tenant object's name.
    pub tenant_name: String,
    /// Provider name, unique per tenant.
    pub name: String,
    /// Whether sign-in is enabled.
    pub enabled: bool,
    /// Protocol settings.
    pub protocol: Protocol,
}

impl DesiredIdp {
    /// `OIDC` or `SAML`, as the row stores it.
    pub fn protocol_name(&self) -> &'static str {
        match self.protocol {
            Protocol::Oidc(_) => "OIDC",
            Protocol::Saml(_) => "SAML",
        }
    }
}

/// The reference's spelling of a groups-claim format.
pub fn format_name(format: GroupsClaimFormat) -> &'static str {
    match format {
        GroupsClaimFormat::StringArray => "string_array",
        GroupsClaimFormat::CommaSeparated => "comma_separated",
        GroupsClaimFormat::SpaceSeparated => "space_separated",
    }
}

/// Validates the spec and builds the desired row.
pub fn validate(spec: &IdentityProviderSpec) -> Result<DesiredIdp, Invalid> {
    let name = spec.display_name.trim();
    if name.is_empty() {
        return Err(invalid("spec.displayName", "must not be blank"));
    }
    let protocol = match (&spec.oidc, &spec.saml) {
        (Some(oidc), None) => {
            https_url("spec.oidc.issuer", &oidc.issuer)?;
            if oidc.issuer.contains('?') {
                return Err(invalid(
                    "spec.oidc.issuer",
                    "must not have a query (OpenID Connect Discovery §2)",
                ));
            }
            if oidc.client_id.trim().is_empty() {
                return Err(invalid("spec.oidc.clientId", "must not be blank"));
            }
            if !oidc.scopes.iter().any(|s| s == "openid") {
                return Err(invalid("spec.oidc.scopes", "must include openid"));
            }
            if let Some(s) = oidc
                .scopes
                .iter()
                .find(|s| s.is_empty() || s.contains(char::is_whitespace))
            {
                return Err(invalid("spec.oidc.scopes", format!("{s:?} is not a scope token")));
            }
            for (field, claim) in [
                ("spec.oidc.claimsMapping.subject", &oidc.claims_mapping.subject),
                ("spec.oidc.claimsMapping.email", &oidc.claims_mapping.email),
                ("spec.oidc.claimsMapping.displayName", &oidc.claims_mapping.display_name),
                ("spec.oidc.groupsClaim.path", &oidc.groups_claim.path),
            ] {
                if claim.trim().is_empty() {
                    return Err(invalid(field, "must not be blank"));
                }
            }
            let mut domains: Vec<String> = oidc
                .allowed_email_domains
                .iter()
                .map(|d| d.to_ascii_lowercase())
                .collect();
            domains.sort();
            domains.dedup();
            Protocol::Oidc(OidcValues {
                issuer_url: oidc.issuer.clone(),
                client_id: oidc.client_id.clone(),
                scopes: oidc.scopes.clone(),
                subject_claim: oidc.claims_mapping.subject.clone(),
                email_claim: oidc.claims_mapping.email.clone(),
                display_name_claim: oidc.claims_mapping.display_name.clone(),
                groups_claim_path: oidc.groups_claim.path.clone(),
                groups_claim_format: format_name(oidc.groups_claim.format).into(),
                fetch_userinfo: oidc.fetch_userinfo,
                allowed_email_domains: domains,
                iat_window_seconds: oidc.iat_window_seconds,
                jwks_cache_ttl_seconds: oidc.jwks_cache_ttl_seconds,
            })
        }
        (None, Some(saml)) => {
            https_url("spec.saml.metadataUrl", &saml.metadata_url)?;
            https_url("spec.saml.ssoUrl", &saml.sso_url)?;
            if saml.entity_id.trim().is_empty() {
                return Err(invalid("spec.saml.entityId", "must not be blank"));
            }
            Protocol::Saml(SamlValues {
                metadata_url: saml.metadata_url.clone(),
                entity_id: saml.entity_id.clone(),
                sso_url: saml.sso_url.clone(),
            })
        }
        _ => return Err(invalid("spec", "set exactly one of spec.oidc or spec.saml")),
    };
    Ok(DesiredIdp {
        tenant_name: spec.tenant_ref.name.clone(),
        name: name.to_string(),
        enabled: spec.enabled,
        protocol,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> IdentityProviderSpec {
        serde_norway::from_str(yaml).expect("fixture parses")
    }

    const OIDC: &str = r#"
tenantRef: {name: acme}
displayName: Acme SSO
oidc:
  issuer: https://login.acme.example/realms/acme
  clientId: countersign
  clientSecret: {name: acme-oidc, key: client-secret}
  allowedEmailDomains: [Acme.Example, acme.example]
"#;

    #[test]
    fn oidc_defaults_follow_the_reference() {
        let d = validate(&spec(OIDC)).expect("valid");
        let Protocol::Oidc(o) = d.protocol else {
            panic!("oidc expected")
        };
        assert_eq!(o.scopes, ["openid", "email", "profile"]);
        assert_eq!((o.iat_window_seconds, o.jwks_cache_ttl_seconds), (300, 3600));
        assert_eq!(
            (o.groups_claim_path.as_str(), o.groups_claim_format.as_str()),
            ("groups", "string_array")
        );
        assert_eq!(
            (
                o.subject_claim.as_str(),
                o.email_claim.as_str(),
                o.display_name_claim.as_str()
            ),
            ("sub", "email", "name")
        );
        assert_eq!(o.allowed_email_domains, ["acme.example"], "lowercased and deduplicated");
        assert!(d.enabled);
    }

    #[test]
    fn rejections_name_the_field() {
        let cases = [
            (OIDC.replace("https://login", "http://login"), "spec.oidc.issuer"),
            (OIDC.replace("/realms/acme", "/realms/acme?x=1"), "spec.oidc.issuer"),
            (OIDC.replace("displayName: Acme SSO", "displayName: '  '"), "spec.displayName"),
            (
                OIDC.replace("  allowedEmailDomains", "  scopes: [email]\n  allowedEmailDomains"),
                "spec.oidc.scopes",
            ),
            (
                "tenantRef: {name: a}\ndisplayName: x\nsaml: {metadataUrl: 'https://m.example/md', entityId: ' ', ssoUrl: 'https://m.example/sso'}\n"
                    .to_string(),
                "spec.saml.entityId",
            ),
            ("tenantRef: {name: a}\ndisplayName: x\n".to_string(), "spec"),
        ];
        for (yaml, field) in cases {
            assert_eq!(
                validate(&spec(&yaml)).err().map(|e| e.field).unwrap_or_default(),
                field,
                "{yaml}"
            );
        }
    }
}
