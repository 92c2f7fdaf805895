//! The IdentityProvider pipeline: resolve → validate → plan → check the
//! provider over the network → two-person gate → apply → status.

pub mod apply;
pub mod plan;
pub mod resolve;
pub mod validate;

use crate::approval::{self, ApprovedChange};
use crate::audit::Actor;
use crate::outcome::{Desired, Outcome};
use crate::report::{self, CONFLICT_REQUEUE, cond, refused, stalled};
use crate::secrets::SecretKey;
use apply::{Attribution, Removal, RemovalMode};
use countersign_crds::approval_policy::Operation;
use countersign_crds::identity_provider::{
    IdentityProviderStatus, IdpDeletionPolicy, OidcDiscoveryStatus, SamlMetadataStatus,
};
use countersign_crds::status::{READY, RECONCILING, STALLED};
use countersign_crds::{ConditionStatus, IdentityProvider, annotations};
use plan::{ACTIVE, PENDING_APPROVAL, Plan};
use sqlx::PgPool;
use std::future::Future;
use std::time::Duration;
use validate::Protocol;

pub use crate::report::{DeletionGate, failed};

/// The kind name used in ownership records and the audit log.
pub const KIND: &str = "IdentityProvider";

/// How soon a provider whose checks failed is checked again.
const RECHECK_AFTER_FAILURE: Duration = Duration::from_secs(60);

/// The client secret the spec references, as the operator found it.
#[derive(Clone, PartialEq, Eq)]
pub enum ClientSecret {
    /// SAML providers have none.
    NotNeeded,
    /// The Secret and key exist; these are the bytes.
    Found(Vec<u8>),
    /// The Secret does not exist.
    SecretMissing {
        /// Secret name.
        secret: String,
    },
    /// The Secret exists but lacks the key.
    KeyMissing {
        /// Secret name.
        secret: String,
        /// The missing key.
        key: String,
    },
}

impl std::fmt::Debug for ClientSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Found(_) => f.write_str("Found(<redacted>)"),
            Self::NotNeeded => f.write_str("NotNeeded"),
            Self::SecretMissing { secret } => write!(f, "SecretMissing({secret})"),
            Self::KeyMissing { secret, key } => write!(f, "KeyMissing({secret}/{key})"),
        }
    }
}

/// Checks a provider over the network before it goes live (through the
/// outbound policy; see `crate::discovery`).
pub trait ProviderChecks: Sync {
    /// OIDC discovery and JWKS for `issuer`.
    fn oidc(&self, issuer: &str) -> impl Future<Output = OidcDiscoveryStatus> + Send;
    /// SAML metadata at `metadata_url`, compared with the declared entity ID and SSO URL.
    fn saml(
        &self,
        metadata_url: &str,
        entity_id: &str,
        sso_url: &str,
    ) -> impl Future<Output = SamlMetadataStatus> + Send;
}

/// What one reconcile needs besides the object and the database.
pub struct Inputs<'a, C> {
    /// The two-person rule's inputs.
    pub approvals: &'a approval::Inputs,
    /// The client secret.
    pub secret: ClientSecret,
    /// The operator's encryption key, if configured.
    pub key: Option<&'a SecretKey>,
    /// The network checks.
    pub checks: &'a C,
}

/// The check results of one reconcile, if the checks ran.
#[derive(Default)]
struct Checked {
    discovery: Option<OidcDiscoveryStatus>,
    saml_metadata: Option<SamlMetadataStatus>,
}

/// The result of one reconcile: the shared outcome plus the IdP's own status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// Conditions and live state.
    pub outcome: Outcome,
    /// New secret fingerprint; None keeps the previous value.
    pub secret_fingerprint: Option<Option<String>>,
    /// New discovery result; None keeps the previous value.
    pub discovery: Option<OidcDiscoveryStatus>,
    /// New SAML result; None keeps the previous value.
    pub saml_metadata: Option<SamlMetadataStatus>,
}

impl From<Outcome> for Report {
    fn from(outcome: Outcome) -> Self {
        Self {
            outcome,
            secret_fingerprint: None,
            discovery: None,
            saml_metadata: None,
        }
    }
}

impl Report {
    /// The status the object should carry after this reconcile.
    pub fn status(
        &self,
        previous: Option<&IdentityProviderStatus>,
        generation: Option<i64>,
        now: &str,
    ) -> IdentityProviderStatus {
        let prev = previous.cloned().unwrap_or_default();
        IdentityProviderStatus {
            common: self.outcome.status(previous.map(|p| &p.common), generation, now),
            secret_fingerprint: self.secret_fingerprint.clone().unwrap_or(prev.secret_fingerprint),
            discovery: self.discovery.clone().or(prev.discovery),
            saml_metadata: self.saml_metadata.clone().or(prev.saml_metadata),
        }
    }
}

fn subject(name: &str) -> String {
    format!("identity provider {name:?}")
}

fn annotation<'a>(idp: &'a IdentityProvider, key: &str) -> Option<&'a String> {
    report::annotation(idp.metadata.annotations.as_ref(), key)
}

fn attribution(idp: &IdentityProvider, actor: &Actor, digest: String, approval: Option<ApprovedChange>) -> Attribution {
    Attribution::of(&idp.metadata, actor, digest, approval)
}

fn object_key(idp: &IdentityProvider) -> String {
    format!(
        "{}/{}",
        idp.metadata.namespace.as_deref().unwrap_or_default(),
        idp.metadata.name.as_deref().unwrap_or_default()
    )
}

/// Brings the database in line with the IdentityProvider.
pub async fn reconcile<C: ProviderChecks>(
    idp: &IdentityProvider,
    pool: &PgPool,
    actor: &Actor,
    inputs: Inputs<'_, C>,
) -> Result<Report, crate::Error> {
    let desired = match validate::validate(&idp.spec) {
        Ok(d) => d,
        Err(invalid) => return Ok(stalled("InvalidSpec", invalid.to_string()).into()),
    };
    let name = desired.name.clone();
    let secret_fp_and_bytes = match (&desired.protocol, &inputs.secret) {
        (Protocol::Saml(_), _) | (_, ClientSecret::NotNeeded) => None,
        (Protocol::Oidc(_), ClientSecret::Found(bytes)) => {
            let Some(key) = inputs.key else {
                return Ok(stalled(
                    "EncryptionKeyMissing",
                    "spec.oidc.clientSecret: the operator has no encryption key (--encryption-key-secret), \
                     so it cannot store a client secret"
                        .into(),
                )
                .into());
            };
            Some((key.fingerprint(bytes), bytes.as_slice(), key))
        }
        (Protocol::Oidc(_), ClientSecret::SecretMissing { secret }) => {
            return Ok(report::waiting(
                "SecretNotFound",
                format!("spec.oidc.clientSecret: Secret {secret:?} does not exist in this namespace"),
            )
            .into());
        }
        (Protocol::Oidc(_), ClientSecret::KeyMissing { secret, key }) => {
            return Ok(report::waiting(
                "SecretKeyNotFound",
                format!("spec.oidc.clientSecret: Secret {secret:?} has no key {key:?}"),
            )
            .into());
        }
    };
    let uid = idp.metadata.uid.clone().unwrap_or_default();
    let namespace = idp.metadata.namespace.clone().unwrap_or_default();
    let digest = crate::digest::intent_digest(&idp.metadata, &idp.spec)?;
    let observed = resolve::observe(pool, &uid, &desired.tenant_name, &desired.name).await?;
    let tenant_name = desired.tenant_name.clone();
    let plan = plan::plan(
        desired,
        &observed,
        &plan::Subject {
            uid: &uid,
            namespace: &namespace,
            digest: &digest,
            adopt: annotation(idp, annotations::ADOPT).is_some_and(|v| v == "true"),
            secret_fingerprint: secret_fp_and_bytes.as_ref().map(|(fp, _, _)| fp.as_str()),
        },
    );
    let stored_fp = observed.stored_secret_fingerprint.clone();
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
            return Ok(Outcome {
                requeue_after: None,
                ..refused(
                    "AlreadyExists",
                    format!(
                        "spec.displayName: tenant {tenant_name:?} already has an identity provider named {name:?} \
                         (id {row_id}) that Countersign does not manage; set the annotation {}=\"true\" to adopt it",
                        annotations::ADOPT
                    ),
                )
            }
            .into());
        }
        Plan::Conflict { owner } => {
            return Ok(Outcome {
                requeue_after: Some(CONFLICT_REQUEUE),
                ..refused(
                    "Conflict",
                    format!(
                        "spec.displayName: tenant {tenant_name:?} already has an identity provider named {name:?}, \
                         managed by IdentityProvider {owner:?}; names are unique per tenant"
                    ),
                )
            }
            .into());
        }
        Plan::Noop { row_id } => {
            let mut report: Report = report::live(&subject(&name), row_id.to_string(), &digest).into();
            report.secret_fingerprint = Some(stored_fp);
            report.outcome = report::with_approval(report.outcome, None, inputs.approvals.may_apply(), &digest);
            return Ok(report);
        }
        Plan::Write(w) => *w,
    };
    let drift_corrected = match (w.cause, &observed.ours) {
        (plan::Cause::DriftCorrected, Some((row, _))) => w.values.differences(row),
        _ => Vec::new(),
    };
    // Check the provider before a new configuration can reach anyone.
    // What the checks found; carried into every report from here on.
    let mut checked = Checked::default();
    if w.cause.changes_configuration() {
        let failed = match &w.values.idp.protocol {
            Protocol::Oidc(o) => {
                let result = inputs.checks.oidc(&o.issuer_url).await;
                let failed = (!crate::discovery::oidc_passed(&result)).then(|| result.errors.join("; "));
                checked.discovery = Some(OidcDiscoveryStatus {
                    observed_generation: idp.metadata.generation,
                    ..result
                });
                failed
            }
            Protocol::Saml(s) => {
                let result = inputs.checks.saml(&s.metadata_url, &s.entity_id, &s.sso_url).await;
                let failed = (!crate::discovery::saml_passed(&result)).then(|| result.errors.join("; "));
                checked.saml_metadata = Some(SamlMetadataStatus {
                    observed_generation: idp.metadata.generation,
                    ..result
                });
                failed
            }
        };
        if let Some(errors) = failed {
            let what = if w.row_id.is_some() && !w.is_create {
                "the previous configuration stays live"
            } else {
                "nothing was made live"
            };
            let message = crate::conditions::truncate(
                &format!("the provider failed its pre-flight checks ({what}): {errors}"),
                1024,
            );
            return Ok(Report {
                outcome: Outcome {
                    conditions: vec![
                        cond(READY, ConditionStatus::False, "DiscoveryFailed", message.clone()),
                        report::database_read(),
                        cond(RECONCILING, ConditionStatus::True, "DiscoveryFailed", message),
                        cond(STALLED, ConditionStatus::False, "DiscoveryFailed", ""),
                    ],
                    live: Desired::Unchanged,
                    requeue_after: Some(RECHECK_AFTER_FAILURE),
                    pending_digest: Some(None),
                    drop_conditions: Vec::new(),
                    drift_corrected: Vec::new(),
                },
                secret_fingerprint: Some(stored_fp),
                discovery: checked.discovery.clone(),
                saml_metadata: checked.saml_metadata.clone(),
            });
        }
    }
    let planned = report::Planned {
        kind: KIND,
        meta: &idp.metadata,
        operation: if w.is_create {
            Some(Operation::Create)
        } else {
            w.cause.intent().operation()
        },
        digest: &digest,
        spec: serde_json::to_value(&idp.spec)?,
        not_live: format!("{} is stored {PENDING_APPROVAL} and not exposed", subject(&name)),
        // The floor: a new or changed provider always waits.
        floor: true,
        held_create: if w.cause == plan::Cause::Adopted {
            report::HeldCreate::NotWritten
        } else {
            report::HeldCreate::StoredPending
        },
    };
    let (approved, approval_applies, status, hold) = match report::pass(pool, inputs.approvals, planned, actor).await? {
        report::Passage::Go {
            approved,
            approval_applies,
        } => (approved, approval_applies, ACTIVE, None),
        report::Passage::HeldStored(outcome) => (None, true, PENDING_APPROVAL, Some(outcome)),
        report::Passage::Held(outcome) => {
            // The approved configuration (or, for a take-over, the row as its
            // maker left it) stays live and untouched.
            return Ok(Report {
                outcome,
                secret_fingerprint: Some(stored_fp),
                discovery: checked.discovery.clone(),
                saml_metadata: checked.saml_metadata.clone(),
            });
        }
    };
    // A pending row already holding exactly this request needs no write.
    let pending_current = status == PENDING_APPROVAL
        && !w.rotate_secret
        && observed
            .ours
            .as_ref()
            .is_some_and(|(row, owner)| w.values.matches(row) && owner.digest == digest && row.status == status);
    let mut written_fp = stored_fp;
    if !pending_current {
        let sealed = match (&secret_fp_and_bytes, w.rotate_secret) {
            (Some((_, bytes, key)), true) => Some(
                key.seal(uuid::Uuid::new_v4(), bytes)
                    .map_err(|e| crate::Error::Secret(e.to_string()))?,
            ),
            _ => None,
        };
        if let Some(s) = &sealed {
            written_fp = Some(s.fingerprint.clone());
        }
        let approver = approved.as_ref().map(|a| a.approver.clone());
        let who = attribution(idp, actor, digest.clone(), approved);
        let row_id = apply::write(pool, &w, status, sealed.as_ref(), &who).await?;
        if hold.is_none() {
            let live = report::live(&subject(&name), row_id.to_string(), &digest);
            return Ok(Report {
                outcome: Outcome {
                    drift_corrected,
                    ..report::with_approval(live, approver, approval_applies, &digest)
                },
                secret_fingerprint: Some(written_fp),
                discovery: checked.discovery.clone(),
                saml_metadata: checked.saml_metadata.clone(),
            });
        }
    }
    Ok(Report {
        outcome: hold.unwrap_or_else(|| report::live(&subject(&name), String::new(), &digest)),
        secret_fingerprint: Some(written_fp),
        discovery: checked.discovery.clone(),
        saml_metadata: checked.saml_metadata.clone(),
    })
}

fn removal_mode(policy: IdpDeletionPolicy) -> RemovalMode {
    match policy {
        IdpDeletionPolicy::Delete => RemovalMode::Delete,
        IdpDeletionPolicy::Cascade => RemovalMode::Cascade,
        IdpDeletionPolicy::Orphan => RemovalMode::Orphan,
    }
}

/// Passes the deletion of an IdentityProvider through its checks: a provider
/// that group mappings still reference is not deleted (reason `InUse`) unless
/// its deletion policy cascades; then the two-person rule.
pub async fn deletion_gate(
    idp: &IdentityProvider,
    pool: &PgPool,
    actor: &Actor,
    approvals: &approval::Inputs,
) -> Result<DeletionGate, crate::Error> {
    let uid = idp.metadata.uid.clone().unwrap_or_default();
    if idp.spec.deletion_policy == IdpDeletionPolicy::Delete
        && let Some(owner) = crate::db::owned_by_object(pool, KIND, &uid).await?
    {
        let in_use = resolve::mappings_referencing(pool, owner.row_id).await?;
        if in_use > 0 {
            return Ok(DeletionGate::Hold(in_use_outcome(&idp.spec.display_name, in_use)));
        }
    }
    let deleting = report::Deleting {
        kind: KIND,
        object_key: object_key(idp),
        uid: &uid,
        annotations: idp.metadata.annotations.as_ref(),
        spec: serde_json::to_value(&idp.spec)?,
        subject: subject(&idp.spec.display_name),
    };
    report::deletion_gate(pool, approvals, deleting, actor).await
}

fn in_use_outcome(name: &str, mappings: i64) -> Outcome {
    let message = format!(
        "{} cannot be deleted: {mappings} group mapping(s) still reference it; delete them first or set \
         spec.deletionPolicy: Cascade",
        subject(name)
    );
    Outcome {
        conditions: vec![
            cond(READY, ConditionStatus::True, "InUse", message.clone()),
            report::database_read(),
            cond(RECONCILING, ConditionStatus::False, "InUse", ""),
            cond(STALLED, ConditionStatus::True, "InUse", message),
        ],
        live: Desired::Unchanged,
        requeue_after: None,
        pending_digest: Some(None),
        drop_conditions: Vec::new(),
        drift_corrected: Vec::new(),
    }
}

/// Handles deletion according to the deletion policy, carrying out an
/// approval in the same transaction when one was needed. Err(outcome) when
/// mappings appeared since the gate looked.
pub async fn cleanup(
    idp: &IdentityProvider,
    pool: &PgPool,
    actor: &Actor,
    approved: Option<ApprovedChange>,
) -> Result<Result<(), Outcome>, crate::Error> {
    let who = attribution(idp, actor, String::new(), approved);
    Ok(
        match apply::remove(pool, removal_mode(idp.spec.deletion_policy), &who).await? {
            Removal::Done => Ok(()),
            Removal::InUse(n) => Err(in_use_outcome(&idp.spec.display_name, n)),
        },
    )
}
