//! Smoke test of the e2e harness itself: control plane, RBAC via impersonation, PostgreSQL.

use std::time::Instant;

use countersign_e2e::{ControlPlane, Postgres, shared_control_plane, test_database_url, unique_name};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ListParams, PostParams};
use sqlx::{Connection as _, PgConnection};

#[tokio::test]
async fn control_plane_admin_and_rbac() -> anyhow::Result<()> {
    let started = Instant::now();
    let cp = shared_control_plane().await;
    eprintln!("control plane ready in {:?} at {}", started.elapsed(), cp.url());
    assert!(cp.kubeconfig_path().is_file());

    let admin = cp.client().await?;
    let namespaces: Api<Namespace> = Api::all(admin);
    let name = unique_name("smoke");
    let mut ns = Namespace::default();
    ns.metadata.name = Some(name.clone());
    namespaces.create(&PostParams::default(), &ns).await?;
    let list = namespaces.list(&ListParams::default()).await?;
    let names: Vec<_> = list.items.iter().filter_map(|n| n.metadata.name.clone()).collect();
    assert!(names.iter().any(|n| n == "default"), "{names:?}");
    assert!(names.contains(&name), "{names:?}");

    let alice: Api<Namespace> = Api::all(cp.client_as("alice", &[]).await?);
    match alice.list(&ListParams::default()).await {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 403, "{status:?}");
            assert!(status.message.contains("\"alice\""), "{status:?}");
        }
        other => panic!("alice should be forbidden to list namespaces, got {other:?}"),
    }

    // A second call returns the same instance.
    assert!(std::ptr::eq(cp, shared_control_plane().await));
    Ok(())
}

async fn select_one(url: &str) -> anyhow::Result<i32> {
    let mut conn = PgConnection::connect(url).await?;
    let one: i32 = sqlx::query_scalar("SELECT 1").fetch_one(&mut conn).await?;
    conn.close().await?;
    Ok(one)
}

#[tokio::test]
async fn postgres_stop_and_start_again() -> anyhow::Result<()> {
    let started = Instant::now();
    let pg = Postgres::start().await?;
    eprintln!("postgres ready in {:?} on port {}", started.elapsed(), pg.port());

    let url = pg.create_database().await?;
    assert_eq!(select_one(&url).await?, 1);

    let stopping = Instant::now();
    pg.stop().await?;
    assert!(!pg.is_running());
    assert!(select_one(&url).await.is_err(), "query should fail while stopped");
    eprintln!("postgres stopped in {:?}", stopping.elapsed());

    let restarting = Instant::now();
    pg.start_again().await?;
    eprintln!("postgres restarted in {:?}", restarting.elapsed());
    assert_eq!(select_one(&url).await?, 1);

    // Dropping stops the server and removes its directory.
    let (dir, port) = (pg.dir().to_path_buf(), pg.port());
    drop(pg);
    assert!(!dir.exists(), "{} should be removed", dir.display());
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    Ok(())
}

#[tokio::test]
async fn private_control_plane_is_cleaned_up_on_drop() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    let version = cp.client().await?.apiserver_version().await?;
    assert_eq!(version.git_version, "v1.36.3");
    let (dir, port) = (cp.dir().to_path_buf(), cp.port());
    drop(cp);
    assert!(!dir.exists(), "{} should be removed", dir.display());
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    Ok(())
}

#[tokio::test]
async fn fresh_database_urls() -> anyhow::Result<()> {
    let a = test_database_url().await?;
    let b = test_database_url().await?;
    assert_ne!(a, b);
    assert_eq!(select_one(&a).await?, 1);
    assert_eq!(select_one(&b).await?, 1);
    Ok(())
}
