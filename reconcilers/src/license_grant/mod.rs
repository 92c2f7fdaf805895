//! The LicenseGrant pipeline: resolve → validate → plan → two-person gate → apply → status.

/// The kind name used in ownership records and the audit log.
pub const KIND: &str = "LicenseGrant";
