//! The two-person rule attacked as its users could attack it, end to end
//! against the real API server and PostgreSQL, people played through
//! impersonation. Each test asserts the refusal a user sees and that the
//! tables the rule protects did not change.

mod common;

use common::approvals::{
    APPROVERS, EDITORS, GITOPS, Stack, approval_annotation, guarded_tables, pending_digest, refused_as_predating,
    stale_approval_events,
};
use common::{has_condition, wait_tenant};
use countersign_crds::Tenant;
use countersign_e2e::unique_name;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use std::time::Duration;

/// Lets the operator see and act on the last change, if it were going to.
async fn settle() {
    tokio::time::sleep(Duration::from_secs(2)).await;
}

/// Attack 3: a reconcile that ends before the gate (here: waiting for a
/// parent) used to leave an older digest in status.pendingDigest; approving
/// it and reverting the spec put live a configuration approved while another
/// was on screen.
#[tokio::test]
async fn a_pending_digest_always_belongs_to_the_spec_on_screen() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let admin: Api<Tenant> = Api::all(stack.admin.clone());
    let gitops = stack.as_user(GITOPS, &["system:serviceaccounts"]).await?;
    let pp = PatchParams::default();
    let name = unique_name("moved");
    stack.gitops_create(&name, "carol@example.com").await?;
    let digest_a = pending_digest(&stack.awaiting(&name).await?);

    // The spec moves on to something that must wait for a parent tenant.
    gitops
        .patch(
            &name,
            &pp,
            &Patch::Merge(json!({"spec": {"parentTenant": "not-there-yet"}})),
        )
        .await?;
    let waiting = wait_tenant(&admin, &name, "waiting without a pending digest", |t| {
        has_condition(t, "Ready", "False", "WaitingForDependency") && pending_digest(t).is_empty()
    })
    .await?;
    assert!(
        common::condition_of(waiting.status.as_ref(), "Approved").is_none(),
        "no decision is shown for a spec that never reached the gate: {:?}",
        waiting.status
    );
    assert_eq!(
        stack.requests(&name).await?,
        [("superseded".into(), "carol@example.com".into(), None)],
        "the request for the old digest can no longer be approved"
    );

    // bob approves the digest he still remembers; nothing happens.
    let before = guarded_tables(&stack.pool).await?;
    stack.approve(&name, "bob", &digest_a).await?;
    settle().await;
    assert_eq!(guarded_tables(&stack.pool).await?, before);

    // Reverting to the old spec makes a new request; the approval given
    // while another spec was on screen does not count for it.
    gitops
        .patch(&name, &pp, &Patch::Merge(json!({"spec": {"parentTenant": null}})))
        .await?;
    refused_as_predating(&stack, &name, &digest_a, 0).await?;
    assert!(stack.rows(&name).await?.is_empty(), "nothing went live");
    assert_eq!(
        common::count(&stack.pool, "audit_log").await?,
        0,
        "no audit entry for a change that was not made"
    );
    let states: Vec<String> = stack.requests(&name).await?.into_iter().map(|r| r.0).collect();
    assert_eq!(states, ["superseded", "pending"]);
    // The spent approval was taken off the object, so bob can approve afresh.
    stack.approve(&name, "bob", &digest_a).await?;
    wait_tenant(&admin, &name, "Ready", |t| has_condition(t, "Ready", "True", "Live")).await?;
    assert_eq!(stack.rows(&name).await?, ["Declared in git"]);
    stack.op.shutdown().await;
    Ok(())
}

/// Attack 4: reverting the spec to a configuration approved once before went
/// live again with nobody approving it, crediting the old approver.
#[tokio::test]
async fn an_approval_is_spent_when_its_change_goes_live() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let admin: Api<Tenant> = Api::all(stack.admin.clone());
    let gitops = stack.as_user(GITOPS, &["system:serviceaccounts"]).await?;
    let pp = PatchParams::default();
    let name = unique_name("replay");
    stack.gitops_create(&name, "carol@example.com").await?;
    let digest_a = pending_digest(&stack.awaiting(&name).await?);
    stack.approve(&name, "bob", &digest_a).await?;
    wait_tenant(&admin, &name, "live and the approval used up", |t| {
        has_condition(t, "Ready", "True", "Live") && approval_annotation(t).is_none()
    })
    .await?;

    gitops
        .patch(&name, &pp, &Patch::Merge(json!({"spec": {"name": "Second"}})))
        .await?;
    let waiting = wait_tenant(&admin, &name, "a pending update", |t| {
        !pending_digest(t).is_empty() && pending_digest(t) != digest_a
    })
    .await?;
    stack.approve(&name, "bob", &pending_digest(&waiting)).await?;
    wait_tenant(&admin, &name, "the update live", |t| {
        has_condition(t, "Approved", "True", "Approved")
            && pending_digest(t).is_empty()
            && approval_annotation(t).is_none()
    })
    .await?;
    assert_eq!(stack.rows(&name).await?, ["Second"]);

    // The committer reverts to the first configuration: a new request.
    let audit_before = common::count(&stack.pool, "audit_log").await?;
    gitops
        .patch(&name, &pp, &Patch::Merge(json!({"spec": {"name": "Declared in git"}})))
        .await?;
    let waiting = wait_tenant(&admin, &name, "the old digest awaiting approval again", |t| {
        has_condition(t, "Approved", "False", "AwaitingApproval") && pending_digest(t) == digest_a
    })
    .await?;
    let ready = common::condition_of(waiting.status.as_ref(), "Ready")
        .cloned()
        .expect("Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("True", "Live"),
        "the approved update stays live"
    );
    assert_eq!(stack.rows(&name).await?, ["Second"]);
    assert_eq!(common::count(&stack.pool, "audit_log").await?, audit_before);
    let states: Vec<String> = stack.requests(&name).await?.into_iter().map(|r| r.0).collect();
    assert_eq!(states, ["approved", "approved", "pending"]);

    // An approval of that digest still lying on the object (as if its removal
    // had failed) was given for the earlier request and does not count.
    let before = guarded_tables(&stack.pool).await?;
    gitops
        .patch(&name, &pp, &Patch::Merge(json!({"spec": {"name": "Second"}})))
        .await?;
    wait_tenant(&admin, &name, "back at the live spec", |t| {
        pending_digest(t).is_empty() && has_condition(t, "Ready", "True", "Live")
    })
    .await?;
    stack.approve(&name, "bob", &digest_a).await?;
    settle().await;
    let events_before = stale_approval_events(&stack, &name).await?.len();
    gitops
        .patch(&name, &pp, &Patch::Merge(json!({"spec": {"name": "Declared in git"}})))
        .await?;
    refused_as_predating(&stack, &name, &digest_a, events_before).await?;
    assert_eq!(stack.rows(&name).await?, ["Second"]);
    let after = guarded_tables(&stack.pool).await?;
    let (before_rows, after_rows) = (
        before
            .split("== change_requests")
            .next()
            .unwrap_or_default()
            .to_string(),
        after.split("== change_requests").next().unwrap_or_default().to_string(),
    );
    assert_eq!(before_rows, after_rows, "tenants, providers and mappings unchanged");
    assert!(
        after.ends_with(before.rsplit("== audit_log").next().unwrap_or_default()),
        "no audit entry"
    );
    // A fresh approval by a second person is honoured, once.
    stack.approve(&name, "bob", &digest_a).await?;
    wait_tenant(&admin, &name, "the revert live", |t| {
        has_condition(t, "Approved", "True", "Approved") && pending_digest(t).is_empty()
    })
    .await?;
    assert_eq!(stack.rows(&name).await?, ["Declared in git"]);
    stack.op.shutdown().await;
    Ok(())
}

/// Attack 2: a DELETE stamps no requester, so a person could delete an
/// object whose requester was someone else and then approve the deletion.
#[tokio::test]
async fn nobody_deletes_and_approves_the_deletion_alone() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let admin: Api<Tenant> = Api::all(stack.admin.clone());
    let name = unique_name("keep");
    stack.gitops_create(&name, "carol@example.com").await?;
    let digest = pending_digest(&stack.awaiting(&name).await?);
    stack.approve(&name, "bob", &digest).await?;
    wait_tenant(&admin, &name, "Ready", |t| has_condition(t, "Ready", "True", "Live")).await?;

    // mallory holds both roles. Deleting carol's tenant as herself is refused.
    let mallory = stack.as_user("mallory", &[EDITORS, APPROVERS]).await?;
    let denied = mallory
        .delete(&name, &Default::default())
        .await
        .expect_err("a person may not delete under a delete policy without being its requester");
    let text = denied.to_string();
    assert!(
        text.contains("the deleter must be its requester") && text.contains("requested-by=mallory"),
        "{text}"
    );
    assert!(admin.get(&name).await?.metadata.deletion_timestamp.is_none());

    // She names herself and deletes; the deletion waits, and she cannot approve it.
    mallory
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"countersign.dev/requested-by": "mallory"}}})),
        )
        .await?;
    // Naming a new requester is itself a change of declared intent: it waits.
    wait_tenant(&admin, &name, "mallory's requester change held", |t| {
        has_condition(t, "Approved", "False", "AwaitingApproval")
    })
    .await?;
    let before = guarded_tables(&stack.pool).await?;
    mallory.delete(&name, &Default::default()).await?;
    let waiting = wait_tenant(&admin, &name, "deletion awaiting approval", |t| {
        has_condition(t, "Ready", "True", "DeletionAwaitingApproval") && !pending_digest(t).is_empty()
    })
    .await?;
    let deletion = pending_digest(&waiting);
    let self_approval = mallory
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {
                "countersign.dev/approved-by": "mallory", "countersign.dev/approved-digest": deletion}}})),
        )
        .await
        .expect_err("the deleter cannot approve the deletion");
    assert!(
        self_approval
            .to_string()
            .contains("you cannot approve a change you requested"),
        "{self_approval}"
    );
    settle().await;
    let after = guarded_tables(&stack.pool).await?;
    let rows_unchanged = |s: &str| s.split("== change_requests").next().unwrap_or_default().to_string();
    assert_eq!(rows_unchanged(&after), rows_unchanged(&before), "the tenant stays live");
    assert_eq!(
        after.rsplit("== audit_log").next(),
        before.rsplit("== audit_log").next(),
        "no audit entry"
    );
    let requests = stack.requests(&name).await?;
    assert_eq!(
        requests.last(),
        Some(&("pending".to_string(), "mallory".to_string(), None)),
        "the deletion is recorded as mallory's"
    );

    // A second person approves; the audit names both.
    stack.approve(&name, "bob", &deletion).await?;
    common::wait_gone(&admin, &name).await?;
    let (action, requester, approver): (String, Option<String>, Option<String>) = sqlx::query_as(
        "SELECT action, requester, approver FROM audit_log WHERE object_key = $1 ORDER BY seq DESC LIMIT 1",
    )
    .bind(&name)
    .fetch_one(&stack.pool)
    .await?;
    assert_eq!(
        (action.as_str(), requester.as_deref(), approver.as_deref()),
        ("delete", Some("mallory"), Some("bob"))
    );
    stack.op.shutdown().await;
    Ok(())
}

/// The IdentityProvider of the attack-6 tests, live after carol asked and bob approved.
struct LiveProvider {
    stack: Stack,
    ns: String,
    _stub: countersign_e2e::stub_idp::StubIdp,
}

impl LiveProvider {
    async fn start() -> anyhow::Result<Self> {
        use countersign_crds::IdentityProvider;
        use countersign_e2e::stub_idp::StubIdp;
        use kube::api::PostParams;
        let stub = StubIdp::start().await?;
        let ca = stub.ca_pem().to_string();
        let stack = Stack::start_with(|o| {
            o.outbound.allow_loopback = true;
            o.outbound.extra_roots_pem = vec![ca];
        })
        .await?;
        common::apply_yaml(
            &stack.admin,
            &format!(
                "apiVersion: platform.countersign.dev/v1alpha1\nkind: ApprovalPolicy\nmetadata: {{name: identity}}\n\
                 spec:\n  rules: [{{kinds: [IdentityProvider], operations: [create, update, delete]}}]\n  \
                 gitopsServiceAccounts: ['{GITOPS}']\n"
            ),
        )
        .await?;
        let ns = unique_name("team");
        common::ensure_namespace(&stack.admin, &ns).await?;
        let tenant = unique_name("acme");
        let mut t = common::tenant(
            &tenant,
            &stack.run,
            json!({"slug": tenant, "name": "Acme", "allowedNamespaces": [ns]}),
        )?;
        t.metadata.annotations = Some([("countersign.dev/requested-by".to_string(), "carol".to_string())].into());
        stack
            .as_user(GITOPS, &["system:serviceaccounts"])
            .await?
            .create(&PostParams::default(), &t)
            .await?;
        let waiting = stack.awaiting(&tenant).await?;
        stack.approve(&tenant, "bob", &pending_digest(&waiting)).await?;
        wait_tenant(&Api::all(stack.admin.clone()), &tenant, "Ready", |t| {
            has_condition(t, "Ready", "True", "Live")
        })
        .await?;
        let provider = Self { stack, ns, _stub: stub };
        for name in ["sso-oidc", "other-oidc"] {
            provider.put_secret(name, &format!("value-of-{name}")).await?;
        }
        let idp: IdentityProvider = serde_json::from_value(json!({
            "apiVersion": "platform.countersign.dev/v1alpha1", "kind": "IdentityProvider",
            "metadata": {"name": "sso", "namespace": provider.ns, "labels": {common::TEST_LABEL: provider.stack.run},
                         "annotations": {"countersign.dev/requested-by": "carol"}},
            "spec": {"tenantRef": {"name": tenant}, "displayName": "Acme SSO",
                     "oidc": {"issuer": provider._stub.issuer(), "clientId": "c",
                              "clientSecret": {"name": "sso-oidc", "key": "client-secret"}}},
        }))?;
        provider.as_gitops().await?.create(&PostParams::default(), &idp).await?;
        let pending = provider.wait("awaiting approval", "AwaitingApproval", "").await?;
        provider.approve(&pending).await?;
        provider.wait("live", "Approved", "").await?;
        Ok(provider)
    }

    async fn put_secret(&self, name: &str, value: &str) -> anyhow::Result<()> {
        use k8s_openapi::api::core::v1::Secret;
        let secret: Secret = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name, "namespace": self.ns}, "stringData": {"client-secret": value}}))?;
        Api::<Secret>::namespaced(self.stack.admin.clone(), &self.ns)
            .patch(name, &PatchParams::apply("e2e").force(), &Patch::Apply(&secret))
            .await?;
        Ok(())
    }

    async fn as_gitops(&self) -> anyhow::Result<Api<countersign_crds::IdentityProvider>> {
        Ok(Api::namespaced(
            self.stack.cp.client_as(GITOPS, &["system:serviceaccounts"]).await?,
            &self.ns,
        ))
    }

    /// Waits until Approved has `reason` and the pending digest differs from `not_digest`.
    async fn wait(
        &self,
        what: &str,
        reason: &str,
        not_digest: &str,
    ) -> anyhow::Result<countersign_crds::IdentityProvider> {
        let idps: Api<countersign_crds::IdentityProvider> = Api::namespaced(self.stack.admin.clone(), &self.ns);
        common::wait_for(
            &format!("the provider {what}"),
            async || Ok(idps.get_opt("sso").await?),
            |i| {
                let common = i.status.as_ref().map(|s| &s.common);
                common::status_has(common, i.metadata.generation, "Approved", "True", reason)
                    || (common::status_has(common, i.metadata.generation, "Approved", "False", reason)
                        && common.and_then(|c| c.pending_digest.as_deref()) != Some(not_digest))
            },
        )
        .await
    }

    async fn approve(&self, idp: &countersign_crds::IdentityProvider) -> anyhow::Result<()> {
        let digest = idp
            .status
            .as_ref()
            .and_then(|s| s.common.pending_digest.clone())
            .unwrap_or_default();
        Api::<countersign_crds::IdentityProvider>::namespaced(
            self.stack.cp.client_as("bob", &[EDITORS, APPROVERS]).await?,
            &self.ns,
        )
        .patch(
            "sso",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {
                "countersign.dev/approved-by": "bob", "countersign.dev/approved-digest": digest}}})),
        )
        .await?;
        Ok(())
    }

    async fn provider_row(&self) -> anyhow::Result<(String, Option<uuid::Uuid>)> {
        Ok(
            sqlx::query_as("SELECT status, client_secret_ref FROM identity_providers WHERE name = 'Acme SSO'")
                .fetch_one(&self.stack.pool)
                .await?,
        )
    }
}

/// The guarded tables, with the open change requests left out (a held change records one).
fn without_requests(tables: &str) -> String {
    let (rows, rest) = tables.split_once("== change_requests").unwrap_or((tables, ""));
    let audit = rest.split_once("== audit_log").map(|(_, a)| a).unwrap_or_default();
    format!("{rows}== audit_log{audit}")
}

/// Attack 6: changes of declared intent that left the row as it was were
/// planned as digest-only writes or rotations and skipped the gate: setting
/// `deletionPolicy: Cascade`, pointing the client secret at another Secret.
#[tokio::test]
async fn every_change_of_declared_intent_waits_for_a_second_person() -> anyhow::Result<()> {
    let p = LiveProvider::start().await?;
    let gitops = p.as_gitops().await?;
    let pp = PatchParams::default();
    let live = p.wait("live", "Approved", "").await?;
    let live_digest = live
        .status
        .as_ref()
        .and_then(|s| s.common.live_digest.clone())
        .unwrap_or_default();
    let row_before = p.provider_row().await?;
    let before = guarded_tables(&p.stack.pool).await?;

    // Cascading deletion would later take mappings with it: it is a change to approve.
    gitops
        .patch(
            "sso",
            &pp,
            &Patch::Merge(json!({"spec": {"deletionPolicy": "Cascade"}})),
        )
        .await?;
    let held = p.wait("holding the cascade", "AwaitingApproval", &live_digest).await?;
    let cascade_digest = held
        .status
        .as_ref()
        .and_then(|s| s.common.pending_digest.clone())
        .unwrap_or_default();
    assert_eq!(
        held.status.as_ref().and_then(|s| s.common.live_digest.clone()),
        Some(live_digest.clone()),
        "the approved configuration stays the live one"
    );
    let owner_digest: String = sqlx::query_scalar("SELECT digest FROM managed_objects WHERE kind = 'IdentityProvider'")
        .fetch_one(&p.stack.pool)
        .await?;
    assert_eq!(owner_digest, live_digest, "not even the digest was recorded");
    assert_eq!(
        without_requests(&guarded_tables(&p.stack.pool).await?),
        without_requests(&before)
    );

    // Pointing the client secret at another Secret is not a rotation.
    gitops
        .patch(
            "sso",
            &pp,
            &Patch::Merge(json!({"spec": {"deletionPolicy": "Delete",
                "oidc": {"clientSecret": {"name": "other-oidc", "key": "client-secret"}}}})),
        )
        .await?;
    p.wait("holding the other secret", "AwaitingApproval", &cascade_digest)
        .await?;
    assert_eq!(p.provider_row().await?, row_before, "the stored client secret stays");
    let secrets: i64 = sqlx::query_scalar("SELECT count(*) FROM encrypted_secrets")
        .fetch_one(&p.stack.pool)
        .await?;
    assert_eq!(secrets, 1, "the other Secret was not sealed");
    assert_eq!(
        without_requests(&guarded_tables(&p.stack.pool).await?),
        without_requests(&before)
    );
    let states: Vec<String> =
        sqlx::query_scalar("SELECT state FROM change_requests WHERE kind = 'IdentityProvider' ORDER BY created_at")
            .fetch_all(&p.stack.pool)
            .await?;
    assert_eq!(states, ["approved", "superseded", "pending"]);

    // A new value in the same Secret is a rotation and needs nobody: back to
    // the approved spec, then the Secret's content changes.
    gitops
        .patch(
            "sso",
            &pp,
            &Patch::Merge(json!({"spec": {"oidc": {"clientSecret": {"name": "sso-oidc", "key": "client-secret"}}}})),
        )
        .await?;
    let idps: Api<countersign_crds::IdentityProvider> = Api::namespaced(p.stack.admin.clone(), &p.ns);
    common::wait_for(
        "the provider back at its approved spec",
        async || Ok(idps.get_opt("sso").await?),
        |i| {
            i.status.as_ref().is_some_and(|s| {
                s.common.pending_digest.is_none() && s.common.live_digest.as_deref() == Some(live_digest.as_str())
            })
        },
    )
    .await?;
    p.put_secret("sso-oidc", "rotated-value").await?;
    common::wait_for(
        "the rotated secret stored",
        async || {
            let (_, secret_ref) = p.provider_row().await?;
            Ok(Some(json!(secret_ref != row_before.1)))
        },
        |changed| *changed == json!(true),
    )
    .await?;
    p.stack.op.shutdown().await;
    Ok(())
}

/// Attack 6, adoption: the adopt annotation took over a row made in the
/// admin UI with no approval under a create policy, and was not part of
/// the digest.
#[tokio::test]
async fn taking_over_a_row_made_outside_countersign_needs_a_second_person() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let admin: Api<Tenant> = Api::all(stack.admin.clone());
    let name = unique_name("adopt");
    sqlx::query(
        "INSERT INTO tenants (slug, name, created_by, updated_by) VALUES ($1, 'Made in the admin UI', 'dave', 'dave')",
    )
    .bind(&name)
    .execute(&stack.pool)
    .await?;
    stack.gitops_create(&name, "carol@example.com").await?;
    // Without adopt: AlreadyExists, and nothing waits.
    wait_tenant(&admin, &name, "AlreadyExists", |t| {
        has_condition(t, "Ready", "False", "AlreadyExists")
    })
    .await?;
    let plain_digest = admin.get(&name).await?.status.and_then(|s| s.pending_digest);
    assert_eq!(plain_digest, None);
    let before = guarded_tables(&stack.pool).await?;
    let gitops = stack.as_user(GITOPS, &["system:serviceaccounts"]).await?;
    gitops
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"countersign.dev/adopt": "true"}}})),
        )
        .await?;
    let waiting = wait_tenant(&admin, &name, "the take-over awaiting approval", |t| {
        has_condition(t, "Approved", "False", "AwaitingApproval") && !pending_digest(t).is_empty()
    })
    .await?;
    assert_eq!(
        stack.rows(&name).await?,
        ["Made in the admin UI"],
        "the row stays as its maker left it"
    );
    let owned: i64 = sqlx::query_scalar("SELECT count(*) FROM managed_objects WHERE kind = 'Tenant'")
        .fetch_one(&stack.pool)
        .await?;
    assert_eq!(owned, 0, "not taken over");
    assert_eq!(
        without_requests(&guarded_tables(&stack.pool).await?),
        without_requests(&before)
    );
    let requests: Vec<(String, String)> =
        sqlx::query_as("SELECT operation, state FROM change_requests WHERE object_key = $1")
            .bind(&name)
            .fetch_all(&stack.pool)
            .await?;
    assert_eq!(
        requests,
        [("create".to_string(), "pending".to_string())],
        "a take-over is judged as a create"
    );

    // A second person approves: the row is adopted, with the audit naming both.
    stack.approve(&name, "bob", &pending_digest(&waiting)).await?;
    wait_tenant(&admin, &name, "Ready", |t| has_condition(t, "Ready", "True", "Live")).await?;
    assert_eq!(stack.rows(&name).await?, ["Declared in git"]);
    let (action, approver): (String, Option<String>) =
        sqlx::query_as("SELECT action, approver FROM audit_log WHERE object_key = $1")
            .bind(&name)
            .fetch_one(&stack.pool)
            .await?;
    assert_eq!((action.as_str(), approver.as_deref()), ("adopt", Some("bob")));
    stack.op.shutdown().await;
    Ok(())
}
