//! What every kind's pure validation shares: the rejected-field value and
//! the small syntactic checks the CRD schema cannot express.

/// A rejected field: the path and the rule it breaks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid {
    /// JSON path of the offending field, e.g. `spec.name`.
    pub field: String,
    /// The rule, in words.
    pub rule: String,
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.rule)
    }
}

/// An [`Invalid`] for `field`.
pub fn invalid(field: &str, rule: impl Into<String>) -> Invalid {
    Invalid {
        field: field.into(),
        rule: rule.into(),
    }
}

/// Whether `s` is a DNS-label slug (also the shape of a namespace name).
pub fn is_slug(s: &str) -> bool {
    let bytes = s.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

/// Checks an absolute `https://` URL with a host and no fragment or user
/// info; the outbound policy judges the host itself later.
pub fn https_url(field: &str, url: &str) -> Result<(), Invalid> {
    let Some(rest) = url.strip_prefix("https://") else {
        return Err(invalid(field, "must be an https:// URL"));
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.is_empty() || authority.starts_with(':') {
        return Err(invalid(field, "must name a host"));
    }
    if authority.contains('@') {
        return Err(invalid(field, "must not carry user information"));
    }
    if url.contains('#') {
        return Err(invalid(field, "must not have a fragment"));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(field, "must not contain whitespace"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_urls() {
        for ok in ["https://idp.example.com", "https://idp.example.com:8443/realms/a?x=1"] {
            assert_eq!(https_url("f", ok), Ok(()), "{ok}");
        }
        for bad in [
            "http://idp.example.com",
            "https://",
            "https://:443/x",
            "https://user:pw@idp.example.com",
            "https://idp.example.com/#frag",
            "https://idp.example.com/a b",
            "idp.example.com",
        ] {
            assert!(https_url("f", bad).is_err(), "{bad}");
        }
    }
}
