//! `countersign license canonical`: the exact bytes a vendor signs for each
//! LicenseGrant in a manifest, built by the same function the operator uses
//! to verify signatures ([`countersign_reconcilers::license_grant::signature::signed_bytes`]),
//! so what a vendor signs with this command is what the operator checks.

use anyhow::Context as _;
use countersign_crds::LicenseGrant;
use countersign_reconcilers::license_grant::signature::signed_bytes;
use serde::Deserialize as _;

/// The signed bytes of one LicenseGrant document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Canonical {
    /// `metadata.name` of the document.
    pub name: String,
    /// The canonical JSON the vendor signs (no trailing newline).
    pub bytes: Vec<u8>,
}

/// The signed bytes of every LicenseGrant in `yaml` (one or more YAML
/// documents), in file order. Documents of other kinds are skipped; a file
/// without any LicenseGrant, or one without a name, is an error.
pub fn canonical_documents(yaml: &str) -> anyhow::Result<Vec<Canonical>> {
    let mut grants = Vec::new();
    for (index, document) in serde_norway::Deserializer::from_str(yaml).enumerate() {
        let value = serde_json::Value::deserialize(document)
            .with_context(|| format!("YAML document {} does not parse", index + 1))?;
        let is_grant = value.get("kind").and_then(|k| k.as_str()) == Some("LicenseGrant")
            && value
                .get("apiVersion")
                .and_then(|v| v.as_str())
                .is_some_and(|v| v.starts_with("platform.countersign.dev/"));
        if !is_grant {
            continue;
        }
        let grant: LicenseGrant = serde_json::from_value(value)
            .with_context(|| format!("YAML document {} is not a valid LicenseGrant", index + 1))?;
        let name = grant
            .metadata
            .name
            .clone()
            .with_context(|| format!("YAML document {}: the LicenseGrant has no metadata.name", index + 1))?;
        let bytes = signed_bytes(&grant.spec).with_context(|| format!("LicenseGrant {name}: cannot encode"))?;
        grants.push(Canonical { name, bytes });
    }
    anyhow::ensure!(!grants.is_empty(), "no LicenseGrant in the file");
    Ok(grants)
}

/// The one grant to print: the one named `name`, or the only one there is.
pub fn select(grants: Vec<Canonical>, name: Option<&str>) -> anyhow::Result<Canonical> {
    let names = || grants.iter().map(|g| g.name.as_str()).collect::<Vec<_>>().join(", ");
    match name {
        Some(name) => {
            let list = names();
            grants
                .into_iter()
                .find(|g| g.name == name)
                .with_context(|| format!("no LicenseGrant named {name:?} in the file (it has {list})"))
        }
        None if grants.len() == 1 => Ok(grants.into_iter().next().expect("one grant")),
        None => anyhow::bail!(
            "the file has {} LicenseGrants ({}): choose one with --name, or write each with --out-dir",
            grants.len(),
            names()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO: &str = r#"
# a comment-only preamble
apiVersion: v1
kind: Namespace
metadata: {name: team-acme}
---
apiVersion: platform.countersign.dev/v1alpha1
kind: LicenseGrant
metadata: {name: one}
spec:
  tenantRef: {name: acme}
  grantId: 6f1c2b0e-8a4d-4f5e-9b7c-1d2e3f4a5b6c
  grantType: GRANT
  instanceFingerprint: sha256:acme-instance-1
  licenseType: wipe-seat
  quantity: 250
  validFrom: "2027-01-01T00:00:00Z"
  validUntil: "2028-01-01T00:00:00Z"
  commercialChain: [Exaion, Acme Reseller, Acme Corporation]
  signature: {keyId: k1, value: AAAA}
---
apiVersion: platform.countersign.dev/v1alpha1
kind: LicenseGrant
metadata: {name: two}
spec:
  tenantRef: {name: acme}
  grantId: 0c9d8e7f-6a5b-4c3d-8e2f-1a0b9c8d7e6f
  grantType: ADDENDUM
  addendumOf: 6f1c2b0e-8a4d-4f5e-9b7c-1d2e3f4a5b6c
  instanceFingerprint: sha256:acme-instance-1
  licenseType: wipe-seat
  quantity: 50
  validFrom: "2027-07-01T00:00:00Z"
  validUntil: "2028-01-01T00:00:00Z"
  commercialChain: [Exaion, Acme Reseller, Acme Corporation]
  signature: {keyId: k1, value: AAAA}
"#;

    #[test]
    fn every_grant_is_encoded_as_the_pipeline_signs_it_and_other_kinds_are_skipped() {
        let grants = canonical_documents(TWO).expect("parses");
        let names: Vec<_> = grants.iter().map(|g| g.name.as_str()).collect();
        assert_eq!(names, ["one", "two"]);
        // The bytes pinned by the pipeline's own test for the same grant.
        let expected = concat!(
            r#"{"addendumOf":null,"commercialChain":["Exaion","Acme Reseller","Acme Corporation"],"#,
            r#""format":"countersign.dev/license-grant/v1","grantId":"6f1c2b0e-8a4d-4f5e-9b7c-1d2e3f4a5b6c","#,
            r#""grantType":"GRANT","instanceFingerprint":"sha256:acme-instance-1","licenseType":"wipe-seat","#,
            r#""quantity":250,"revokes":null,"tenantRef":{"name":"acme"},"#,
            r#""validFrom":"2027-01-01T00:00:00Z","validUntil":"2028-01-01T00:00:00Z"}"#
        );
        assert_eq!(String::from_utf8(grants[0].bytes.clone()).expect("utf-8"), expected);
        assert!(
            String::from_utf8(grants[1].bytes.clone())
                .expect("utf-8")
                .starts_with(r#"{"addendumOf":"6f1c2b0e-8a4d-4f5e-9b7c-1d2e3f4a5b6c","#)
        );
    }

    #[test]
    fn one_grant_is_chosen_by_name_or_because_it_is_the_only_one() {
        let grants = canonical_documents(TWO).expect("parses");
        assert_eq!(select(grants.clone(), Some("two")).expect("found").name, "two");
        let several = select(grants.clone(), None).expect_err("ambiguous").to_string();
        assert!(several.contains("one, two") && several.contains("--name"), "{several}");
        let missing = select(grants.clone(), Some("three")).expect_err("absent").to_string();
        assert!(missing.contains("\"three\""), "{missing}");
        let only = vec![grants[0].clone()];
        assert_eq!(select(only, None).expect("the only one").name, "one");
    }

    #[test]
    fn a_file_without_grants_or_with_a_broken_grant_is_an_error() {
        assert!(canonical_documents("apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n").is_err());
        let broken =
            "apiVersion: platform.countersign.dev/v1alpha1\nkind: LicenseGrant\nmetadata: {name: x}\nspec: {}\n";
        let err = format!("{:#}", canonical_documents(broken).expect_err("no spec fields"));
        assert!(err.contains("not a valid LicenseGrant"), "{err}");
    }
}
