//! Pure validation of a GroupMapping and the row it should produce
//! (reference 002 `OIDCGroupMappingRequest`).

use crate::validation::{Invalid, invalid};
use countersign_crds::group_mapping::{GroupMappingSpec, PlatformRole};

/// The mapping row the spec asks for (the provider still by object name).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredMapping {
    /// The IdentityProvider object's name, in the mapping's namespace.
    pub provider_name: String,
    /// The group name exactly as the provider sends it.
    pub group_name: String,
    /// The platform role, as the database spells it.
    pub role: &'static str,
}

/// The database spelling of a platform role (reference 000's seeded roles).
pub fn role_name(role: PlatformRole) -> &'static str {
    match role {
        PlatformRole::PlatformAdmin => "PLATFORM_ADMIN",
        PlatformRole::BillingOperator => "BILLING_OPERATOR",
        PlatformRole::ClientAdmin => "CLIENT_ADMIN",
        PlatformRole::ClientTech => "CLIENT_TECH",
        PlatformRole::Auditor => "AUDITOR",
    }
}

/// Whether a role is platform-wide (a master-realm role in reference 000)
/// rather than scoped to one client organization: such a role may only be
/// granted through a provider of the platform's own tenant.
pub fn is_platform_wide(role: &str) -> bool {
    matches!(role, "PLATFORM_ADMIN" | "BILLING_OPERATOR")
}

/// Validates the spec and builds the desired row.
pub fn validate(spec: &GroupMappingSpec) -> Result<DesiredMapping, Invalid> {
    // Group names are matched byte for byte against the token's claim, so
    // surrounding whitespace would make a mapping that never matches.
    if spec.group_name.trim().is_empty() || spec.group_name.trim() != spec.group_name {
        return Err(invalid(
            "spec.groupName",
            "must not be blank or have leading or trailing whitespace",
        ));
    }
    Ok(DesiredMapping {
        provider_name: spec.identity_provider_ref.name.clone(),
        group_name: spec.group_name.clone(),
        role: role_name(spec.role),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_names_must_match_as_written() {
        let spec = |g: &str| -> GroupMappingSpec {
            serde_norway::from_str(&format!(
                "identityProviderRef: {{name: sso}}\ngroupName: {g:?}\nrole: CLIENT_ADMIN\n"
            ))
            .expect("fixture parses")
        };
        assert_eq!(validate(&spec("admins")).expect("valid").role, "CLIENT_ADMIN");
        assert_eq!(
            validate(&spec(" admins")).err().map(|e| e.field).unwrap_or_default(),
            "spec.groupName"
        );
        assert!(validate(&spec("  ")).is_err());
    }
}
