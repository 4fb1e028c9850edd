//! Fully qualified cell names: dot-joined paths such as `server`, `site-1`, `site-1.job-7`, `relay-1.site-3`.

/// Separator between the generations of a name.
pub const SEPARATOR: char = '.';
/// Name of the server's root cell.
pub const ROOT_SERVER: &str = "server";

/// Checks a name; the error says what is wrong with it.
pub fn validate(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a cell name must not be empty".into());
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '~' | '-')))
    {
        return Err(format!(
            "{name:?} contains {bad:?}; only letters, digits, '_', '-', '~' and '.' (between parts) are allowed"
        ));
    }
    let parts: Vec<&str> = name.split(SEPARATOR).collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(format!(
            "{name:?} has an empty part; parts are joined by single dots, with none at either end"
        ));
    }
    for (i, p) in parts.iter().enumerate() {
        if parts[..i].contains(p) {
            return Err(format!("{name:?} repeats the part {p:?}"));
        }
    }
    Ok(())
}

/// The parent's name, or `None` for a first-generation name.
pub fn parent(name: &str) -> Option<&str> {
    name.rsplit_once(SEPARATOR).map(|(p, _)| p)
}

/// First generation of a name: `site-1` for `site-1.job-7`.
pub fn root(name: &str) -> &str {
    name.split(SEPARATOR).next().unwrap_or(name)
}

/// True when `ancestor` is a strict prefix of `name` in whole parts.
pub fn is_ancestor(ancestor: &str, name: &str) -> bool {
    name.len() > ancestor.len() && name.starts_with(ancestor) && name.as_bytes()[ancestor.len()] == SEPARATOR as u8
}

/// `name` itself, then each ancestor, longest first: `a.b.c`, `a.b`, `a`.
pub fn self_and_ancestors(name: &str) -> impl Iterator<Item = &str> {
    std::iter::successors(Some(name), |n| parent(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_nvflare_style_names() {
        for ok in [
            "server",
            "site-1",
            "site-1.job-7",
            "relay-1.site-3",
            "server.abc_123",
            "site-1.j.R0",
            "a~b",
        ] {
            validate(ok).unwrap();
        }
    }

    #[test]
    fn refuses_bad_names_saying_why() {
        assert!(validate("").unwrap_err().contains("empty"));
        assert!(validate("site 1").unwrap_err().contains("' '"));
        assert!(validate("site-1..job").unwrap_err().contains("empty part"));
        assert!(validate(".site").unwrap_err().contains("empty part"));
        assert!(validate("a.b.a").unwrap_err().contains("repeats"));
        assert!(validate("site/1").unwrap_err().contains("'/'"));
    }

    #[test]
    fn family_helpers() {
        assert_eq!(parent("site-1.job-7"), Some("site-1"));
        assert_eq!(parent("site-1"), None);
        assert_eq!(root("relay-1.site-3.j"), "relay-1");
        assert!(is_ancestor("site-1", "site-1.job"));
        assert!(!is_ancestor("site-1", "site-10.job"));
        assert!(!is_ancestor("site-1", "site-1"));
        let all: Vec<_> = self_and_ancestors("a.b.c").collect();
        assert_eq!(all, ["a.b.c", "a.b", "a"]);
    }
}
