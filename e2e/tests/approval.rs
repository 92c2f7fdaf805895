//! The controller's half of the two-person rule, end to end: changes under an
//! ApprovalPolicy wait for a second person, and the operator refuses every
//! approval it must not honour, leaving the database unchanged.

mod common;

use common::approvals::{APPROVERS, EDITORS, GITOPS, Stack};

use common::{has_condition, wait_tenant};
use countersign_crds::Tenant;
use countersign_e2e::unique_name;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

fn pending_digest(t: &Tenant) -> String {
    t.status
        .as_ref()
        .and_then(|s| s.pending_digest.clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_gitops_change_goes_live_only_after_a_second_person_approves() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let admin: Api<Tenant> = Api::all(stack.admin.clone());

    // GitOps applies on behalf of carol; nothing is written while it waits.
    let name = unique_name("gitops");
    stack.gitops_create(&name, "carol@example.com").await?;
    let waiting = stack.awaiting(&name).await?;
    assert!(has_condition(&waiting, "Ready", "False", "AwaitingApproval"));
    let digest = pending_digest(&waiting);
    assert_eq!(digest.len(), 64);
    assert!(stack.rows(&name).await?.is_empty(), "a pending tenant is not written");
    assert_eq!(
        stack.requests(&name).await?,
        [("pending".into(), "carol@example.com".into(), None)]
    );

    // A different human approves the digest they saw: it goes live with the audit row.
    stack.approve(&name, "bob", &digest).await?;
    let live = wait_tenant(&admin, &name, "Ready", |t| has_condition(t, "Ready", "True", "Live")).await?;
    assert!(has_condition(&live, "Approved", "True", "Approved"));
    assert_eq!(
        live.status.as_ref().and_then(|s| s.live_digest.clone()),
        Some(digest.clone())
    );
    assert_eq!(live.status.as_ref().and_then(|s| s.pending_digest.clone()), None);
    assert_eq!(stack.rows(&name).await?, ["Declared in git"]);
    let events = common::events_for(&stack.admin, &name).await?;
    for reason in ["AwaitingApproval", "Approved"] {
        assert!(
            events.iter().any(|(r, _)| r == reason),
            "no {reason} event in {events:?}"
        );
    }
    // Going live is routine: the status says so, and no event repeats it.
    assert!(!events.iter().any(|(r, _)| r == "Live"), "{events:?}");
    assert_eq!(
        stack.requests(&name).await?,
        [("approved".into(), "carol@example.com".into(), Some("bob".into()))]
    );
    let (action, requester, approver): (String, Option<String>, Option<String>) =
        sqlx::query_as("SELECT action, requester, approver FROM audit_log WHERE object_key = $1")
            .bind(&name)
            .fetch_one(&stack.pool)
            .await?;
    assert_eq!(
        (action.as_str(), requester.as_deref(), approver.as_deref()),
        ("create", Some("carol@example.com"), Some("bob"))
    );

    // A human edits with kubectl (stamped as requester); the approved name stays live meanwhile.
    let alice = stack.as_user("alice", &[EDITORS, APPROVERS]).await?;
    alice
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"name": "Edited by alice"}})),
        )
        .await?;
    // bob's approval of the first digest was spent when it went live (and
    // taken off the object): it does not carry over to the new one.
    let waiting = wait_tenant(&admin, &name, "a pending update", |t| {
        !pending_digest(t).is_empty()
            && pending_digest(t) != digest
            && has_condition(t, "Approved", "False", "AwaitingApproval")
            && common::approvals::approval_annotation(t).is_none()
    })
    .await?;
    let ready = common::condition_of(waiting.status.as_ref(), "Ready")
        .cloned()
        .expect("Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("True", "Live"),
        "Ready keeps describing what is live"
    );
    assert_eq!(stack.rows(&name).await?, ["Declared in git"]);
    let update_digest = pending_digest(&waiting);
    let requester = common::requester(&waiting).map(str::to_string);
    assert_eq!(
        requester.as_deref(),
        Some("alice"),
        "kubectl users are stamped as requester"
    );

    // A second human approves the current digest.
    stack.approve(&name, "bob", &update_digest).await?;
    wait_tenant(&admin, &name, "Ready with the update", |t| {
        has_condition(t, "Approved", "True", "Approved")
            && t.status.as_ref().and_then(|s| s.live_digest.clone()) == Some(update_digest.clone())
    })
    .await?;
    assert_eq!(stack.rows(&name).await?, ["Edited by alice"]);
    let verified = countersign_reconcilers::audit::verify(&stack.pool, common::test_key().audit_chain_key()).await?;
    assert_eq!(verified.broken, None);
    assert_eq!(common::count(&stack.pool, "object_audit").await?, 2);
    stack.op.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn the_operator_refuses_approvals_it_must_not_honour() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let admin: Api<Tenant> = Api::all(stack.admin.clone());
    let pp = PatchParams::default();

    // Approving digest A and then changing the spec to B: A's request is superseded.
    let ab = unique_name("ab");
    stack.gitops_create(&ab, "carol@example.com").await?;
    let digest_a = pending_digest(&stack.awaiting(&ab).await?);
    let gitops = stack.as_user(GITOPS, &["system:serviceaccounts"]).await?;
    gitops
        .patch(&ab, &pp, &Patch::Merge(json!({"spec": {"name": "B"}})))
        .await?;
    let waiting_b = wait_tenant(&admin, &ab, "a new pending digest", |t| {
        !pending_digest(t).is_empty() && pending_digest(t) != digest_a
    })
    .await?;
    stack.approve(&ab, "bob", &digest_a).await?;
    // Refused as stale, and taken off the object so bob can approve B afresh.
    common::approvals::refused_as_stale(
        &stack,
        &ab,
        &pending_digest(&waiting_b),
        0,
        "approve the current digest",
    )
    .await?;
    assert!(stack.rows(&ab).await?.is_empty());
    let states: Vec<String> = stack.requests(&ab).await?.into_iter().map(|r| r.0).collect();
    assert_eq!(states, ["superseded", "pending"]);
    drop(waiting_b);

    // Approving while the guard is set to Warn: the API server would no longer enforce it.
    let guarded = unique_name("guard");
    stack.gitops_create(&guarded, "carol@example.com").await?;
    let digest = pending_digest(&stack.awaiting(&guarded).await?);
    let bindings = common::dynamic_api(
        &stack.admin,
        "admissionregistration.k8s.io",
        "v1",
        "ValidatingAdmissionPolicyBinding",
    );
    bindings
        .patch(
            "countersign-approval-guard",
            &pp,
            &Patch::Merge(json!({"spec": {"validationActions": ["Warn"]}})),
        )
        .await?;
    stack.approve(&guarded, "bob", &digest).await?;
    let refused = wait_tenant(&admin, &guarded, "ApprovalGuardMissing", |t| {
        has_condition(t, "Approved", "False", "ApprovalGuardMissing")
    })
    .await?;
    let message = common::condition_of(refused.status.as_ref(), "Approved")
        .map(|c| c.message.clone())
        .unwrap_or_default();
    assert!(message.contains("validationActions"), "{message}");
    assert!(stack.rows(&guarded).await?.is_empty());
    // Restoring the shipped guard lets the same approval through (the operator looks again by itself).
    bindings
        .patch(
            "countersign-approval-guard",
            &pp,
            &Patch::Merge(json!({"spec": {"validationActions": ["Deny"]}})),
        )
        .await?;
    wait_tenant(&admin, &guarded, "Ready", |t| has_condition(t, "Ready", "True", "Live")).await?;

    // Approving while a guard policy is missing altogether.
    let unguarded = unique_name("unguarded");
    stack.gitops_create(&unguarded, "carol@example.com").await?;
    let digest = pending_digest(&stack.awaiting(&unguarded).await?);
    let policies = common::dynamic_api(
        &stack.admin,
        "admissionregistration.k8s.io",
        "v1",
        "ValidatingAdmissionPolicy",
    );
    policies
        .delete("countersign-requester-guard", &Default::default())
        .await?;
    stack.approve(&unguarded, "bob", &digest).await?;
    let refused = wait_tenant(&admin, &unguarded, "ApprovalGuardMissing", |t| {
        has_condition(t, "Approved", "False", "ApprovalGuardMissing")
    })
    .await?;
    let message = common::condition_of(refused.status.as_ref(), "Approved")
        .map(|c| c.message.clone())
        .unwrap_or_default();
    assert!(
        message.contains("countersign-requester-guard is not installed"),
        "{message}"
    );
    assert!(stack.rows(&unguarded).await?.is_empty());
    common::apply_yaml(&stack.admin, countersign_crds::admission::APPROVAL_GUARD_YAML).await?;
    wait_tenant(&admin, &unguarded, "Ready", |t| {
        has_condition(t, "Ready", "True", "Live")
    })
    .await?;

    // A rejection sticks for its digest, whoever approves afterwards.
    let rejected = unique_name("rejected");
    stack.gitops_create(&rejected, "carol@example.com").await?;
    let digest = pending_digest(&stack.awaiting(&rejected).await?);
    stack
        .as_user("bob", &[EDITORS, APPROVERS])
        .await?
        .patch(
            &rejected,
            &pp,
            &Patch::Merge(
                json!({"metadata": {"annotations": {"countersign.dev/rejected-by": "bob",
                "countersign.dev/rejected-digest": digest, "countersign.dev/rejected-reason": "wrong owner"}}}),
            ),
        )
        .await?;
    let t = wait_tenant(&admin, &rejected, "Rejected", |t| {
        has_condition(t, "Approved", "False", "Rejected")
    })
    .await?;
    assert!(has_condition(&t, "Stalled", "True", "Rejected"));
    stack.approve(&rejected, "dave", &digest).await?;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let t = admin.get(&rejected).await?;
    assert!(has_condition(&t, "Approved", "False", "Rejected"), "{:?}", t.status);
    assert!(stack.rows(&rejected).await?.is_empty());
    assert_eq!(
        stack.requests(&rejected).await?,
        [("rejected".into(), "carol@example.com".into(), Some("bob".into()))]
    );

    // Approving after the request expired.
    let late = unique_name("late");
    stack.gitops_create(&late, "carol@example.com").await?;
    let digest = pending_digest(&stack.awaiting(&late).await?);
    sqlx::query("UPDATE change_requests SET expires_at = now() - interval '1 second' WHERE object_key = $1")
        .bind(&late)
        .execute(&stack.pool)
        .await?;
    stack.approve(&late, "bob", &digest).await?;
    wait_tenant(&admin, &late, "ApprovalExpired", |t| {
        has_condition(t, "Approved", "False", "ApprovalExpired")
    })
    .await?;
    assert!(stack.rows(&late).await?.is_empty());
    assert_eq!(stack.requests(&late).await?[0].0, "expired");

    // No requester under a policy: only a GitOps account can leave it out (people are stamped).
    let anonymous = unique_name("anon");
    gitops
        .create(
            &PostParams::default(),
            &common::tenant(
                &anonymous,
                &stack.run,
                json!({"slug": anonymous, "name": "Nobody asked"}),
            )?,
        )
        .await?;
    wait_tenant(&admin, &anonymous, "RequesterUnknown", |t| {
        has_condition(t, "Approved", "False", "RequesterUnknown")
            && has_condition(t, "Stalled", "True", "RequesterUnknown")
    })
    .await?;
    assert!(stack.rows(&anonymous).await?.is_empty());
    stack.op.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_deletion_waits_behind_the_finalizer_until_approved() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let admin: Api<Tenant> = Api::all(stack.admin.clone());
    let name = unique_name("doomed");
    stack.gitops_create(&name, "carol@example.com").await?;
    let digest = pending_digest(&stack.awaiting(&name).await?);
    stack.approve(&name, "bob", &digest).await?;
    wait_tenant(&admin, &name, "Ready", |t| has_condition(t, "Ready", "True", "Live")).await?;

    let gitops = stack.as_user(GITOPS, &["system:serviceaccounts"]).await?;
    gitops.delete(&name, &Default::default()).await?;
    let waiting = wait_tenant(&admin, &name, "deletion awaiting approval", |t| {
        has_condition(t, "Ready", "True", "DeletionAwaitingApproval")
            && pending_digest(t) != digest
            && !pending_digest(t).is_empty()
    })
    .await?;
    let deleted: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT deleted_at FROM tenants WHERE slug = $1")
            .bind(&name)
            .fetch_one(&stack.pool)
            .await?;
    assert!(deleted.is_none(), "the row stays live while the deletion waits");
    let metric = common::metric(&stack.op, "countersign_pending_approvals").await?;
    assert_eq!(metric, 1.0);

    stack.approve(&name, "bob", &pending_digest(&waiting)).await?;
    common::wait_gone(&admin, &name).await?;
    let deleted: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT deleted_at FROM tenants WHERE slug = $1")
            .bind(&name)
            .fetch_one(&stack.pool)
            .await?;
    assert!(deleted.is_some(), "approved deletion soft-deletes the row");
    let (action, approver): (String, Option<String>) =
        sqlx::query_as("SELECT action, approver FROM audit_log WHERE object_key = $1 ORDER BY seq DESC LIMIT 1")
            .bind(&name)
            .fetch_one(&stack.pool)
            .await?;
    assert_eq!((action.as_str(), approver.as_deref()), ("delete", Some("bob")));
    let ops: Vec<(String, String)> =
        sqlx::query_as("SELECT operation, state FROM change_requests WHERE object_key = $1 ORDER BY created_at")
            .bind(&name)
            .fetch_all(&stack.pool)
            .await?;
    assert_eq!(
        ops,
        [
            ("create".into(), "approved".into()),
            ("delete".into(), "approved".into())
        ]
    );
    assert_eq!(common::metric(&stack.op, "countersign_pending_approvals").await?, 0.0);
    stack.op.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_new_identity_provider_stays_pending_and_hidden_until_a_second_admin_approves() -> anyhow::Result<()> {
    use countersign_crds::IdentityProvider;
    use countersign_e2e::stub_idp::StubIdp;
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
             spec:\n  rules: [{{kinds: [IdentityProvider, GroupMapping], operations: [create, update, delete]}}]\n  \
             gitopsServiceAccounts: ['{GITOPS}']\n"
        ),
    )
    .await?;
    let ns = unique_name("team");
    common::ensure_namespace(&stack.admin, &ns).await?;
    let gitops = stack.cp.client_as(GITOPS, &["system:serviceaccounts"]).await?;

    // The tenant itself goes through the rule first.
    let tenant = unique_name("acme");
    let mut t = common::tenant(
        &tenant,
        &stack.run,
        json!({"slug": tenant, "name": "Acme", "allowedNamespaces": [ns]}),
    )?;
    t.metadata.annotations = Some([("countersign.dev/requested-by".to_string(), "carol".to_string())].into());
    Api::<Tenant>::all(gitops.clone())
        .create(&PostParams::default(), &t)
        .await?;
    let waiting = stack.awaiting(&tenant).await?;
    stack.approve(&tenant, "bob", &pending_digest(&waiting)).await?;
    wait_tenant(&Api::all(stack.admin.clone()), &tenant, "Ready", |t| {
        has_condition(t, "Ready", "True", "Live")
    })
    .await?;

    // GitOps declares a provider on carol's behalf.
    let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(json!({
        "metadata": {"name": "sso-oidc", "namespace": ns}, "stringData": {"client-secret": "v"}}))?;
    Api::<k8s_openapi::api::core::v1::Secret>::namespaced(stack.admin.clone(), &ns)
        .create(&PostParams::default(), &secret)
        .await?;
    let idp: IdentityProvider = serde_json::from_value(json!({
        "apiVersion": "platform.countersign.dev/v1alpha1", "kind": "IdentityProvider",
        "metadata": {"name": "sso", "namespace": ns, "labels": {common::TEST_LABEL: stack.run},
                     "annotations": {"countersign.dev/requested-by": "carol"}},
        "spec": {"tenantRef": {"name": tenant}, "displayName": "Acme SSO",
                 "oidc": {"issuer": stub.issuer(), "clientId": "c",
                          "clientSecret": {"name": "sso-oidc", "key": "client-secret"}}},
    }))?;
    Api::<IdentityProvider>::namespaced(gitops, &ns)
        .create(&PostParams::default(), &idp)
        .await?;
    let idps: Api<IdentityProvider> = Api::namespaced(stack.admin.clone(), &ns);
    let pending = common::wait_for(
        "the provider to await approval",
        async || Ok(idps.get_opt("sso").await?),
        |i| {
            common::status_has(
                i.status.as_ref().map(|s| &s.common),
                i.metadata.generation,
                "Approved",
                "False",
                "AwaitingApproval",
            )
        },
    )
    .await?;
    let ready = pending
        .status
        .as_ref()
        .and_then(|s| s.common.condition("Ready"))
        .cloned()
        .expect("Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "AwaitingApproval")
    );
    assert!(ready.message.contains("PENDING_APPROVAL"), "{}", ready.message);
    let digest = pending
        .status
        .as_ref()
        .and_then(|s| s.common.pending_digest.clone())
        .expect("pending digest");
    let row: (String, Option<String>, Option<String>) =
        sqlx::query_as("SELECT status, requested_by, approved_by FROM identity_providers WHERE name = 'Acme SSO'")
            .fetch_one(&stack.pool)
            .await?;
    assert_eq!(row, ("PENDING_APPROVAL".into(), Some("carol".into()), None));
    let public = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM public_identity_providers")
            .fetch_one(&stack.pool)
            .await
    };
    assert_eq!(public().await?, 0, "a pending provider is not exposed");

    // carol cannot approve her own provider; bob can.
    let own = Api::<IdentityProvider>::namespaced(stack.cp.client_as("carol", &[EDITORS, APPROVERS]).await?, &ns)
        .patch(
            "sso",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {
                "countersign.dev/approved-by": "carol", "countersign.dev/approved-digest": digest}}})),
        )
        .await
        .expect_err("self-approval is denied");
    assert!(
        own.to_string().contains("you cannot approve a change you requested"),
        "{own}"
    );
    Api::<IdentityProvider>::namespaced(stack.cp.client_as("bob", &[EDITORS, APPROVERS]).await?, &ns)
        .patch(
            "sso",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {
                "countersign.dev/approved-by": "bob", "countersign.dev/approved-digest": digest}}})),
        )
        .await?;
    let live = common::wait_for(
        "the provider to go live",
        async || Ok(idps.get_opt("sso").await?),
        |i| {
            common::status_has(
                i.status.as_ref().map(|s| &s.common),
                i.metadata.generation,
                "Ready",
                "True",
                "Live",
            )
        },
    )
    .await?;
    assert_eq!(
        live.status.as_ref().and_then(|s| s.common.live_digest.clone()),
        Some(digest)
    );
    let row: (String, Option<String>, Option<String>) =
        sqlx::query_as("SELECT status, requested_by, approved_by FROM identity_providers WHERE name = 'Acme SSO'")
            .fetch_one(&stack.pool)
            .await?;
    assert_eq!(row, ("ACTIVE".into(), Some("carol".into()), Some("bob".into())));
    assert_eq!(public().await?, 1, "exposed once approved");
    let audit: Vec<(String, Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT action, requester, approver FROM audit_log WHERE kind = 'IdentityProvider' ORDER BY seq",
    )
    .fetch_all(&stack.pool)
    .await?;
    assert_eq!(
        audit,
        [
            ("request".into(), Some("carol".into()), None),
            ("activate".into(), Some("carol".into()), Some("bob".into()))
        ]
    );

    // A group mapping for the provider, under the same policy: not written
    // until someone other than its requester approves.
    use countersign_crds::GroupMapping;
    let mapping: GroupMapping = serde_json::from_value(json!({
        "apiVersion": "platform.countersign.dev/v1alpha1", "kind": "GroupMapping",
        "metadata": {"name": "admins", "namespace": ns, "labels": {common::TEST_LABEL: stack.run},
                     "annotations": {"countersign.dev/requested-by": "carol"}},
        "spec": {"identityProviderRef": {"name": "sso"}, "groupName": "acme-admins", "role": "CLIENT_ADMIN"},
    }))?;
    Api::<GroupMapping>::namespaced(stack.cp.client_as(GITOPS, &["system:serviceaccounts"]).await?, &ns)
        .create(&PostParams::default(), &mapping)
        .await?;
    let mappings: Api<GroupMapping> = Api::namespaced(stack.admin.clone(), &ns);
    let waiting = common::wait_for(
        "the mapping to await approval",
        async || Ok(mappings.get_opt("admins").await?),
        |m| {
            common::status_has(
                m.status.as_ref(),
                m.metadata.generation,
                "Approved",
                "False",
                "AwaitingApproval",
            )
        },
    )
    .await?;
    let mapping_rows = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM group_mappings WHERE deleted_at IS NULL")
            .fetch_one(&stack.pool)
            .await
    };
    assert_eq!(mapping_rows().await?, 0, "a mapping is not written while it waits");
    let digest = waiting
        .status
        .as_ref()
        .and_then(|s| s.pending_digest.clone())
        .expect("pending digest");
    Api::<GroupMapping>::namespaced(stack.cp.client_as("bob", &[EDITORS, APPROVERS]).await?, &ns)
        .patch(
            "admins",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {
                "countersign.dev/approved-by": "bob", "countersign.dev/approved-digest": digest}}})),
        )
        .await?;
    common::wait_for(
        "the mapping to go live",
        async || Ok(mappings.get_opt("admins").await?),
        |m| common::status_has(m.status.as_ref(), m.metadata.generation, "Ready", "True", "Live"),
    )
    .await?;
    assert_eq!(mapping_rows().await?, 1);
    let approver: Option<String> =
        sqlx::query_scalar("SELECT approver FROM audit_log WHERE kind = 'GroupMapping' AND action = 'create'")
            .fetch_one(&stack.pool)
            .await?;
    assert_eq!(approver.as_deref(), Some("bob"));
    stack.op.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_fronting_link_under_a_policy_is_written_only_once_a_second_person_approves() -> anyhow::Result<()> {
    use countersign_crds::FrontingLink;
    let stack = Stack::start().await?;
    common::apply_yaml(
        &stack.admin,
        &format!(
            "apiVersion: platform.countersign.dev/v1alpha1\nkind: ApprovalPolicy\nmetadata: {{name: links}}\n\
             spec:\n  rules: [{{kinds: [FrontingLink], operations: [create, update, delete]}}]\n  \
             gitopsServiceAccounts: ['{GITOPS}']\n"
        ),
    )
    .await?;
    for (slug, scope) in [("gw", "gw:read"), ("api", "api:read")] {
        sqlx::query("INSERT INTO platform_resources (slug, name, scopes) VALUES ($1, $1, ARRAY[$2])")
            .bind(slug)
            .bind(scope)
            .execute(&stack.pool)
            .await?;
    }
    let name = unique_name("front");
    let link: FrontingLink = serde_json::from_value(json!({
        "apiVersion": "platform.countersign.dev/v1alpha1", "kind": "FrontingLink",
        "metadata": {"name": name, "labels": {common::TEST_LABEL: stack.run},
                     "annotations": {"countersign.dev/requested-by": "carol"}},
        "spec": {"sourceSlug": "gw", "targetSlug": "api", "scopeMap": {"gw:read": ["api:read"]}},
    }))?;
    Api::<FrontingLink>::all(stack.cp.client_as(GITOPS, &["system:serviceaccounts"]).await?)
        .create(&PostParams::default(), &link)
        .await?;
    let links: Api<FrontingLink> = Api::all(stack.admin.clone());
    let has = |l: &FrontingLink, t: &str, s: &str, r: &str| {
        common::status_has(l.status.as_ref(), l.metadata.generation, t, s, r)
    };
    let waiting = common::wait_for(
        "the link to await approval",
        async || Ok(links.get_opt(&name).await?),
        |l| has(l, "Approved", "False", "AwaitingApproval"),
    )
    .await?;
    let rows = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM fronting_links WHERE deleted_at IS NULL")
            .fetch_one(&stack.pool)
            .await
    };
    assert_eq!(rows().await?, 0, "not written while it waits");
    let digest = waiting
        .status
        .as_ref()
        .and_then(|s| s.pending_digest.clone())
        .expect("pending digest");
    Api::<FrontingLink>::all(stack.cp.client_as("bob", &[EDITORS, APPROVERS]).await?)
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {
                "countersign.dev/approved-by": "bob", "countersign.dev/approved-digest": digest}}})),
        )
        .await?;
    common::wait_for(
        "the link to go live",
        async || Ok(links.get_opt(&name).await?),
        |l| has(l, "Ready", "True", "Live") && has(l, "Approved", "True", "Approved"),
    )
    .await?;
    assert_eq!(rows().await?, 1);
    let (requester, approver): (Option<String>, Option<String>) =
        sqlx::query_as("SELECT requester, approver FROM audit_log WHERE kind = 'FrontingLink' AND action = 'create'")
            .fetch_one(&stack.pool)
            .await?;
    assert_eq!(
        (requester.as_deref(), approver.as_deref()),
        (Some("carol"), Some("bob"))
    );
    stack.op.shutdown().await;
    Ok(())
}
