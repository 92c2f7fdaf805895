//! The WebhookSubscription controller: the Kubernetes half of the signing
//! secret. It generates the secret once into a Secret the subscription owns
//! (or reads the one `spec.signingSecretRef` names), writes a new value when
//! the `countersign.dev/rotate-secret` annotation asks for one, and
//! re-reconciles when that Secret or the Tenant changes. The database half
//! (sealing, storing, revoking, the test delivery) is the pipeline's.

use super::shell::{self, Pass, Reconciled};
use super::watches::{Changes, Feeds};
use super::{Context, FIELD_MANAGER};
use crate::Error;
use countersign_crds::webhook_subscription::{VERIFIED, WebhookSubscriptionStatus};
use countersign_crds::{ConditionStatus, WebhookSubscription, annotations};
use countersign_reconcilers::Outcome;
use countersign_reconcilers::approval::{ApprovedChange, Inputs};
use countersign_reconcilers::report::DeletionGate;
use countersign_reconcilers::webhook_subscription::{self as pipeline, SigningSecret, signing};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The key the generated signing secret is stored under in its Secret.
pub const GENERATED_KEY: &str = "signing-secret";
/// What the generated Secret's name adds to the subscription's name.
const GENERATED_SUFFIX: &str = "-signing-secret";
/// The longest Secret name the API server accepts (a DNS subdomain).
const MAX_NAME: usize = 253;

/// The name of the Secret the operator generates for the subscription
/// `name`: stable, so a restarted operator finds it again instead of
/// generating another.
pub fn generated_secret_name(name: &str) -> String {
    let keep = MAX_NAME - GENERATED_SUFFIX.len();
    let base: String = name.chars().take(keep).collect();
    // A cut name must still end a DNS label with a letter or digit.
    format!("{}{GENERATED_SUFFIX}", base.trim_end_matches(['-', '.']))
}

/// Whether `secret` is controlled by the object with `uid`.
fn controlled_by(secret: &Secret, uid: &str) -> bool {
    secret
        .owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && o.uid == uid)
}

/// A fresh value from the CSPRNG; it goes into the Secret and the pipeline only.
fn fresh_value() -> Result<String, Error> {
    signing::generate_secret().map_err(|e| Error::Reconcile(countersign_reconcilers::Error::Secret(e.to_string())))
}

/// Sets the signing secret and the rotation token it answers on a Secret.
fn put_value(secret: &mut Secret, value: &str, token: Option<&str>) {
    secret
        .data
        .get_or_insert_with(BTreeMap::new)
        .insert(GENERATED_KEY.into(), ByteString(value.as_bytes().to_vec()));
    let annotations = secret.metadata.annotations.get_or_insert_with(BTreeMap::new);
    match token {
        // Recorded on the Secret, in the same write as the value it produced:
        // a crash between this write and the status write cannot make the
        // same token rotate twice.
        Some(t) => annotations.insert(annotations::ROTATE_SECRET.into(), t.into()),
        None => annotations.remove(annotations::ROTATE_SECRET),
    };
}

/// Reads the signing secret, generating or rotating it first when needed.
/// Returns the secret and the rotation token its value answers. The value
/// is never logged.
async fn signing_secret(ws: &WebhookSubscription, ctx: &Context) -> Result<(SigningSecret, Option<String>), Error> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ws.namespace().unwrap_or_default());
    if let Some(reference) = &ws.spec.signing_secret_ref {
        // Someone else's Secret: read it, never write it. Changing it is how
        // it rotates; the rotate-secret annotation does not apply.
        let Some(secret) = api.get_opt(&reference.name).await? else {
            return Ok((
                SigningSecret::SecretMissing {
                    secret: reference.name.clone(),
                },
                None,
            ));
        };
        // Only a Secret labelled for signing is read: naming a Secret one
        // cannot read must not let one sign deliveries to any URL with it.
        let marked = secret
            .labels()
            .get(countersign_crds::labels::SECRET_USE)
            .map(String::as_str)
            == Some(countersign_crds::labels::SECRET_USE_WEBHOOK_SIGNING);
        if !marked {
            return Ok((
                SigningSecret::NotMarked {
                    secret: reference.name.clone(),
                },
                None,
            ));
        }
        return Ok(match secret.data.and_then(|mut d| d.remove(&reference.key)) {
            Some(bytes) => (SigningSecret::Found(bytes.0), None),
            None => (
                SigningSecret::KeyMissing {
                    secret: reference.name.clone(),
                    key: reference.key.clone(),
                },
                None,
            ),
        });
    }
    let name = generated_secret_name(&ws.name_any());
    let uid = ws.uid().unwrap_or_default();
    let wanted = ws.annotations().get(annotations::ROTATE_SECRET).cloned();
    let params = PostParams {
        dry_run: false,
        field_manager: Some(FIELD_MANAGER.into()),
    };
    let Some(mut existing) = api.get_opt(&name).await? else {
        // First visit: generate once. A token already on the object is
        // satisfied by this very value.
        let value = fresh_value()?;
        let mut secret = Secret {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: ws.namespace(),
                // Deleted with the subscription by the garbage collector.
                owner_references: ws.controller_owner_ref(&()).map(|o| vec![o]),
                labels: Some(BTreeMap::from([(
                    "app.kubernetes.io/managed-by".to_string(),
                    "countersign".to_string(),
                )])),
                ..Default::default()
            },
            type_: Some("Opaque".into()),
            ..Default::default()
        };
        put_value(&mut secret, &value, wanted.as_deref());
        // A conflict (another replica created it first) fails this pass;
        // the next one reads what was created.
        api.create(&params, &secret).await?;
        tracing::info!(namespace = ws.namespace(), secret = %name, "generated a webhook signing secret");
        return Ok((SigningSecret::Found(value.into_bytes()), wanted));
    };
    if !controlled_by(&existing, &uid) {
        return Ok((SigningSecret::NotOwned { secret: name }, None));
    }
    let recorded = existing.annotations().get(annotations::ROTATE_SECRET).cloned();
    let rotate = wanted.is_some() && wanted != recorded;
    let current = existing
        .data
        .as_ref()
        .and_then(|d| d.get(GENERATED_KEY))
        .map(|b| b.0.clone());
    match current {
        Some(bytes) if !rotate => Ok((SigningSecret::Found(bytes), recorded)),
        // Rotation asked for, or someone removed the key: a new value,
        // written with the resourceVersion just read so a concurrent writer
        // makes this pass fail instead of being overwritten.
        _ => {
            let token = if rotate { wanted } else { recorded };
            let value = fresh_value()?;
            put_value(&mut existing, &value, token.as_deref());
            api.replace(&name, &params, &existing).await?;
            tracing::info!(namespace = ws.namespace(), secret = %name, rotation = token.as_deref(),
                "wrote a new webhook signing secret");
            Ok((SigningSecret::Found(value.into_bytes()), token))
        }
    }
}

/// Records an event when the `Verified` condition flips (the shared status
/// writer only reports the conditions every kind has): a failing endpoint
/// shows in `kubectl describe`, once, not on every reconcile.
async fn record_verification_event(ws: &WebhookSubscription, new: &WebhookSubscriptionStatus, ctx: &Context) {
    let verdict = |s: Option<&WebhookSubscriptionStatus>| {
        s.and_then(|s| s.common.condition(VERIFIED))
            .map(|c| (c.status, c.reason.clone(), c.message.clone()))
    };
    let Some((status, reason, message)) = verdict(Some(new)) else {
        return;
    };
    if verdict(ws.status.as_ref()).is_some_and(|(s, r, _)| s == status && r == reason) {
        return;
    }
    let event = Event {
        type_: if status == ConditionStatus::True {
            EventType::Normal
        } else {
            EventType::Warning
        },
        reason,
        note: Some(format!("{VERIFIED}={}: {message}", status.as_str())),
        action: "Verify".into(),
        secondary: None,
    };
    super::status::record(ws, &event, ctx).await;
}

impl Reconciled for WebhookSubscription {
    fn api(&self, client: kube::Client) -> Api<Self> {
        Api::namespaced(client, &self.namespace().unwrap_or_default())
    }

    async fn reconcile(
        &self,
        ctx: &Context,
        approvals: &Inputs,
        now: &str,
    ) -> Result<Pass<WebhookSubscriptionStatus>, Error> {
        // With spec.verify, status.verification decides a side effect outside
        // the cluster (a delivery), so it is read fresh: the cached object
        // can lag behind the status this controller wrote a moment ago, and
        // a stale copy would send the same test delivery twice.
        let fresh = if self.spec.verify {
            Reconciled::api(self, ctx.client.clone())
                .get_opt(&self.name_any())
                .await?
                .filter(|f| f.uid() == self.uid())
        } else {
            None
        };
        let ws = fresh.as_ref().unwrap_or(self);
        let (secret, rotation_token) = signing_secret(ws, ctx).await?;
        let inputs = pipeline::Inputs {
            approvals,
            secret,
            rotation_token,
            key: Some(ctx.secret_key.as_ref()),
            outbound: ctx.outbound.as_ref(),
        };
        let report = pipeline::reconcile(ws, &ctx.pool, &ctx.actor, inputs).await?;
        let status = report.status(ws.status.as_ref(), ws.metadata.generation, now);
        record_verification_event(ws, &status, ctx).await;
        Ok(Pass::new(status, &report.outcome))
    }

    async fn deletion_gate(&self, ctx: &Context, approvals: &Inputs) -> Result<DeletionGate, Error> {
        Ok(pipeline::deletion_gate(self, &ctx.pool, &ctx.actor, approvals).await?)
    }

    async fn cleanup(&self, ctx: &Context, approved: Option<ApprovedChange>) -> Result<Result<(), Outcome>, Error> {
        // The generated Secret goes with the object (owner reference).
        pipeline::cleanup(self, &ctx.pool, &ctx.actor, approved).await?;
        Ok(Ok(()))
    }
}

/// The subscriptions in `store` matching `pick`, as reconcile triggers.
fn subscriptions(
    store: &Store<WebhookSubscription>,
    pick: impl Fn(&WebhookSubscription) -> bool,
) -> Vec<ObjectRef<WebhookSubscription>> {
    store
        .state()
        .iter()
        .filter(|ws| pick(ws))
        .map(|ws| ObjectRef::from_obj(ws.as_ref()))
        .collect()
}

/// Whether the Secret `name` holds the subscription's signing secret.
fn uses_secret(ws: &WebhookSubscription, name: &str) -> bool {
    match &ws.spec.signing_secret_ref {
        Some(r) => r.name == name,
        None => generated_secret_name(&ws.name_any()) == name,
    }
}

/// The WebhookSubscription controller, fed by the shared watches; runs until
/// `shutdown` resolves.
pub fn run(
    ctx: Arc<Context>,
    feeds: &mut Feeds,
    policy_changed: impl futures::Stream<Item = ()> + Send + 'static,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> futures::future::BoxFuture<'static, ()> {
    let (controller, store) = shell::controller(
        &ctx,
        &mut feeds.webhook_subscriptions,
        &mut feeds.row_changes,
        policy_changed,
    );
    let (by_secret, by_tenant) = (store.clone(), store.clone());
    let controller = controller
        // Secrets are watched by metadata only: the operator learns that a
        // Secret changed (a referenced one edited, a generated one deleted)
        // without holding every Secret's data in memory.
        .watches_shared_stream(feeds.secrets.subscribe(Changes::All), move |secret| {
            let (ns, name) = (secret.namespace(), secret.name_any());
            subscriptions(&by_secret, |ws| ws.namespace() == ns && uses_secret(ws, &name))
        })
        // A tenant going live, or changing its allowed namespaces, decides
        // whether waiting or refused subscriptions may proceed.
        .watches_shared_stream(feeds.tenants.subscribe(Changes::All), move |tenant| {
            let name = tenant.name_any();
            subscriptions(&by_tenant, |ws| ws.spec.tenant_ref.name == name)
        });
    shell::run(controller, ctx, shutdown)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_names_are_stable_and_valid() {
        assert_eq!(generated_secret_name("hooks"), "hooks-signing-secret");
        let long = format!("{}-x", "a".repeat(300));
        let cut = generated_secret_name(&long);
        assert!(cut.len() <= MAX_NAME, "{}", cut.len());
        assert!(cut.ends_with(GENERATED_SUFFIX));
        let dashy = format!("{}-{}", "a".repeat(MAX_NAME - GENERATED_SUFFIX.len() - 1), "b");
        assert!(!generated_secret_name(&dashy).contains("--signing"));
    }

    #[test]
    fn a_new_value_records_its_rotation_token_with_it() {
        let mut s = Secret::default();
        put_value(&mut s, "v1", Some("r1"));
        assert_eq!(
            s.annotations().get(annotations::ROTATE_SECRET).map(String::as_str),
            Some("r1")
        );
        assert_eq!(
            s.data
                .as_ref()
                .and_then(|d| d.get(GENERATED_KEY))
                .map(|b| b.0.as_slice()),
            Some(b"v1".as_slice())
        );
        put_value(&mut s, "v2", None);
        assert!(!s.annotations().contains_key(annotations::ROTATE_SECRET));
    }
}
