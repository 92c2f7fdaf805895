//! Checks an identity provider before it goes live: OIDC discovery + JWKS, or SAML metadata.
//!
//! Modelled on the reference's `OIDCTestDiscoveryResult` (test-discovery): every check is
//! reported on its own, and `errors` names the field of every failed rule, so status can show
//! what to fix. The pure `evaluate_*` functions judge documents; `check_*` fetch them through
//! the [`OutboundClient`], whose refusals become `errors` entries carrying the reason word.
//! Nothing here panics on any input.

mod oidc;
mod saml;
#[cfg(test)]
mod tests;

pub use oidc::{
    OidcDiscoveryResult, check_oidc, discovery_url, evaluate_discovery_document, evaluate_jwks, oidc_passed,
};
pub use saml::{SAML_METADATA_NS, SamlMetadataResult, check_saml, evaluate_saml_metadata, saml_passed};

use crate::outbound::OutboundError;

/// `field: reason: message` for an outbound refusal or failure, as `errors` carries it.
fn refusal(field: &str, err: &OutboundError) -> String {
    format!("{field}: {}: {err}", err.reason())
}
