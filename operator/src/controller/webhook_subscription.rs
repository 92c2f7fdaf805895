//! The WebhookSubscription controller.

use super::Context;
use std::sync::Arc;

/// Runs the WebhookSubscription controller until `shutdown` resolves.
pub async fn run(
    _ctx: Arc<Context>,
    _selector: Option<String>,
    _policy_changed: impl futures::Stream<Item = ()> + Send + 'static,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    shutdown.await;
}
