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
use kube::ResourceExt;
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
        common::count(&stack.pool, "object_audit").await?,
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
    let audit_before = common::count(&stack.pool, "object_audit").await?;
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
    assert_eq!(common::count(&stack.pool, "object_audit").await?, audit_before);
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

/// A control plane with the admission guard and RBAC but no ApprovalPolicy,
/// and an operator with the approval floor on and `tenant` as the
/// platform's own tenant (it lists `ns`).
struct Floor {
    cp: countersign_e2e::ControlPlane,
    admin: kube::Client,
    pool: sqlx::PgPool,
    run: String,
    ns: String,
    tenant: String,
    op: countersign_operator::run::Running,
    stub: countersign_e2e::stub_idp::StubIdp,
}

impl Floor {
    async fn start() -> anyhow::Result<Self> {
        use kube::api::PostParams;
        let cp = countersign_e2e::ControlPlane::start().await?;
        let admin = cp.client().await?;
        common::approvals::install(&admin, false).await?;
        let (_url, pool) = common::database().await?;
        let run = unique_name("floor");
        let tenant = unique_name("platform");
        let stub = countersign_e2e::stub_idp::StubIdp::start().await?;
        let ca = stub.ca_pem().to_string();
        let platform = tenant.clone();
        let op = common::operator_with(&admin, &pool, &run, |o| {
            o.outbound.allow_loopback = true;
            o.outbound.extra_roots_pem = vec![ca];
            o.rule.approval_floor = true;
            o.rule.platform_tenant = Some(platform);
        })
        .await?;
        let ns = unique_name("team");
        common::ensure_namespace(&admin, &ns).await?;
        let tenants: Api<Tenant> = Api::all(admin.clone());
        tenants
            .create(
                &PostParams::default(),
                &common::tenant(
                    &tenant,
                    &run,
                    json!({"slug": tenant, "name": "The platform", "allowedNamespaces": [ns]}),
                )?,
            )
            .await?;
        wait_tenant(&tenants, &tenant, "Ready", |t| {
            has_condition(t, "Ready", "True", "Live")
        })
        .await?;
        let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(json!({
            "metadata": {"name": "sso-oidc", "namespace": ns}, "stringData": {"client-secret": "v"}}))?;
        Api::<k8s_openapi::api::core::v1::Secret>::namespaced(admin.clone(), &ns)
            .create(&PostParams::default(), &secret)
            .await?;
        Ok(Self {
            cp,
            admin,
            pool,
            run,
            ns,
            tenant,
            op,
            stub,
        })
    }

    fn idp(
        &self,
        name: &str,
        display: &str,
        annotations: serde_json::Value,
    ) -> anyhow::Result<countersign_crds::IdentityProvider> {
        let run = &self.run;
        Ok(serde_json::from_value(json!({
            "apiVersion": "platform.countersign.dev/v1alpha1", "kind": "IdentityProvider",
            "metadata": {"name": name, "namespace": self.ns, "labels": {common::TEST_LABEL: run},
                         "annotations": annotations},
            "spec": {"tenantRef": {"name": self.tenant}, "displayName": display,
                     "oidc": {"issuer": self.stub.issuer(), "clientId": "c",
                              "clientSecret": {"name": "sso-oidc", "key": "client-secret"}}},
        }))?)
    }

    fn mapping(&self, name: &str, role: &str) -> anyhow::Result<countersign_crds::GroupMapping> {
        let run = &self.run;
        Ok(serde_json::from_value(json!({
            "apiVersion": "platform.countersign.dev/v1alpha1", "kind": "GroupMapping",
            "metadata": {"name": name, "namespace": self.ns, "labels": {common::TEST_LABEL: run}},
            "spec": {"identityProviderRef": {"name": "sso"}, "groupName": name, "role": role},
        }))?)
    }

    async fn idps_as(&self, user: &str) -> anyhow::Result<Api<countersign_crds::IdentityProvider>> {
        Ok(Api::namespaced(
            self.cp.client_as(user, &[EDITORS, APPROVERS]).await?,
            &self.ns,
        ))
    }

    async fn wait_idp(
        &self,
        name: &str,
        what: &str,
        reason: &str,
    ) -> anyhow::Result<countersign_crds::IdentityProvider> {
        let idps: Api<countersign_crds::IdentityProvider> = Api::namespaced(self.admin.clone(), &self.ns);
        common::wait_for(
            &format!("IdentityProvider {name} {what}"),
            async || Ok(idps.get_opt(name).await?),
            |i| {
                i.status
                    .as_ref()
                    .and_then(|s| s.common.condition("Approved"))
                    .is_some_and(|c| c.reason == reason && c.observed_generation == i.metadata.generation)
            },
        )
        .await
    }

    async fn wait_mapping(
        &self,
        name: &str,
        what: &str,
        pred: impl Fn(&countersign_crds::GroupMapping) -> bool,
    ) -> anyhow::Result<countersign_crds::GroupMapping> {
        let api: Api<countersign_crds::GroupMapping> = Api::namespaced(self.admin.clone(), &self.ns);
        common::wait_for(
            &format!("GroupMapping {name} {what}"),
            async || Ok(api.get_opt(name).await?),
            pred,
        )
        .await
    }
}

/// action, requester, approver and declared_by of an audit entry.
type AuditRow = (String, Option<String>, Option<String>, Option<String>);

fn approve_patch(by: &str, digest: &str) -> Patch<serde_json::Value> {
    Patch::Merge(json!({"metadata": {"annotations": {
        "countersign.dev/approved-by": by, "countersign.dev/approved-digest": digest}}}))
}

/// Attack 8: reference 000's floor ("a new IdP federation must be approved
/// by a second PLATFORM_ADMIN before it becomes public") held only if
/// someone wrote an ApprovalPolicy. With no policy at all, the operator's
/// floor holds a new provider and a platform-wide mapping for a second
/// person; a requester nobody can vouch for is refused outright.
#[tokio::test]
async fn the_approval_floor_holds_providers_and_platform_roles_without_any_policy() -> anyhow::Result<()> {
    use kube::api::PostParams;
    let f = Floor::start().await?;
    let public = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM public_identity_providers")
            .fetch_one(&f.pool)
            .await
    };

    // alice declares a provider with kubectl: it waits, stored pending and hidden.
    let alice = f.idps_as("alice").await?;
    alice
        .create(&PostParams::default(), &f.idp("sso", "Platform SSO", json!({}))?)
        .await?;
    let waiting = f.wait_idp("sso", "awaiting approval", "AwaitingApproval").await?;
    let digest = waiting
        .status
        .as_ref()
        .and_then(|s| s.common.pending_digest.clone())
        .unwrap_or_default();
    assert_eq!(public().await?, 0, "not public before a second person approves");
    let row: (String, Option<String>) =
        sqlx::query_as("SELECT status, requested_by FROM identity_providers WHERE name = 'Platform SSO'")
            .fetch_one(&f.pool)
            .await?;
    assert_eq!(row, ("PENDING_APPROVAL".into(), Some("alice".into())));
    let request: (String, Option<String>) =
        sqlx::query_as("SELECT requester, declared_by FROM change_requests WHERE kind = 'IdentityProvider'")
            .fetch_one(&f.pool)
            .await?;
    assert_eq!(
        request,
        ("alice".into(), Some("alice".into())),
        "the declarer is the requester"
    );

    // alice cannot approve it herself, under any spelling.
    let before = guarded_tables(&f.pool).await?;
    for spelling in ["alice", "Alice", "oidc:alice"] {
        let own = f
            .idps_as(spelling)
            .await?
            .patch("sso", &PatchParams::default(), &approve_patch(spelling, &digest))
            .await
            .expect_err("the declarer cannot approve");
        assert!(
            own.to_string().contains("you cannot approve a change you declared"),
            "{spelling}: {own}"
        );
    }

    // mallory names carol as requester of a provider of her own: nobody can vouch for that.
    let mallory = f.idps_as("mallory").await?;
    mallory
        .create(
            &PostParams::default(),
            &f.idp("forged", "Forged SSO", json!({"countersign.dev/requested-by": "carol"}))?,
        )
        .await?;
    let forged = f.wait_idp("forged", "refused", "RequesterUnverified").await?;
    let stalled = forged
        .status
        .as_ref()
        .and_then(|s| s.common.condition("Stalled"))
        .cloned()
        .expect("Stalled");
    assert_eq!(
        (stalled.status.as_str(), stalled.reason.as_str()),
        ("True", "RequesterUnverified")
    );
    assert!(stalled.message.contains("mallory declared it"), "{}", stalled.message);
    let forged_digest = forged
        .status
        .as_ref()
        .and_then(|s| s.common.pending_digest.clone())
        .unwrap_or_default();
    f.idps_as("bob")
        .await?
        .patch("forged", &PatchParams::default(), &approve_patch("bob", &forged_digest))
        .await?;
    settle().await;
    assert_eq!(
        guarded_tables(&f.pool).await?,
        before,
        "nothing written, recorded or audited"
    );

    // bob approves alice's provider: public, with both named in the audit log.
    f.idps_as("bob")
        .await?
        .patch("sso", &PatchParams::default(), &approve_patch("bob", &digest))
        .await?;
    f.wait_idp("sso", "approved", "Approved").await?;
    assert_eq!(public().await?, 1);
    let audit: Vec<AuditRow> = sqlx::query_as(
        "SELECT action, requester, approver, detail->>'declared_by' FROM audit_log WHERE kind = 'IdentityProvider' ORDER BY seq",
    )
    .fetch_all(&f.pool)
    .await?;
    assert_eq!(
        audit,
        [
            ("request".into(), Some("alice".into()), None, Some("alice".into())),
            (
                "activate".into(),
                Some("alice".into()),
                Some("bob".into()),
                Some("alice".into())
            )
        ]
    );

    // A platform-wide role waits for a second person too; a client role does not.
    let mappings: Api<countersign_crds::GroupMapping> =
        Api::namespaced(f.cp.client_as("alice", &[EDITORS, APPROVERS]).await?, &f.ns);
    mappings
        .create(&PostParams::default(), &f.mapping("platform-admins", "PLATFORM_ADMIN")?)
        .await?;
    mappings
        .create(&PostParams::default(), &f.mapping("client-admins", "CLIENT_ADMIN")?)
        .await?;
    f.wait_mapping("platform-admins", "awaiting approval", |m| {
        common::status_has(
            m.status.as_ref(),
            m.metadata.generation,
            "Approved",
            "False",
            "AwaitingApproval",
        )
    })
    .await?;
    f.wait_mapping("client-admins", "live", |m| {
        common::status_has(m.status.as_ref(), m.metadata.generation, "Ready", "True", "Live")
    })
    .await?;
    let roles: Vec<String> = sqlx::query_scalar("SELECT role FROM group_mappings WHERE deleted_at IS NULL")
        .fetch_all(&f.pool)
        .await?;
    assert_eq!(
        roles,
        ["CLIENT_ADMIN"],
        "the platform-wide mapping is not written while it waits"
    );
    f.op.shutdown().await;
    Ok(())
}

/// Attack 5: `carol@example.com` requests and `Carol@Example.com` or
/// `oidc:carol@example.com` (an OIDC username prefix) approves.
#[tokio::test]
async fn one_person_under_another_spelling_cannot_approve_their_own_change() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let name = unique_name("spelling");
    stack.gitops_create(&name, "carol@example.com").await?;
    let digest = pending_digest(&stack.awaiting(&name).await?);
    let before = guarded_tables(&stack.pool).await?;
    for spelling in [
        "Carol@Example.com",
        "oidc:carol@example.com",
        "https://idp.example#CAROL@EXAMPLE.COM",
    ] {
        let denied = stack
            .as_user(spelling, &[EDITORS, APPROVERS])
            .await?
            .patch(&name, &PatchParams::default(), &approve_patch(spelling, &digest))
            .await
            .expect_err("the requester under another spelling");
        assert!(
            denied.to_string().contains("you cannot approve a change you requested"),
            "{spelling}: {denied}"
        );
    }
    // The database refuses it too, whoever writes there.
    let refused = sqlx::query(
        "UPDATE change_requests SET state = 'approved', decided_by = 'OIDC:Carol@Example.com' WHERE object_key = $1",
    )
    .bind(&name)
    .execute(&stack.pool)
    .await
    .expect_err("the second person must be another person");
    assert!(
        refused.to_string().contains("change_requests_second_person"),
        "{refused}"
    );
    settle().await;
    assert_eq!(guarded_tables(&stack.pool).await?, before);
    assert!(stack.rows(&name).await?.is_empty());
    stack.op.shutdown().await;
    Ok(())
}

/// Attack 9: a committer who is also an approver writes someone else's name
/// in `requested-by` and approves their own change. In-cluster the rule can
/// require several distinct approvers, and records who declared the requester.
#[tokio::test]
async fn a_policy_can_require_two_approvers_and_the_declarer_is_recorded() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let admin: Api<Tenant> = Api::all(stack.admin.clone());
    let policies: Api<countersign_crds::ApprovalPolicy> = Api::all(stack.admin.clone());
    policies
        .patch(
            "tenants",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"requiredApprovals": 2}})),
        )
        .await?;
    // bob commits the tenant under carol's name; GitOps applies it.
    let name = unique_name("two");
    settle().await;
    stack.gitops_create(&name, "carol@example.com").await?;
    let digest = pending_digest(&stack.awaiting(&name).await?);
    stack.approve(&name, "bob", &digest).await?;
    let one = wait_tenant(&admin, &name, "one of two approvals", |t| {
        common::condition_of(t.status.as_ref(), "Approved")
            .is_some_and(|c| c.message.contains("1 of 2 approvals (bob)"))
    })
    .await?;
    assert!(has_condition(&one, "Approved", "False", "AwaitingApproval"));
    assert!(stack.rows(&name).await?.is_empty(), "one person cannot pass it alone");
    assert_eq!(common::count(&stack.pool, "object_audit").await?, 0);
    // bob approving again (or under another spelling) is still one person.
    stack.approve(&name, "Bob", &digest).await?;
    settle().await;
    assert!(stack.rows(&name).await?.is_empty());
    // A second, different person completes it.
    stack.approve(&name, "dave", &digest).await?;
    wait_tenant(&admin, &name, "Ready", |t| has_condition(t, "Ready", "True", "Live")).await?;
    let (requester, approver, declared_by, approvers): (
        Option<String>,
        Option<String>,
        Option<String>,
        serde_json::Value,
    ) = sqlx::query_as(
        "SELECT requester, approver, detail->>'declared_by', detail->'approvers' FROM audit_log WHERE object_key = $1",
    )
    .bind(&name)
    .fetch_one(&stack.pool)
    .await?;
    assert_eq!(requester.as_deref(), Some("carol@example.com"));
    assert_eq!(approver.as_deref(), Some("bob, dave"));
    assert_eq!(
        declared_by.as_deref(),
        Some(GITOPS),
        "the account that declared the requester, beside it"
    );
    assert_eq!(approvers, json!(["bob", "dave"]));
    stack.op.shutdown().await;
    Ok(())
}

/// The policy's status, the in-force rows and the audit entries of policies.
async fn policy(stack: &Stack, name: &str) -> anyhow::Result<countersign_crds::ApprovalPolicy> {
    let policies: Api<countersign_crds::ApprovalPolicy> = Api::all(stack.admin.clone());
    Ok(policies.get(name).await?)
}

async fn wait_policy(
    stack: &Stack,
    name: &str,
    what: &str,
    pred: impl Fn(&countersign_crds::ApprovalPolicy) -> bool,
) -> anyhow::Result<countersign_crds::ApprovalPolicy> {
    let policies: Api<countersign_crds::ApprovalPolicy> = Api::all(stack.admin.clone());
    common::wait_for(
        &format!("ApprovalPolicy {name} {what}"),
        async || Ok(policies.get_opt(name).await?),
        pred,
    )
    .await
}

async fn in_force_rows(stack: &Stack) -> anyhow::Result<Vec<(String, serde_json::Value)>> {
    Ok(sqlx::query_as("SELECT name, spec FROM approval_policies ORDER BY name")
        .fetch_all(&stack.pool)
        .await?)
}

async fn policy_audit(stack: &Stack) -> anyhow::Result<Vec<(String, String, Option<String>)>> {
    Ok(
        sqlx::query_as("SELECT object_key, action, approver FROM audit_log WHERE kind = 'ApprovalPolicy' ORDER BY seq")
            .fetch_all(&stack.pool)
            .await?,
    )
}

/// Attack 1: a holder of the editor role (or of the policy role) deleting the
/// ApprovalPolicy, narrowing its rules, trusting another GitOps account or
/// lengthening the TTL used to release every held change at once, with no
/// approver and no audit entry.
#[tokio::test]
async fn nobody_switches_the_rule_off_alone() -> anyhow::Result<()> {
    const POLICY_ADMINS: &str = "platform-policy-admins";
    let stack = Stack::start().await?;
    let admin: Api<Tenant> = Api::all(stack.admin.clone());
    let pp = PatchParams::default();
    let held = unique_name("held");
    stack.gitops_create(&held, "carol@example.com").await?;
    stack.awaiting(&held).await?;
    let rows_before = in_force_rows(&stack).await?;
    assert_eq!(rows_before.len(), 1);

    // The editor role (Argo CD, platform teams) cannot touch policies at all.
    let editor: Api<countersign_crds::ApprovalPolicy> =
        Api::all(stack.cp.client_as("mallory", &[EDITORS, APPROVERS]).await?);
    let denied = editor
        .delete("tenants", &Default::default())
        .await
        .expect_err("editors cannot delete policies");
    assert!(denied.to_string().contains("forbidden"), "{denied}");
    let denied = editor
        .patch(
            "tenants",
            &pp,
            &Patch::Merge(json!({"spec": {"requestTtlSeconds": 7776000}})),
        )
        .await
        .expect_err("editors (even approvers) cannot edit policies");
    assert!(denied.to_string().contains("countersign-policy-admin"), "{denied}");

    // pam edits policies. Narrowing the rules, trusting another account and
    // lengthening the TTL at once: all of it waits, nothing is released.
    let pam: Api<countersign_crds::ApprovalPolicy> =
        Api::all(stack.cp.client_as("pam", &[POLICY_ADMINS, APPROVERS]).await?);
    pam.patch(
        "tenants",
        &pp,
        &Patch::Merge(json!({"spec": {
            "rules": [{"kinds": ["Tenant"], "operations": ["update"]}],
            "gitopsServiceAccounts": [GITOPS, "system:serviceaccount:team:mallory"],
            "requestTtlSeconds": 7776000}})),
    )
    .await?;
    let loosening = wait_policy(&stack, "tenants", "holding the loosening", |p| {
        p.status
            .as_ref()
            .is_some_and(|s| s.loosening.len() == 4 && s.common.pending_digest.is_some())
    })
    .await?;
    let status = loosening.status.clone().unwrap_or_default();
    let text = status.loosening.join("\n");
    for says in [
        "create Tenant would no longer need a second person",
        "delete Tenant would no longer need a second person",
        "system:serviceaccount:team:mallory would be trusted",
        "requests would stay open 7776000 s",
    ] {
        assert!(text.contains(says), "{says} missing from {text}");
    }
    let ready = common::condition_of(Some(&status.common), "Ready")
        .cloned()
        .expect("Ready");
    assert!(ready.message.contains("waits for a second person"), "{}", ready.message);
    assert_eq!(
        status.in_force.as_ref().map(|s| s.request_ttl_seconds),
        Some(604800),
        "the previous configuration stays in force"
    );
    assert_eq!(in_force_rows(&stack).await?, rows_before);
    settle().await;
    assert!(stack.rows(&held).await?.is_empty(), "the held create is not released");
    assert!(has_condition(
        &admin.get(&held).await?,
        "Approved",
        "False",
        "AwaitingApproval"
    ));
    // pam cannot approve her own loosening.
    let digest = status.common.pending_digest.clone().unwrap_or_default();
    let own = pam
        .patch("tenants", &pp, &approve_patch("pam", &digest))
        .await
        .expect_err("the policy admin cannot approve her own loosening");
    assert!(own.to_string().contains("you cannot approve a change you"), "{own}");
    // Undone, the policy is as it was; the request is over.
    pam.patch(
        "tenants",
        &pp,
        &Patch::Merge(json!({"spec": {
            "rules": [{"kinds": ["Tenant"], "operations": ["create", "update", "delete"]}],
            "gitopsServiceAccounts": [GITOPS],
            "requestTtlSeconds": 604800}})),
    )
    .await?;
    wait_policy(&stack, "tenants", "back as it was", |p| {
        p.status
            .as_ref()
            .is_some_and(|s| s.loosening.is_empty() && s.common.pending_digest.is_none())
    })
    .await?;

    // Deleting it: pam's edits made her the requester (a person is stamped),
    // so she may delete it, and the deletion waits.
    assert_eq!(
        policy(&stack, "tenants")
            .await?
            .annotations()
            .get("countersign.dev/requested-by")
            .map(String::as_str),
        Some("pam")
    );
    pam.delete("tenants", &Default::default()).await?;
    let deleting = wait_policy(&stack, "tenants", "holding its deletion", |p| {
        p.status
            .as_ref()
            .and_then(|s| s.common.condition("Ready"))
            .is_some_and(|c| c.reason == "DeletionAwaitingApproval")
    })
    .await?;
    let deletion = deleting
        .status
        .and_then(|s| s.common.pending_digest)
        .unwrap_or_default();
    assert!(
        pam.patch("tenants", &pp, &approve_patch("pam", &deletion))
            .await
            .is_err()
    );
    settle().await;
    assert_eq!(in_force_rows(&stack).await?, rows_before, "still in force");
    assert!(stack.rows(&held).await?.is_empty(), "still held");

    // A policy whose finalizer is forced off stays in force, and approvals
    // are refused until its object is back.
    pam.create(
        &Default::default(),
        &serde_json::from_value(json!({
            "apiVersion": "platform.countersign.dev/v1alpha1", "kind": "ApprovalPolicy",
            "metadata": {"name": "extra"},
            "spec": {"rules": [{"kinds": ["LicenseGrant"], "operations": ["delete"]}]}}))?,
    )
    .await?;
    wait_policy(&stack, "extra", "in force", |p| {
        p.status.as_ref().is_some_and(|s| s.in_force.is_some())
    })
    .await?;
    pam.patch(
        "extra",
        &pp,
        &Patch::Merge(json!({"metadata": {"annotations": {"countersign.dev/requested-by": "pam"}}})),
    )
    .await?;
    pam.delete("extra", &Default::default()).await?;
    wait_policy(&stack, "extra", "holding its deletion", |p| {
        p.metadata.deletion_timestamp.is_some()
    })
    .await?;
    Api::<countersign_crds::ApprovalPolicy>::all(stack.admin.clone())
        .patch("extra", &pp, &Patch::Merge(json!({"metadata": {"finalizers": null}})))
        .await?;
    common::wait_for(
        "the extra policy object to be gone",
        async || Ok(Some(json!(policy(&stack, "extra").await.is_err()))),
        |gone| *gone == json!(true),
    )
    .await?;
    let forced = unique_name("forced");
    stack.gitops_create(&forced, "carol@example.com").await?;
    let forced_digest = pending_digest(&stack.awaiting(&forced).await?);
    stack.approve(&forced, "bob", &forced_digest).await?;
    let refused = wait_tenant(&admin, &forced, "ApprovalGuardMissing", |t| {
        has_condition(t, "Approved", "False", "ApprovalGuardMissing")
    })
    .await?;
    let message = common::condition_of(refused.status.as_ref(), "Approved")
        .map(|c| c.message.clone())
        .unwrap_or_default();
    assert!(
        message.contains("ApprovalPolicy extra is in force but its object is gone"),
        "{message}"
    );
    assert!(stack.rows(&forced).await?.is_empty());
    assert_eq!(
        in_force_rows(&stack).await?.len(),
        2,
        "the forced-off policy is still enforced"
    );

    // Re-created, it is enforced as before (nothing changed in force), and
    // the waiting approval is honoured.
    pam.create(
        &Default::default(),
        &serde_json::from_value(json!({
            "apiVersion": "platform.countersign.dev/v1alpha1", "kind": "ApprovalPolicy",
            "metadata": {"name": "extra"},
            "spec": {"rules": [{"kinds": ["LicenseGrant"], "operations": ["delete"]}]}}))?,
    )
    .await?;
    wait_tenant(&admin, &forced, "approved once the policy is back", |t| {
        has_condition(t, "Ready", "True", "Live")
    })
    .await?;

    // A second person approves the deletion of `tenants`: only now is it
    // out of force, and only now is the held create released.
    stack.as_user("bob", &[EDITORS, APPROVERS]).await?;
    Api::<countersign_crds::ApprovalPolicy>::all(stack.cp.client_as("bob", &[EDITORS, APPROVERS]).await?)
        .patch("tenants", &pp, &approve_patch("bob", &deletion))
        .await?;
    common::wait_for(
        "the tenants policy to be gone",
        async || Ok(Some(json!(policy(&stack, "tenants").await.is_err()))),
        |gone| *gone == json!(true),
    )
    .await?;
    wait_tenant(&admin, &held, "released", |t| has_condition(t, "Ready", "True", "Live")).await?;
    let rows: Vec<String> = in_force_rows(&stack).await?.into_iter().map(|(n, _)| n).collect();
    assert_eq!(rows, ["extra"]);
    let audit = policy_audit(&stack).await?;
    let actions: Vec<(&str, &str)> = audit.iter().map(|(k, a, _)| (k.as_str(), a.as_str())).collect();
    for entry in [
        ("tenants", "tighten"),
        ("tenants", "request-loosening"),
        ("tenants", "loosen"),
        ("extra", "tighten"),
        ("tenants", "delete"),
    ] {
        assert!(actions.contains(&entry), "{entry:?} not in {actions:?}");
    }
    assert!(
        audit
            .iter()
            .any(|(k, a, approver)| k == "tenants" && a == "delete" && approver.as_deref() == Some("bob")),
        "{audit:?}"
    );
    stack.op.shutdown().await;
    Ok(())
}
