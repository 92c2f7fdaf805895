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
    status = "IdentityProviderStatus",
    shortname = "idp",
    category = "countersign",
    printcolumn(name = "Tenant", type_ = "string", json_path = ".spec.tenantRef.name")
)]
#[x_kube(validation = Rule::new("has(self.oidc) != has(self.saml)").message("spec: set exactly one of spec.oidc or spec.saml"))]
#[serde(rename_all = "camelCase")]
pub struct IdentityProviderSpec {
    /// The Tenant (by name) this provider federates for; the Tenant must list
    /// this object's namespace in spec.allowedNamespaces. Immutable.
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.tenantRef is immutable; delete the provider and create a new one"))]
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

/// The observed state of an IdentityProvider: the shared status plus what the
/// operator found when it checked the provider before letting it go live.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct IdentityProviderStatus {
    /// Conditions, database ID and digests, as every kind reports them.
    #[serde(flatten)]
    pub common: ResourceStatus,
    /// Fingerprint of the client secret stored for this provider (HMAC-SHA-256
    /// under the operator's key, truncated); changes when the secret does and
    /// reveals nothing about it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_fingerprint: Option<String>,
    /// The result of the last OIDC discovery check (reference 002
    /// `OIDCTestDiscoveryResult`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery: Option<OidcDiscoveryStatus>,
    /// The result of the last SAML metadata check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saml_metadata: Option<SamlMetadataStatus>,
}

/// What the OIDC discovery check found, field by field as the reference's
/// test-discovery result reports it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct OidcDiscoveryStatus {
    /// The generation of the spec that was checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Whether `{issuer}/.well-known/openid-configuration` was fetched and parsed.
    pub discovery_succeeded: bool,
    /// Whether the `jwks_uri` answered with at least one key.
    pub jwks_reachable: bool,
    /// `id_token_signing_alg_values_supported` as the provider advertises it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub supported_alg_values: Vec<String>,
    /// Whether the provider advertises RFC 9207 `iss` in authorization responses.
    pub iss_param_supported: bool,
    /// The `issuer` the discovery document declares; must equal spec.oidc.issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer_echo: Option<String>,
    /// Key IDs currently published in the JWKS.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub current_kids: Vec<String>,
    /// Every failed rule, naming the field; empty when the check passed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

/// What the SAML metadata check found.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SamlMetadataStatus {
    /// The generation of the spec that was checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Whether the metadata document was fetched and parsed.
    pub metadata_fetched: bool,
    /// The `entityID` the metadata declares; must equal spec.saml.entityId.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entity_id_echo: Option<String>,
    /// Whether spec.saml.ssoUrl is among the metadata's SingleSignOnService locations.
    pub sso_url_listed: bool,
    /// Every failed rule, naming the field; empty when the check passed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}
