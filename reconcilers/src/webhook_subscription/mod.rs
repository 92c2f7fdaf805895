//! The WebhookSubscription pipeline: resolve → validate → plan → two-person
//! gate → apply → the optional signed test delivery → status.
//!
//! The signing secret arrives from the controller (which reads it from, or
//! generates it into, a Kubernetes Secret); this pipeline seals it, stores it
//! and replaces it when its fingerprint changes, revoking the old one in the
//! same transaction.

pub mod apply;
pub mod plan;
pub mod resolve;
pub mod signing;
pub mod validate;
pub mod verify;

use crate::approval::{self, ApprovedChange};
use crate::audit::Actor;
use crate::outbound::OutboundClient;
use crate::outcome::Outcome;
use crate::report::{self, CONFLICT_REQUEUE, refused, stalled};
use crate::secrets::SecretKey;
use apply::Attribution;
use countersign_crds::webhook_subscription::{VERIFIED, WebhookSubscriptionStatus, WebhookVerificationStatus};
use countersign_crds::{WebhookSubscription, annotations};
use plan::{Cause, Plan, Values, Write};
use sqlx::PgPool;
use uuid::Uuid;

pub use crate::report::{DeletionGate, failed};

/// The kind name used in ownership records and the audit log.
pub const KIND: &str = "WebhookSubscription";

/// The shortest signing secret accepted from a `signingSecretRef`: an HMAC
/// key much shorter than 128 bits can be guessed from one signed delivery.
pub const MIN_SECRET_BYTES: usize = 16;

/// The signing secret, as the controller found (or generated) it.
#[derive(Clone, PartialEq, Eq)]
pub enum SigningSecret {
    /// The Secret and key exist; these are the bytes.
    Found(Vec<u8>),
    /// The referenced Secret does not exist.
    SecretMissing {
        /// Secret name.
        secret: String,
    },
    /// The referenced Secret exists but lacks the key.
    KeyMissing {
        /// Secret name.
        secret: String,
        /// The missing key.
        key: String,
    },
    /// The referenced Secret exists but is not labelled for this use, so it
    /// is not read: naming a Secret must not let anyone sign with it.
    NotMarked {
        /// Secret name.
        secret: String,
    },
    /// The Secret the operator would generate already exists and is not
    /// controlled by this object: it is never taken over silently.
    NotOwned {
        /// Secret name.
        secret: String,
    },
}

impl std::fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Found(_) => f.write_str("Found(<redacted>)"),
            Self::SecretMissing { secret } => write!(f, "SecretMissing({secret})"),
            Self::KeyMissing { secret, key } => write!(f, "KeyMissing({secret}/{key})"),
            Self::NotOwned { secret } => write!(f, "NotOwned({secret})"),
            Self::NotMarked { secret } => write!(f, "NotMarked({secret})"),
        }
    }
}

/// What one reconcile needs besides the object and the database.
pub struct Inputs<'a> {
    /// The two-person rule's inputs.
    pub approvals: &'a approval::Inputs,
    /// The signing secret.
    pub secret: SigningSecret,
    /// The rotation token the secret's current value answers (the
    /// `countersign.dev/rotate-secret` value the controller last acted on);
    /// None for a `signingSecretRef` secret, which the operator never writes.
    pub rotation_token: Option<String>,
    /// The operator's encryption key, if configured.
    pub key: Option<&'a SecretKey>,
    /// The client test deliveries go through, if configured.
    pub outbound: Option<&'a OutboundClient>,
}

/// The result of one reconcile: the shared outcome plus the subscription's own status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// Conditions and live state.
    pub outcome: Outcome,
    /// New secret fingerprint; None keeps the previous value.
    pub secret_fingerprint: Option<Option<String>>,
    /// New last rotation token; None keeps the previous value.
    pub rotation_token: Option<Option<String>>,
    /// New verification result; None keeps the previous value.
    pub verification: Option<Option<WebhookVerificationStatus>>,
}

impl From<Outcome> for Report {
    fn from(outcome: Outcome) -> Self {
        Self {
            outcome,
            secret_fingerprint: None,
            rotation_token: None,
            verification: None,
        }
    }
}

impl Report {
    /// The status the object should carry after this reconcile.
    pub fn status(
        &self,
        previous: Option<&WebhookSubscriptionStatus>,
        generation: Option<i64>,
        now: &str,
    ) -> WebhookSubscriptionStatus {
        let prev = previous.cloned().unwrap_or_default();
        WebhookSubscriptionStatus {
            common: self.outcome.status(previous.map(|p| &p.common), generation, now),
            secret_fingerprint: self.secret_fingerprint.clone().unwrap_or(prev.secret_fingerprint),
            last_rotation_token: self.rotation_token.clone().unwrap_or(prev.last_rotation_token),
            verification: self.verification.clone().unwrap_or(prev.verification),
        }
    }
}

fn object_key(ws: &WebhookSubscription) -> String {
    format!(
        "{}/{}",
        ws.metadata.namespace.as_deref().unwrap_or_default(),
        ws.metadata.name.as_deref().unwrap_or_default()
    )
}

/// How messages name the subscription: by object, never by URL (a webhook
/// URL often carries a token in its path or query).
fn subject(ws: &WebhookSubscription) -> String {
    format!("webhook subscription {:?}", object_key(ws))
}

fn annotation<'a>(ws: &'a WebhookSubscription, key: &str) -> Option<&'a String> {
    report::annotation(ws.metadata.annotations.as_ref(), key)
}

fn attribution(
    ws: &WebhookSubscription,
    actor: &Actor,
    digest: String,
    approval: Option<ApprovedChange>,
) -> Attribution {
    Attribution::of(&ws.metadata, actor, digest, approval)
}

/// Where messages say the secret comes from.
fn secret_field(ws: &WebhookSubscription) -> &'static str {
    if ws.spec.signing_secret_ref.is_some() {
        "spec.signingSecretRef"
    } else {
        "the generated signing secret"
    }
}

/// Brings the database in line with the WebhookSubscription, then sends the
/// signed test delivery when `spec.verify` asks for one and it is due.
pub async fn reconcile(
    ws: &WebhookSubscription,
    pool: &PgPool,
    actor: &Actor,
    inputs: Inputs<'_>,
) -> Result<Report, crate::Error> {
    let desired = match validate::validate(&ws.spec) {
        Ok(d) => d,
        Err(invalid) => return Ok(stalled("InvalidSpec", invalid.to_string()).into()),
    };
    let field = secret_field(ws);
    let Some(key) = inputs.key else {
        return Ok(stalled(
            "EncryptionKeyMissing",
            format!(
                "{field}: the operator has no encryption key (--encryption-key-secret), so it cannot store a \
                 signing secret"
            ),
        )
        .into());
    };
    let bytes = match &inputs.secret {
        SigningSecret::Found(bytes) => bytes.as_slice(),
        SigningSecret::SecretMissing { secret } => {
            return Ok(report::waiting(
                "SecretNotFound",
                format!("{field}: Secret {secret:?} does not exist in this namespace"),
            )
            .into());
        }
        SigningSecret::KeyMissing { secret, key } => {
            return Ok(report::waiting(
                "SecretKeyNotFound",
                format!("{field}: Secret {secret:?} has no key {key:?}"),
            )
            .into());
        }
        SigningSecret::NotMarked { secret } => {
            use countersign_crds::labels::{SECRET_USE, SECRET_USE_WEBHOOK_SIGNING};
            return Ok(stalled(
                "SecretNotMarked",
                format!(
                    "{field}: Secret {secret:?} is not labelled {SECRET_USE}={SECRET_USE_WEBHOOK_SIGNING}, so the \
                     operator does not sign with it; whoever may edit that Secret labels it to allow this use"
                ),
            )
            .into());
        }
        SigningSecret::NotOwned { secret } => {
            return Ok(stalled(
                "SecretNotOwned",
                format!(
                    "{field}: Secret {secret:?} already exists and is not controlled by this WebhookSubscription; \
                     delete it so the operator can generate one, or name it in spec.signingSecretRef"
                ),
            )
            .into());
        }
    };
    if bytes.len() < MIN_SECRET_BYTES {
        return Ok(stalled(
            "SecretTooShort",
            format!("{field}: the signing secret must be at least {MIN_SECRET_BYTES} bytes"),
        )
        .into());
    }
    let fingerprint = key.fingerprint(bytes);
    let uid = ws.metadata.uid.clone().unwrap_or_default();
    let namespace = ws.metadata.namespace.clone().unwrap_or_default();
    let digest = crate::digest::intent_digest(&ws.metadata, &ws.spec)?;
    let observed = resolve::observe(pool, &uid, &desired.tenant_name, &desired.url).await?;
    let tenant_name = desired.tenant_name.clone();
    let tenant_slug = observed.tenant.as_ref().map(|t| t.slug.clone()).unwrap_or_default();
    let events = desired.events.clone();
    let plan = plan::plan(
        desired,
        &observed,
        &plan::Subject {
            namespace: &namespace,
            digest: &digest,
            adopt: annotation(ws, annotations::ADOPT).is_some_and(|v| v == "true"),
            secret_fingerprint: &fingerprint,
        },
    );
    let stored_fp = observed.stored_secret_fingerprint.clone();
    let verification = Verification {
        ws,
        secret: bytes,
        fingerprint: &fingerprint,
        tenant_slug: &tenant_slug,
        events: &events,
        outbound: inputs.outbound,
    };
    let w = match plan {
        Plan::WaitForTenant => {
            return Ok(report::waiting(
                "WaitingForDependency",
                format!("spec.tenantRef: tenant {tenant_name:?} is not live in the API database yet"),
            )
            .into());
        }
        Plan::NotPermitted { tenant_slug } => {
            let existing = observed.ours.as_ref().map(|(row, _)| row.id);
            return Ok(report::not_permitted(&tenant_slug, &namespace, existing).into());
        }
        Plan::AlreadyExists { row_id } => {
            return Ok(refused(
                "AlreadyExists",
                format!(
                    "spec.url: tenant {tenant_name:?} already has a subscription to this URL (id {row_id}) that \
                     Countersign does not manage; set the annotation {}=\"true\" to adopt it",
                    annotations::ADOPT
                ),
            )
            .into());
        }
        Plan::Conflict { owner } => {
            return Ok(Outcome {
                requeue_after: Some(CONFLICT_REQUEUE),
                ..refused(
                    "Conflict",
                    format!(
                        "spec.url: tenant {tenant_name:?} already subscribes this URL through WebhookSubscription \
                         {owner:?}; a URL is subscribed once per tenant"
                    ),
                )
            }
            .into());
        }
        Plan::Noop { row_id } => {
            let live = report::live(&subject(ws), row_id.to_string(), &digest);
            let report = Report {
                outcome: report::with_approval(live, None, inputs.approvals.may_apply(), &digest),
                secret_fingerprint: Some(stored_fp),
                rotation_token: Some(inputs.rotation_token),
                verification: None,
            };
            return Ok(verification.run(report, row_id, false).await);
        }
        Plan::Write(w) => *w,
    };
    let drift_corrected = match (w.cause, &observed.ours) {
        (Cause::DriftCorrected, Some((row, _))) => w.values.differences(row),
        _ => Vec::new(),
    };
    // The platform calls this URL later; a URL the outbound policy refuses
    // (scheme, allowlist, or a name resolving to an internal address) is
    // refused when declared, not only when a test delivery is asked for.
    // A name that does not resolve from here is not judged: the platform's
    // network may see it.
    if matches!(w.cause, Cause::Create | Cause::SpecChanged | Cause::Adopted)
        && let Some(client) = inputs.outbound
        && let Err(refusal) = client.vet(&ws.spec.url).await
        && refusal.is_policy_refusal()
    {
        return Ok(stalled(
            "OutboundRefused",
            format!("spec.url: {}: {refusal}; nothing was written", refusal.reason()),
        )
        .into());
    }
    let planned = report::Planned {
        kind: KIND,
        meta: &ws.metadata,
        operation: w.cause.intent().operation(),
        digest: &digest,
        spec: serde_json::to_value(&ws.spec)?,
        not_live: format!("{} is not created", subject(ws)),
        floor: false,
        held_create: report::HeldCreate::NotWritten,
    };
    let (approved, approval_applies) = match report::pass(pool, inputs.approvals, planned, actor).await? {
        report::Passage::Go {
            approved,
            approval_applies,
        } => (approved, approval_applies),
        report::Passage::Held(held) | report::Passage::HeldStored(held) => {
            // A changed secret does not wait behind a review of the
            // subscription: the old one must stop working at once. The
            // approved configuration is written back unchanged with it.
            // Only the generated secret rotates alongside a held change:
            // a spec naming a different Secret is itself what waits.
            let rides_along = w.rotate_secret && w.cause == Cause::SpecChanged && ws.spec.signing_secret_ref.is_none();
            let rotated = match (&observed.ours, rides_along) {
                (Some((row, owner)), true) => {
                    let rotation = Write {
                        row_id: Some(row.id),
                        values: Values::of_row(row),
                        cause: Cause::SecretRotated,
                        rotate_secret: true,
                    };
                    let sealed = seal(key, bytes)?;
                    let who = attribution(ws, actor, owner.digest.clone(), None);
                    apply::write(pool, &rotation, Some(&sealed), &who).await?;
                    Some(sealed.fingerprint)
                }
                _ => None,
            };
            let fingerprint_now = rotated.or(stored_fp);
            return Ok(Report {
                outcome: held,
                secret_fingerprint: Some(fingerprint_now.clone()),
                // The token is live only once its secret is.
                rotation_token: (fingerprint_now.as_deref() == Some(fingerprint.as_str()))
                    .then_some(inputs.rotation_token),
                verification: None,
            });
        }
    };
    let sealed = if w.rotate_secret { Some(seal(key, bytes)?) } else { None };
    let written_fp = sealed.as_ref().map(|s| s.fingerprint.clone()).or(stored_fp);
    let approver = approved.as_ref().map(|a| a.approver.clone());
    let who = attribution(ws, actor, digest.clone(), approved);
    let row_id = apply::write(pool, &w, sealed.as_ref(), &who).await?;
    let live = report::live(&subject(ws), row_id.to_string(), &digest);
    let report = Report {
        outcome: Outcome {
            drift_corrected,
            ..report::with_approval(live, approver, approval_applies, &digest)
        },
        secret_fingerprint: Some(written_fp),
        rotation_token: Some(inputs.rotation_token),
        verification: None,
    };
    Ok(verification.run(report, row_id, true).await)
}

/// Seals the signing secret for a new `encrypted_secrets` row.
fn seal(key: &SecretKey, bytes: &[u8]) -> Result<crate::secrets::Sealed, crate::Error> {
    key.seal(Uuid::new_v4(), bytes)
        .map_err(|e| crate::Error::Secret(e.to_string()))
}

/// What the test delivery of a live subscription needs.
struct Verification<'a> {
    ws: &'a WebhookSubscription,
    secret: &'a [u8],
    fingerprint: &'a str,
    tenant_slug: &'a str,
    events: &'a [String],
    outbound: Option<&'a OutboundClient>,
}

impl Verification<'_> {
    /// Adds the test delivery's result to a live report when one is due
    /// (`rewritten`: the row was just written). A failed delivery is
    /// reported in `Verified` and leaves `Ready` alone: the subscription is
    /// live, and the platform retries deliveries by itself.
    async fn run(&self, mut report: Report, row_id: Uuid, rewritten: bool) -> Report {
        let ws = self.ws;
        if !ws.spec.verify {
            report.outcome.drop_conditions.push(VERIFIED);
            report.verification = Some(None);
            return report;
        }
        let previous = ws.status.as_ref().and_then(|s| s.verification.as_ref());
        let generation = ws.metadata.generation;
        let now = chrono::Utc::now();
        if !verify::due(true, previous, generation, self.fingerprint, rewritten, now) {
            if let Some(wait) = verify::retry_in(previous, now) {
                report.outcome.requeue_after = Some(wait);
            }
            return report;
        }
        let subscription_id = row_id.to_string();
        let target = verify::Target {
            url: &ws.spec.url,
            subscription_id: &subscription_id,
            tenant: self.tenant_slug,
            events: self.events,
            generation,
            secret_fingerprint: self.fingerprint,
        };
        let (delivery_id, at, answer) = verify::deliver(self.outbound, self.secret, &target).await;
        let (condition, status) = verify::result(&answer, &delivery_id, &target, at);
        if !status.delivered {
            report.outcome.requeue_after = Some(verify::RETRY_FAILED_AFTER);
        }
        tracing::info!(kind = KIND, object = %object_key(ws), delivery = %delivery_id,
            reason = condition.reason, "signed test delivery sent");
        report.outcome.conditions.push(condition);
        report.verification = Some(Some(status));
        report
    }
}

/// Passes the deletion of a WebhookSubscription through the two-person rule.
pub async fn deletion_gate(
    ws: &WebhookSubscription,
    pool: &PgPool,
    actor: &Actor,
    approvals: &approval::Inputs,
) -> Result<DeletionGate, crate::Error> {
    let deleting = report::Deleting {
        kind: KIND,
        object_key: object_key(ws),
        uid: ws.metadata.uid.as_deref().unwrap_or_default(),
        annotations: ws.metadata.annotations.as_ref(),
        spec: serde_json::to_value(&ws.spec)?,
        subject: subject(ws),
    };
    report::deletion_gate(pool, approvals, deleting, actor).await
}

/// Soft-deletes the row and revokes its signing secret, carrying out an
/// approval when one was needed.
pub async fn cleanup(
    ws: &WebhookSubscription,
    pool: &PgPool,
    actor: &Actor,
    approved: Option<ApprovedChange>,
) -> Result<(), crate::Error> {
    apply::remove(pool, &attribution(ws, actor, String::new(), approved)).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use countersign_crds::ConditionStatus;
    use countersign_crds::status::READY;

    #[test]
    fn the_secret_never_shows_in_debug_output() {
        let s = SigningSecret::Found(b"super-secret-value".to_vec());
        assert_eq!(format!("{s:?}"), "Found(<redacted>)");
    }

    #[test]
    fn a_report_keeps_what_it_does_not_mention() {
        let previous = WebhookSubscriptionStatus {
            secret_fingerprint: Some("hmac-sha256:aa".into()),
            last_rotation_token: Some("r1".into()),
            verification: Some(WebhookVerificationStatus {
                delivery_id: "d".into(),
                delivered: true,
                ..Default::default()
            }),
            ..Default::default()
        };
        let waiting: Report = report::waiting("WaitingForDependency", "m".into()).into();
        let status = waiting.status(Some(&previous), Some(1), "t");
        assert_eq!(status.secret_fingerprint, previous.secret_fingerprint);
        assert_eq!(status.last_rotation_token, previous.last_rotation_token);
        assert_eq!(status.verification, previous.verification);
        assert_eq!(
            status.common.condition(READY).map(|c| c.status),
            Some(ConditionStatus::False)
        );
        let cleared = Report {
            verification: Some(None),
            rotation_token: Some(None),
            ..waiting
        }
        .status(Some(&previous), Some(1), "t");
        assert_eq!((cleared.verification, cleared.last_rotation_token), (None, None));
    }
}
