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

/// Whether `name` starts with `prefix`, in any case.
pub fn starts_with_ignore_case(name: &str, prefix: &str) -> bool {
    name.as_bytes().get(..prefix.len()).is_some_and(|start| start.eq_ignore_ascii_case(prefix.as_bytes()))
}

/// One change to a host header map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderEdit {
    Remove(String),
    /// Replace every value with this one.
    Set(String, String),
    Add(String, String),
}

/// A header list as the host handed it over, and a decision's changes to it, kept by name: reads
/// see the changes, and only the names that changed become host calls. Nothing of the list is
/// copied (this runs on every request and response).
#[derive(Debug, Clone)]
pub struct EditedHeaders<'a> {
    original: &'a [(String, String)],
    /// Each changed name (lower-case), in the order first changed, with every value it has now:
    /// none when removed.
    changed: Vec<(String, Vec<String>)>,
}

impl<'a> EditedHeaders<'a> {
    pub fn new(original: &'a [(String, String)]) -> EditedHeaders<'a> {
        EditedHeaders { original, changed: Vec::new() }
    }

    fn changed(&self, name: &str) -> Option<&Vec<String>> {
        self.changed.iter().find(|(changed, _)| changed.eq_ignore_ascii_case(name)).map(|(_, values)| values)
    }

    fn changed_mut(&mut self, name: &str) -> &mut Vec<String> {
        let index = match self.changed.iter().position(|(changed, _)| changed.eq_ignore_ascii_case(name)) {
            Some(index) => index,
            None => {
                let values = original_values(self.original, name).map(str::to_string).collect();
                self.changed.push((name.to_ascii_lowercase(), values));
                self.changed.len() - 1
            }
        };
        &mut self.changed[index].1
    }

    /// Every value of `name`, in order.
    pub fn values<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'s str> + 's {
        let changed = self.changed(name);
        let original = changed.is_none().then(|| original_values(self.original, name)).into_iter().flatten();
        changed.into_iter().flatten().map(String::as_str).chain(original)
    }

    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        match self.changed(name) {
            Some(values) => values.first().map(String::as_str),
            None => header(self.original, name),
        }
    }

    /// Every header as it is now: the unchanged ones in their order, then the changed ones.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        let unchanged = self
            .original
            .iter()
            .filter(|(name, _)| self.changed(name).is_none())
            .map(|(name, value)| (name.as_str(), value.as_str()));
        let changed = self
            .changed
            .iter()
            .flat_map(|(name, values)| values.iter().map(move |value| (name.as_str(), value.as_str())));
        unchanged.chain(changed)
    }

    /// Replaces every value of `name` with `value` (a no-op when that is all it has).
    pub fn set(&mut self, name: &str, value: impl AsRef<str> + Into<String>) {
        let already = {
            let mut values = self.values(name);
            values.next() == Some(value.as_ref()) && values.next().is_none()
        };
        if already {
            return;
        }
        *self.changed_mut(name) = vec![value.into()];
    }

    /// Removes every value of `name`.
    pub fn remove(&mut self, name: &str) {
        if self.get(name).is_some() {
            self.changed_mut(name).clear();
        }
    }

    /// Adds a value of `name` after those it has.
    pub fn add(&mut self, name: &str, value: impl Into<String>) {
        self.changed_mut(name).push(value.into());
    }

    /// Keeps only the headers `keep` says yes to.
    pub fn retain(&mut self, mut keep: impl FnMut(&str, &str) -> bool) {
        for (name, values) in &mut self.changed {
            values.retain(|value| keep(name, value));
        }
        let mut dropped: Vec<&'a str> = Vec::new();
        for (name, value) in self.original {
            if self.changed(name).is_none()
                && !dropped.iter().any(|seen| seen.eq_ignore_ascii_case(name))
                && !keep(name, value)
            {
                dropped.push(name);
            }
        }
        for name in dropped {
            self.changed_mut(name).retain(|value| keep(name, value));
        }
    }

    /// Rewrites each value of `name`: `edit` gives its new text, or None to drop it.
    pub fn edit_values(&mut self, name: &str, mut edit: impl FnMut(&str) -> Option<String>) {
        let edited: Vec<Option<String>> = self.values(name).map(&mut edit).collect();
        if edited.iter().zip(self.values(name)).all(|(new, old)| new.as_deref() == Some(old)) {
            return;
        }
        *self.changed_mut(name) = edited.into_iter().flatten().collect();
    }

    /// The fewest host calls that carry the changes out: none for a name that ended with the
    /// values it had. Edits of different names commute.
    pub fn into_edits(self) -> Vec<HeaderEdit> {
        let mut edits = Vec::new();
        for (name, values) in self.changed {
            if values.iter().map(String::as_str).eq(original_values(self.original, &name)) {
                continue;
            }
            let mut values = values.into_iter();
            match (values.next(), values.len()) {
                (None, _) => edits.push(HeaderEdit::Remove(name)),
                (Some(one), 0) => edits.push(HeaderEdit::Set(name, one)),
                (Some(first), _) => {
                    edits.push(HeaderEdit::Remove(name.clone()));
                    edits.push(HeaderEdit::Add(name.clone(), first));
                    edits.extend(values.map(|value| HeaderEdit::Add(name.clone(), value)));
                }
            }
        }
        edits
    }
}

fn original_values<'a>(list: &'a [(String, String)], name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    list.iter().filter(move |(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, value)| value.as_str())
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

    /// Replaces every value of `name` with one (appended when absent), as the host does for
    /// `proxy_replace_header_map_value`: the first occurrence keeps its place.
    pub(crate) fn set_header(headers: &mut Headers, name: &str, value: &str) {
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
    pub(crate) fn remove_header(headers: &mut Headers, name: &str) {
        headers.retain(|(key, _)| !key.eq_ignore_ascii_case(name));
    }

    /// What the host does with the edits (`proxy_*_header_map_value`).
    pub(crate) fn apply(mut headers: Headers, edits: &[HeaderEdit]) -> Headers {
        for edit in edits {
            match edit {
                HeaderEdit::Remove(name) => remove_header(&mut headers, name),
                HeaderEdit::Set(name, value) => set_header(&mut headers, name, value),
                HeaderEdit::Add(name, value) => headers.push((name.clone(), value.clone())),
            }
        }
        headers
    }

    /// The headers as the host holds them once `edited`'s changes are carried out.
    pub(crate) fn sent(edited: EditedHeaders<'_>) -> Headers {
        let original = edited.original.to_vec();
        apply(original, &edited.into_edits())
    }

    #[test]
    fn edits_touch_only_what_changed() {
        let before = h(&[(":path", "/a"), ("x-forwarded-for", "1"), ("keep", "1"), ("multi", "a")]);
        let mut edited = EditedHeaders::new(&before);
        edited.set(":path", "/b");
        edited.set("keep", "1");
        edited.remove("x-forwarded-for");
        edited.remove("absent");
        edited.add("multi", "b");
        edited.set("new", "n");
        edited.retain(|name, _| name != "gone");
        edited.edit_values("keep", |value| Some(value.to_string()));
        assert_eq!(edited.get("multi"), Some("a"));
        assert_eq!(edited.values("multi").collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(edited.get("x-forwarded-for"), None);
        assert_eq!(
            edited.into_edits(),
            vec![
                HeaderEdit::Set(":path".into(), "/b".into()),
                HeaderEdit::Remove("x-forwarded-for".into()),
                HeaderEdit::Remove("multi".into()),
                HeaderEdit::Add("multi".into(), "a".into()),
                HeaderEdit::Add("multi".into(), "b".into()),
                HeaderEdit::Set("new".into(), "n".into()),
            ]
        );
        let mut undone = EditedHeaders::new(&before);
        undone.set(":path", "/b");
        undone.set(":path", "/a");
        assert!(undone.into_edits().is_empty(), "a name changed back needs no call");
    }

    mod properties {
        use proptest::prelude::*;

        use super::super::*;
        use super::{apply, remove_header, set_header};

        fn pairs(list: &Headers) -> impl Iterator<Item = (&str, &str)> {
            list.iter().map(|(k, v)| (k.as_str(), v.as_str()))
        }

        fn by_name<'a>(headers: impl Iterator<Item = (&'a str, &'a str)>, name: &str) -> Vec<String> {
            headers.filter(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, v)| v.to_string()).collect()
        }

        const NAMES: [&str; 4] = ["a", "b", "x-multi", ":path"];

        fn list() -> impl Strategy<Value = Headers> {
            let name = prop::sample::select(vec!["a", "A", "b", "x-multi", ":path"]);
            let value = prop::sample::select(vec!["1", "2", "3"]);
            prop::collection::vec((name.prop_map(String::from), value.prop_map(String::from)), 0..8)
        }

        #[derive(Debug, Clone)]
        enum Op {
            Set(&'static str, &'static str),
            Remove(&'static str),
            Add(&'static str, &'static str),
            /// Drops the values equal to this one, under every name.
            RetainNot(&'static str),
            /// Turns this value into "3" and drops "2", under one name.
            Edit(&'static str, &'static str),
        }

        fn ops() -> impl Strategy<Value = Vec<Op>> {
            let name = || prop::sample::select(vec!["a", "B", "x-multi", ":path"]);
            let value = || prop::sample::select(vec!["1", "2", "3"]);
            let op = prop_oneof![
                (name(), value()).prop_map(|(n, v)| Op::Set(n, v)),
                name().prop_map(Op::Remove),
                (name(), value()).prop_map(|(n, v)| Op::Add(n, v)),
                value().prop_map(Op::RetainNot),
                (name(), value()).prop_map(|(n, v)| Op::Edit(n, v)),
            ];
            prop::collection::vec(op, 0..8)
        }

        proptest! {
            /// Whatever a decision does, reads see it, and the edits leave every name with
            /// exactly the values a plain list edited the same way has, in its order.
            #[test]
            fn edits_carry_out_the_changes(before in list(), ops in ops()) {
                let mut model = before.clone();
                let mut edited = EditedHeaders::new(&before);
                for op in &ops {
                    match *op {
                        Op::Set(name, value) => {
                            set_header(&mut model, name, value);
                            edited.set(name, value);
                        }
                        Op::Remove(name) => {
                            remove_header(&mut model, name);
                            edited.remove(name);
                        }
                        Op::Add(name, value) => {
                            model.push((name.to_string(), value.to_string()));
                            edited.add(name, value);
                        }
                        Op::RetainNot(dropped) => {
                            model.retain(|(_, value)| value != dropped);
                            edited.retain(|_, value| value != dropped);
                        }
                        Op::Edit(name, turned) => {
                            let edit = |value: &str| match value {
                                "2" => None,
                                v if v == turned => Some("3".to_string()),
                                v => Some(v.to_string()),
                            };
                            let values = by_name(pairs(&model), name);
                            remove_header(&mut model, name);
                            model.extend(values.iter().filter_map(|v| edit(v)).map(|v| (name.to_string(), v)));
                            edited.edit_values(name, edit);
                        }
                    }
                }
                for name in NAMES {
                    let expected = by_name(pairs(&model), name);
                    prop_assert_eq!(edited.values(name).collect::<Vec<_>>(), expected.clone(), "reads {}", name);
                    prop_assert_eq!(by_name(edited.iter(), name), expected.clone(), "iter {}", name);
                }
                let sent = apply(before.clone(), &edited.into_edits());
                for name in NAMES {
                    prop_assert_eq!(by_name(pairs(&sent), name), by_name(pairs(&model), name), "{}", name);
                }
            }
        }
    }
}
