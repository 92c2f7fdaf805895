//! IdentityProvider: an OIDC or SAML federation for one tenant (reference 000
//! IdP federation, 002 OIDC providers, 003 `TenantIdp`).

use crate::common::{HTTPS_URL_RULE, ObjectRef, SecretKeyRef};
use crate::status::ResourceStatus;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// An identity provider a tenant's users sign in through.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "platform.countersign.dev",
    version = "v1alpha1",
    kind = "IdentityProvider",
    namespaced,
    status = "ResourceStatus",
    shortname = "idp",
    category = "countersign",
    printcolumn(name = "Tenant", type_ = "string", json_path = ".spec.tenantRef.name")
)]
#[x_kube(validation = Rule::new("has(self.oidc) != has(self.saml)").message("spec: set exactly one of spec.oidc or spec.saml"))]
#[serde(rename_all = "camelCase")]
pub struct IdentityProviderSpec {
    /// The Tenant (by name) this provider federates for; the Tenant must list
    /// this object's namespace in spec.allowedNamespaces.
    pub tenant_ref: ObjectRef,
    /// Operator-facing provider name, unique per tenant.
    #[schemars(length(min = 1, max = 200))]
    pub display_name: String,
    /// Whether users may sign in through this provider.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// OpenID Connect settings; exclusive with saml.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oidc: Option<OidcProvider>,
    /// SAML 2.0 settings; exclusive with oidc.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saml: Option<SamlProvider>,
    /// What deleting this object does to the row and its group mappings.
    #[serde(default)]
    pub deletion_policy: IdpDeletionPolicy,
}

fn default_true() -> bool {
    true
}

/// What deleting an IdentityProvider does.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
pub enum IdpDeletionPolicy {
    /// Soft-delete the provider; refused while GroupMappings still reference it.
    #[default]
    Delete,
    /// Soft-delete the provider and the mappings that reference it.
    Cascade,
    /// Leave the row and release ownership.
    Orphan,
}

/// OpenID Connect provider settings (reference 002 `OIDCProviderRequest`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct OidcProvider {
    /// Canonical issuer URL; must equal the discovery document's `issuer` and the tokens' `iss`.
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new(HTTPS_URL_RULE).message("spec.oidc.issuer must be an https:// URL"))]
    pub issuer: String,
    /// Client identifier registered with the IdP.
    #[schemars(length(min = 1, max = 512))]
    pub client_id: String,
    /// The client secret, read from a Secret in this namespace; stored encrypted.
    pub client_secret: SecretKeyRef,
    /// OAuth scopes requested at authorization; must include `openid`.
    #[serde(default = "default_scopes")]
    #[x_kube(validation = Rule::new("self.exists(s, s == 'openid')").message("spec.oidc.scopes must include openid"))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub scopes: Vec<String>,
    /// Which ID-token claims supply the user's identity.
    #[serde(default)]
    pub claims_mapping: ClaimsMapping,
    /// Where the group→role mapper reads groups from.
    #[serde(default)]
    pub groups_claim: GroupsClaim,
    /// Accepted email-domain suffixes; empty accepts any domain.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(regex(pattern = "^([a-z0-9]([-a-z0-9]*[a-z0-9])?\\.)+[a-z]{2,63}$")))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub allowed_email_domains: Vec<String>,
    /// Maximum accepted `iat` skew of ID tokens, in seconds.
    #[serde(default = "default_iat_window")]
    #[schemars(range(min = 1, max = 3600))]
    pub iat_window_seconds: i32,
    /// How long fetched signing keys are cached before a refetch, in seconds.
    #[serde(default = "default_jwks_ttl")]
    #[schemars(range(min = 60, max = 86400))]
    pub jwks_cache_ttl_seconds: i32,
    /// Whether to call the userinfo endpoint after the token exchange.
    #[serde(default)]
    pub fetch_userinfo: bool,
}

fn default_scopes() -> Vec<String> {
    ["openid", "email", "profile"].map(String::from).to_vec()
}
fn default_iat_window() -> i32 {
    300
}
fn default_jwks_ttl() -> i32 {
    3600
}

/// ID-token claims that supply the user's identity.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClaimsMapping {
    /// Claim holding the stable subject identifier.
    #[serde(default = "default_subject")]
    pub subject: String,
    /// Claim holding the email address.
    #[serde(default = "default_email")]
    pub email: String,
    /// Claim holding the display name.
    #[serde(default = "default_display_name")]
    pub display_name: String,
}

impl Default for ClaimsMapping {
    fn default() -> Self {
        Self {
            subject: default_subject(),
            email: default_email(),
            display_name: default_display_name(),
        }
    }
}
fn default_subject() -> String {
    "sub".into()
}
fn default_email() -> String {
    "email".into()
}
fn default_display_name() -> String {
    "name".into()
}

/// Where groups come from in the ID token.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct GroupsClaim {
    /// JSONPath-style claim path (default `groups`).
    #[serde(default = "default_groups_path")]
    #[schemars(length(min = 1, max = 256))]
    pub path: String,
    /// How the claim is shaped.
    #[serde(default)]
    pub format: GroupsClaimFormat,
}

impl Default for GroupsClaim {
    fn default() -> Self {
        Self {
            path: default_groups_path(),
            format: GroupsClaimFormat::default(),
        }
    }
}
fn default_groups_path() -> String {
    "groups".into()
}

/// The shape of the groups claim.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum GroupsClaimFormat {
    /// A JSON array of strings (the reference default).
    #[default]
    StringArray,
    /// One string with comma-separated groups.
    CommaSeparated,
    /// One string with space-separated groups.
    SpaceSeparated,
}

/// SAML 2.0 provider settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SamlProvider {
    /// HTTPS URL of the IdP's metadata document.
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new(HTTPS_URL_RULE).message("spec.saml.metadataUrl must be an https:// URL"))]
    pub metadata_url: String,
    /// The IdP's entity ID; must equal the metadata's entityID.
    #[schemars(length(min = 1, max = 1024))]
    pub entity_id: String,
    /// HTTPS single sign-on endpoint.
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new(HTTPS_URL_RULE).message("spec.saml.ssoUrl must be an https:// URL"))]
    pub sso_url: String,
}
