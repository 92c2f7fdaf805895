//! A control plane with the approval guard, RBAC and an ApprovalPolicy
//! covering Tenants, plus the people who act on it (shared by the approval
//! tests and the approval-latency benchmark).

use super::{has_condition, wait_tenant};
use countersign_crds::Tenant;
use countersign_crds::admission::{APPROVAL_GUARD_YAML, RBAC_YAML};
use countersign_e2e::{ControlPlane, unique_name};
use countersign_operator::run::Running;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use sqlx::PgPool;
use std::time::Duration;

/// The GitOps service account the policy trusts to declare requesters.
pub const GITOPS: &str = "system:serviceaccount:argocd:argocd-application-controller";
/// Group bound to countersign-editor.
pub const EDITORS: &str = "platform-editors";
/// Group bound to countersign-approver.
pub const APPROVERS: &str = "platform-approvers";

/// Installs the CRDs, the RBAC roles and their example bindings, the approval
/// guard and, when asked, an ApprovalPolicy covering Tenant create, update and
/// delete whose GitOps account is [`GITOPS`] (granted the editor role).
pub async fn install(admin: &Client, with_policy: bool) -> anyhow::Result<()> {
    super::install_crds(admin).await?;
    super::apply_yaml(admin, RBAC_YAML).await?;
    let approvers = std::fs::read_to_string(super::repo_root().join("examples/70-approvers.yaml"))?;
    super::apply_yaml(admin, &approvers).await?;
    super::apply_yaml(admin, APPROVAL_GUARD_YAML).await?;
    // The service account is not in the editors group: bind the editor role to it directly.
    super::apply_yaml(
        admin,
        &format!(
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {{name: argocd-edits}}\n\
             roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: countersign-editor}}\n\
             subjects: [{{kind: User, apiGroup: rbac.authorization.k8s.io, name: '{GITOPS}'}}]\n"
        ),
    )
    .await?;
    wait_until_admission_applies(admin).await?;
    if with_policy {
        super::apply_yaml(
            admin,
            &format!(
                "apiVersion: platform.countersign.dev/v1alpha1\nkind: ApprovalPolicy\nmetadata: {{name: tenants}}\n\
                 spec:\n  rules: [{{kinds: [Tenant], operations: [create, update, delete]}}]\n  \
                 gitopsServiceAccounts: ['{GITOPS}']\n"
            ),
        )
        .await?;
    }
    Ok(())
}

/// The running stack.
pub struct Stack {
    /// cp.
    pub cp: ControlPlane,
    /// admin.
    pub admin: Client,
    /// pool.
    pub pool: PgPool,
    /// run.
    pub run: String,
    /// op.
    pub op: Running,
}

impl Stack {
    /// Starts everything; the policy covers Tenant create, update and delete.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(|_| {}).await
    }

    /// Like [`Stack::start`], with the operator's options adjusted.
    pub async fn start_with(adjust: impl FnOnce(&mut countersign_operator::RunOptions)) -> anyhow::Result<Self> {
        let cp = ControlPlane::start().await?;
        let admin = cp.client().await?;
        install(&admin, true).await?;
        let (_url, pool) = super::database().await?;
        let run = unique_name("approval");
        let op = super::operator_with(&admin, &pool, &run, adjust).await?;
        // Trusting a GitOps account to declare requesters loosens the rule,
        // so even the first policy's account waits for a second person.
        approve_policy(&cp, &admin, "tenants").await?;
        Ok(Self {
            cp,
            admin,
            pool,
            run,
            op,
        })
    }

    pub async fn as_user(&self, user: &str, groups: &[&str]) -> anyhow::Result<Api<Tenant>> {
        Ok(Api::all(self.cp.client_as(user, groups).await?))
    }

    /// A Tenant created by the GitOps service account on behalf of `author`.
    pub async fn gitops_create(&self, name: &str, author: &str) -> anyhow::Result<()> {
        let mut t = super::tenant(name, &self.run, json!({"slug": name, "name": "Declared in git"}))?;
        t.annotations_mut()
            .insert("countersign.dev/requested-by".into(), author.into());
        self.as_user(GITOPS, &["system:serviceaccounts"])
            .await?
            .create(&PostParams::default(), &t)
            .await?;
        Ok(())
    }

    pub async fn awaiting(&self, name: &str) -> anyhow::Result<Tenant> {
        let api: Api<Tenant> = Api::all(self.admin.clone());
        wait_tenant(&api, name, "AwaitingApproval", |t| {
            has_condition(t, "Approved", "False", "AwaitingApproval")
        })
        .await
    }

    pub async fn approve(&self, name: &str, who: &str, digest: &str) -> anyhow::Result<()> {
        let patch = Patch::Merge(json!({"metadata": {"annotations": {
            "countersign.dev/approved-by": who, "countersign.dev/approved-digest": digest}}}));
        self.as_user(who, &[EDITORS, APPROVERS])
            .await?
            .patch(name, &PatchParams::default(), &patch)
            .await?;
        Ok(())
    }

    pub async fn rows(&self, slug: &str) -> anyhow::Result<Vec<String>> {
        Ok(sqlx::query_scalar("SELECT name FROM tenants WHERE slug = $1")
            .bind(slug)
            .fetch_all(&self.pool)
            .await?)
    }

    pub async fn requests(&self, name: &str) -> anyhow::Result<Vec<(String, String, Option<String>)>> {
        Ok(sqlx::query_as(
            "SELECT state, requester, decided_by FROM change_requests WHERE object_key = $1 ORDER BY created_at",
        )
        .bind(name)
        .fetch_all(&self.pool)
        .await?)
    }
}

/// The tables the two-person rule protects, as text, row by row in a stable
/// order: an attack that must change nothing leaves this string as it was.
pub async fn guarded_tables(pool: &PgPool) -> anyhow::Result<String> {
    let mut all = String::new();
    for (table, order) in [
        ("tenants", "id"),
        ("identity_providers", "id"),
        ("group_mappings", "id"),
        ("change_requests", "created_at, id"),
        ("audit_log", "seq"),
    ] {
        // Table and column names are the constants above, not input.
        let sql = format!("SELECT coalesce(string_agg(to_jsonb(t)::text, E'\\n' ORDER BY {order}), '') FROM {table} t");
        let text: String = sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_one(pool).await?;
        all.push_str(&format!("== {table}\n{text}\n"));
    }
    Ok(all)
}

/// The object's status.pendingDigest, or "" when none is shown.
pub fn pending_digest(t: &Tenant) -> String {
    t.status
        .as_ref()
        .and_then(|s| s.pending_digest.clone())
        .unwrap_or_default()
}

/// The approved-by annotation, if the object carries one.
pub fn approval_annotation(t: &Tenant) -> Option<&String> {
    t.annotations().get("countersign.dev/approved-by")
}

/// The notes of the StaleApproval events recorded for the object.
pub async fn stale_approval_events(stack: &Stack, name: &str) -> anyhow::Result<Vec<String>> {
    Ok(super::events_for(&stack.admin, name)
        .await?
        .into_iter()
        .filter(|(reason, _)| reason == "StaleApproval")
        .map(|(_, note)| note)
        .collect())
}

/// Waits until the approval left on the object was refused because it was
/// given for an earlier request, taken off the object, and `digest` awaits a
/// fresh approval.
pub async fn refused_as_predating(stack: &Stack, name: &str, digest: &str, events_before: usize) -> anyhow::Result<()> {
    refused_as_stale(stack, name, digest, events_before, "earlier request").await
}

/// Waits until the approval on the object was refused as stale (an event
/// whose note contains `because`), taken off the object, and `digest` awaits
/// a fresh approval.
pub async fn refused_as_stale(
    stack: &Stack,
    name: &str,
    digest: &str,
    events_before: usize,
    because: &str,
) -> anyhow::Result<()> {
    let admin: Api<Tenant> = Api::all(stack.admin.clone());
    wait_tenant(&admin, name, "awaiting a fresh approval", |t| {
        has_condition(t, "Approved", "False", "AwaitingApproval")
            && pending_digest(t) == digest
            && approval_annotation(t).is_none()
    })
    .await?;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let events = stale_approval_events(stack, name).await?;
        if events.len() > events_before {
            let note = events.last().cloned().unwrap_or_default();
            anyhow::ensure!(note.contains(because), "{note}");
            return Ok(());
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "no StaleApproval event for {name}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until the ApprovalPolicy `name` shows a loosening awaiting approval
/// and has bob (an approver) approve it, then waits until it is in force as
/// declared.
pub async fn approve_policy(cp: &ControlPlane, admin: &Client, name: &str) -> anyhow::Result<()> {
    let policies: Api<countersign_crds::ApprovalPolicy> = Api::all(admin.clone());
    let pending = super::wait_for(
        &format!("ApprovalPolicy {name} to show its loosening"),
        async || Ok(policies.get_opt(name).await?),
        |p| p.status.as_ref().is_some_and(|s| s.common.pending_digest.is_some()),
    )
    .await?;
    let digest = pending.status.and_then(|s| s.common.pending_digest).unwrap_or_default();
    let bob: Api<countersign_crds::ApprovalPolicy> = Api::all(cp.client_as("bob", &[EDITORS, APPROVERS]).await?);
    bob.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {
            "countersign.dev/approved-by": "bob", "countersign.dev/approved-digest": digest}}})),
    )
    .await?;
    super::wait_for(
        &format!("ApprovalPolicy {name} in force as declared"),
        async || Ok(policies.get_opt(name).await?),
        |p| {
            p.status
                .as_ref()
                .is_some_and(|s| s.common.pending_digest.is_none() && s.in_force.as_ref() == Some(&p.spec))
        },
    )
    .await?;
    Ok(())
}

/// Admission policies take effect asynchronously: probes with dry-run
/// creates until the API server stamps the declarer and refuses an approval
/// on create, so nothing a test creates afterwards slips past them.
pub async fn wait_until_admission_applies(admin: &Client) -> anyhow::Result<()> {
    let api: Api<Tenant> = Api::all(admin.clone());
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let probe = super::tenant(
            "admission-probe",
            "probe",
            json!({"slug": "admission-probe", "name": "Probe"}),
        )?;
        let stamped = api
            .create(&dry, &probe)
            .await
            .is_ok_and(|t| t.annotations().contains_key("countersign.dev/declared-by"));
        let mut approved = probe.clone();
        approved
            .annotations_mut()
            .insert("countersign.dev/approved-by".into(), "x".into());
        let refused = api.create(&dry, &approved).await.is_err();
        if stamped && refused {
            return Ok(());
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the admission policies never took effect"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
