//! The change digest (ADR 0004): SHA-256 over the object's uid, the
//! `requested-by` value and the canonical JSON of the spec.

use ring::digest::{SHA256, digest};
use serde::Serialize;

/// Canonical JSON: object keys sorted, no insignificant whitespace.
pub fn canonical_json<T: Serialize>(value: &T) -> Result<String, serde_json::Error> {
    // serde_json's Value keeps keys in a BTreeMap (no preserve_order feature),
    // so serialising through it sorts every object's keys.
    let value = serde_json::to_value(value)?;
    serde_json::to_string(&value)
}

/// The digest identifying one requested change, as lowercase hex.
pub fn change_digest<T: Serialize>(
    uid: &str,
    requested_by: Option<&str>,
    spec: &T,
) -> Result<String, serde_json::Error> {
    let canonical = canonical_json(spec)?;
    // Length-prefix each part so no two different triples hash the same bytes.
    let mut buf = Vec::with_capacity(canonical.len() + 64);
    for part in [uid, requested_by.unwrap_or(""), canonical.as_str()] {
        buf.extend_from_slice(&(part.len() as u64).to_be_bytes());
        buf.extend_from_slice(part.as_bytes());
    }
    Ok(hex::encode(digest(&SHA256, &buf)))
}

/// The digest of an object's declared intent: its uid, `requested-by`, spec
/// and, when set, the adopt annotation, so that asking to take over a row is
/// a change of intent the two-person rule sees. (Without the annotation the
/// bytes are exactly [`change_digest`]'s, so existing digests stay valid.)
pub fn intent_digest<T: Serialize>(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    spec: &T,
) -> Result<String, serde_json::Error> {
    use countersign_crds::annotations::{ADOPT, REQUESTED_BY};
    let annotation = |key: &str| meta.annotations.as_ref().and_then(|a| a.get(key)).map(String::as_str);
    let uid = meta.uid.as_deref().unwrap_or_default();
    if annotation(ADOPT) == Some("true") {
        change_digest(
            uid,
            annotation(REQUESTED_BY),
            &serde_json::json!({"adopt": true, "spec": spec}),
        )
    } else {
        change_digest(uid, annotation(REQUESTED_BY), spec)
    }
}

/// SHA-256 of arbitrary bytes, as lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(digest(&SHA256, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn key_order_does_not_change_the_digest() {
        let a = json!({"b": 1, "a": {"y": 2, "x": 3}});
        let b: serde_json::Value = serde_json::from_str(r#"{"a":{"x":3,"y":2},"b":1}"#).expect("json");
        assert_eq!(
            change_digest("u", Some("alice"), &a).ok(),
            change_digest("u", Some("alice"), &b).ok()
        );
    }

    #[test]
    fn uid_requester_and_spec_each_change_the_digest() {
        let spec = json!({"slug": "acme"});
        let base = change_digest("u1", Some("alice"), &spec).expect("digest");
        assert_ne!(base, change_digest("u2", Some("alice"), &spec).expect("digest"));
        assert_ne!(base, change_digest("u1", Some("bob"), &spec).expect("digest"));
        assert_ne!(base, change_digest("u1", None, &spec).expect("digest"));
        assert_ne!(
            base,
            change_digest("u1", Some("alice"), &json!({"slug": "acme2"})).expect("digest")
        );
        assert_eq!(base.len(), 64);
    }

    #[test]
    fn parts_cannot_bleed_into_each_other() {
        let spec = json!({});
        assert_ne!(
            change_digest("ab", Some("c"), &spec).expect("digest"),
            change_digest("a", Some("bc"), &spec).expect("digest")
        );
    }
}
