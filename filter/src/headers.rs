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
/// rewritten (so values the filter could not read as text survive unchanged). Edits of different
/// names commute; they come in the order the names first appear after the lists' common start.
///
/// Runs on every request and response, so it compares in place and allocates only the edits.
pub fn header_edits(before: &[(String, String)], after: &[(String, String)]) -> Vec<HeaderEdit> {
    fn values<'a>(list: &'a [(String, String)], name: &'a str) -> impl Iterator<Item = &'a String> + 'a {
        list.iter().filter(move |(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, value)| value)
    }
    // A name only in the common prefix has the same values in both: only names in what follows
    // it can differ (usually a few, near the end).
    let common = before.iter().zip(after).take_while(|(old, new)| old == new).count();
    let all: Vec<&str> = after[common..].iter().chain(&before[common..]).map(|(name, _)| name.as_str()).collect();
    let mut edits = Vec::new();
    for (index, name) in all.iter().enumerate() {
        if all[..index].iter().any(|earlier| earlier.eq_ignore_ascii_case(name)) {
            continue;
        }
        if values(before, name).eq(values(after, name)) {
            continue;
        }
        let mut new = values(after, name);
        let (first, second) = (new.next(), new.next());
        let name = name.to_ascii_lowercase();
        match (first, second) {
            (None, _) => edits.push(HeaderEdit::Remove(name)),
            (Some(one), None) => edits.push(HeaderEdit::Set(name, one.clone())),
            (Some(_), Some(_)) => {
                edits.push(HeaderEdit::Remove(name.clone()));
                edits.extend(values(after, &name).map(|value| HeaderEdit::Add(name.clone(), value.clone())));
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

    mod properties {
        use proptest::prelude::*;

        use super::super::*;

        /// What the host does with the edits (`proxy_*_header_map_value`).
        fn apply(mut headers: Headers, edits: &[HeaderEdit]) -> Headers {
            for edit in edits {
                match edit {
                    HeaderEdit::Remove(name) => remove_header(&mut headers, name),
                    HeaderEdit::Set(name, value) => set_header(&mut headers, name, value),
                    HeaderEdit::Add(name, value) => headers.push((name.clone(), value.clone())),
                }
            }
            headers
        }

        fn by_name(headers: &Headers, name: &str) -> Vec<String> {
            headers.iter().filter(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone()).collect()
        }

        fn list() -> impl Strategy<Value = Headers> {
            let name = prop::sample::select(vec!["a", "A", "b", "x-multi", ":path"]);
            let value = prop::sample::select(vec!["1", "2", "3"]);
            prop::collection::vec((name.prop_map(String::from), value.prop_map(String::from)), 0..8)
        }

        proptest! {
            /// Every name ends with exactly the values `after` has, in its order.
            #[test]
            fn edits_turn_before_into_after(before in list(), after in list()) {
                let edited = apply(before.clone(), &header_edits(&before, &after));
                for name in ["a", "b", "x-multi", ":path"] {
                    prop_assert_eq!(by_name(&edited, name), by_name(&after, name), "{}", name);
                }
                prop_assert!(header_edits(&after, &after).is_empty());
            }
        }
    }
}
