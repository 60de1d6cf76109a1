//! Request path normalisation and the rules that protect paths.
//!
//! The proxy decides on a path exactly once, on its normalised form, and forwards that same
//! normalised form to the app. Whatever a client sends, the app therefore never sees a path that
//! differs from the one the rules were checked against. Normalisation (see [`normalize`]):
//!
//! - the query starts at the first `?` and never takes part in matching; a `#` fragment (which a
//!   browser never sends) is dropped along with anything after it;
//! - percent-escapes of unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded; every other
//!   escape is kept, with upper-case hex; raw bytes that may not appear in a path (space, `"`,
//!   `<`, `>`, `` ` ``, `{`, `|`, `}`, `^`, `[`, `]`, non-ASCII) are percent-encoded;
//! - an encoded slash or backslash (`%2F`, `%5C`) is **rejected**: some apps decode it into a
//!   separator and some do not, so no rule could be right for both;
//! - a double-encoded escape, `%25` followed by two hex digits (`%252e`, `%256d`, `%252F`), is
//!   **rejected** too, however it is spelled (`%25%32%65` included): an app that decodes twice
//!   would read a different path (`/x/%252e%252e/members` is `/members` to it) than the one the
//!   rules saw, and no honest client double-encodes a path;
//! - a raw backslash is a slash, as browsers and several servers treat it;
//! - duplicate slashes are merged and `.` / `..` segments resolved (RFC 3986 §5.2.4; `..` never
//!   climbs above the root), also those spelled `%2e`;
//! - control characters and NUL, raw or escaped, are rejected, and so are escapes that do not
//!   form valid UTF-8 (overlong forms such as `%C0%AE` included);
//! - `;` is an ordinary character and stays in the path the app receives. A segment whose part
//!   before `;` is `.` or `..` (Tomcat-style `..;/`) is rejected, because servers that strip path
//!   parameters would turn it into a dot segment after the proxy has decided;
//! - case is kept: the path is forwarded as `/MEMBERS` if that is what was asked for. Rules are
//!   case-sensitive unless built with [`Case::Insensitive`] (`--protect-path-ignore-case`);
//! - the query is forwarded as sent, except that control characters are refused there too and
//!   raw spaces, non-ASCII and other bytes not allowed in a URI are percent-encoded.
//!
//! Assumed about the app: decoding the path once or twice gives the same result (the double
//! encoding that could tell them apart is refused), and it routes case-sensitively without
//! trimming trailing dots or spaces. An app on a case-insensitive file system, or one whose router
//! ignores case, needs `--protect-path-ignore-case`.
//!
//! Rules (see [`ProtectionRules`]) see the path in every form an app may read it in: the
//! normalised path, its fully percent-decoded form, and both with `;` path parameters removed from
//! each segment (as Java servlet containers do). A request is protected when any rule matches any
//! of these views. Extra views can only add protection, never remove it.

use std::fmt;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use regex::{RegexSet, RegexSetBuilder};

/// A request target split into its normalised path and its query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalizedPath {
    path: String,
    query: Option<String>,
}

impl NormalizedPath {
    /// The normalised path; what rules are matched against and what the app receives.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The query without its `?`; `Some("")` when the target ended in a bare `?`.
    pub fn query(&self) -> Option<&str> {
        self.query.as_deref()
    }

    /// The `:path` to forward: the normalised path and the query, without any fragment.
    pub fn to_request_target(&self) -> String {
        match &self.query {
            Some(query) => format!("{}?{}", self.path, query),
            None => self.path.clone(),
        }
    }

    /// The other forms of the path a rule is checked against (see the module documentation):
    /// percent-decoded, without `;` parameters, or both. Only paths with escapes or parameters
    /// have any, so most requests allocate nothing here.
    fn other_views(&self) -> Vec<String> {
        let mut views: Vec<String> = Vec::new();
        let mut add = |view: String| {
            if view != self.path && !views.contains(&view) {
                views.push(view);
            }
        };
        if self.path.contains('%') {
            add(percent_decode_lossy(&self.path));
        }
        if self.path.contains(';') || self.path.contains("%3B") {
            let stripped = strip_path_parameters(&self.path);
            if stripped.contains('%') {
                add(percent_decode_lossy(&stripped));
            }
            add(stripped);
        }
        views
    }
}

impl fmt::Display for NormalizedPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_request_target())
    }
}

/// Why a request target was refused; the proxy answers such a request with `400`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path is empty or does not start with `/` (`*`, absolute-form and the like).
    #[error("the request path must start with '/'")]
    NotOriginForm,
    /// A `%` not followed by two hex digits.
    #[error("the request path has a malformed percent-escape")]
    MalformedEscape,
    /// `%2F` or `%5C`: an encoded separator, which apps disagree about.
    #[error("the request path has an encoded slash or backslash (%2F, %5C)")]
    EncodedSeparator,
    /// `%25` followed by two hex digits: an escape encoded twice, which an app that decodes twice
    /// would read as another path.
    #[error("the request path is percent-encoded twice (%25 followed by two hex digits, e.g. %252e)")]
    DoubleEncoded,
    /// A control character or NUL, raw or escaped.
    #[error("the request path has a control character")]
    ControlCharacter,
    /// Percent-escapes that do not decode to valid UTF-8 (overlong forms included).
    #[error("the request path's percent-escapes are not valid UTF-8")]
    InvalidUtf8,
    /// A `.` or `..` segment carrying `;` parameters, e.g. `/public/..;/members`.
    #[error("the request path has a dot segment with ';' parameters")]
    DotSegmentWithParameters,
}

/// Normalises a request target (`:path`, query included) as described in the module docs.
pub fn normalize(raw: &str) -> Result<NormalizedPath, PathError> {
    // A fragment ends the target wherever it starts, even inside the query.
    let without_fragment = raw.split('#').next().unwrap_or_default();
    let (raw_path, raw_query) = match without_fragment.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (without_fragment, None),
    };
    if !raw_path.starts_with('/') {
        return Err(PathError::NotOriginForm);
    }
    let canonical = canonicalize_characters(raw_path)?;
    if has_double_encoding(&canonical) {
        return Err(PathError::DoubleEncoded);
    }
    let path = resolve_segments(&canonical)?;
    let query = raw_query.map(canonicalize_query).transpose()?;
    Ok(NormalizedPath { path, query })
}

fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

fn is_control(byte: u8) -> bool {
    byte < 0x20 || byte == 0x7f
}

/// Bytes that may stand raw in a path besides unreserved ones: sub-delims, `:`, `@` and `/`.
fn is_raw_path_byte(byte: u8) -> bool {
    is_unreserved(byte)
        || matches!(
            byte,
            b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'=' | b':' | b'@' | b'/'
        )
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

fn push_escaped(out: &mut String, byte: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(char::from(HEX[usize::from(byte >> 4)]));
    out.push(char::from(HEX[usize::from(byte & 0x0f)]));
}

/// The character-level part of normalisation: escapes, backslashes, control characters.
fn canonicalize_characters(raw_path: &str) -> Result<String, PathError> {
    let bytes = raw_path.as_bytes();
    let mut out = String::with_capacity(bytes.len());
    // Raw non-ASCII input is UTF-8 already (it arrived as a &str); escaped bytes may not be.
    let mut escaped_non_ascii = false;
    let mut index = 0;
    while index < bytes.len() {
        let byte = bytes[index];
        if byte == b'%' {
            let high = bytes.get(index + 1).copied().and_then(hex_value);
            let low = bytes.get(index + 2).copied().and_then(hex_value);
            let (Some(high), Some(low)) = (high, low) else {
                return Err(PathError::MalformedEscape);
            };
            let decoded = high << 4 | low;
            if decoded == b'/' || decoded == b'\\' {
                return Err(PathError::EncodedSeparator);
            }
            if is_control(decoded) {
                return Err(PathError::ControlCharacter);
            }
            if is_unreserved(decoded) {
                out.push(char::from(decoded));
            } else {
                push_escaped(&mut out, decoded);
            }
            escaped_non_ascii |= !decoded.is_ascii();
            index += 3;
            continue;
        }
        if is_control(byte) {
            return Err(PathError::ControlCharacter);
        }
        if byte == b'\\' {
            out.push('/');
        } else if is_raw_path_byte(byte) {
            out.push(char::from(byte));
        } else {
            push_escaped(&mut out, byte);
        }
        index += 1;
    }
    // Non-ASCII escapes must spell UTF-8: this refuses overlong forms like %C0%AE ('.').
    if escaped_non_ascii && !escapes_are_utf8(raw_path) {
        return Err(PathError::InvalidUtf8);
    }
    Ok(out)
}

/// Whether a canonical path holds `%25` followed by two hex digits. Checked after unreserved
/// escapes are decoded, so that `%25%32%65` (which is `%252e` once `%32%65` is decoded) is found.
fn has_double_encoding(canonical: &str) -> bool {
    canonical
        .as_bytes()
        .windows(5)
        .any(|window| window.starts_with(b"%25") && window[3].is_ascii_hexdigit() && window[4].is_ascii_hexdigit())
}

/// Whether the percent-escapes of `raw_path`, decoded in place, leave valid UTF-8.
fn escapes_are_utf8(raw_path: &str) -> bool {
    let decoded: Vec<u8> = percent_encoding::percent_decode_str(raw_path).collect();
    std::str::from_utf8(&decoded).is_ok()
}

/// Merges duplicate slashes and resolves dot segments; `path` starts with `/`.
fn resolve_segments(path: &str) -> Result<String, PathError> {
    let mut kept: Vec<&str> = Vec::new();
    let raw_segments: Vec<&str> = path.split('/').skip(1).collect();
    // A trailing slash survives, and so does the directory meaning of a final `.` or `..`.
    let mut trailing_slash = false;
    for (position, segment) in raw_segments.iter().enumerate() {
        let is_last = position + 1 == raw_segments.len();
        if is_dot_with_parameters(segment) {
            return Err(PathError::DotSegmentWithParameters);
        }
        match *segment {
            "" | "." => {}
            ".." => {
                kept.pop();
            }
            other => kept.push(other),
        }
        if is_last {
            trailing_slash = matches!(*segment, "" | "." | "..");
        }
    }
    let mut out = String::with_capacity(path.len());
    for segment in &kept {
        out.push('/');
        out.push_str(segment);
    }
    if trailing_slash || kept.is_empty() {
        out.push('/');
    }
    Ok(out)
}

/// `.;x`, `..;x`, `..%3Bx`: segments that become dot segments once parameters are stripped.
fn is_dot_with_parameters(segment: &str) -> bool {
    let name = segment_name(segment);
    name.len() != segment.len() && (name == "." || name == "..")
}

/// A segment without its path parameters: the part before `;` or an encoded `%3B`.
fn segment_name(segment: &str) -> &str {
    let end = [segment.find(';'), segment.find("%3B")].into_iter().flatten().min().unwrap_or(segment.len());
    &segment[..end]
}

/// The path as a server that strips `;` parameters from each segment sees it, slashes merged.
fn strip_path_parameters(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let segments: Vec<&str> = path.split('/').skip(1).map(segment_name).collect();
    for segment in segments.iter().filter(|segment| !segment.is_empty()) {
        out.push('/');
        out.push_str(segment);
    }
    if out.is_empty() || segments.last().is_some_and(|segment| segment.is_empty()) {
        out.push('/');
    }
    out
}

/// Decodes every escape of a normalised path; the path was checked for UTF-8 already.
fn percent_decode_lossy(path: &str) -> String {
    percent_encoding::percent_decode_str(path).decode_utf8_lossy().into_owned()
}

/// The query is forwarded as sent, except that control characters are refused and bytes that may
/// not stand raw in a URI (space, non-ASCII and the like) are percent-encoded.
fn canonicalize_query(raw_query: &str) -> Result<String, PathError> {
    let mut out = String::with_capacity(raw_query.len());
    for &byte in raw_query.as_bytes() {
        if is_control(byte) {
            return Err(PathError::ControlCharacter);
        }
        if byte.is_ascii_graphic() && !matches!(byte, b'"' | b'<' | b'>' | b'`' | b'{' | b'}' | b'|' | b'\\' | b'^') {
            out.push(char::from(byte));
        } else {
            push_escaped(&mut out, byte);
        }
    }
    Ok(out)
}

/// A protection rule that could not be compiled; the message names the flag and the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RuleError(pub String);

/// The paths that need an active session.
///
/// - prefix rules (`--protect-path-prefix`) are plain string prefixes, exactly as in the seed:
///   `/members` protects `/members/x`, `/members;x` and also `/membership`;
/// - glob rules (`--protect-path-glob`): `*` and `?` stay within one segment, `**` crosses `/`,
///   `{a,b}` alternates, `\` escapes;
/// - regex rules (`--protect-path-regex`, Rust `regex` syntax) are searched in the path
///   unanchored: write `^` and `$` to anchor them.
///
/// Rules see the path only, never the query. They are case-sensitive unless made with
/// [`Case::Insensitive`], which applies to every kind of rule.
#[derive(Debug, Clone)]
pub struct ProtectionRules {
    /// Lower case when `case` is insensitive.
    prefixes: Vec<String>,
    globs: GlobSet,
    regexes: RegexSet,
    case: Case,
}

/// Whether rules tell `/members` from `/MEMBERS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Case {
    /// `/members` protects `/members` only, as in the seed: right for apps that route by case.
    #[default]
    Sensitive,
    /// `/members` protects `/MEMBERS` and `/Members` too: for apps that ignore case.
    Insensitive,
}

impl ProtectionRules {
    /// Case-sensitive rules.
    pub fn new(prefixes: &[String], globs: &[String], regexes: &[String]) -> Result<Self, RuleError> {
        Self::with_case(prefixes, globs, regexes, Case::Sensitive)
    }

    pub fn with_case(prefixes: &[String], globs: &[String], regexes: &[String], case: Case) -> Result<Self, RuleError> {
        let ignore_case = case == Case::Insensitive;
        for prefix in prefixes {
            check_prefix(prefix)?;
        }
        let mut glob_set = GlobSetBuilder::new();
        for glob in globs {
            let compiled =
                glob_builder(glob).case_insensitive(ignore_case).build().map_err(|err| invalid_glob(glob, &err))?;
            glob_set.add(compiled);
        }
        let glob_set =
            glob_set.build().map_err(|err| RuleError(format!("invalid --protect-path-glob rules: {err}")))?;
        // Checked one by one first so that an error names its rule.
        for regex in regexes {
            check_regex(regex)?;
        }
        let regex_set = RegexSetBuilder::new(regexes)
            .case_insensitive(ignore_case)
            .build()
            .map_err(|err| RuleError(format!("invalid --protect-path-regex rules: {}", one_line(&err))))?;
        let prefixes =
            prefixes.iter().map(|prefix| if ignore_case { prefix.to_lowercase() } else { prefix.clone() }).collect();
        Ok(ProtectionRules { prefixes, globs: glob_set, regexes: regex_set, case })
    }

    /// Whether there are no rules at all (then nothing is protected).
    pub fn is_empty(&self) -> bool {
        self.prefixes.is_empty() && self.globs.is_empty() && self.regexes.is_empty()
    }

    /// Whether the path needs an active session.
    pub fn protects(&self, path: &NormalizedPath) -> bool {
        if self.is_empty() {
            return false;
        }
        self.matches(path.path()) || path.other_views().iter().any(|view| self.matches(view))
    }

    fn matches(&self, view: &str) -> bool {
        let folded;
        let prefix_view = match self.case {
            Case::Sensitive => view,
            Case::Insensitive => {
                folded = view.to_lowercase();
                folded.as_str()
            }
        };
        self.prefixes.iter().any(|prefix| prefix_view.starts_with(prefix.as_str()))
            || self.globs.is_match(view)
            || self.regexes.is_match(view)
    }
}

/// A prefix that can never match a normalised path is a mistake worth stopping for.
/// A `--protect-path-prefix` rule, checked on its own.
pub fn check_prefix(prefix: &str) -> Result<(), RuleError> {
    let fail = |why: &str| Err(RuleError(format!("invalid --protect-path-prefix {prefix:?}: {why}")));
    if !prefix.starts_with('/') {
        return fail("it must start with '/' (use \"/\" to protect every path)");
    }
    if prefix.contains(['?', '#']) {
        return fail("rules match the path only, never the query or fragment");
    }
    if prefix.chars().any(|c| c.is_control()) {
        return fail("it contains a control character");
    }
    // Every segment followed by another must be a real one: normalised paths have no empty or dot
    // segments. The last may be cut anywhere, since this is a string prefix (`/.` matches `/.well-known`).
    let segments: Vec<&str> = prefix.split('/').skip(1).collect();
    let inner = segments.len().saturating_sub(1);
    if segments[..inner].iter().any(|segment| matches!(*segment, "" | "." | "..")) {
        return fail("normalised paths have no '//', '/./' or '/../', so it would never match");
    }
    Ok(())
}

/// regex errors span several lines (a caret under the pattern); a log line wants one.
/// A `--protect-path-glob` rule, checked on its own (case does not change what is valid).
pub fn check_glob(glob: &str) -> Result<(), RuleError> {
    glob_builder(glob).build().map(drop).map_err(|err| invalid_glob(glob, &err))
}

/// A `--protect-path-regex` rule, checked on its own.
pub fn check_regex(regex: &str) -> Result<(), RuleError> {
    regex::Regex::new(regex)
        .map(drop)
        .map_err(|err| RuleError(format!("invalid --protect-path-regex {regex:?}: {}", one_line(&err))))
}

/// How every glob rule is read: `*` stays within a segment, `\` escapes.
fn glob_builder(glob: &str) -> GlobBuilder<'_> {
    let mut builder = GlobBuilder::new(glob);
    builder.literal_separator(true).backslash_escape(true);
    builder
}

fn invalid_glob(glob: &str, err: &globset::Error) -> RuleError {
    RuleError(format!("invalid --protect-path-glob {glob:?}: {}", err.kind()))
}

fn one_line(err: &regex::Error) -> String {
    err.to_string().lines().map(str::trim).filter(|line| !line.is_empty()).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|item| item.to_string()).collect()
    }

    fn normalized(raw: &str) -> NormalizedPath {
        match normalize(raw) {
            Ok(path) => path,
            Err(err) => panic!("{raw:?} was refused: {err}"),
        }
    }

    fn prefix_rules(prefixes: &[&str]) -> ProtectionRules {
        ProtectionRules::new(&strings(prefixes), &[], &[]).expect("valid prefix rules")
    }

    #[test]
    fn splits_path_query_and_drops_the_fragment() {
        let target = normalized("/members/%2e%2e/x?a=b#f");
        assert_eq!(target.path(), "/x");
        assert_eq!(target.query(), Some("a=b"));
        assert_eq!(target.to_request_target(), "/x?a=b");

        let bare = normalized("/a?");
        assert_eq!(bare.query(), Some(""));
        assert_eq!(bare.to_request_target(), "/a?");

        let fragment_in_query = normalized("/a?x=1#frag?y=2");
        assert_eq!(fragment_in_query.query(), Some("x=1"));
        assert_eq!(normalized("/a").query(), None);
    }

    #[test]
    fn path_normalisation_cases() {
        let cases = [
            ("/", "/"),
            ("/a/b/", "/a/b/"),
            ("//a///b//", "/a/b/"),
            ("/a/./b", "/a/b"),
            ("/a/.", "/a/"),
            ("/a/..", "/"),
            ("/a/b/../c", "/a/c"),
            ("/../../a", "/a"),
            ("/a/../../../", "/"),
            ("/a/.../b", "/a/.../b"),
            ("/a/.b/..c", "/a/.b/..c"),
            ("/%41%7e%2D%5f%2e", "/A~-_."),
            ("/a%3bb%2cc", "/a%3Bb%2Cc"),
            ("/a%25b", "/a%25b"),
            // A literal `%` not followed by two hex digits cannot be decoded a second time.
            ("/50%25off", "/50%25off"),
            ("/100%25", "/100%25"),
            ("/a%25%2D", "/a%25-"),
            ("/caf\u{e9}", "/caf%C3%A9"),
            ("/caf%c3%a9", "/caf%C3%A9"),
            ("/a b\"<>`{|}^[]", "/a%20b%22%3C%3E%60%7B%7C%7D%5E%5B%5D"),
            ("/!$&'()*+,;=:@", "/!$&'()*+,;=:@"),
            ("/a\\b", "/a/b"),
            ("/a;b=1/c", "/a;b=1/c"),
            ("/a;b=1/../c", "/c"),
        ];
        for (raw, expected) in cases {
            assert_eq!(normalized(raw).path(), expected, "normalising {raw:?}");
            // Normalising twice changes nothing: the app gets a path the proxy would leave alone.
            assert_eq!(normalized(expected).path(), expected, "re-normalising {expected:?}");
        }
    }

    #[test]
    fn refusals() {
        let cases = [
            ("", PathError::NotOriginForm),
            ("*", PathError::NotOriginForm),
            ("members", PathError::NotOriginForm),
            ("http://evil.example/members", PathError::NotOriginForm),
            ("?a=/members", PathError::NotOriginForm),
            ("/%", PathError::MalformedEscape),
            ("/%2", PathError::MalformedEscape),
            ("/%zz", PathError::MalformedEscape),
            ("/a%2Fb", PathError::EncodedSeparator),
            ("/a%5cb", PathError::EncodedSeparator),
            ("/%256dembers", PathError::DoubleEncoded),
            ("/x/%252e%252e/members", PathError::DoubleEncoded),
            ("/%252fmembers", PathError::DoubleEncoded),
            ("/%25%32%65", PathError::DoubleEncoded),
            ("/%2525", PathError::DoubleEncoded),
            ("/a%25ab", PathError::DoubleEncoded),
            ("/a%00", PathError::ControlCharacter),
            ("/a\0", PathError::ControlCharacter),
            ("/a%0d%0aX: y", PathError::ControlCharacter),
            ("/a\tb", PathError::ControlCharacter),
            ("/a%7f", PathError::ControlCharacter),
            ("/a?b=\r\n", PathError::ControlCharacter),
            ("/%c0%ae%c0%ae/", PathError::InvalidUtf8),
            ("/%e0%80%ae", PathError::InvalidUtf8),
            ("/%ff", PathError::InvalidUtf8),
            ("/a/..;/b", PathError::DotSegmentWithParameters),
            ("/a/.;x/b", PathError::DotSegmentWithParameters),
            ("/a/..%3B/b", PathError::DotSegmentWithParameters),
        ];
        for (raw, expected) in cases {
            assert_eq!(normalize(raw), Err(expected), "normalising {raw:?}");
        }
    }

    #[test]
    fn query_is_kept_but_made_safe_to_forward() {
        let target = normalized("/a?x=%2F..%2f&y=caf\u{e9} z&z=a|b");
        assert_eq!(target.query(), Some("x=%2F..%2f&y=caf%C3%A9%20z&z=a%7Cb"));
    }

    #[test]
    fn prefix_rules_are_plain_string_prefixes_like_the_seed() {
        let rules = prefix_rules(&["/members"]);
        for protected in ["/members", "/members/", "/members/a/b", "/membership", "/members;x", "/members.json"] {
            assert!(rules.protects(&normalized(protected)), "{protected} should be protected");
        }
        for open in ["/", "/public", "/member", "/public/members", "/MEMBERS", "/Members/x"] {
            assert!(!rules.protects(&normalized(open)), "{open} should be open");
        }
        // The query never takes part in matching.
        assert!(!rules.protects(&normalized("/public?next=/members")));
        assert!(!rules.protects(&normalized("/?/members")));
    }

    #[test]
    fn glob_rules_keep_single_stars_within_a_segment() {
        let rules = ProtectionRules::new(&[], &strings(&["/api/*/admin", "/members/**", "/*.secret"]), &[])
            .expect("valid globs");
        assert!(rules.protects(&normalized("/api/v1/admin")));
        assert!(!rules.protects(&normalized("/api/v1/v2/admin")));
        assert!(rules.protects(&normalized("/members/a/b/c")));
        assert!(rules.protects(&normalized("/x.secret")));
        assert!(!rules.protects(&normalized("/dir/x.secret")));
        assert!(!rules.protects(&normalized("/public?q=/members/x")));
        assert!(!rules.protects(&normalized("/MEMBERS/x")));
    }

    #[test]
    fn regex_rules_are_searched_in_the_path_only_and_anchored_by_the_user() {
        let anchored = ProtectionRules::new(&[], &[], &strings(&[r"^/admin(/|$)"])).expect("valid regex");
        assert!(anchored.protects(&normalized("/admin")));
        assert!(anchored.protects(&normalized("/admin/x")));
        assert!(!anchored.protects(&normalized("/administrator")));
        assert!(!anchored.protects(&normalized("/x/admin")));
        assert!(!anchored.protects(&normalized("/x?/admin")));

        let any_case = ProtectionRules::new(&[], &[], &strings(&["(?i)^/members"])).expect("valid regex");
        assert!(any_case.protects(&normalized("/MEMBERS")));

        let unanchored = ProtectionRules::new(&[], &[], &strings(&[r"/private/"])).expect("valid regex");
        assert!(unanchored.protects(&normalized("/a/private/b")));
        assert!(!unanchored.protects(&normalized("/a?x=/private/")));
    }

    #[test]
    fn rules_see_the_decoded_and_parameter_free_forms_too() {
        let rules = ProtectionRules::new(&strings(&["/caf\u{e9}"]), &strings(&["/a b/**"]), &[]).expect("valid rules");
        assert!(rules.protects(&normalized("/caf%C3%A9/menu")));
        assert!(rules.protects(&normalized("/a%20b/x")));
        // A servlet container strips `;jsessionid=…` and would serve /a b/x.
        assert!(rules.protects(&normalized("/a%20b;jsessionid=1/x")));

        let sub_delims = prefix_rules(&["/a!b"]);
        assert!(sub_delims.protects(&normalized("/a%21b")));
    }

    #[test]
    fn ignoring_case_applies_to_every_kind_of_rule() {
        let ignoring = |prefixes: &[&str], globs: &[&str], regexes: &[&str]| {
            ProtectionRules::with_case(&strings(prefixes), &strings(globs), &strings(regexes), Case::Insensitive)
                .expect("valid rules")
        };
        let prefix = ignoring(&["/Members"], &[], &[]);
        for protected in ["/members", "/MEMBERS", "/Members/x", "/mEmBeRsHiP", "/%4dEMBERS", "/MEMBERS;x=1"] {
            assert!(prefix.protects(&normalized(protected)), "{protected} should be protected");
        }
        assert!(!prefix.protects(&normalized("/public/MEMBERS")));
        assert!(!prefix.protects(&normalized("/public?/MEMBERS")));
        // Non-ASCII letters fold too, in the decoded view.
        assert!(ignoring(&["/caf\u{e9}"], &[], &[]).protects(&normalized("/CAF%C3%89")));

        let glob = ignoring(&[], &["/members/**"], &[]);
        assert!(glob.protects(&normalized("/MEMBERS/X")));
        assert!(!glob.protects(&normalized("/public/x")));
        let regex = ignoring(&[], &[], &["^/admin(/|$)"]);
        assert!(regex.protects(&normalized("/ADMIN/x")));
        assert!(!regex.protects(&normalized("/ADMINISTRATOR")));

        // The default stays the seed's: case-sensitive.
        let sensitive =
            ProtectionRules::with_case(&strings(&["/members"]), &strings(&["/admin/**"]), &[], Case::Sensitive)
                .expect("valid rules");
        assert!(!sensitive.protects(&normalized("/MEMBERS")));
        assert!(!sensitive.protects(&normalized("/ADMIN/x")));
    }

    #[test]
    fn no_rules_protect_nothing() {
        let rules = ProtectionRules::new(&[], &[], &[]).expect("no rules");
        assert!(rules.is_empty());
        assert!(!rules.protects(&normalized("/members")));
    }

    #[test]
    fn invalid_rules_are_named() {
        let err = ProtectionRules::new(&[], &[], &strings(&["/ok", "("])).expect_err("bad regex");
        assert!(err.0.starts_with("invalid --protect-path-regex \"(\": "), "{err}");
        assert!(!err.0.contains('\n'), "{err}");

        let err = ProtectionRules::new(&[], &strings(&["/a/{b"]), &[]).expect_err("bad glob");
        assert!(err.0.starts_with("invalid --protect-path-glob \"/a/{b\": "), "{err}");

        for prefix in ["", "members", "/a?b", "/a//b", "/a/../b", "/./a"] {
            let err = ProtectionRules::new(&strings(&[prefix]), &[], &[]).expect_err(prefix);
            assert!(err.0.starts_with(&format!("invalid --protect-path-prefix {prefix:?}: ")), "{err}");
        }
        // A last segment cut short is fine: string prefixes need not end at a segment boundary.
        assert!(prefix_rules(&["/."]).protects(&normalized("/.well-known/x")));
        assert!(prefix_rules(&["/"]).protects(&normalized("/anything")));
    }

    /// What an app could make of the path it is forwarded: as is, percent-decoded once, with `;`
    /// parameters stripped (servlet containers), with backslashes as slashes, and with dot segments
    /// resolved again. Written independently of the code under test.
    fn app_interpretations(forwarded: &str) -> Vec<String> {
        fn decode(path: &str) -> String {
            percent_encoding::percent_decode_str(path).decode_utf8_lossy().into_owned()
        }
        fn strip_parameters(path: &str) -> String {
            path.split('/').map(|segment| segment.split(';').next().unwrap_or("")).collect::<Vec<_>>().join("/")
        }
        fn resolve(path: &str) -> String {
            let mut stack: Vec<&str> = Vec::new();
            for segment in path.split('/') {
                match segment {
                    "" | "." => {}
                    ".." => {
                        stack.pop();
                    }
                    other => stack.push(other),
                }
            }
            format!("/{}", stack.join("/"))
        }
        let mut readings = vec![
            forwarded.to_string(),
            decode(forwarded),
            decode(&decode(forwarded)),
            strip_parameters(forwarded),
            decode(&strip_parameters(forwarded)),
            strip_parameters(&decode(forwarded)),
        ];
        let more: Vec<String> = readings.iter().map(|r| r.replace('\\', "/")).collect();
        readings.extend(more);
        readings.iter().map(|reading| resolve(reading)).collect()
    }

    #[derive(Debug)]
    enum Outcome {
        /// The proxy answers 400; nothing reaches the app.
        Refused(PathError),
        /// Forwarded as this path; `protected` says whether the `/members` rules require a session.
        Forwarded { path: &'static str, protected: bool },
    }
    use Outcome::{Forwarded, Refused};

    /// Spellings of `/members` that path-confusion attacks use, against rules protecting `/members`.
    const ATTACKS: &[(&str, Outcome)] = &[
        ("/members", Forwarded { path: "/members", protected: true }),
        ("/members/x?a=b", Forwarded { path: "/members/x", protected: true }),
        // Percent-encoded slashes: refused, apps disagree on them.
        ("/%2Fmembers", Refused(PathError::EncodedSeparator)),
        ("/%2fmembers/x", Refused(PathError::EncodedSeparator)),
        ("/public/..%2fmembers", Refused(PathError::EncodedSeparator)),
        ("/public%2F..%2Fmembers", Refused(PathError::EncodedSeparator)),
        // Percent-encoded dots and letters are decoded before dot segments are resolved.
        ("/%6dembers", Forwarded { path: "/members", protected: true }),
        ("/public/%2e%2e/members", Forwarded { path: "/members", protected: true }),
        ("/public/%2E%2e/members", Forwarded { path: "/members", protected: true }),
        ("/public/.%2e/members/x", Forwarded { path: "/members/x", protected: true }),
        ("/%2e/members", Forwarded { path: "/members", protected: true }),
        // Dot segments.
        ("/members/../", Forwarded { path: "/", protected: false }),
        ("/members/../public", Forwarded { path: "/public", protected: false }),
        ("/public/../members", Forwarded { path: "/members", protected: true }),
        ("/public/./../members", Forwarded { path: "/members", protected: true }),
        ("/./members", Forwarded { path: "/members", protected: true }),
        ("/../../members", Forwarded { path: "/members", protected: true }),
        ("/public/.../members", Forwarded { path: "/public/.../members", protected: false }),
        // Duplicate slashes.
        ("//members", Forwarded { path: "/members", protected: true }),
        ("///members//x", Forwarded { path: "/members/x", protected: true }),
        // `;` path parameters.
        ("/public/..;/members", Refused(PathError::DotSegmentWithParameters)),
        ("/public/..;x=1/members", Refused(PathError::DotSegmentWithParameters)),
        ("/public/.;/members", Refused(PathError::DotSegmentWithParameters)),
        ("/public/%2e%2e;/members", Refused(PathError::DotSegmentWithParameters)),
        ("/public/..%3b/members", Refused(PathError::DotSegmentWithParameters)),
        ("/members;jsessionid=1", Forwarded { path: "/members;jsessionid=1", protected: true }),
        ("/members;jsessionid=1/x", Forwarded { path: "/members;jsessionid=1/x", protected: true }),
        ("/;x/members", Forwarded { path: "/;x/members", protected: true }),
        ("/%3Bx/members", Forwarded { path: "/%3Bx/members", protected: true }),
        ("/public;/../members", Forwarded { path: "/members", protected: true }),
        ("/public/%3B/../members", Forwarded { path: "/public/members", protected: false }),
        // Case: a distinct path, forwarded exactly as matched (apps are taken to be case-sensitive).
        ("/MEMBERS", Forwarded { path: "/MEMBERS", protected: false }),
        ("/Members/x", Forwarded { path: "/Members/x", protected: false }),
        // Backslashes: raw ones are slashes, encoded ones are refused.
        ("\\members", Refused(PathError::NotOriginForm)),
        ("/\\members", Forwarded { path: "/members", protected: true }),
        ("/public\\..\\members", Forwarded { path: "/members", protected: true }),
        ("/public%5c..%5cmembers", Refused(PathError::EncodedSeparator)),
        ("/public/%5C../members", Refused(PathError::EncodedSeparator)),
        // Fragments never reach the app, so what follows `#` cannot steer it.
        ("/public#/../members", Forwarded { path: "/public", protected: false }),
        ("/members#x", Forwarded { path: "/members", protected: true }),
        // The query never takes part in matching and never becomes part of the path.
        ("/public?next=/members", Forwarded { path: "/public", protected: false }),
        ("/public?/../members", Forwarded { path: "/public", protected: false }),
        // NUL and control characters.
        ("/members%00", Refused(PathError::ControlCharacter)),
        ("/public/%00/../members", Refused(PathError::ControlCharacter)),
        ("/members\0", Refused(PathError::ControlCharacter)),
        ("/mem%0abers", Refused(PathError::ControlCharacter)),
        // Overlong UTF-8 dots (`%c0%ae`) are refused, and so is double encoding (an app that
        // decodes twice would read /members).
        ("/public/%c0%ae%c0%ae/members", Refused(PathError::InvalidUtf8)),
        ("/public/%e0%80%ae%e0%80%ae/members", Refused(PathError::InvalidUtf8)),
        ("/public/%252e%252e/members", Refused(PathError::DoubleEncoded)),
        ("/%252Fmembers", Refused(PathError::DoubleEncoded)),
        ("/%256dembers", Refused(PathError::DoubleEncoded)),
        ("/%25%36%64embers", Refused(PathError::DoubleEncoded)),
        // Not origin-form.
        ("members", Refused(PathError::NotOriginForm)),
        ("http://evil.example/members", Refused(PathError::NotOriginForm)),
    ];

    fn check_attack_table(rules: &ProtectionRules, is_protected_resource: impl Fn(&str) -> bool) {
        for (raw, outcome) in ATTACKS {
            let result = normalize(raw);
            match (outcome, &result) {
                (Refused(expected), Err(err)) => assert_eq!(err, expected, "{raw:?}"),
                (Forwarded { path, protected }, Ok(target)) => {
                    assert_eq!(target.path(), *path, "{raw:?}");
                    assert_eq!(rules.protects(target), *protected, "{raw:?}");
                }
                _ => panic!("{raw:?}: expected {outcome:?}, got {result:?}"),
            }
            // The invariant: whatever the app makes of the forwarded path, it reaches a protected
            // resource only if the rules asked for a session.
            if let Ok(target) = result {
                let forwarded = target.to_request_target();
                assert!(normalize(&forwarded).as_ref() == Ok(&target), "{raw:?} is not stable");
                for reading in app_interpretations(target.path()) {
                    assert!(
                        rules.protects(&target) || !is_protected_resource(&reading),
                        "{raw:?}: the app could read {reading:?} and no session was required"
                    );
                }
            }
        }
    }

    #[test]
    fn attacks_never_reach_a_protected_prefix_without_a_session() {
        check_attack_table(&prefix_rules(&["/members"]), |path| path.starts_with("/members"));
    }

    #[test]
    fn attacks_never_reach_a_protected_glob_without_a_session() {
        let rules = ProtectionRules::new(&[], &strings(&["/members", "/members/**"]), &[]).expect("valid globs");
        check_attack_table(&rules, |path| path == "/members" || path.starts_with("/members/"));
    }

    #[test]
    fn attacks_never_reach_a_protected_regex_without_a_session() {
        let rules = ProtectionRules::new(&[], &[], &strings(&["^/members(/|;|$)"])).expect("valid regex");
        check_attack_table(&rules, |path| path == "/members" || path.starts_with("/members/"));
    }
    /// Properties of the normaliser over generated targets: pieces that matter to it (slashes, dots,
    /// escapes of every kind, `;`, `?`, `#`, backslashes, letters of `/members` in both cases) mixed
    /// with arbitrary characters. Bounded so that the module runs in a few seconds.
    mod properties {
        use proptest::prelude::*;

        use super::super::*;
        use super::app_interpretations;

        const PIECES: &[&str] = &[
            "/", "//", ".", "..", "%", "%2e", "%2E", "%25", "%2f", "%2F", "%5c", "%5C", "\\", ";", "?", "#", "members",
            "MEMBERS", "Members", "m", "%6d", "%4D", "%3B", "%3b", "%20", "%C3%A9", "%c0%ae", "%00", "\u{e9}", " ",
            "~", "%7e", "public", "%252e", "%256d",
        ];

        fn piece() -> impl Strategy<Value = String> {
            prop_oneof![
                4 => prop::sample::select(PIECES).prop_map(str::to_string),
                2 => prop::sample::select(&b"0123456789abcdefABCDEF"[..]).prop_map(|b| char::from(b).to_string()),
                1 => any::<char>().prop_map(String::from),
            ]
        }

        fn target() -> impl Strategy<Value = String> {
            prop::collection::vec(piece(), 0..14).prop_map(|pieces| format!("/{}", pieces.concat()))
        }

        fn rule_sets() -> Vec<(ProtectionRules, Case)> {
            let list = |items: &[&str]| items.iter().map(|item| item.to_string()).collect::<Vec<_>>();
            [Case::Sensitive, Case::Insensitive]
                .into_iter()
                .map(|case| {
                    let rules = ProtectionRules::with_case(
                        &list(&["/members"]),
                        &list(&["/members/**"]),
                        &list(&["^/members(/|;|$)"]),
                        case,
                    )
                    .expect("valid rules");
                    (rules, case)
                })
                .collect()
        }

        fn config() -> ProptestConfig {
            let cases = std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(1500);
            ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
        }

        proptest! {
            #![proptest_config(config())]

            #[test]
            fn never_panics(raw in any::<String>(), target in target()) {
                let rules = rule_sets();
                for input in [raw, target] {
                    if let Ok(normalized) = normalize(&input) {
                        for (rules, _) in &rules {
                            let _ = rules.protects(&normalized);
                        }
                    }
                }
            }

            #[test]
            fn normalising_is_idempotent(raw in target()) {
                if let Ok(normalized) = normalize(&raw) {
                    prop_assert_eq!(normalize(&normalized.to_request_target()), Ok(normalized.clone()));
                    prop_assert_eq!(normalize(normalized.path()).map(|again| again.path().to_string()),
                        Ok(normalized.path().to_string()));
                }
            }

            #[test]
            fn a_normalised_path_has_one_spelling(raw in target()) {
                let Ok(normalized) = normalize(&raw) else { return Ok(()) };
                let path = normalized.path();
                prop_assert!(path.starts_with('/'));
                prop_assert!(!path.contains("//"), "{path}");
                prop_assert!(path.split('/').all(|segment| segment != "." && segment != ".."), "{path}");
                prop_assert!(!path.contains(['\\', '?', '#']), "{path}");
                prop_assert!(path.bytes().all(|b| b.is_ascii_graphic()), "{path}");
                let bytes = path.as_bytes();
                for (at, _) in path.match_indices('%') {
                    let escape = &bytes[at + 1..at + 3];
                    prop_assert!(escape.iter().all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(b)), "{path}");
                    let decoded = u8::from_str_radix(std::str::from_utf8(escape).unwrap_or("zz"), 16).unwrap_or(0);
                    prop_assert!(!matches!(decoded, b'/' | b'\\' | b'.'), "encoded separator or dot in {path}");
                    prop_assert!(!is_unreserved(decoded), "a needless escape in {path}");
                    if decoded == b'%' {
                        prop_assert!(!(bytes.get(at + 3).is_some_and(u8::is_ascii_hexdigit)
                            && bytes.get(at + 4).is_some_and(u8::is_ascii_hexdigit)), "double encoding in {path}");
                    }
                }
            }

            #[test]
            fn the_decision_on_a_raw_path_is_the_decision_on_its_normalised_form(raw in target()) {
                let Ok(normalized) = normalize(&raw) else { return Ok(()) };
                let again = normalize(&normalized.to_request_target()).expect("a normalised target is accepted");
                for (rules, case) in rule_sets() {
                    let protected = rules.protects(&normalized);
                    prop_assert_eq!(protected, rules.protects(&again));
                    // And whatever the app makes of the forwarded path, it reaches /members only
                    // when the rules asked for a session.
                    for reading in app_interpretations(normalized.path()) {
                        let reading = if case == Case::Insensitive { reading.to_lowercase() } else { reading };
                        prop_assert!(protected || !reading.starts_with("/members"),
                            "{raw:?} is forwarded as {:?}; an app could read {reading:?}", normalized.path());
                    }
                }
            }
        }
    }
}
