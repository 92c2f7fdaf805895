//! Status writes (server-side apply, one field manager, skipped when nothing
//! changed) and events on transitions.

use super::{Context, FIELD_MANAGER};
use countersign_crds::ConditionStatus;
use countersign_crds::ResourceStatus;
use countersign_crds::approval_policy::ApprovalPolicyStatus;
use countersign_crds::identity_provider::IdentityProviderStatus;
use countersign_crds::status::{APPROVED, READY, STALLED, SYNCED};
use countersign_crds::webhook_subscription::WebhookSubscriptionStatus;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt::Debug;

/// A kind whose status carries the shared conditions.
pub trait WithStatus: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug {
    /// The kind name (metrics, logs).
    const KIND: &'static str;
    /// The kind's status type.
    type Status: Serialize + PartialEq + Clone + Debug + Send + Sync;
    /// The part of a status every kind shares.
    fn common(status: &Self::Status) -> &ResourceStatus;
    /// The status the object carries now.
    fn current(obj: &Self) -> Option<&Self::Status>;
    /// `previous` with its shared part replaced by `common` (a kind's own
    /// fields keep their values).
    fn with_common(previous: Option<&Self::Status>, common: ResourceStatus) -> Self::Status;
}

/// Implements [`WithStatus`] for a kind (named as the database records it)
/// whose status is the shared `ResourceStatus`, or (with a third argument) a
/// status type that flattens it into a field `common`.
macro_rules! with_status {
    ($kind:ty, $name:expr) => {
        impl WithStatus for $kind {
            const KIND: &'static str = $name;
            type Status = ResourceStatus;
            fn common(status: &ResourceStatus) -> &ResourceStatus {
                status
            }
            fn current(obj: &Self) -> Option<&ResourceStatus> {
                obj.status.as_ref()
            }
            fn with_common(_previous: Option<&ResourceStatus>, common: ResourceStatus) -> ResourceStatus {
                common
            }
        }
    };
    ($kind:ty, $name:expr, $status:ident) => {
        impl WithStatus for $kind {
            const KIND: &'static str = $name;
            type Status = $status;
            fn common(status: &$status) -> &ResourceStatus {
                &status.common
            }
            fn current(obj: &Self) -> Option<&$status> {
                obj.status.as_ref()
            }
            fn with_common(previous: Option<&$status>, common: ResourceStatus) -> $status {
                $status {
                    common,
                    ..previous.cloned().unwrap_or_default()
                }
            }
        }
    };
}

use countersign_reconcilers as r;
with_status!(
    countersign_crds::ApprovalPolicy,
    r::approval_policy::KIND,
    ApprovalPolicyStatus
);
with_status!(countersign_crds::Tenant, r::tenant::KIND);
with_status!(countersign_crds::GroupMapping, r::group_mapping::KIND);
with_status!(countersign_crds::FrontingLink, r::fronting_link::KIND);
with_status!(countersign_crds::LicenseGrant, r::license_grant::KIND);
with_status!(
    countersign_crds::IdentityProvider,
    r::identity_provider::KIND,
    IdentityProviderStatus
);
with_status!(
    countersign_crds::WebhookSubscription,
    r::webhook_subscription::KIND,
    WebhookSubscriptionStatus
);

/// Writes `new` if it differs from `old`, then records an event for each
/// condition among Ready, Synced, Stalled and Approved whose status or reason
/// flipped (so every approval decision leaves an event), except routine
/// success (Ready=True, a first Synced=True, Stalled=False).
pub async fn write<K: WithStatus>(
    api: &Api<K>,
    obj: &K,
    old: Option<&K::Status>,
    new: &K::Status,
    ctx: &Context,
) -> Result<(), kube::Error> {
    let changed = old != Some(new);
    let full = new;
    let old: Option<&ResourceStatus> = old.map(K::common);
    let new: &ResourceStatus = K::common(new);
    ctx.pending.track(
        &obj.uid().unwrap_or_default(),
        new.pending_digest.is_some(),
        &ctx.metrics,
    );
    ctx.object_states.track(
        K::KIND,
        &obj.uid().unwrap_or_default(),
        Some(super::ObjectState::of(new)),
        &ctx.metrics,
    );
    if !changed {
        return Ok(());
    }
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": full,
    });
    api.patch_status(
        &obj.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    for type_ in [READY, SYNCED, STALLED, APPROVED] {
        let before = old
            .and_then(|s| s.condition(type_))
            .map(|c| (c.status, c.reason.clone()));
        let Some(after) = new.condition(type_) else {
            continue;
        };
        if before == Some((after.status, after.reason.clone())) {
            continue;
        }
        // Routine success is not news: the status already says so, and an
        // event per object going live would be one more API write per object.
        // Events are for what a person must look at: failures, refusals,
        // approval decisions, a recovery after a reported failure.
        let quiet = (type_ == STALLED && after.status == ConditionStatus::False)
            || (type_ == SYNCED && after.status == ConditionStatus::True && before.is_none())
            || (type_ == READY && after.status == ConditionStatus::True);
        if quiet || after.status == ConditionStatus::Unknown {
            continue;
        }
        let warning = (type_ == READY
            && after.status == ConditionStatus::False
            && new
                .condition(STALLED)
                .is_some_and(|s| s.status == ConditionStatus::True))
            || (type_ == SYNCED && after.status == ConditionStatus::False)
            || (type_ == STALLED && after.status == ConditionStatus::True)
            || (type_ == APPROVED
                && !matches!(after.reason.as_str(), "AwaitingApproval" | "Approved" | "StaleApproval"));
        let event = Event {
            type_: if warning { EventType::Warning } else { EventType::Normal },
            reason: after.reason.clone(),
            note: Some(format!("{type_}={}: {}", after.status.as_str(), after.message)),
            action: "Reconcile".into(),
            secondary: None,
        };
        record(obj, &event, ctx).await;
    }
    Ok(())
}

/// Records `event` on `obj`; an event that cannot be recorded is logged, not
/// a reason to fail the reconcile.
pub async fn record<K: Resource<DynamicType = ()>>(obj: &K, event: &Event, ctx: &Context) {
    if let Err(e) = ctx.recorder.publish(event, &obj.object_ref(&())).await {
        tracing::warn!(error = %e, "could not record event");
    }
}

/// Records that the row of `obj` was edited behind the operator's back and
/// restored: a `Drifted` warning event naming the columns (never their
/// values) and the per-kind drift metric.
pub async fn drift_corrected<K: WithStatus>(obj: &K, columns: &[&str], ctx: &Context) {
    ctx.metrics
        .drift_corrections
        .get_or_create(&crate::metrics::KindLabels { kind: K::KIND.into() })
        .inc();
    let event = Event {
        type_: EventType::Warning,
        reason: "Drifted".into(),
        note: Some(format!(
            "the row in the API database was edited outside Countersign ({}); restored the approved configuration",
            columns.join(", ")
        )),
        action: "CorrectDrift".into(),
        secondary: None,
    };
    record(obj, &event, ctx).await;
}
