//! One normalisation of the identities the two-person rule compares, used
//! alike by the admission policies (CEL), the operator's decision and the
//! database (`countersign_identity`), so that one person under two spellings
//! (`carol@example.com`, `Carol@Example.com`, `oidc:carol@example.com`) is
//! never taken for two.

/// The normal form of a username: surrounding whitespace and any prefix up
/// to the last `:` or `#` (an OIDC username prefix the API server adds, such
/// as `oidc:` or `https://issuer#`) are dropped and ASCII letters lowered.
/// `system:` identities (service accounts, nodes) keep their exact name.
/// Merging distinct names errs on the side of the rule: two accounts that
/// normalise alike cannot approve each other's changes.
pub fn normalise(name: &str) -> String {
    let name = name.trim();
    if name.starts_with("system:") {
        return name.to_string();
    }
    let local = match name.rfind([':', '#']) {
        Some(i) => &name[i + 1..],
        None => name,
    };
    local.to_ascii_lowercase()
}

/// Whether two usernames name the same person.
pub fn same_person(a: &str, b: &str) -> bool {
    normalise(a) == normalise(b)
}

/// The normal form with the deployer's own username prefixes (the API
/// server's `--oidc-username-prefix` and the like, when they end in neither
/// `:` nor `#`) dropped first, longest first. Only the operator knows them:
/// the admission policies and the database use [`normalise`] alone, which
/// the operator's check therefore only ever makes stricter.
pub fn normalise_with(name: &str, prefixes: &[String]) -> String {
    let trimmed = name.trim();
    let mut sorted: Vec<&String> = prefixes.iter().filter(|p| !p.is_empty()).collect();
    sorted.sort_by_key(|p| std::cmp::Reverse(p.len()));
    let unprefixed = sorted
        .iter()
        .find_map(|p| trimmed.strip_prefix(p.as_str()))
        .unwrap_or(trimmed);
    normalise(unprefixed)
}

/// [`same_person`] with the deployer's username prefixes.
pub fn same_person_with(a: &str, b: &str, prefixes: &[String]) -> bool {
    normalise_with(a, prefixes) == normalise_with(b, prefixes) || same_person(a, b)
}

/// Whether a username is a Kubernetes system identity (a service account, a
/// node, the API server itself) rather than a person.
pub fn is_system(name: &str) -> bool {
    name.trim().starts_with("system:")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_person_under_every_spelling() {
        for spelling in [
            "carol@example.com",
            "Carol@Example.com",
            "oidc:carol@example.com",
            "OIDC:CAROL@EXAMPLE.COM",
            "https://login.example.com#carol@example.com",
            " carol@example.com ",
        ] {
            assert!(same_person("carol@example.com", spelling), "{spelling}");
        }
        assert!(!same_person("carol@example.com", "carl@example.com"));
        assert!(!same_person("bob", "carol"));
    }

    #[test]
    fn the_deployers_own_prefixes_are_dropped_too() {
        let prefixes = vec!["corp-".to_string(), "corp-sso-".to_string()];
        assert!(same_person_with(
            "corp-carol@example.com",
            "carol@example.com",
            &prefixes
        ));
        assert!(same_person_with(
            "corp-sso-Carol@Example.com",
            "carol@example.com",
            &prefixes
        ));
        assert!(
            !same_person("corp-carol@example.com", "carol@example.com"),
            "unknown without the option"
        );
        assert!(!same_person_with("corp-carol", "dave", &prefixes));
    }

    #[test]
    fn system_identities_keep_their_exact_name() {
        let argo = "system:serviceaccount:argocd:argocd-application-controller";
        assert_eq!(normalise(argo), argo);
        assert!(!same_person(argo, "argocd-application-controller"));
        assert!(is_system(argo) && !is_system("oidc:system"));
    }
}
