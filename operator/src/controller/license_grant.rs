//! The LicenseGrant controller.

use super::Context;
use std::sync::Arc;

/// Runs the LicenseGrant controller until `shutdown` resolves.
pub async fn run(
    _ctx: Arc<Context>,
    _selector: Option<String>,
    _policy_changed: impl futures::Stream<Item = ()> + Send + 'static,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    shutdown.await;
}
