//! Pure validation of a FrontingLink and the row it should produce
//! (reference 004 `FrontingLinkView`: `{source_scope: [target_scope, …]}`).

use crate::validation::{Invalid, invalid, is_slug};
use countersign_crds::FrontingLinkSpec;
use std::collections::BTreeMap;

/// The link the spec asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredLink {
    /// Source (fronting) resource slug.
    pub source_slug: String,
    /// Target (fronted) resource slug.
    pub target_slug: String,
    /// Source scope → target scopes, each list sorted and deduplicated.
    pub scope_map: BTreeMap<String, Vec<String>>,
}

/// Validates the spec and builds the desired link.
pub fn validate(spec: &FrontingLinkSpec) -> Result<DesiredLink, Invalid> {
    for (field, slug) in [
        ("spec.sourceSlug", &spec.source_slug),
        ("spec.targetSlug", &spec.target_slug),
    ] {
        if !is_slug(slug) {
            return Err(invalid(field, "must be a resource slug (DNS label)"));
        }
    }
    if spec.source_slug == spec.target_slug {
        return Err(invalid("spec.targetSlug", "a resource cannot front itself"));
    }
    if spec.scope_map.is_empty() {
        return Err(invalid("spec.scopeMap", "needs at least one entry"));
    }
    let mut scope_map = BTreeMap::new();
    for (source, targets) in &spec.scope_map {
        if source.trim().is_empty() || source.contains(char::is_whitespace) {
            return Err(invalid("spec.scopeMap", format!("{source:?} is not a scope")));
        }
        let field = format!("spec.scopeMap[{source:?}]");
        if targets.is_empty() {
            return Err(invalid(&field, "needs at least one target scope"));
        }
        if let Some(t) = targets
            .iter()
            .find(|t| t.trim().is_empty() || t.contains(char::is_whitespace))
        {
            return Err(invalid(&field, format!("{t:?} is not a scope")));
        }
        let mut targets = targets.clone();
        targets.sort();
        targets.dedup();
        scope_map.insert(source.clone(), targets);
    }
    Ok(DesiredLink {
        source_slug: spec.source_slug.clone(),
        target_slug: spec.target_slug.clone(),
        scope_map,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> FrontingLinkSpec {
        serde_norway::from_str(yaml).expect("fixture parses")
    }

    #[test]
    fn scope_lists_are_normalised_and_bad_input_names_the_field() {
        let ok = validate(&spec("sourceSlug: gw\ntargetSlug: api\nscopeMap: {read: [b, a, a]}\n")).expect("valid");
        assert_eq!(ok.scope_map["read"], ["a", "b"]);
        for (yaml, field) in [
            (
                "sourceSlug: gw\ntargetSlug: gw\nscopeMap: {read: [a]}\n",
                "spec.targetSlug",
            ),
            ("sourceSlug: gw\ntargetSlug: api\nscopeMap: {}\n", "spec.scopeMap"),
            (
                "sourceSlug: gw\ntargetSlug: api\nscopeMap: {read: []}\n",
                "spec.scopeMap[\"read\"]",
            ),
            (
                "sourceSlug: Gw\ntargetSlug: api\nscopeMap: {read: [a]}\n",
                "spec.sourceSlug",
            ),
        ] {
            assert_eq!(
                validate(&spec(yaml)).err().map(|e| e.field).unwrap_or_default(),
                field,
                "{yaml}"
            );
        }
    }
}
