//! The API server enforces the two-person rule's admission half
//! (ADR 0004): each attack is made as a distinct user through
//! impersonation and must be denied with a message saying why.

mod common;

use countersign_crds::Tenant;
use countersign_e2e::{ControlPlane, unique_name};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use std::time::{Duration, Instant};

use common::approvals::{APPROVERS, EDITORS, GITOPS};

struct Cluster {
    cp: ControlPlane,
    admin: Client,
}

impl Cluster {
    /// A private control plane with CRDs, RBAC, the approval guard and (optionally) an ApprovalPolicy.
    async fn start(with_policy: bool) -> anyhow::Result<Self> {
        let cp = ControlPlane::start().await?;
        let admin = cp.client().await?;
        common::approvals::install(&admin, with_policy).await?;
        let cluster = Self { cp, admin };
        cluster.wait_until_guard_enforces().await?;
        Ok(cluster)
    }

    async fn api_as(&self, user: &str, groups: &[&str]) -> anyhow::Result<Api<Tenant>> {
        Ok(Api::all(self.cp.client_as(user, groups).await?))
    }

    /// Admission policies take effect asynchronously: probe until a create
    /// carrying an approval is refused.
    async fn wait_until_guard_enforces(&self) -> anyhow::Result<()> {
        let api: Api<Tenant> = Api::all(self.admin.clone());
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut probe = tenant("probe", "gitops@example.com");
            probe
                .annotations_mut()
                .insert("countersign.dev/approved-by".into(), "x".into());
            let dry = PostParams {
                dry_run: true,
                ..Default::default()
            };
            if api.create(&dry, &probe).await.is_err() {
                return Ok(());
            }
            anyhow::ensure!(Instant::now() < deadline, "the approval guard never took effect");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

fn tenant(name: &str, requester: &str) -> Tenant {
    let mut t = common::tenant(name, "admission", json!({"slug": name, "name": "Guarded"})).expect("tenant");
    t.annotations_mut()
        .insert("countersign.dev/requested-by".into(), requester.into());
    t
}

fn annotate(pairs: &[(&str, Option<&str>)]) -> Patch<serde_json::Value> {
    let map: serde_json::Map<String, serde_json::Value> = pairs
        .iter()
        .map(|(k, v)| {
            (
                format!("countersign.dev/{k}"),
                v.map_or(serde_json::Value::Null, |v| json!(v)),
            )
        })
        .collect();
    Patch::Merge(json!({"metadata": {"annotations": map}}))
}

/// Asserts the API server denied the request with a message containing `why`.
fn denied<T: std::fmt::Debug>(result: Result<T, kube::Error>, why: &str) {
    match result {
        Err(kube::Error::Api(s)) => {
            assert!(
                s.code == 422 || s.code == 403,
                "unexpected code {}: {}",
                s.code,
                s.message
            );
            assert!(s.message.contains(why), "message {:?} does not say {why:?}", s.message);
        }
        other => panic!("expected a denial saying {why:?}, got {other:?}"),
    }
}

#[tokio::test]
async fn the_api_server_refuses_every_admission_attack() -> anyhow::Result<()> {
    let cluster = Cluster::start(true).await?;
    // An operator and database behind the cluster, to show no attack reaches the database.
    let (_url, pool) = common::database().await?;
    let op = common::operator(&cluster.admin, &pool, "admission").await?;
    let pp = PatchParams::default();
    let gitops = cluster.api_as(GITOPS, &["system:serviceaccounts"]).await?;
    let alice = cluster.api_as("alice", &[EDITORS, APPROVERS]).await?;
    let bob = cluster.api_as("bob", &[EDITORS, APPROVERS]).await?;
    let mallory = cluster.api_as("mallory", &[EDITORS]).await?;

    // Approval annotations in a created manifest (also: re-creating with copied annotations).
    let name = unique_name("copied");
    let mut copied = tenant(&name, "carol@example.com");
    copied
        .annotations_mut()
        .insert("countersign.dev/approved-by".into(), "bob".into());
    copied
        .annotations_mut()
        .insert("countersign.dev/approved-digest".into(), "0".repeat(64));
    denied(
        gitops.create(&PostParams::default(), &copied).await,
        "cannot be set on create",
    );

    // The GitOps service account may declare the git author as requester.
    let declared = unique_name("declared");
    let created = gitops
        .create(&PostParams::default(), &tenant(&declared, "carol@example.com"))
        .await?;
    assert_eq!(common::requester(&created), Some("carol@example.com"));

    // A person is stamped as requester whatever they wrote.
    let own = unique_name("own");
    let created = alice
        .create(&PostParams::default(), &tenant(&own, "somebody-else"))
        .await?;
    assert_eq!(common::requester(&created), Some("alice"));

    // Changing requested-by after the fact, to someone else.
    denied(
        alice
            .patch(&own, &pp, &annotate(&[("requested-by", Some("zed"))]))
            .await,
        "must be your own username (alice)",
    );

    // Approving one's own change.
    let approve = |who: &str| annotate(&[("approved-by", Some(who)), ("approved-digest", Some("d1"))]);
    denied(
        alice.patch(&own, &pp, &approve("alice")).await,
        "cannot approve a change you requested",
    );

    // A service account approving.
    denied(
        gitops.patch(&own, &pp, &approve(GITOPS)).await,
        "system: identities cannot approve",
    );

    // Writing someone else's name into approved-by.
    denied(
        bob.patch(&own, &pp, &approve("dave")).await,
        "must be your own username (bob)",
    );

    // Approving without the approve verb.
    denied(
        mallory.patch(&own, &pp, &approve("mallory")).await,
        "needs the RBAC verb approve on tenants",
    );

    // A second person with the verb may approve, and may reject.
    let approved = bob.patch(&own, &pp, &approve("bob")).await?;
    assert_eq!(
        approved
            .annotations()
            .get("countersign.dev/approved-by")
            .map(String::as_str),
        Some("bob")
    );
    let reject = annotate(&[
        ("rejected-by", Some("bob")),
        ("rejected-digest", Some("d1")),
        ("rejected-reason", Some("wrong slug")),
    ]);
    bob.patch(&declared, &pp, &reject).await?;

    // Removing a rejection, even as the rejecter or an administrator.
    let unreject = annotate(&[
        ("rejected-by", None),
        ("rejected-digest", None),
        ("rejected-reason", None),
    ]);
    denied(
        bob.patch(&declared, &pp, &unreject).await,
        "a rejection stands until the spec changes",
    );
    denied(
        Api::<Tenant>::all(cluster.admin.clone())
            .patch(&declared, &pp, &unreject)
            .await,
        "a rejection stands until the spec changes",
    );
    // A new spec is a new request: the old rejection may go with it.
    let respec = Patch::Merge(json!({
        "metadata": {"annotations": {"countersign.dev/rejected-by": null, "countersign.dev/rejected-digest": null,
                                     "countersign.dev/rejected-reason": null}},
        "spec": {"name": "Fixed"},
    }));
    gitops.patch(&declared, &pp, &respec).await?;

    // The operator saw every object, and nothing reached the database: no row,
    // no audit entry, no approved change request.
    let admin: Api<Tenant> = Api::all(cluster.admin.clone());
    for name in [&own, &declared] {
        common::wait_tenant(&admin, name, "held for approval", |t| {
            common::condition_of(t.status.as_ref(), "Approved").is_some_and(|c| c.status.as_str() == "False")
                && t.status.as_ref().and_then(|s| s.observed_generation) == t.metadata.generation
        })
        .await?;
    }
    assert_eq!(common::count(&pool, "tenants").await?, 0);
    assert_eq!(common::count(&pool, "object_audit").await?, 0);
    let approved: i64 = sqlx::query_scalar("SELECT count(*) FROM change_requests WHERE state = 'approved'")
        .fetch_one(&pool)
        .await?;
    assert_eq!(approved, 0);
    op.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn without_an_approval_policy_requesters_are_not_enforced_but_approvals_still_are() -> anyhow::Result<()> {
    let cluster = Cluster::start(false).await?;
    let alice = cluster.api_as("alice", &[EDITORS, APPROVERS]).await?;
    let name = unique_name("free");
    let created = alice
        .create(&PostParams::default(), &tenant(&name, "carol@example.com"))
        .await?;
    assert_eq!(
        common::requester(&created),
        Some("carol@example.com"),
        "with no ApprovalPolicy nothing is stamped"
    );
    let pp = PatchParams::default();
    alice
        .patch(&name, &pp, &Patch::Merge(json!({"spec": {"name": "Changed freely"}})))
        .await?;
    denied(
        alice
            .patch(
                &name,
                &pp,
                &annotate(&[("approved-by", Some("bob")), ("approved-digest", Some("d"))]),
            )
            .await,
        "must be your own username (alice)",
    );
    Ok(())
}
