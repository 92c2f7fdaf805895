//! Who and what a write is attributed to, the same for every kind: the
//! ownership record and the audit entry are built from it.

use crate::approval::ApprovedChange;
use crate::audit::{Actor, ChainKey, Entry};
use crate::db::Ownership;
use countersign_crds::annotations;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

/// Who and what a write is attributed to.
#[derive(Clone, Debug)]
pub struct Attribution {
    /// The operator's identity, recorded as actor.
    pub actor: String,
    /// The key the write's audit entry is chained under.
    pub chain: ChainKey,
    /// Who asked for the change: the requested-by annotation, or else the
    /// person who declared it (see [`crate::approval::requester_of`]).
    pub requester: Option<String>,
    /// The account that declared the requester (countersign.dev/declared-by).
    pub declared_by: Option<String>,
    /// uid of the object.
    pub uid: String,
    /// Namespace of the object ('' for cluster-scoped kinds).
    pub namespace: String,
    /// Name of the object.
    pub name: String,
    /// Digest of the spec being written.
    pub digest: String,
    /// The second person's approval this write carries out, if one was needed.
    pub approval: Option<ApprovedChange>,
}

impl Attribution {
    /// The attribution of a write of the object with `meta`.
    pub fn of(meta: &ObjectMeta, actor: &Actor, digest: String, approval: Option<ApprovedChange>) -> Self {
        let annotation = |key: &str| meta.annotations.as_ref().and_then(|a| a.get(key)).map(String::as_str);
        Self {
            actor: actor.name().to_string(),
            chain: actor.key().clone(),
            requester: crate::approval::requester_of(
                annotation(annotations::REQUESTED_BY),
                annotation(annotations::DECLARED_BY),
            )
            .map(str::to_string),
            declared_by: annotation(annotations::DECLARED_BY).map(str::to_string),
            uid: meta.uid.clone().unwrap_or_default(),
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
            digest,
            approval,
        }
    }

    /// namespace/name, or name for cluster-scoped kinds (the audit log's object key).
    pub fn object_key(&self) -> String {
        if self.namespace.is_empty() {
            self.name.clone()
        } else {
            format!("{}/{}", self.namespace, self.name)
        }
    }

    /// The ownership record saying this object manages `row_id` with this digest.
    pub fn ownership(&self, row_id: Uuid) -> Ownership {
        Ownership {
            row_id,
            object_uid: self.uid.clone(),
            object_ns: self.namespace.clone(),
            object_name: self.name.clone(),
            digest: self.digest.clone(),
        }
    }
}

impl Attribution {
    /// Appends the audit entry of a write inside its transaction: who did
    /// what to which row, with which digest, carrying out the approval (the
    /// change request is marked approved and named in the detail).
    pub async fn audit(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        kind: &str,
        action: &str,
        row_id: Uuid,
        digest: &str,
        detail: serde_json::Value,
    ) -> Result<(), crate::Error> {
        let mut entry = Entry::now(kind, &self.object_key(), action, &self.actor);
        entry.row_id = Some(row_id);
        entry.requester = self.requester.clone();
        entry.digest = Some(digest.to_string());
        entry.detail = detail;
        // Beside the requester: the account that declared them (a GitOps
        // account declaring a git author, or the person themselves).
        if let (Some(declared_by), serde_json::Value::Object(detail)) = (&self.declared_by, &mut entry.detail) {
            detail.insert("declared_by".into(), serde_json::json!(declared_by));
        }
        crate::approval::carry_out(tx, self.approval.as_ref(), &mut entry).await?;
        crate::audit::append(tx, &self.chain, &entry).await?;
        Ok(())
    }
}
