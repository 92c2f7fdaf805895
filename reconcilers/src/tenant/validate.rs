//! Pure validation of a Tenant beyond what the CRD schema already enforces,
//! and the translation of the spec into the row it should produce.

use countersign_crds::common::SLUG_PATTERN;
use countersign_crds::tenant::{Branding, TenantSpec};

/// The placeholders the backend substitutes in invitation templates (reference 000).
pub const TEMPLATE_PLACEHOLDERS: [&str; 5] = ["app_name", "logo_url", "organization_name", "role", "accept_url"];

pub use crate::validation::Invalid;
use crate::validation::{invalid, is_slug};

/// The tenant row the spec asks for (parent still as a slug).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredTenant {
    /// Slug.
    pub slug: String,
    /// Display name.
    pub name: String,
    /// Description.
    pub description: Option<String>,
    /// Parent slug.
    pub parent_slug: Option<String>,
    /// ACTIVE, SUSPENDED or PENDING_VERIFICATION.
    pub status: String,
    /// Owner email.
    pub owner_email: Option<String>,
    /// Owner display name.
    pub owner_display_name: Option<String>,
    /// Instance fingerprint.
    pub instance_fingerprint: Option<String>,
    /// Branding as the admin API stores it (snake_case keys).
    pub branding: Option<serde_json::Value>,
    /// Allowed namespaces, sorted.
    pub allowed_namespaces: Vec<String>,
}

/// Validates the spec and builds the desired row.
pub fn validate(spec: &TenantSpec) -> Result<DesiredTenant, Invalid> {
    let slug_ok = is_slug(&spec.slug);
    if !slug_ok {
        return Err(invalid("spec.slug", format!("must match {SLUG_PATTERN}")));
    }
    let name = spec.name.trim();
    if name.is_empty() {
        return Err(invalid("spec.name", "must not be blank"));
    }
    if let Some(parent) = &spec.parent_tenant {
        if !is_slug(parent) {
            return Err(invalid("spec.parentTenant", format!("must match {SLUG_PATTERN}")));
        }
        if *parent == spec.slug {
            return Err(invalid("spec.parentTenant", "a tenant cannot be its own parent"));
        }
    }
    if let Some(owner) = &spec.owner
        && !looks_like_email(&owner.email)
    {
        return Err(invalid("spec.owner.email", "must be an email address"));
    }
    let branding = spec.branding.as_ref().map(validate_branding).transpose()?;
    for (i, ns) in spec.allowed_namespaces.iter().enumerate() {
        if !is_slug(ns) {
            return Err(invalid(
                &format!("spec.allowedNamespaces[{i}]"),
                "must be a namespace name (DNS label)",
            ));
        }
    }
    let mut allowed_namespaces = spec.allowed_namespaces.clone();
    allowed_namespaces.sort();
    allowed_namespaces.dedup();
    Ok(DesiredTenant {
        slug: spec.slug.clone(),
        name: name.to_string(),
        description: spec.description.clone().filter(|d| !d.trim().is_empty()),
        parent_slug: spec.parent_tenant.clone(),
        status: spec.status.as_str().to_string(),
        owner_email: spec.owner.as_ref().map(|o| o.email.clone()),
        owner_display_name: spec.owner.as_ref().and_then(|o| o.display_name.clone()),
        instance_fingerprint: spec.instance_fingerprint.clone(),
        branding,
        allowed_namespaces,
    })
}

fn validate_branding(b: &Branding) -> Result<serde_json::Value, Invalid> {
    if let Some(url) = &b.logo_url
        && (!url.starts_with("https://") || url.len() <= "https://".len() || url.chars().any(char::is_whitespace))
    {
        return Err(invalid(
            "spec.branding.logoUrl",
            "must be an https:// URL without spaces",
        ));
    }
    let mut map = serde_json::Map::new();
    if let Some(v) = &b.app_name {
        map.insert("app_name".into(), v.clone().into());
    }
    if let Some(v) = &b.logo_url {
        map.insert("logo_url".into(), v.clone().into());
    }
    if let Some(t) = &b.email_templates {
        let mut templates = serde_json::Map::new();
        for (field, key, value) in [
            ("userInvitedSubject", "user_invited_subject", &t.user_invited_subject),
            ("userInvitedText", "user_invited_text", &t.user_invited_text),
            ("userInvitedHtml", "user_invited_html", &t.user_invited_html),
        ] {
            if let Some(text) = value {
                check_placeholders(text)
                    .map_err(|rule| invalid(&format!("spec.branding.emailTemplates.{field}"), rule))?;
                templates.insert(key.into(), text.clone().into());
            }
        }
        map.insert("email_templates".into(), templates.into());
    }
    Ok(map.into())
}

/// Every `{{name}}` in a template must be one the backend knows, and braces must balance.
fn check_placeholders(text: &str) -> Result<(), String> {
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            return Err("has an unclosed {{ placeholder".into());
        };
        let name = after[..end].trim();
        if !TEMPLATE_PLACEHOLDERS.contains(&name) {
            return Err(format!(
                "uses unknown placeholder {{{{{name}}}}}; allowed: {}",
                TEMPLATE_PLACEHOLDERS.join(", ")
            ));
        }
        rest = &after[end + 2..];
    }
    Ok(())
}

fn looks_like_email(s: &str) -> bool {
    match s.split_once('@') {
        Some((local, domain)) => !local.is_empty() && domain.contains('.') && !s.chars().any(char::is_whitespace),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> TenantSpec {
        serde_norway::from_str(yaml).expect("fixture parses")
    }

    #[test]
    fn a_full_spec_becomes_the_row_the_admin_api_stores() {
        let d = validate(&spec(
            "slug: acme\nname: ' Acme Corporation '\nallowedNamespaces: [team-b, team-a]\n\
             branding:\n  appName: Acme\n  logoUrl: https://static.example.com/logo.png\n  \
             emailTemplates:\n    userInvitedSubject: 'Welcome to {{app_name}}'\n",
        ))
        .expect("valid");
        assert_eq!(d.name, "Acme Corporation");
        assert_eq!(d.status, "ACTIVE");
        assert_eq!(d.allowed_namespaces, ["team-a", "team-b"]);
        assert_eq!(
            d.branding,
            Some(
                serde_json::json!({"app_name": "Acme", "logo_url": "https://static.example.com/logo.png",
                "email_templates": {"user_invited_subject": "Welcome to {{app_name}}"}})
            )
        );
    }

    #[test]
    fn each_rule_names_its_field() {
        let cases = [
            ("slug: acme\nname: '   '\n", "spec.name"),
            ("slug: Acme\nname: x\n", "spec.slug"),
            ("slug: acme\nname: x\nparentTenant: acme\n", "spec.parentTenant"),
            ("slug: acme\nname: x\nowner: {email: nobody}\n", "spec.owner.email"),
            (
                "slug: acme\nname: x\nbranding: {logoUrl: 'http://x.example'}\n",
                "spec.branding.logoUrl",
            ),
            (
                "slug: acme\nname: x\nbranding: {emailTemplates: {userInvitedHtml: 'hi {{password}}'}}\n",
                "spec.branding.emailTemplates.userInvitedHtml",
            ),
            (
                "slug: acme\nname: x\nbranding: {emailTemplates: {userInvitedText: 'hi {{role'}}\n",
                "spec.branding.emailTemplates.userInvitedText",
            ),
            (
                "slug: acme\nname: x\nallowedNamespaces: [ok, Bad_NS]\n",
                "spec.allowedNamespaces[1]",
            ),
        ];
        for (yaml, field) in cases {
            let err = validate(&spec(yaml)).expect_err(yaml);
            assert_eq!(err.field, field, "{yaml}");
        }
    }

    #[test]
    fn unknown_placeholders_are_listed_with_the_allowed_ones() {
        let err = check_placeholders("{{ password }}").expect_err("unknown");
        assert!(err.contains("{{password}}") && err.contains("accept_url"), "{err}");
        assert!(check_placeholders("{{app_name}} {{ role }} plain").is_ok());
    }

    #[test]
    fn hostile_input_is_rejected_or_accepted_but_never_panics() {
        let long = "a".repeat(100_000);
        let weird = [
            "",
            "{{",
            "}}",
            "{{}}",
            "{{ {{ }}",
            "é{{app_name}}é",
            "\u{0}",
            long.as_str(),
            "{{app_name",
            "}}{{",
        ];
        for text in weird {
            let _ = check_placeholders(text);
            let mut s = spec("slug: acme\nname: x\n");
            s.name = text.to_string();
            s.slug = text.to_string();
            s.parent_tenant = Some(text.to_string());
            let _ = validate(&s);
            let mut s = spec("slug: acme\nname: x\n");
            s.branding = Some(Branding {
                app_name: Some(text.into()),
                logo_url: Some(text.into()),
                email_templates: Some(countersign_crds::tenant::EmailTemplates {
                    user_invited_subject: Some(text.into()),
                    user_invited_text: Some(text.into()),
                    user_invited_html: Some(text.into()),
                }),
            });
            let _ = validate(&s);
            s.allowed_namespaces = vec![text.into()];
            let _ = validate(&s);
        }
    }
}
