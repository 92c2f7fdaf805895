//! Keeps the audit chain's head anchored outside the database, in a
//! ConfigMap: emptying the log or deleting its last entries then shows as a
//! chain shorter than its anchor (`countersign verify-audit --audit-anchor`).
//!
//! The anchor moves only forward, over entries whose links verify under the
//! operator's key, and at most once per interval: reconciles pay nothing for
//! it, and a burst of writes costs one API write.

use crate::Error;
use crate::controller::FIELD_MANAGER;
use countersign_reconcilers::audit::{self, Advance, Anchor, ChainKey};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use sqlx::PgPool;
use std::future::Future;
use std::time::Duration;

/// Where the anchor is kept and how often it is moved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnchorTarget {
    /// Namespace of the ConfigMap (the operator's own).
    pub namespace: String,
    /// Name of the ConfigMap.
    pub name: String,
    /// How often the log is looked at for new entries.
    pub interval: Duration,
}

/// Splits `namespace/name`.
pub fn parse_reference(option: &str, reference: &str) -> Result<(String, String), Error> {
    match reference.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() => Ok((ns.into(), name.into())),
        _ => Err(Error::Startup(format!("{option} {reference:?} must be namespace/name"))),
    }
}

/// Reads the anchor in `namespace/name`; None when the ConfigMap does not exist.
pub async fn load(client: &Client, namespace: &str, name: &str) -> Result<Option<Anchor>, Error> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let Some(map) = api.get_opt(name).await? else {
        return Ok(None);
    };
    Anchor::from_data(&map.data.unwrap_or_default())
        .map(Some)
        .map_err(|e| Error::Startup(format!("audit anchor {namespace}/{name}: {e}")))
}

async fn store(client: &Client, target: &AnchorTarget, anchor: &Anchor) -> Result<(), kube::Error> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &target.namespace);
    let map = ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some(target.name.clone()),
            ..Default::default()
        },
        data: Some(anchor.to_data()),
        ..Default::default()
    };
    let params = PatchParams::apply(&format!("{FIELD_MANAGER}-audit-anchor")).force();
    api.patch(&target.name, &params, &Patch::Apply(&map)).await?;
    Ok(())
}

/// Moves the anchor forward every `target.interval` until `stop` resolves.
/// An anchor that is malformed or not written under `key` is never replaced,
/// nor one the log no longer extends: both are logged as errors and left as
/// evidence for `verify-audit`.
pub async fn keep(client: Client, pool: PgPool, key: ChainKey, target: AnchorTarget, stop: impl Future<Output = ()>) {
    tokio::pin!(stop);
    let reference = format!("{}/{}", target.namespace, target.name);
    let mut current = loop {
        match load(&client, &target.namespace, &target.name).await {
            Ok(anchor) if anchor.as_ref().is_none_or(|a| a.is_authentic(&key)) => break anchor,
            Ok(_) => {
                tracing::error!(anchor = %reference, "the audit anchor was not written under this operator's key; \
                                leaving it as it is and not anchoring");
                return;
            }
            Err(Error::Kube(e)) => tracing::warn!(anchor = %reference, error = %e, "cannot read the audit anchor"),
            Err(e) => {
                tracing::error!(anchor = %reference, error = %e, "leaving the audit anchor as it is and not anchoring");
                return;
            }
        }
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(target.interval) => {}
        }
    };
    let mut reported = None;
    loop {
        match audit::advance(&pool, &key, current.as_ref()).await {
            Ok(Advance::Unchanged) => {}
            Ok(Advance::To(next)) => match store(&client, &target, &next).await {
                Ok(()) => current = Some(next),
                Err(e) => tracing::warn!(anchor = %reference, error = %e, "cannot move the audit anchor; retrying"),
            },
            Ok(Advance::Refused(broken)) => {
                // Once per finding: the next look would only say it again.
                if reported.as_ref() != Some(&broken) {
                    tracing::error!(anchor = %reference, seq = broken.seq, problem = %broken.problem,
                                    "the audit log does not extend its anchored head; the anchor stays");
                    reported = Some(broken);
                }
            }
            Err(e) => tracing::warn!(anchor = %reference, error = %e.public_message(), "cannot read the audit log"),
        }
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(target.interval) => {}
        }
    }
}
