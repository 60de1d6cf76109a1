//! Header lists as the filter edits them, and the host calls that carry an edit out.

/// A header list as proxy-wasm hands it over: lower-case names, in order, repeats allowed.
pub type Headers = Vec<(String, String)>;

/// Whether `name` is an HTTP token (RFC 9110 §5.6.2), so a valid header name.
pub fn is_token(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// The first value of a header (names compared without case).
pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, value)| value.as_str())
}

/// Replaces every value of `name` with one (appended when absent), as the host's
/// `proxy_replace_header_map_value` does: the first occurrence keeps its place.
pub fn set_header(headers: &mut Headers, name: &str, value: &str) {
    let mut found = false;
    headers.retain_mut(|(key, current)| {
        if !key.eq_ignore_ascii_case(name) {
            return true;
        }
        if found {
            return false;
        }
        found = true;
        *current = value.to_string();
        true
    });
    if !found {
        headers.push((name.to_string(), value.to_string()));
    }
}

/// Removes every value of `name`.
pub fn remove_header(headers: &mut Headers, name: &str) {
    headers.retain(|(key, _)| !key.eq_ignore_ascii_case(name));
}

/// One change to a host header map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderEdit {
    Remove(String),
    /// Replace every value with this one.
    Set(String, String),
    Add(String, String),
}

/// The fewest host calls that turn `before` into `after`, name by name: untouched headers are not
/// rewritten (so values the filter could not read as text survive unchanged).
pub fn header_edits(before: &[(String, String)], after: &[(String, String)]) -> Vec<HeaderEdit> {
    let mut names: Vec<String> = Vec::new();
    for (name, _) in after.iter().chain(before) {
        let name = name.to_ascii_lowercase();
        if !names.contains(&name) {
            names.push(name);
        }
    }
    let values = |list: &[(String, String)], name: &str| -> Vec<String> {
        list.iter().filter(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, value)| value.clone()).collect()
    };
    let mut edits = Vec::new();
    for name in names {
        let (old, new) = (values(before, &name), values(after, &name));
        if old == new {
            continue;
        }
        match new.as_slice() {
            [] => edits.push(HeaderEdit::Remove(name)),
            [one] => edits.push(HeaderEdit::Set(name, one.clone())),
            many => {
                edits.push(HeaderEdit::Remove(name.clone()));
                edits.extend(many.iter().map(|value| HeaderEdit::Add(name.clone(), value.clone())));
            }
        }
    }
    edits
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A header list from string pairs.
    pub(crate) fn h(pairs: &[(&str, &str)]) -> Headers {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn header_reads_the_first_value_in_any_case() {
        let headers = h(&[("Accept", "a"), ("accept", "b")]);
        assert_eq!(header(&headers, "ACCEPT"), Some("a"));
        assert_eq!(header(&headers, "origin"), None);
    }

    #[test]
    fn set_header_keeps_the_first_place_and_drops_the_rest() {
        let mut headers = h(&[("a", "1"), ("X-Multi", "1"), ("b", "2"), ("x-multi", "2")]);
        set_header(&mut headers, "x-multi", "new");
        assert_eq!(headers, h(&[("a", "1"), ("X-Multi", "new"), ("b", "2")]));
        set_header(&mut headers, "c", "3");
        assert_eq!(headers.last(), Some(&("c".to_string(), "3".to_string())));
        remove_header(&mut headers, "X-MULTI");
        assert_eq!(headers, h(&[("a", "1"), ("b", "2"), ("c", "3")]));
    }

    #[test]
    fn header_edits_touch_only_what_changed() {
        let before = h(&[(":path", "/a"), ("x-forwarded-for", "1"), ("keep", "1"), ("multi", "a")]);
        let after = h(&[(":path", "/b"), ("keep", "1"), ("multi", "a"), ("multi", "b"), ("new", "n")]);
        assert_eq!(
            header_edits(&before, &after),
            vec![
                HeaderEdit::Set(":path".into(), "/b".into()),
                HeaderEdit::Remove("multi".into()),
                HeaderEdit::Add("multi".into(), "a".into()),
                HeaderEdit::Add("multi".into(), "b".into()),
                HeaderEdit::Set("new".into(), "n".into()),
                HeaderEdit::Remove("x-forwarded-for".into()),
            ]
        );
        assert!(header_edits(&before, &before).is_empty());
    }
}
