//! Tenant: a tenant of the platform (reference 000 tenants and branding,
//! 003 `Tenant`).

use crate::common::{DeletionPolicy, HTTPS_URL_RULE, SLUG_PATTERN};
use crate::status::ResourceStatus;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// A tenant of the identity platform, reconciled into the tenants table.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "platform.countersign.dev",
    version = "v1alpha1",
    kind = "Tenant",
    status = "ResourceStatus",
    shortname = "tnt",
    category = "countersign",
    printcolumn(name = "Slug", type_ = "string", json_path = ".spec.slug")
)]
#[x_kube(validation = Rule::new("!has(self.parentTenant) || self.parentTenant != self.slug").message("spec.parentTenant: a tenant cannot be its own parent"))]
#[serde(rename_all = "camelCase")]
pub struct TenantSpec {
    /// Globally unique URL-safe slug, used as the platform subdomain label and
    /// resolver path segment: a DNS label (lowercase letters, digits, inner
    /// hyphens, at most 63 characters). Immutable.
    #[schemars(regex(pattern = SLUG_PATTERN), length(max = 63))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.slug is immutable: delete the Tenant and create a new one to change it"))]
    pub slug: String,
    /// Human-readable tenant name.
    #[schemars(length(min = 1, max = 200))]
    pub name: String,
    /// Optional tenant description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2000))]
    pub description: Option<String>,
    /// Slug of the parent tenant, or absent for a root tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = SLUG_PATTERN), length(max = 63))]
    pub parent_tenant: Option<String>,
    /// Lifecycle status of the tenant.
    #[serde(default)]
    pub status: TenantLifecycle,
    /// The tenant owner's contact, shown on management surfaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<TenantOwner>,
    /// Signed instance fingerprint license imports are checked against, e.g. `sha256:…`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^sha256:[A-Za-z0-9._:+/=-]{1,256}$"))]
    pub instance_fingerprint: Option<String>,
    /// Display metadata and the invitation email template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branding: Option<Branding>,
    /// Namespaces whose namespaced objects (IdentityProviders, WebhookSubscriptions)
    /// may attach to this tenant. Objects elsewhere are refused.
    #[serde(default)]
    #[schemars(inner(regex(pattern = SLUG_PATTERN)))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub allowed_namespaces: Vec<String>,
    /// Delete soft-deletes the row when this object is deleted; Orphan leaves it.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

/// Lifecycle status of a tenant.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TenantLifecycle {
    /// The tenant is in service.
    #[default]
    Active,
    /// Sign-in and issuance are suspended.
    Suspended,
    /// Registered, waiting for verification.
    PendingVerification,
}

impl TenantLifecycle {
    /// The spelling the database and the admin API use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "ACTIVE",
            Self::Suspended => "SUSPENDED",
            Self::PendingVerification => "PENDING_VERIFICATION",
        }
    }
}

/// The owner captured for the tenant.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantOwner {
    /// Email of the tenant owner.
    #[schemars(email, length(max = 320))]
    pub email: String,
    /// Display name of the tenant owner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 200))]
    pub display_name: Option<String>,
}

/// Organization display metadata (reference 000, branding payload).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Branding {
    /// Application name shown to users and available as `{{app_name}}` in templates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 200))]
    pub app_name: Option<String>,
    /// HTTPS URL of the logo, available as `{{logo_url}}` in templates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new(HTTPS_URL_RULE).message("spec.branding.logoUrl must be an https:// URL"))]
    pub logo_url: Option<String>,
    /// The invitation email templates the backend renders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email_templates: Option<EmailTemplates>,
}

/// The invitation email the backend renders for new users.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct EmailTemplates {
    /// Subject line of the invitation email.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 998))]
    pub user_invited_subject: Option<String>,
    /// Plain-text body of the invitation email.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 65536))]
    pub user_invited_text: Option<String>,
    /// HTML body of the invitation email.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 131072))]
    pub user_invited_html: Option<String>,
}
