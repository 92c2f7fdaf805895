//! The Countersign operator: wires the reconcile pipelines to the Kubernetes
//! API, serves health and metrics, and provides the CLI's commands.

pub mod audit_anchor;
pub mod controller;
pub mod error;
pub mod guard;
pub mod health;
pub mod kube_client;
pub mod license;
pub mod metrics;
pub mod run;
pub mod secret_key;

pub use error::Error;
pub use run::{RunOptions, run};
