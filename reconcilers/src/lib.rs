//! Countersign's reconcile pipelines, one module per kind, each the same
//! shape: resolve references (I/O) → validate (pure) → plan desired vs actual
//! (pure) → apply in one transaction → compute status (pure).
//!
//! This crate knows the API database and the CRD types but not the Kubernetes
//! API: the operator feeds it objects and writes back what it returns.

pub mod approval;
pub mod approval_policy;
pub mod audit;
pub mod conditions;
pub mod db;
pub mod digest;
pub mod discovery;
pub mod error;
pub mod fronting_link;
pub mod group_mapping;
pub mod identity;
pub mod identity_provider;
pub mod license_grant;
pub mod outbound;
pub mod outcome;
pub mod record;
pub mod report;
pub mod secrets;
pub mod tenancy;
pub mod tenant;
pub mod validation;
pub mod webhook_subscription;

pub use error::Error;
pub use outcome::{Desired, Outcome};
