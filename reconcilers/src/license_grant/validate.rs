//! Pure validation of a LicenseGrant beyond the CRD schema (reference 000
//! "License grant import and quota rules"), the commercial-chain rule, and
//! the translation of the spec into the row it should produce.

use crate::validation::{Invalid, invalid};
use chrono::{DateTime, SubsecRound, Utc};
use countersign_crds::license_grant::{GrantType, LicenseGrantSpec};
use uuid::Uuid;

/// The license row the spec asks for (the tenant still by object name).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredGrant {
    /// The Tenant object's name.
    pub tenant_name: String,
    /// The globally unique grant ID.
    pub grant_id: Uuid,
    /// GRANT, ADDENDUM or REVOCATION, as the database spells it.
    pub grant_type: &'static str,
    /// The instance fingerprint the grant is bound to.
    pub instance_fingerprint: String,
    /// The licensed product or tier.
    pub license_type: String,
    /// Units granted.
    pub quantity: i64,
    /// Start of validity, at the database's microsecond precision.
    pub valid_from: DateTime<Utc>,
    /// End of validity (exclusive), at microsecond precision.
    pub valid_until: DateTime<Utc>,
    /// Vendor → … → operator.
    pub commercial_chain: Vec<String>,
    /// For an addendum: the grant it amends.
    pub addendum_of: Option<Uuid>,
    /// For a revocation: the grant it revokes.
    pub revokes: Option<Uuid>,
    /// The signing key's ID.
    pub key_id: String,
    /// The base64 signature, stored with the row so the record can be re-verified.
    pub signature: String,
}

impl DesiredGrant {
    /// The grant this one points at (addendum or revocation), with the field naming it.
    pub fn reference(&self) -> Option<(&'static str, Uuid)> {
        match (self.addendum_of, self.revokes) {
            (Some(id), _) => Some(("spec.addendumOf", id)),
            (None, Some(id)) => Some(("spec.revokes", id)),
            (None, None) => None,
        }
    }
}

/// The database spelling of a grant type.
pub fn grant_type_name(t: GrantType) -> &'static str {
    match t {
        GrantType::Grant => "GRANT",
        GrantType::Addendum => "ADDENDUM",
        GrantType::Revocation => "REVOCATION",
    }
}

fn uuid(field: &str, value: &str) -> Result<Uuid, Invalid> {
    Uuid::parse_str(value)
        .ok()
        .filter(|u| u.hyphenated().to_string() == value)
        .ok_or_else(|| invalid(field, "must be a lowercase hyphenated UUID"))
}

fn timestamp(field: &str, value: &str) -> Result<DateTime<Utc>, Invalid> {
    DateTime::parse_from_rfc3339(value)
        .map(|t| t.with_timezone(&Utc).trunc_subsecs(6))
        .map_err(|_| invalid(field, "must be an RFC 3339 timestamp, e.g. 2027-01-01T00:00:00Z"))
}

/// Validates the spec and builds the desired row. The CRD schema and CEL
/// check most of this at admission; it is checked again because the
/// database must never hold a grant that breaks them.
pub fn validate(spec: &LicenseGrantSpec) -> Result<DesiredGrant, Invalid> {
    let grant_id = uuid("spec.grantId", &spec.grant_id)?;
    if spec.quantity <= 0 {
        return Err(invalid("spec.quantity", "must be positive"));
    }
    if spec.license_type.trim().is_empty() {
        return Err(invalid("spec.licenseType", "must not be blank"));
    }
    let valid_from = timestamp("spec.validFrom", &spec.valid_from)?;
    let valid_until = timestamp("spec.validUntil", &spec.valid_until)?;
    if valid_from >= valid_until {
        return Err(invalid("spec.validFrom", "must be before spec.validUntil"));
    }
    if spec.commercial_chain.len() < 2 {
        return Err(invalid(
            "spec.commercialChain",
            "must name at least the vendor and the operator",
        ));
    }
    if let Some(i) = spec.commercial_chain.iter().position(|p| p.trim().is_empty()) {
        return Err(invalid(&format!("spec.commercialChain[{i}]"), "must not be blank"));
    }
    let addendum_of = spec
        .addendum_of
        .as_deref()
        .map(|v| uuid("spec.addendumOf", v))
        .transpose()?;
    let revokes = spec.revokes.as_deref().map(|v| uuid("spec.revokes", v)).transpose()?;
    // Each type carries exactly the reference it needs, so a grant cannot be
    // both an addendum and a revocation, nor point at itself.
    match spec.grant_type {
        GrantType::Grant if addendum_of.is_some() => {
            return Err(invalid(
                "spec.addendumOf",
                "is only allowed when spec.grantType is ADDENDUM",
            ));
        }
        GrantType::Grant | GrantType::Addendum if revokes.is_some() => {
            return Err(invalid(
                "spec.revokes",
                "is only allowed when spec.grantType is REVOCATION",
            ));
        }
        GrantType::Revocation if addendum_of.is_some() => {
            return Err(invalid(
                "spec.addendumOf",
                "is only allowed when spec.grantType is ADDENDUM",
            ));
        }
        GrantType::Addendum if addendum_of.is_none() => {
            return Err(invalid(
                "spec.addendumOf",
                "is required when spec.grantType is ADDENDUM",
            ));
        }
        GrantType::Revocation if revokes.is_none() => {
            return Err(invalid("spec.revokes", "is required when spec.grantType is REVOCATION"));
        }
        _ => {}
    }
    if addendum_of == Some(grant_id) || revokes == Some(grant_id) {
        return Err(invalid(
            if addendum_of.is_some() {
                "spec.addendumOf"
            } else {
                "spec.revokes"
            },
            "must name another grant than spec.grantId",
        ));
    }
    Ok(DesiredGrant {
        tenant_name: spec.tenant_ref.name.clone(),
        grant_id,
        grant_type: grant_type_name(spec.grant_type),
        instance_fingerprint: spec.instance_fingerprint.clone(),
        license_type: spec.license_type.clone(),
        quantity: spec.quantity,
        valid_from,
        valid_until,
        commercial_chain: spec.commercial_chain.clone(),
        addendum_of,
        revokes,
        key_id: spec.signature.key_id.clone(),
        signature: spec.signature.value.clone(),
    })
}

/// The operator's license settings, or the message saying which are
/// missing: without a keyring nothing can be verified, and without both ends
/// of the chain no chain can be judged, so nothing is imported.
pub fn configured<'a>(
    keyring_empty: bool,
    vendor: Option<&'a str>,
    operator: Option<&'a str>,
) -> Result<(&'a str, &'a str), String> {
    let missing: Vec<&str> = [
        (
            keyring_empty,
            "--license-keyring (the ConfigMap of trusted signing keys)",
        ),
        (vendor.is_none(), "--license-vendor"),
        (operator.is_none(), "--license-operator"),
    ]
    .into_iter()
    .filter_map(|(absent, flag)| absent.then_some(flag))
    .collect();
    match (vendor, operator) {
        (Some(v), Some(o)) if missing.is_empty() => Ok((v, o)),
        _ => Err(format!(
            "the operator is not configured for licenses: start it with {}; nothing was imported",
            missing.join(", ")
        )),
    }
}

/// The reference's rule: the chain starts with the vendor and ends with the
/// platform operator this Countersign serves (compared exactly, as signed).
pub fn check_chain(chain: &[String], vendor: &str, operator: &str) -> Result<(), Invalid> {
    let first = chain.first().map(String::as_str);
    if first != Some(vendor) {
        return Err(invalid(
            "spec.commercialChain[0]",
            format!("must be the vendor {vendor:?}, not {:?}", first.unwrap_or_default()),
        ));
    }
    let last = chain.last().map(String::as_str);
    if chain.len() < 2 || last != Some(operator) {
        return Err(invalid(
            &format!("spec.commercialChain[{}]", chain.len().saturating_sub(1)),
            format!(
                "must be this platform's operator {operator:?}, not {:?}",
                last.unwrap_or_default()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::license_grant::signature::tests::spec;

    #[test]
    fn a_grant_becomes_the_row_the_admin_api_stores() {
        let d = validate(&spec("")).expect("valid");
        assert_eq!(d.grant_type, "GRANT");
        assert_eq!(d.quantity, 250);
        assert_eq!(d.valid_from.to_rfc3339(), "2027-01-01T00:00:00+00:00");
        assert_eq!(d.reference(), None);
        let precise = {
            let mut s = spec("");
            s.valid_from = "2027-01-01T01:00:00.123456789+01:00".into();
            validate(&s).expect("valid")
        };
        assert_eq!(
            precise.valid_from.to_rfc3339(),
            "2027-01-01T00:00:00.123456+00:00",
            "kept at the database's precision, so the row compares equal"
        );
    }

    #[test]
    fn each_rule_names_its_field() {
        type Change = fn(&mut LicenseGrantSpec);
        let cases: Vec<(Change, &str)> = vec![
            ((|s| s.grant_id = "not-a-uuid".into()), "spec.grantId"),
            (
                (|s| s.grant_id = "6F1C2B0E-8A4D-4F5E-9B7C-1D2E3F4A5B6C".into()),
                "spec.grantId",
            ),
            ((|s| s.quantity = 0), "spec.quantity"),
            ((|s| s.quantity = -5), "spec.quantity"),
            ((|s| s.license_type = " ".into()), "spec.licenseType"),
            ((|s| s.valid_from = "2027-13-01T00:00:00Z".into()), "spec.validFrom"),
            ((|s| s.valid_until = "2027-01-01".into()), "spec.validUntil"),
            ((|s| s.valid_until = s.valid_from.clone()), "spec.validFrom"),
            ((|s| s.commercial_chain = vec!["Exaion".into()]), "spec.commercialChain"),
            (
                (|s| s.commercial_chain = vec!["Exaion".into(), " ".into()]),
                "spec.commercialChain[1]",
            ),
            ((|s| s.addendum_of = Some(s.grant_id.clone())), "spec.addendumOf"),
            ((|s| s.revokes = Some(s.grant_id.clone())), "spec.revokes"),
            ((|s| s.grant_type = GrantType::Addendum), "spec.addendumOf"),
            ((|s| s.grant_type = GrantType::Revocation), "spec.revokes"),
            (
                (|s| {
                    s.grant_type = GrantType::Addendum;
                    s.addendum_of = Some(s.grant_id.clone());
                }),
                "spec.addendumOf",
            ),
            (
                (|s| {
                    s.grant_type = GrantType::Revocation;
                    s.revokes = Some("11111111-1111-4111-8111-111111111111".into());
                    s.addendum_of = Some("22222222-2222-4222-8222-222222222222".into());
                }),
                "spec.addendumOf",
            ),
        ];
        for (i, (change, field)) in cases.iter().enumerate() {
            let mut s = spec("");
            change(&mut s);
            assert_eq!(validate(&s).err().map(|e| e.field).as_deref(), Some(*field), "case {i}");
        }
    }

    #[test]
    fn addenda_and_revocations_carry_their_reference() {
        let base = "11111111-1111-4111-8111-111111111111";
        let mut s = spec("");
        s.grant_type = GrantType::Addendum;
        s.addendum_of = Some(base.into());
        let d = validate(&s).expect("valid addendum");
        assert_eq!(
            d.reference(),
            Some(("spec.addendumOf", Uuid::parse_str(base).expect("uuid")))
        );
        s.grant_type = GrantType::Revocation;
        s.addendum_of = None;
        s.revokes = Some(base.into());
        assert_eq!(
            validate(&s).expect("valid revocation").reference().map(|r| r.0),
            Some("spec.revokes")
        );
    }

    #[test]
    fn the_chain_runs_from_the_vendor_to_the_operator() {
        let chain = |c: &[&str]| c.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let field = |r: Result<(), Invalid>| r.err().map(|i| i.field).unwrap_or_default();
        assert_eq!(
            check_chain(&chain(&["Exaion", "Reseller", "Acme Ops"]), "Exaion", "Acme Ops"),
            Ok(())
        );
        assert_eq!(
            check_chain(&chain(&["Exaion", "Acme Ops"]), "Exaion", "Acme Ops"),
            Ok(())
        );
        assert_eq!(
            field(check_chain(&chain(&["Mallory", "Acme Ops"]), "Exaion", "Acme Ops")),
            "spec.commercialChain[0]"
        );
        assert_eq!(
            field(check_chain(
                &chain(&["Exaion", "Reseller", "Other Ops"]),
                "Exaion",
                "Acme Ops"
            )),
            "spec.commercialChain[2]"
        );
        assert_eq!(
            field(check_chain(&chain(&["exaion", "Acme Ops"]), "Exaion", "Acme Ops")),
            "spec.commercialChain[0]",
            "compared exactly, as signed"
        );
        assert!(check_chain(&chain(&["Exaion"]), "Exaion", "Exaion").is_err());
        assert!(check_chain(&[], "Exaion", "Acme Ops").is_err());
    }

    #[test]
    fn without_a_keyring_vendor_and_operator_nothing_is_imported() {
        assert_eq!(
            configured(false, Some("Exaion"), Some("Acme Ops")),
            Ok(("Exaion", "Acme Ops"))
        );
        for (empty, vendor, operator, mentions) in [
            (true, Some("Exaion"), Some("Acme Ops"), "--license-keyring"),
            (false, None, Some("Acme Ops"), "--license-vendor"),
            (false, Some("Exaion"), None, "--license-operator"),
            (
                true,
                None,
                None,
                "--license-keyring (the ConfigMap of trusted signing keys), --license-vendor, --license-operator",
            ),
        ] {
            let message = configured(empty, vendor, operator).expect_err("not configured");
            assert!(
                message.contains("not configured for licenses") && message.contains(mentions),
                "{message}"
            );
        }
    }

    #[test]
    fn hostile_input_is_rejected_or_accepted_but_never_panics() {
        let long = "9".repeat(10_000);
        for text in [
            "",
            "\u{0}",
            "é",
            "9999-99-99T99:99:99Z",
            "+275760-09-13T00:00:00Z",
            long.as_str(),
        ] {
            let mut s = spec("");
            s.grant_id = text.into();
            let _ = validate(&s);
            let mut s = spec("");
            s.valid_from = text.into();
            s.valid_until = text.into();
            s.addendum_of = Some(text.into());
            s.revokes = Some(text.into());
            s.commercial_chain = vec![text.into(); 3];
            let _ = validate(&s);
            let _ = check_chain(&s.commercial_chain, text, text);
        }
    }
}
