//! How webhook deliveries are signed, and how a receiver checks them.
//!
//! A delivery carries three headers:
//!
//! ```text
//! X-Countersign-Timestamp: 1767225600
//! X-Countersign-Signature: v1=<hex HMAC-SHA256(secret, "1767225600." + body)>
//! X-Countersign-Event: webhook.verification
//! ```
//!
//! The timestamp is signed together with the body so a captured delivery
//! cannot be replayed later under a fresh timestamp; a receiver rejects
//! timestamps too far from its clock ([`verify`]'s `tolerance`). The version
//! prefix lets a later scheme be added next to `v1` without breaking
//! receivers, and the header may list several comma-separated signatures
//! (e.g. under the old and the new secret while a receiver rotates).
//!
//! The HMAC key is the signing secret's bytes exactly as they are stored in
//! the Kubernetes Secret (the generated ones are 64 hex characters: 256 bits
//! from the system CSPRNG).

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

/// The Unix time (seconds) the delivery was signed at.
pub const TIMESTAMP_HEADER: &str = "X-Countersign-Timestamp";
/// `v1=<hex>`: the HMAC-SHA256 of `"<timestamp>.<body>"` under the signing secret.
pub const SIGNATURE_HEADER: &str = "X-Countersign-Signature";
/// The event type of the delivery.
pub const EVENT_HEADER: &str = "X-Countersign-Event";
/// The delivery's unique id, also in the body, so retries can be recognised.
pub const DELIVERY_HEADER: &str = "X-Countersign-Delivery";
/// The event type of the test delivery `spec.verify` sends.
pub const VERIFICATION_EVENT: &str = "webhook.verification";
/// The signature scheme this module writes.
pub const SCHEME: &str = "v1";
/// How many random bytes a generated signing secret holds.
pub const GENERATED_SECRET_BYTES: usize = 32;

/// The system random generator failed (nothing sensible can be generated).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the system random generator failed")]
pub struct RandomFailed;

/// A fresh signing secret: 32 bytes from the operating system's CSPRNG, as
/// 64 lowercase hex characters (printable, so it fits any receiver's
/// configuration and survives copy and paste).
pub fn generate_secret() -> Result<String, RandomFailed> {
    let mut bytes = [0u8; GENERATED_SECRET_BYTES];
    SystemRandom::new().fill(&mut bytes).map_err(|_| RandomFailed)?;
    Ok(hex::encode(bytes))
}

/// The bytes the HMAC covers: the timestamp, a dot, the body.
fn signed_payload(timestamp: i64, body: &[u8]) -> Vec<u8> {
    let mut payload = format!("{timestamp}.").into_bytes();
    payload.extend_from_slice(body);
    payload
}

/// The value of the signature header for `body` signed at `timestamp`.
pub fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let tag = hmac::sign(&key, &signed_payload(timestamp, body));
    format!("{SCHEME}={}", hex::encode(tag.as_ref()))
}

/// Every header of a signed delivery, ready for `OutboundClient::post`.
pub fn headers(secret: &[u8], event: &str, delivery_id: &str, timestamp: i64, body: &[u8]) -> Vec<(String, String)> {
    vec![
        ("Content-Type".into(), "application/json".into()),
        (TIMESTAMP_HEADER.into(), timestamp.to_string()),
        (SIGNATURE_HEADER.into(), signature(secret, timestamp, body)),
        (EVENT_HEADER.into(), event.into()),
        (DELIVERY_HEADER.into(), delivery_id.into()),
    ]
}

/// Why a receiver refuses a delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    /// The timestamp header is not a Unix time.
    #[error("the timestamp header is not a Unix time in seconds")]
    BadTimestamp,
    /// The timestamp is further from the receiver's clock than the tolerance.
    #[error("the timestamp is outside the accepted window")]
    Stale,
    /// No `v1=` signature matches.
    #[error("no v1 signature matches")]
    BadSignature,
}

/// Checks a delivery as a receiver should: the timestamp within `tolerance`
/// seconds of `now`, and some `v1=` signature in the header matching (in
/// constant time) the HMAC under `secret`.
pub fn verify(
    secret: &[u8],
    timestamp_header: &str,
    signature_header: &str,
    body: &[u8],
    now: i64,
    tolerance: i64,
) -> Result<(), Rejected> {
    let timestamp: i64 = timestamp_header.trim().parse().map_err(|_| Rejected::BadTimestamp)?;
    if now.abs_diff(timestamp) > tolerance.unsigned_abs() {
        return Err(Rejected::Stale);
    }
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let payload = signed_payload(timestamp, body);
    let matches = signature_header
        .split(',')
        .filter_map(|part| part.trim().strip_prefix("v1="))
        .filter_map(|hex_tag| hex::decode(hex_tag).ok())
        .any(|tag| hmac::verify(&key, &payload, &tag).is_ok());
    if matches { Ok(()) } else { Err(Rejected::BadSignature) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_over_timestamp_dot_body() {
        // A known answer computed outside Rust:
        // python3 -c 'import hmac,hashlib; print(hmac.new(b"secret", b"1700000000.{\"a\":1}", hashlib.sha256).hexdigest())'
        assert_eq!(
            signature(b"secret", 1_700_000_000, br#"{"a":1}"#),
            "v1=49f24e537407743fa4a0242bb63b94b9a47ee99cbbe071ccd8a22550ae411686"
        );
    }

    #[test]
    fn headers_name_timestamp_signature_event_and_delivery() {
        let h = headers(b"k", VERIFICATION_EVENT, "d-1", 42, b"{}");
        let get = |name: &str| h.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
        assert_eq!(get(TIMESTAMP_HEADER), Some("42"));
        assert_eq!(get(EVENT_HEADER), Some("webhook.verification"));
        assert_eq!(get(DELIVERY_HEADER), Some("d-1"));
        assert_eq!(get("Content-Type"), Some("application/json"));
        let sig = get(SIGNATURE_HEADER).unwrap_or_default();
        assert!(sig.starts_with("v1=") && sig.len() == 3 + 64, "{sig}");
        assert!(
            sig[3..]
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
    }

    #[test]
    fn a_receiver_accepts_exactly_the_signed_delivery() {
        let body = br#"{"id":"x"}"#;
        let sig = signature(b"k", 1000, body);
        assert_eq!(verify(b"k", "1000", &sig, body, 1010, 300), Ok(()));
        assert_eq!(
            verify(b"other", "1000", &sig, body, 1010, 300),
            Err(Rejected::BadSignature),
            "wrong secret"
        );
        assert_eq!(
            verify(b"k", "1000", &sig, br#"{"id":"y"}"#, 1010, 300),
            Err(Rejected::BadSignature),
            "altered body"
        );
        assert_eq!(
            verify(b"k", "1001", &sig, body, 1010, 300),
            Err(Rejected::BadSignature),
            "the timestamp is signed too"
        );
        assert_eq!(verify(b"k", "1000", &sig, body, 2000, 300), Err(Rejected::Stale));
        assert_eq!(verify(b"k", "soon", &sig, body, 1000, 300), Err(Rejected::BadTimestamp));
        // Several signatures (old and new secret during a rotation): one match suffices.
        let both = format!("v1=00ff, {sig}");
        assert_eq!(verify(b"k", "1000", &both, body, 1000, 300), Ok(()));
        assert_eq!(
            verify(b"k", "1000", &sig.replace("v1=", "v0="), body, 1000, 300),
            Err(Rejected::BadSignature),
            "only the v1 scheme is understood"
        );
    }

    #[test]
    fn generated_secrets_are_256_bit_hex_and_differ() {
        let a = generate_secret().expect("random");
        let b = generate_secret().expect("random");
        assert_eq!(a.len(), 2 * GENERATED_SECRET_BYTES);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
