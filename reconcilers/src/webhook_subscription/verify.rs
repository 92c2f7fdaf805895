//! The optional signed test delivery (`spec.verify`): when it is due, what
//! it sends, and how its result reads in status. Everything here is pure
//! except [`deliver`], the one outbound call.

use super::signing;
use crate::conditions::DesiredCondition;
use crate::outbound::{OutboundClient, OutboundError};
use crate::report::cond;
use chrono::{DateTime, Utc};
use countersign_crds::ConditionStatus;
use countersign_crds::webhook_subscription::{VERIFIED, WebhookVerificationStatus};
use std::time::Duration;

/// How long after a failed test delivery the operator tries again by itself
/// (the endpoint may just have been down). A successful one is repeated only
/// when the subscription or its secret changes.
pub const RETRY_FAILED_AFTER: Duration = Duration::from_secs(300);

/// What a test delivery is made for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target<'a> {
    /// The endpoint.
    pub url: &'a str,
    /// The subscription's row id (its key in the API database).
    pub subscription_id: &'a str,
    /// The tenant's slug.
    pub tenant: &'a str,
    /// The subscribed event types.
    pub events: &'a [String],
    /// The generation of the spec being verified.
    pub generation: Option<i64>,
    /// The fingerprint of the secret the delivery is signed with.
    pub secret_fingerprint: &'a str,
}

/// Whether a test delivery is due: verification is asked for, and the row
/// was just (re)written, or the spec or the secret changed since the last
/// test delivery, or that one failed more than [`RETRY_FAILED_AFTER`] ago.
/// Never on every reconcile: a settled subscription is not re-delivered.
pub fn due(
    verify: bool,
    previous: Option<&WebhookVerificationStatus>,
    generation: Option<i64>,
    secret_fingerprint: &str,
    rewritten: bool,
    now: DateTime<Utc>,
) -> bool {
    if !verify {
        return false;
    }
    let Some(prev) = previous else {
        return true;
    };
    if rewritten
        || prev.observed_generation != generation
        || prev.secret_fingerprint.as_deref() != Some(secret_fingerprint)
    {
        return true;
    }
    if prev.delivered {
        return false;
    }
    match DateTime::parse_from_rfc3339(&prev.attempted_at) {
        Ok(at) => (now - at.with_timezone(&Utc)).to_std().unwrap_or_default() >= RETRY_FAILED_AFTER,
        // A timestamp we cannot read is no reason to stop trying.
        Err(_) => true,
    }
}

/// How long until a failed test delivery is due again (None when the last
/// one succeeded or there is none), so a settled object can sleep until then.
pub fn retry_in(previous: Option<&WebhookVerificationStatus>, now: DateTime<Utc>) -> Option<Duration> {
    let prev = previous.filter(|p| !p.delivered)?;
    let elapsed = DateTime::parse_from_rfc3339(&prev.attempted_at)
        .ok()
        .and_then(|at| (now - at.with_timezone(&Utc)).to_std().ok())
        .unwrap_or_default();
    Some(RETRY_FAILED_AFTER.saturating_sub(elapsed).max(Duration::from_secs(1)))
}

/// The test delivery's JSON body: its id, the event type, when, and which
/// subscription it is for (row id, tenant slug, events), so a receiver can
/// tell it from a real event and match it with status.verification.
pub fn body(delivery_id: &str, target: &Target<'_>, now: DateTime<Utc>) -> Vec<u8> {
    serde_json::json!({
        "id": delivery_id,
        "type": signing::VERIFICATION_EVENT,
        "createdAt": now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "data": {
            "subscriptionId": target.subscription_id,
            "tenant": target.tenant,
            "events": target.events,
        },
    })
    .to_string()
    .into_bytes()
}

/// What came back from the endpoint: its HTTP status, or why there was none.
pub type Answer = Result<u16, OutboundError>;

/// Whether the outbound policy (not the endpoint) stopped the delivery.
fn refused_by_policy(e: &OutboundError) -> bool {
    matches!(
        e,
        OutboundError::InvalidUrl { .. }
            | OutboundError::InsecureUrl { .. }
            | OutboundError::HostNotAllowed { .. }
            | OutboundError::AddressNotAllowed { .. }
            | OutboundError::InvalidPolicy { .. }
    )
}

/// The `Verified` condition and status.verification for an answer.
pub fn result(
    answer: &Answer,
    delivery_id: &str,
    target: &Target<'_>,
    now: DateTime<Utc>,
) -> (DesiredCondition, WebhookVerificationStatus) {
    let mut status = WebhookVerificationStatus {
        observed_generation: target.generation,
        secret_fingerprint: Some(target.secret_fingerprint.to_string()),
        delivery_id: delivery_id.to_string(),
        attempted_at: now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        delivered: false,
        status_code: None,
        error: None,
    };
    let still_live = "the subscription stays live";
    let condition = match answer {
        Ok(code) if (200..300).contains(code) => {
            status.delivered = true;
            status.status_code = Some(i32::from(*code));
            cond(
                VERIFIED,
                ConditionStatus::True,
                "Delivered",
                format!("signed test delivery {delivery_id} was accepted with HTTP {code}"),
            )
        }
        Ok(code) => {
            status.status_code = Some(i32::from(*code));
            let why = if (300..400).contains(code) {
                format!("HTTP {code} (redirects are not followed)")
            } else {
                format!("HTTP {code}")
            };
            status.error = Some(format!("the endpoint answered {why}"));
            cond(
                VERIFIED,
                ConditionStatus::False,
                "DeliveryFailed",
                format!(
                    "signed test delivery {delivery_id} was answered with {why}; {still_live}, retried in {} min",
                    RETRY_FAILED_AFTER.as_secs() / 60
                ),
            )
        }
        Err(e) => {
            // The outbound client's messages name the host, never a path,
            // body or header, so they are safe for status.
            let detail = format!("{}: {e}", e.reason());
            status.error = Some(detail.clone());
            if refused_by_policy(e) {
                cond(
                    VERIFIED,
                    ConditionStatus::False,
                    "OutboundRefused",
                    format!("the outbound policy refused signed test delivery {delivery_id} ({detail}); {still_live}"),
                )
            } else {
                cond(
                    VERIFIED,
                    ConditionStatus::False,
                    "DeliveryFailed",
                    format!("signed test delivery {delivery_id} failed ({detail}); {still_live}"),
                )
            }
        }
    };
    (condition, status)
}

/// Sends the signed test delivery through the outbound client (no client
/// configured reads as a refusal by policy). Returns the delivery id, when
/// it was sent and the answer.
pub async fn deliver(
    client: Option<&OutboundClient>,
    secret: &[u8],
    target: &Target<'_>,
) -> (String, DateTime<Utc>, Answer) {
    let delivery_id = uuid::Uuid::new_v4().to_string();
    let now = Utc::now();
    let payload = body(&delivery_id, target, now);
    let headers = signing::headers(
        secret,
        signing::VERIFICATION_EVENT,
        &delivery_id,
        now.timestamp(),
        &payload,
    );
    let answer = match client {
        Some(c) => c.post(target.url, &headers, payload).await.map(|f| f.status),
        None => Err(OutboundError::InvalidPolicy {
            detail: "the operator has no outbound client configured".into(),
        }),
    };
    (delivery_id, now, answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> Target<'static> {
        Target {
            url: "https://hooks.example/x?token=abc",
            subscription_id: "row-1",
            tenant: "acme",
            events: &[],
            generation: Some(2),
            secret_fingerprint: "fp",
        }
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).expect("time").with_timezone(&Utc)
    }

    fn previous(delivered: bool) -> WebhookVerificationStatus {
        WebhookVerificationStatus {
            observed_generation: Some(2),
            secret_fingerprint: Some("fp".into()),
            delivery_id: "d".into(),
            attempted_at: "2026-01-01T00:00:00Z".into(),
            delivered,
            status_code: Some(200),
            error: None,
        }
    }

    #[test]
    fn a_test_delivery_is_due_only_when_something_changed_or_it_failed_a_while_ago() {
        let now = at("2026-01-01T00:01:00Z");
        let ok = previous(true);
        assert!(!due(false, None, Some(2), "fp", true, now), "not asked for");
        assert!(due(true, None, Some(2), "fp", false, now), "never verified");
        assert!(!due(true, Some(&ok), Some(2), "fp", false, now), "settled: not again");
        assert!(due(true, Some(&ok), Some(2), "fp", true, now), "row rewritten");
        assert!(due(true, Some(&ok), Some(3), "fp", false, now), "spec changed");
        assert!(due(true, Some(&ok), Some(2), "fp2", false, now), "secret rotated");
        let failed = previous(false);
        assert!(!due(true, Some(&failed), Some(2), "fp", false, now), "failed just now");
        assert!(
            due(true, Some(&failed), Some(2), "fp", false, at("2026-01-01T00:05:00Z")),
            "failed five minutes ago"
        );
        assert_eq!(retry_in(Some(&ok), now), None);
        assert_eq!(retry_in(Some(&failed), now), Some(Duration::from_secs(240)));
    }

    #[test]
    fn the_body_names_the_delivery_event_and_subscription() {
        let events = vec!["certificate.issued".to_string()];
        let t = Target {
            events: &events,
            ..target()
        };
        let b: serde_json::Value = serde_json::from_slice(&body("d-1", &t, at("2026-01-01T00:00:00Z"))).expect("json");
        assert_eq!(b["id"], "d-1");
        assert_eq!(b["type"], "webhook.verification");
        assert_eq!(b["data"]["subscriptionId"], "row-1");
        assert_eq!(b["data"]["tenant"], "acme");
        assert_eq!(b["data"]["events"][0], "certificate.issued");
        assert_eq!(b["createdAt"], "2026-01-01T00:00:00Z");
    }

    #[test]
    fn results_read_as_delivered_failed_or_refused_and_never_show_the_path() {
        let now = at("2026-01-01T00:00:00Z");
        let (c, s) = result(&Ok(204), "d", &target(), now);
        assert_eq!((c.status, c.reason), (ConditionStatus::True, "Delivered"));
        assert!(c.message.contains("HTTP 204"));
        assert!(s.delivered && s.status_code == Some(204) && s.error.is_none());
        assert_eq!(s.secret_fingerprint.as_deref(), Some("fp"));
        assert_eq!(s.observed_generation, Some(2));

        let (c, s) = result(&Ok(500), "d", &target(), now);
        assert_eq!((c.status, c.reason), (ConditionStatus::False, "DeliveryFailed"));
        assert!(
            c.message.contains("HTTP 500") && c.message.contains("stays live"),
            "{}",
            c.message
        );
        assert!(!s.delivered && s.status_code == Some(500));

        let (c, _) = result(&Ok(302), "d", &target(), now);
        assert!(c.message.contains("redirects are not followed"));

        let refused = OutboundError::AddressNotAllowed {
            host: "127.0.0.1".into(),
            addr: "127.0.0.1".parse().expect("ip"),
            class: crate::outbound::AddressClass::Loopback,
        };
        let (c, s) = result(&Err(refused), "d", &target(), now);
        assert_eq!((c.status, c.reason), (ConditionStatus::False, "OutboundRefused"));
        assert!(
            c.message.contains("AddressNotAllowed") && c.message.contains("loopback"),
            "{}",
            c.message
        );
        assert!(s.error.is_some_and(|e| e.starts_with("AddressNotAllowed")));

        let down = OutboundError::Timeout {
            host: "hooks.example".into(),
        };
        let (c, _) = result(&Err(down), "d", &target(), now);
        assert_eq!(c.reason, "DeliveryFailed");
        for (c, _) in [
            result(&Ok(500), "d", &target(), now),
            result(&Ok(204), "d", &target(), now),
        ] {
            assert!(!c.message.contains("token=abc"), "no URL path or query in messages");
        }
    }
}
