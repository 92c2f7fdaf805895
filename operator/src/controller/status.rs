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

/// Implements [`WithStatus`] for a kind whose status is the shared
/// `ResourceStatus`, or (with a second argument) a status type that
/// flattens it into a field `common`.
macro_rules! with_status {
    ($kind:ty) => {
        impl WithStatus for $kind {
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
    ($kind:ty, $status:ident) => {
        impl WithStatus for $kind {
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

with_status!(countersign_crds::ApprovalPolicy, ApprovalPolicyStatus);
with_status!(countersign_crds::Tenant);
with_status!(countersign_crds::GroupMapping);
with_status!(countersign_crds::FrontingLink);
with_status!(countersign_crds::LicenseGrant);
with_status!(countersign_crds::IdentityProvider, IdentityProviderStatus);
with_status!(countersign_crds::WebhookSubscription, WebhookSubscriptionStatus);

/// Writes `new` if it differs from `old`, then records an event for each
/// condition among Ready, Synced, Stalled and Approved whose status or reason
/// flipped (so every approval decision leaves an event).
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
        // Stalled=False and Synced=True are the quiet defaults, not news.
        let quiet = (type_ == STALLED && after.status == ConditionStatus::False)
            || (type_ == SYNCED && after.status == ConditionStatus::True && before.is_none());
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
        if let Err(e) = ctx.recorder.publish(&event, &obj.object_ref(&())).await {
            tracing::warn!(error = %e, "could not record event");
        }
    }
    Ok(())
}
