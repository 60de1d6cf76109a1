//! Helpers shared by the stand-in and the demo app.

use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use http::HeaderMap;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use url::Url;

/// RFC 3339 with fractional seconds and `Z`, as Kratos writes timestamps.
pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_owned())
}

/// Lower-case hex, two digits a byte.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// A random string of `len` ASCII letters and digits from the OS generator.
pub fn random_token(len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = String::with_capacity(len);
    let mut buf = [0u8; 64];
    while out.len() < len {
        if getrandom::fill(&mut buf).is_err() {
            // The OS generator failing is not something a test tool can recover from sensibly;
            // fall back to UUIDs, which have their own source.
            out.push_str(&uuid::Uuid::new_v4().simple().to_string());
            continue;
        }
        for b in buf {
            // 248 = 4 * 62: reject the tail to keep the distribution uniform.
            if b < 248 && out.len() < len {
                out.push(ALPHABET[(b % 62) as usize] as char);
            }
        }
    }
    out.truncate(len);
    out
}

/// Escape text for HTML element content and double- or single-quoted attribute values.
pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#x27;"),
            _ => out.push(c),
        }
    }
    out
}

/// Parse a Go-style duration: `90s`, `15m`, `24h`, `1h30m`, `500ms`, or plain seconds (`3600`).
pub fn parse_duration(s: &str) -> Result<Duration> {
    let s = s.trim();
    if s.is_empty() {
        bail!("empty duration");
    }
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(|| anyhow!("duration {s:?} lacks a unit"))?;
        if digits == 0 {
            bail!("invalid duration {s:?}");
        }
        let n: u64 = rest[..digits].parse().map_err(|_| anyhow!("invalid duration {s:?}"))?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let part = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            "d" => Duration::from_secs(n.saturating_mul(86400)),
            _ => bail!("unknown unit {unit:?} in duration {s:?} (use ms, s, m, h or d)"),
        };
        total = total.saturating_add(part);
    }
    Ok(total)
}

/// Content negotiation between `text/html` (the default) and `application/json`, as Kratos does
/// it for its browser endpoints: JSON only when the `Accept` header ranks it above HTML.
pub fn prefers_json(headers: &HeaderMap) -> bool {
    let mut html_q: Option<f32> = None;
    let mut json_q: Option<f32> = None;
    for value in headers.get_all(http::header::ACCEPT) {
        let Ok(value) = value.to_str() else { continue };
        for item in value.split(',') {
            let mut parts = item.split(';');
            let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let mut q = 1.0f32;
            for p in parts {
                if let Some(v) = p.trim().strip_prefix("q=") {
                    q = v.trim().parse().unwrap_or(0.0);
                }
            }
            let (is_html, is_json) = match media.as_str() {
                "text/html" => (true, false),
                "application/json" => (false, true),
                "*/*" | "text/*" | "application/*" => (false, false),
                _ => (false, false),
            };
            if is_html {
                html_q = Some(html_q.map_or(q, |old| old.max(q)));
            }
            if is_json {
                json_q = Some(json_q.map_or(q, |old| old.max(q)));
            }
        }
    }
    match (json_q, html_q) {
        (Some(j), Some(h)) => j > 0.0 && j > h,
        (Some(j), None) => j > 0.0,
        _ => false,
    }
}

/// The value of the first cookie called `name` in the request's `Cookie` header(s).
pub fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    for value in headers.get_all(http::header::COOKIE) {
        let Ok(value) = value.to_str() else { continue };
        for pair in value.split(';') {
            if let Some((n, v)) = pair.split_once('=')
                && n.trim() == name
            {
                let v = v.trim();
                let v = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(v);
                return Some(v.to_owned());
            }
        }
    }
    None
}

/// A query parameter of a request URI, percent-decoded.
pub fn query_param(uri: &http::Uri, name: &str) -> Option<String> {
    let query = uri.query()?;
    url::form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}

/// Remove a trailing slash from a URL string (`http://h:1/` → `http://h:1`).
pub fn trim_trailing_slash(s: &str) -> String {
    s.trim_end_matches('/').to_owned()
}

/// The allow-list Kratos applies to `return_to`: scheme, host (with port) and path prefix must
/// match one allowed URL. With no explicit entries, any URL on a loopback host (any port, http or
/// https) is allowed, plus the stand-in's own public URL.
#[derive(Debug, Clone)]
pub struct ReturnToPolicy {
    allowed: Vec<Url>,
    loopback_any_port: bool,
}

impl ReturnToPolicy {
    /// `allowed` empty means the loopback default.
    pub fn new(allowed: &[String], public_url: &Url) -> Result<Self> {
        let mut list = Vec::new();
        for entry in allowed {
            let url = Url::parse(entry).map_err(|err| anyhow!("allowed return URL {entry:?} is not a URL: {err}"))?;
            if url.host_str().is_none() {
                bail!("allowed return URL {entry:?} has no host");
            }
            list.push(url);
        }
        let loopback_any_port = list.is_empty();
        list.push(public_url.clone());
        Ok(ReturnToPolicy { allowed: list, loopback_any_port })
    }

    /// Resolve `return_to` (relative ones against `base`) and check it; `None` when not allowed.
    pub fn check(&self, return_to: &str, base: &Url) -> Option<Url> {
        let url = base.join(return_to).ok()?;
        if !matches!(url.scheme(), "http" | "https") {
            return None;
        }
        let host = url.host_str()?.to_ascii_lowercase();
        if !url.username().is_empty() || url.password().is_some() {
            return None;
        }
        if self.loopback_any_port && matches!(host.as_str(), "localhost" | "127.0.0.1" | "[::1]") {
            return Some(url);
        }
        for allowed in &self.allowed {
            let allowed_host = allowed.host_str().unwrap_or("").to_ascii_lowercase();
            let host_ok = match allowed_host.strip_prefix("*.") {
                Some(suffix) => {
                    host.strip_suffix(suffix).is_some_and(|prefix| prefix.ends_with('.') && prefix.len() > 1)
                }
                None => host == allowed_host,
            };
            if allowed.scheme() == url.scheme()
                && host_ok
                && allowed.port_or_known_default() == url.port_or_known_default()
                && path_has_prefix(url.path(), allowed.path())
            {
                return Some(url);
            }
        }
        None
    }
}

fn path_has_prefix(path: &str, prefix: &str) -> bool {
    if prefix.is_empty() || prefix == "/" {
        return true;
    }
    let prefix_dir = prefix.trim_end_matches('/');
    path == prefix_dir || path.strip_prefix(prefix_dir).is_some_and(|rest| rest.starts_with('/'))
}

/// Resolves on Ctrl-C or SIGTERM: how the binaries here stop cleanly (`make demo` sends either).
pub async fn shutdown_signal() {
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s").ok(), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h30m").ok(), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms").ok(), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("42").ok(), Some(Duration::from_secs(42)));
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("5y").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn escaping() {
        assert_eq!(html_escape(r#"<a href="x">'&'</a>"#), "&lt;a href=&quot;x&quot;&gt;&#x27;&amp;&#x27;&lt;/a&gt;");
    }

    #[test]
    fn negotiation() {
        let mut h = HeaderMap::new();
        assert!(!prefers_json(&h));
        h.insert(http::header::ACCEPT, "application/json".parse().unwrap());
        assert!(prefers_json(&h));
        h.insert(
            http::header::ACCEPT,
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8".parse().unwrap(),
        );
        assert!(!prefers_json(&h));
        h.insert(http::header::ACCEPT, "text/html;q=0.5, application/json".parse().unwrap());
        assert!(prefers_json(&h));
    }

    #[test]
    fn return_to_default_policy() {
        let public = Url::parse("http://127.0.0.1:4433").unwrap();
        let p = ReturnToPolicy::new(&[], &public).unwrap();
        for ok in
            ["http://127.0.0.1:4000/members?x=1", "https://localhost:8443/", "http://[::1]:3000/a", "/relative/path"]
        {
            assert!(p.check(ok, &public).is_some(), "{ok} should pass");
        }
        for bad in [
            "https://evil.example/",
            "//evil.example/x",
            "/\\evil.example/x",
            "http://127.0.0.1.evil.example/",
            "http://127.0.0.1@evil.example/",
            "javascript:alert(1)",
            "http://localhost.evil.example:4000/",
        ] {
            assert!(p.check(bad, &public).is_none(), "{bad} should be refused");
        }
    }

    #[test]
    fn return_to_explicit_policy() {
        let public = Url::parse("http://127.0.0.1:4433").unwrap();
        let p = ReturnToPolicy::new(
            &["https://app.example.com/dashboard".to_owned(), "https://*.example.org".to_owned()],
            &public,
        )
        .unwrap();
        assert!(p.check("https://app.example.com/dashboard/x", &public).is_some());
        assert!(p.check("https://app.example.com/dashboardx", &public).is_none());
        assert!(p.check("http://app.example.com/dashboard", &public).is_none());
        assert!(p.check("https://app.example.com:444/dashboard", &public).is_none());
        assert!(p.check("https://a.example.org/any", &public).is_some());
        assert!(p.check("https://aexample.org/any", &public).is_none());
        assert!(p.check("http://127.0.0.1:4433/ui/welcome", &public).is_some());
        assert!(p.check("http://127.0.0.1:4000/", &public).is_none());
    }
}
