//! Every CRD installs into a real API server, every example passes
//! server-side dry-run, and bad manifests are refused naming the field.

mod common;

use anyhow::Context as _;
use countersign_crds::Tenant;
use kube::api::{Api, Patch, PatchParams, PostParams};

#[tokio::test]
async fn crds_are_established_and_examples_pass_server_side_dry_run() -> anyhow::Result<()> {
    let client = common::cluster().await?;
    let dir = common::repo_root().join("examples");
    let mut files: Vec<_> = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .collect();
    files.sort();
    let mut checked = 0;
    for file in files.iter().filter(|p| p.extension().is_some_and(|x| x == "yaml")) {
        let text = std::fs::read_to_string(file)?;
        for obj in common::parse_yaml(&text)? {
            let kind = obj.types.as_ref().map(|t| t.kind.clone()).unwrap_or_default();
            if kind == "Namespace" {
                common::ensure_namespace(&client, &obj.metadata.name.clone().unwrap_or_default()).await?;
                continue;
            }
            common::create_dynamic(&client, &obj, true)
                .await
                .with_context(|| format!("{}: {kind} {:?} refused", file.display(), obj.metadata.name))?;
            checked += 1;
        }
    }
    assert!(checked >= 10, "only {checked} example objects were dry-run");
    Ok(())
}

#[tokio::test]
async fn bad_manifests_are_refused_with_a_message_naming_the_field() -> anyhow::Result<()> {
    let client = common::cluster().await?;
    common::ensure_namespace(&client, "team-acme").await?;
    let dir = common::repo_root().join("e2e/tests/fixtures/bad");
    let mut files: Vec<_> = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .collect();
    files.sort();
    assert!(files.len() >= 10, "expected the bad-manifest fixtures");
    for file in files {
        let text = std::fs::read_to_string(&file)?;
        let expect = text
            .lines()
            .find_map(|l| l.strip_prefix("# expect: "))
            .with_context(|| format!("{} has no '# expect:' line", file.display()))?
            .to_string();
        for obj in common::parse_yaml(&text)? {
            match common::create_dynamic(&client, &obj, true).await {
                Ok(_) => panic!("{} was accepted", file.display()),
                Err(kube::Error::Api(status)) => {
                    assert_eq!(status.code, 422, "{}: {status:?}", file.display());
                    assert!(
                        status.message.contains(&expect),
                        "{}: message {:?} does not contain {expect:?}",
                        file.display(),
                        status.message
                    );
                }
                Err(other) => panic!("{}: unexpected error {other}", file.display()),
            }
        }
    }
    Ok(())
}

#[tokio::test]
async fn a_tenant_slug_cannot_change_after_creation() -> anyhow::Result<()> {
    let client = common::cluster().await?;
    let name = countersign_e2e::unique_name("immutable");
    let api: Api<Tenant> = Api::all(client);
    let t = common::tenant(&name, "none", serde_json::json!({"slug": name, "name": "Immutable"}))?;
    api.create(&PostParams::default(), &t).await?;
    let err = api
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"slug": "something-else"}})),
        )
        .await
        .expect_err("slug change must be refused");
    match err {
        kube::Error::Api(s) => assert!(s.message.contains("spec.slug is immutable"), "{}", s.message),
        other => panic!("unexpected {other}"),
    }
    api.delete(&name, &Default::default()).await?;
    Ok(())
}
