//! Content negotiation: who is asking — a browser (sent to the login page) or an API client
//! (answered `401` in JSON) — and which codings Ory may answer in.

/// How a request without a session on a protected path is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientKind {
    /// Redirected (`303`) to the browser login flow. The default.
    Browser,
    /// Answered `401` with Ory's JSON error body.
    Api,
}

/// Decides from `Accept` and `X-Requested-With`.
///
/// API when `X-Requested-With: XMLHttpRequest`, or when `Accept` prefers JSON (`application/json`
/// or any `application/…+json`) over `text/html`. Preference compares, in order: the q-value, how
/// specific the matching range is (`application/json` beats `*/*`, so `application/json, */*` is
/// an API client), and which was listed first. No `Accept`, `*/*`, or anything that prefers
/// neither gives Browser.
pub fn client_kind(accept: Option<&str>, x_requested_with: Option<&str>) -> ClientKind {
    if x_requested_with.is_some_and(|value| value.trim().eq_ignore_ascii_case("XMLHttpRequest")) {
        return ClientKind::Api;
    }
    let Some(accept) = accept else {
        return ClientKind::Browser;
    };
    let ranges = parse_accept(accept);
    let html = preference(&ranges, |range| range.html_specificity());
    let json = preference(&ranges, |range| range.json_specificity());
    match (html, json) {
        (_, None) => ClientKind::Browser,
        (None, Some(_)) => ClientKind::Api,
        (Some(html), Some(json)) if json.beats(&html) => ClientKind::Api,
        _ => ClientKind::Browser,
    }
}

/// One media range of an `Accept` header.
#[derive(Debug)]
struct MediaRange {
    type_: String,
    subtype: String,
    /// The q-value in thousandths, as RFC 9110 allows at most three decimals.
    quality: u16,
}

impl MediaRange {
    /// 3 for an exact match of `text/html`, 2 for `text/*`, 1 for `*/*`.
    fn html_specificity(&self) -> Option<u8> {
        match (self.type_.as_str(), self.subtype.as_str()) {
            ("text", "html") => Some(3),
            ("text", "*") => Some(2),
            ("*", "*") => Some(1),
            _ => None,
        }
    }

    /// 3 for `application/json` or `application/…+json`, 2 for `application/*`, 1 for `*/*`.
    fn json_specificity(&self) -> Option<u8> {
        match (self.type_.as_str(), self.subtype.as_str()) {
            ("application", "json") => Some(3),
            ("application", subtype) if subtype.ends_with("+json") => Some(3),
            ("application", "*") => Some(2),
            ("*", "*") => Some(1),
            _ => None,
        }
    }
}

/// How much a client wants one kind of content, comparable with another kind's.
#[derive(Debug, Clone, Copy)]
struct Preference {
    quality: u16,
    specificity: u8,
    position: usize,
}

impl Preference {
    /// Strictly preferred; a full tie goes to the other side (HTML, the default).
    fn beats(&self, other: &Preference) -> bool {
        (self.quality, self.specificity, std::cmp::Reverse(self.position))
            > (other.quality, other.specificity, std::cmp::Reverse(other.position))
    }
}

/// The client's preference for a kind of content: from the most specific matching range (RFC 9110
/// §12.5.1), or for JSON from the best of its exact ranges. `None` when not acceptable at all.
fn preference(ranges: &[MediaRange], specificity: impl Fn(&MediaRange) -> Option<u8>) -> Option<Preference> {
    let most_specific = ranges
        .iter()
        .enumerate()
        .filter_map(|(position, range)| specificity(range).map(|s| (position, range, s)))
        .map(|(position, range, s)| Preference { quality: range.quality, specificity: s, position })
        .max_by(|a, b| {
            // Most specific wins; among several exact ranges (json and +json) the highest q, then
            // the first listed.
            (a.specificity, a.quality, std::cmp::Reverse(a.position)).cmp(&(
                b.specificity,
                b.quality,
                std::cmp::Reverse(b.position),
            ))
        })?;
    (most_specific.quality > 0).then_some(most_specific)
}

/// Parses `type/subtype;q=…, …`, skipping malformed ranges.
fn parse_accept(accept: &str) -> Vec<MediaRange> {
    accept
        .split(',')
        .filter_map(|item| {
            let mut parts = item.split(';');
            let media = parts.next()?.trim();
            let (type_, subtype) = media.split_once('/')?;
            let (type_, subtype) = (type_.trim(), subtype.trim());
            if type_.is_empty() || subtype.is_empty() {
                return None;
            }
            let mut quality = 1000;
            for parameter in parts {
                if let Some((name, value)) = parameter.split_once('=')
                    && name.trim().eq_ignore_ascii_case("q")
                {
                    quality = parse_quality(value.trim())?;
                }
            }
            Some(MediaRange { type_: type_.to_ascii_lowercase(), subtype: subtype.to_ascii_lowercase(), quality })
        })
        .collect()
}

/// The `Accept-Encoding` an Ory-bound request carries: the client's offer (`offered`, every
/// value joined) kept to the codings [`rewrite_body`](crate::rewrite::rewrite_body) can undo and
/// redo, gzip and identity, with their q-values, so Ory never answers in a coding whose body
/// would pass unrewritten. A `*` offers gzip at its q-value unless gzip is named. When nothing
/// acceptable is left, `identity`.
pub fn ory_accept_encoding(offered: &str) -> String {
    let mut kept: Vec<(&str, Option<&str>)> = Vec::new();
    let mut wildcard: Option<Option<&str>> = None;
    let mut named = Vec::new();
    for element in offered.split(',') {
        let mut parts = element.split(';');
        let coding = parts.next().unwrap_or_default().trim();
        let coding = if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
            "gzip"
        } else if coding.eq_ignore_ascii_case("identity") {
            "identity"
        } else if coding == "*" {
            "*"
        } else {
            continue;
        };
        let mut q = None;
        let mut valid = true;
        for param in parts {
            let Some((name, value)) = param.split_once('=') else {
                valid = false;
                break;
            };
            if name.trim().eq_ignore_ascii_case("q") {
                q = Some(value.trim());
            }
        }
        // An element the client wrote wrongly, or whose q-value is not one, is not an offer.
        if !valid || q.is_some_and(|q| parse_quality(q).is_none()) || named.contains(&coding) {
            continue;
        }
        named.push(coding);
        // q=0 refuses the coding: leaving it out asks Ory for no more than the client accepts.
        if q.is_some_and(|q| parse_quality(q) == Some(0)) {
            continue;
        }
        if coding == "*" {
            wildcard = Some(q);
        } else {
            kept.push((coding, q));
        }
    }
    if let Some(q) = wildcard.filter(|_| !named.contains(&"gzip")) {
        kept.push(("gzip", q));
    }
    if kept.is_empty() {
        return "identity".to_owned();
    }
    let mut out = String::new();
    for (coding, q) in kept {
        if !out.is_empty() {
            out.push_str(", ");
        }
        out.push_str(coding);
        if let Some(q) = q {
            out.push_str(";q=");
            out.push_str(q);
        }
    }
    out
}

/// `qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )`, in thousandths.
fn parse_quality(text: &str) -> Option<u16> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if fraction.len() > 3 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let thousandths: u16 = format!("{fraction:0<3}").parse().ok()?;
    match whole {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn browsers_are_the_default() {
        let browsers = [
            None,
            Some(""),
            Some("*/*"),
            Some("text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"),
            Some("text/html, application/json"),
            Some("text/html;q=0.9, application/json;q=0.9"),
            Some("application/json;q=0.5, text/html"),
            Some("application/json;q=0, */*"),
            Some("image/png"),
            Some("text/*"),
            Some("application/json;q=2"),
            Some("garbage"),
        ];
        for accept in browsers {
            assert_eq!(client_kind(accept, None), ClientKind::Browser, "{accept:?}");
        }
    }

    #[test]
    fn api_clients_prefer_json() {
        let api_clients = [
            "application/json",
            "APPLICATION/JSON",
            "application/json, text/plain, */*",
            "application/json, text/html",
            "text/html;q=0.5, application/json",
            "text/html;q=0.899, application/json;q=0.9",
            "application/problem+json",
            "application/vnd.api+json;charset=utf-8",
            "application/*",
            "text/html;q=0, */*",
            "application/json ; q=1.000, text/html ; q=0.999",
        ];
        for accept in api_clients {
            assert_eq!(client_kind(Some(accept), None), ClientKind::Api, "{accept}");
        }
    }

    #[test]
    fn x_requested_with_marks_an_api_client() {
        assert_eq!(client_kind(None, Some("XMLHttpRequest")), ClientKind::Api);
        assert_eq!(client_kind(Some("text/html"), Some(" xmlhttprequest ")), ClientKind::Api);
        assert_eq!(client_kind(None, Some("com.example.app")), ClientKind::Browser);
    }

    #[test]
    fn ory_is_asked_only_for_codings_the_filter_can_rewrite() {
        let asked = |offered: &str| ory_accept_encoding(offered);
        assert_eq!(asked("gzip, deflate, br, zstd"), "gzip");
        assert_eq!(asked("br;q=1.0, gzip;q=0.8, *;q=0.1"), "gzip;q=0.8");
        assert_eq!(asked("x-gzip, identity;q=0.5"), "gzip, identity;q=0.5");
        assert_eq!(asked("GZIP;Q=0.7"), "gzip;q=0.7");
        // Nothing the filter can rewrite, or nothing at all: Ory answers uncompressed.
        assert_eq!(asked("br"), "identity");
        assert_eq!(asked("br, zstd"), "identity");
        assert_eq!(asked(""), "identity");
        // A refused coding stays refused; a wildcard offers gzip unless gzip was named.
        assert_eq!(asked("gzip;q=0, br"), "identity");
        assert_eq!(asked("*"), "gzip");
        assert_eq!(asked("*;q=0.3, br"), "gzip;q=0.3");
        assert_eq!(asked("gzip;q=0, *"), "identity");
        assert_eq!(asked("*;q=0"), "identity");
        // Malformed q-values and repeats are not offers (the first of a repeat counts).
        assert_eq!(asked("gzip;q=2, identity;q=abc"), "identity");
        assert_eq!(asked("gzip;q=0.5, gzip"), "gzip;q=0.5");
        assert_eq!(asked("gzip;level"), "identity");
        assert_eq!(asked("gzip;q=0.1234"), "identity");
        assert_eq!(asked("identity;q=1.000, gzip;q=0.001"), "identity;q=1.000, gzip;q=0.001");
    }

    #[test]
    fn q_values_parse_as_rfc_9110_says() {
        assert_eq!(parse_quality("1"), Some(1000));
        assert_eq!(parse_quality("1.000"), Some(1000));
        assert_eq!(parse_quality("0.5"), Some(500));
        assert_eq!(parse_quality("0.05"), Some(50));
        assert_eq!(parse_quality("0"), Some(0));
        assert_eq!(parse_quality("0."), Some(0));
        for invalid in ["1.5", "2", "0.1234", "-0.5", "", "a", "0.a", ".5"] {
            assert_eq!(parse_quality(invalid), None, "{invalid:?}");
        }
    }
}
