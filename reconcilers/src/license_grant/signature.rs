//! The signed form of a license grant and its Ed25519 verification (pure).
//!
//! The vendor signs a canonical JSON document built from every spec field
//! except `signature` (see the module documentation of
//! [`crate::license_grant`] for the exact rule). The operator rebuilds the
//! same bytes from the object and checks the signature against the public
//! key its keyring holds for `spec.signature.keyId`.

use base64::Engine;
use countersign_crds::common::ObjectRef;
use countersign_crds::license_grant::{GrantType, LicenseGrantSpec};
use ring::signature::{ED25519, UnparsedPublicKey};
use serde::Serialize;
use std::collections::BTreeMap;

/// The value of the document's `format` key. It separates grant signatures
/// from anything else the vendor's key might sign: a signature over some
/// other JSON document never verifies as a grant.
pub const FORMAT: &str = "countersign.dev/license-grant/v1";

/// Length of an Ed25519 signature in bytes.
const SIGNATURE_LEN: usize = 64;

/// The document a vendor signs: every spec field except `signature`, under
/// the spec's own (camelCase) names, plus [`FORMAT`]. Absent optional
/// fields are `null`, never omitted, so every document has the same keys.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SignedDocument<'a> {
    /// Always [`FORMAT`].
    pub format: &'static str,
    /// `spec.tenantRef` as written: `{"name": …}`.
    pub tenant_ref: &'a ObjectRef,
    /// `spec.grantId` as written.
    pub grant_id: &'a str,
    /// `spec.grantType`: GRANT, ADDENDUM or REVOCATION.
    pub grant_type: GrantType,
    /// `spec.instanceFingerprint` as written.
    pub instance_fingerprint: &'a str,
    /// `spec.licenseType` as written.
    pub license_type: &'a str,
    /// `spec.quantity`, a JSON integer.
    pub quantity: i64,
    /// `spec.validFrom`, the string exactly as written (not re-formatted).
    pub valid_from: &'a str,
    /// `spec.validUntil`, the string exactly as written.
    pub valid_until: &'a str,
    /// `spec.commercialChain`, in order.
    pub commercial_chain: &'a [String],
    /// `spec.addendumOf`, or null.
    pub addendum_of: Option<&'a str>,
    /// `spec.revokes`, or null.
    pub revokes: Option<&'a str>,
}

impl<'a> SignedDocument<'a> {
    /// The document for a spec.
    pub fn of(spec: &'a LicenseGrantSpec) -> Self {
        Self {
            format: FORMAT,
            tenant_ref: &spec.tenant_ref,
            grant_id: &spec.grant_id,
            grant_type: spec.grant_type,
            instance_fingerprint: &spec.instance_fingerprint,
            license_type: &spec.license_type,
            quantity: spec.quantity,
            valid_from: &spec.valid_from,
            valid_until: &spec.valid_until,
            commercial_chain: &spec.commercial_chain,
            addendum_of: spec.addendum_of.as_deref(),
            revokes: spec.revokes.as_deref(),
        }
    }
}

/// The exact bytes signed: the canonical JSON (keys sorted, no whitespace,
/// UTF-8) of the spec's [`SignedDocument`].
pub fn signed_bytes(spec: &LicenseGrantSpec) -> Result<Vec<u8>, serde_json::Error> {
    Ok(crate::digest::canonical_json(&SignedDocument::of(spec))?.into_bytes())
}

/// Why a signature is not accepted. Every variant means "nothing is
/// imported"; the text says what to fix.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The key ID is not in the operator's trusted keyring.
    #[error(
        "spec.signature.keyId: key {key_id:?} is not in the operator's trusted keyring \
         (it trusts {trusted}); nothing was imported"
    )]
    UnknownKey {
        /// The key ID the grant names.
        key_id: String,
        /// The trusted key IDs, for the message.
        trusted: String,
    },
    /// The value is not base64 of 64 bytes.
    #[error("spec.signature.value: not a base64 Ed25519 signature (64 bytes); nothing was imported")]
    Malformed,
    /// The signature does not verify over the canonical encoding.
    #[error(
        "spec.signature: the signature does not verify with key {key_id:?} over the grant's canonical \
         encoding (a field was changed after signing, or another key signed it); nothing was imported"
    )]
    Mismatch {
        /// The key ID tried.
        key_id: String,
    },
    /// The grant could not be encoded (never expected for a parsed spec).
    #[error("spec: the grant cannot be encoded for verification: {0}")]
    Encoding(String),
}

/// Checks the grant's signature against the trusted keyring (key ID → 32-byte
/// Ed25519 public key).
pub fn verify(spec: &LicenseGrantSpec, keyring: &BTreeMap<String, Vec<u8>>) -> Result<(), SignatureError> {
    let key_id = &spec.signature.key_id;
    let Some(public_key) = keyring.get(key_id) else {
        let trusted = if keyring.is_empty() {
            "no keys".to_string()
        } else {
            keyring.keys().map(|k| format!("{k:?}")).collect::<Vec<_>>().join(", ")
        };
        return Err(SignatureError::UnknownKey {
            key_id: key_id.clone(),
            trusted: crate::conditions::truncate(&trusted, 256),
        });
    };
    let signature = base64::engine::general_purpose::STANDARD
        .decode(spec.signature.value.trim())
        .ok()
        .filter(|s| s.len() == SIGNATURE_LEN)
        .ok_or(SignatureError::Malformed)?;
    let message = signed_bytes(spec).map_err(|e| SignatureError::Encoding(e.to_string()))?;
    UnparsedPublicKey::new(&ED25519, public_key)
        .verify(&message, &signature)
        .map_err(|_| SignatureError::Mismatch { key_id: key_id.clone() })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{Ed25519KeyPair, KeyPair};

    /// A fresh key pair (never a committed one) and its public key bytes.
    pub(crate) fn key_pair() -> (Ed25519KeyPair, Vec<u8>) {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).expect("key generation");
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("generated key parses");
        let public = pair.public_key().as_ref().to_vec();
        (pair, public)
    }

    /// Signs `spec` in place with `pair` under `key_id`, as a vendor would.
    pub(crate) fn sign(spec: &mut LicenseGrantSpec, key_id: &str, pair: &Ed25519KeyPair) {
        spec.signature.key_id = key_id.into();
        let bytes = signed_bytes(spec).expect("encodes");
        spec.signature.value = base64::engine::general_purpose::STANDARD.encode(pair.sign(&bytes).as_ref());
    }

    pub(crate) fn spec(yaml_extra: &str) -> LicenseGrantSpec {
        serde_norway::from_str(&format!(
            "tenantRef: {{name: acme}}\ngrantId: 6f1c2b0e-8a4d-4f5e-9b7c-1d2e3f4a5b6c\ngrantType: GRANT\n\
             instanceFingerprint: 'sha256:acme-instance-1'\nlicenseType: wipe-seat\nquantity: 250\n\
             validFrom: '2027-01-01T00:00:00Z'\nvalidUntil: '2028-01-01T00:00:00Z'\n\
             commercialChain: [Exaion, Acme Reseller, Acme Corporation]\n\
             signature: {{keyId: k1, value: AAAA}}\n{yaml_extra}"
        ))
        .expect("fixture parses")
    }

    #[test]
    fn the_canonical_encoding_is_pinned() {
        // The exact bytes a vendor must sign for this fixture grant. If this
        // changes, every signed grant in the field stops verifying.
        let expected = concat!(
            r#"{"addendumOf":null,"commercialChain":["Exaion","Acme Reseller","Acme Corporation"],"#,
            r#""format":"countersign.dev/license-grant/v1","grantId":"6f1c2b0e-8a4d-4f5e-9b7c-1d2e3f4a5b6c","#,
            r#""grantType":"GRANT","instanceFingerprint":"sha256:acme-instance-1","licenseType":"wipe-seat","#,
            r#""quantity":250,"revokes":null,"tenantRef":{"name":"acme"},"#,
            r#""validFrom":"2027-01-01T00:00:00Z","validUntil":"2028-01-01T00:00:00Z"}"#
        );
        let bytes = signed_bytes(&spec("")).expect("encodes");
        assert_eq!(String::from_utf8(bytes).expect("utf-8"), expected);
    }

    #[test]
    fn the_signature_is_not_part_of_what_is_signed_and_everything_else_is() {
        let base = spec("");
        let mut resigned = base.clone();
        resigned.signature.key_id = "other".into();
        resigned.signature.value = "x".into();
        assert_eq!(signed_bytes(&base).ok(), signed_bytes(&resigned).ok());
        let variants: Vec<fn(&mut LicenseGrantSpec)> = vec![
            |s| s.tenant_ref.name = "other".into(),
            |s| s.grant_id = "6f1c2b0e-8a4d-4f5e-9b7c-1d2e3f4a5b6d".into(),
            |s| s.grant_type = GrantType::Addendum,
            |s| s.instance_fingerprint = "sha256:other".into(),
            |s| s.license_type = "other".into(),
            |s| s.quantity = 251,
            |s| s.valid_from = "2027-01-01T00:00:01Z".into(),
            |s| s.valid_until = "2028-01-01T00:00:01Z".into(),
            |s| s.commercial_chain.reverse(),
            |s| s.addendum_of = Some("x".into()),
            |s| s.revokes = Some("x".into()),
        ];
        for (i, change) in variants.iter().enumerate() {
            let mut changed = base.clone();
            change(&mut changed);
            assert_ne!(signed_bytes(&base).ok(), signed_bytes(&changed).ok(), "variant {i}");
        }
    }

    #[test]
    fn a_vendor_signature_verifies_and_any_tampering_does_not() {
        let (pair, public) = key_pair();
        let keyring = BTreeMap::from([("k1".to_string(), public)]);
        let mut s = spec("");
        sign(&mut s, "k1", &pair);
        assert_eq!(verify(&s, &keyring), Ok(()));

        let mut tampered = s.clone();
        tampered.quantity = 100_000;
        assert_eq!(
            verify(&tampered, &keyring),
            Err(SignatureError::Mismatch { key_id: "k1".into() })
        );
        let mut rechained = s.clone();
        rechained.commercial_chain[1] = "Mallory Reseller".into();
        assert!(matches!(
            verify(&rechained, &keyring),
            Err(SignatureError::Mismatch { .. })
        ));
    }

    #[test]
    fn unknown_keys_other_keys_and_malformed_values_are_refused() {
        let (pair, public) = key_pair();
        let (_, other_public) = key_pair();
        let mut s = spec("");
        sign(&mut s, "k1", &pair);
        let unknown = verify(&s, &BTreeMap::from([("k2".to_string(), public.clone())]));
        assert!(
            matches!(&unknown, Err(SignatureError::UnknownKey { key_id, trusted }) if key_id == "k1" && trusted == "\"k2\""),
            "{unknown:?}"
        );
        assert!(matches!(
            verify(&s, &BTreeMap::new()),
            Err(SignatureError::UnknownKey { .. })
        ));
        // The right key ID, but the keyring holds another key under it.
        assert!(matches!(
            verify(&s, &BTreeMap::from([("k1".to_string(), other_public)])),
            Err(SignatureError::Mismatch { .. })
        ));
        let keyring = BTreeMap::from([("k1".to_string(), public)]);
        for bad in ["", "AAAA", "not base64!", &"A".repeat(200)] {
            let mut m = s.clone();
            m.signature.value = bad.into();
            assert_eq!(verify(&m, &keyring), Err(SignatureError::Malformed), "{bad:?}");
        }
        // A malformed key in the keyring is a mismatch, not a panic.
        let mut short = BTreeMap::new();
        short.insert("k1".to_string(), vec![1, 2, 3]);
        assert!(matches!(verify(&s, &short), Err(SignatureError::Mismatch { .. })));
    }

    #[test]
    fn optional_references_are_encoded_as_written() {
        let s = spec("addendumOf: 11111111-1111-4111-8111-111111111111\n");
        let text = String::from_utf8(signed_bytes(&s).expect("encodes")).expect("utf-8");
        assert!(
            text.starts_with(r#"{"addendumOf":"11111111-1111-4111-8111-111111111111","#),
            "{text}"
        );
        let unicode = {
            let mut s = spec("");
            s.commercial_chain = vec!["Exaion".into(), "Société \"Ω\"\n".into()];
            String::from_utf8(signed_bytes(&s).expect("encodes")).expect("utf-8")
        };
        // Non-ASCII stays raw UTF-8; quotes and control characters are escaped.
        assert!(unicode.contains(r#"["Exaion","Société \"Ω\"\n"]"#), "{unicode}");
    }
}
