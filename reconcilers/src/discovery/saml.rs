//! SAML 2.0: the identity provider's metadata document.

use super::refusal;
use crate::outbound::{OutboundClient, safe};

/// The SAML 2.0 metadata namespace.
pub const SAML_METADATA_NS: &str = "urn:oasis:names:tc:SAML:2.0:metadata";

/// What the SAML metadata check found (`status.samlMetadata`).
pub type SamlMetadataResult = countersign_crds::identity_provider::SamlMetadataStatus;

fn saml_failed(error: String) -> SamlMetadataResult {
    SamlMetadataResult {
        errors: vec![error],
        ..SamlMetadataResult::default()
    }
}

/// Whether the provider may go live: metadata parsed, its entity ID equals the declared
/// one, and it lists the declared SSO URL.
pub fn saml_passed(result: &SamlMetadataResult) -> bool {
    result.metadata_fetched && result.entity_id_echo.is_some() && result.sso_url_listed && result.errors.is_empty()
}

/// Judges SAML 2.0 metadata against the declared entity ID and SSO URL.
///
/// The root may be an `EntityDescriptor` or an `EntitiesDescriptor` aggregate (then the
/// descriptor with the declared entity ID is used). Element names are matched in the SAML
/// metadata namespace, whatever prefix the document uses. DTDs are refused by the parser, so
/// entity expansion attacks cannot apply.
pub fn evaluate_saml_metadata(declared_entity_id: &str, declared_sso_url: &str, xml: &[u8]) -> SamlMetadataResult {
    let Ok(text) = std::str::from_utf8(xml) else {
        return saml_failed("metadata: not UTF-8 text".to_owned());
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let doc = match roxmltree::Document::parse(text) {
        Ok(doc) => doc,
        Err(err) => {
            return saml_failed(format!("metadata: not well-formed XML: {}", safe(&err.to_string())));
        }
    };
    let mut result = SamlMetadataResult {
        metadata_fetched: true,
        ..SamlMetadataResult::default()
    };
    let md = |name: &'static str| (SAML_METADATA_NS, name);
    let root = doc.root_element();
    let candidates: Vec<roxmltree::Node<'_, '_>> = if root.has_tag_name(md("EntityDescriptor")) {
        vec![root]
    } else if root.has_tag_name(md("EntitiesDescriptor")) {
        root.descendants()
            .filter(|node| node.has_tag_name(md("EntityDescriptor")))
            .collect()
    } else {
        result.errors.push(format!(
            "metadata: the root element is {:?}, not a SAML 2.0 metadata EntityDescriptor",
            safe(root.tag_name().name())
        ));
        return result;
    };
    let entity = candidates
        .iter()
        .find(|node| node.attribute("entityID") == Some(declared_entity_id))
        .or(if candidates.len() == 1 {
            candidates.first()
        } else {
            None
        });
    let Some(entity) = entity else {
        result.errors.push(format!(
            "entityID: none of the metadata's {} EntityDescriptors has spec.saml.entityId {:?}",
            candidates.len(),
            safe(declared_entity_id)
        ));
        return result;
    };

    match entity.attribute("entityID") {
        Some(entity_id) => {
            result.entity_id_echo = Some(safe(entity_id));
            if entity_id != declared_entity_id {
                result.errors.push(format!(
                    "entityID: metadata says {:?} but spec.saml.entityId is {:?}",
                    safe(entity_id),
                    safe(declared_entity_id)
                ));
            }
        }
        None => result
            .errors
            .push("entityID: missing from the EntityDescriptor".to_owned()),
    }

    let idp_descriptors: Vec<_> = entity
        .children()
        .filter(|node| node.has_tag_name(md("IDPSSODescriptor")))
        .collect();
    if idp_descriptors.is_empty() {
        result
            .errors
            .push("IDPSSODescriptor: missing; the metadata does not describe an identity provider".to_owned());
        return result;
    }
    let locations: Vec<&str> = idp_descriptors
        .iter()
        .flat_map(|descriptor| descriptor.children())
        .filter(|node| node.has_tag_name(md("SingleSignOnService")))
        .filter_map(|node| node.attribute("Location"))
        .collect();
    result.sso_url_listed = locations.contains(&declared_sso_url);
    if locations.is_empty() {
        result
            .errors
            .push("SingleSignOnService: the IDPSSODescriptor lists none".to_owned());
    } else if !result.sso_url_listed {
        let mut listed: Vec<&str> = Vec::new();
        for location in &locations {
            if !listed.contains(location) {
                listed.push(location);
            }
        }
        let listed: Vec<String> = listed.iter().map(|l| format!("{l:?}")).collect();
        result.errors.push(format!(
            "ssoUrl: spec.saml.ssoUrl {:?} is not a SingleSignOnService Location of the metadata (it lists {})",
            safe(declared_sso_url),
            safe(&listed.join(", "))
        ));
    }
    result
}

/// Fetches SAML metadata through `client` and judges it.
///
/// Never fails: refusals, network errors and bad documents all end up in `errors`.
pub async fn check_saml(
    client: &OutboundClient,
    metadata_url: &str,
    declared_entity_id: &str,
    declared_sso_url: &str,
) -> SamlMetadataResult {
    match client.get(metadata_url).await {
        Err(err) => saml_failed(refusal("metadataUrl", &err)),
        Ok(fetched) if !fetched.is_success() => {
            saml_failed(format!("metadataUrl: the IdP answered HTTP {}", fetched.status))
        }
        Ok(fetched) => evaluate_saml_metadata(declared_entity_id, declared_sso_url, &fetched.body),
    }
}
