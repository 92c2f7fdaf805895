//! The status shape every kind shares: kstatus-compatible
//! conditions plus what an approver and an operator need to see.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// Condition type: the declared spec is live in the API database.
pub const READY: &str = "Ready";
/// Condition type: the last reconcile reached the database without error.
pub const SYNCED: &str = "Synced";
/// Condition type: the two-person rule's verdict, only where a policy applies.
pub const APPROVED: &str = "Approved";
/// Condition type (kstatus abnormal-true): work is in progress.
pub const RECONCILING: &str = "Reconciling";
/// Condition type (kstatus abnormal-true): progress needs a spec change.
pub const STALLED: &str = "Stalled";

/// The tri-state of a condition.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum ConditionStatus {
    /// The condition holds.
    True,
    /// The condition does not hold.
    False,
    /// Not known yet.
    Unknown,
}

impl ConditionStatus {
    /// The wire spelling, as kubectl shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::True => "True",
            Self::False => "False",
            Self::Unknown => "Unknown",
        }
    }
}

impl From<bool> for ConditionStatus {
    fn from(holds: bool) -> Self {
        if holds { Self::True } else { Self::False }
    }
}

/// One observation about the object, shaped like metav1.Condition.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Condition type: Ready, Synced, Approved, Reconciling or Stalled.
    #[serde(rename = "type")]
    pub type_: String,
    /// True, False or Unknown.
    pub status: ConditionStatus,
    /// One CamelCase word saying why.
    #[schemars(regex(pattern = "^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"))]
    pub reason: String,
    /// Human-readable detail; names the field and rule when input is rejected.
    pub message: String,
    /// When the status last flipped (RFC 3339); unchanged when only the message changes.
    pub last_transition_time: String,
    /// The metadata.generation this condition was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// The observed state of any Countersign object.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceStatus {
    /// The metadata.generation the controller last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Synced, Approved, Reconciling and Stalled, keyed by type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// The identifier of the row this object manages in the API database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_id: Option<String>,
    /// Digest (SHA-256, hex) of the configuration that is live in the database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live_digest: Option<String>,
    /// Digest of the configuration waiting for a second person's approval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_digest: Option<String>,
}

impl ResourceStatus {
    /// The condition of the given type, if set.
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }
}
