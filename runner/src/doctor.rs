//! `ory-proxy doctor`: what stands between this machine and a working `ory-proxy local`, one
//! finding per line, each with what to do. Looks, and changes nothing.

use std::fmt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use url::Url;

use crate::cli::DoctorArgs;
use crate::{deployment, home, ory_url, tls, trust};

/// How bad a finding is. Only a failure makes `doctor` exit non-zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    /// Worth knowing; nothing to fix before `ory-proxy local` works.
    Note,
    /// Something a user must fix.
    Fail,
}

/// One thing checked, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub verdict: Verdict,
    pub what: String,
    pub fix: Option<String>,
}

impl Finding {
    fn ok(what: impl Into<String>) -> Finding {
        Finding { verdict: Verdict::Ok, what: what.into(), fix: None }
    }

    fn note(what: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding { verdict: Verdict::Note, what: what.into(), fix: Some(fix.into()) }
    }

    fn fail(what: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding { verdict: Verdict::Fail, what: what.into(), fix: Some(fix.into()) }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let label = match self.verdict {
            Verdict::Ok => "ok  ",
            Verdict::Note => "note",
            Verdict::Fail => "FAIL",
        };
        match &self.fix {
            Some(fix) => write!(f, "{label}  {} — {fix}", self.what),
            None => write!(f, "{label}  {}", self.what),
        }
    }
}

/// How far the clock may be from Ory's before tokens and sessions go wrong.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(5);

/// Every check, in the order a user would fix them.
pub async fn examine(args: &DoctorArgs) -> Vec<Finding> {
    let mut findings = Vec::new();
    match home::dir() {
        Ok(home) => {
            findings.extend(local_ca(&home));
            findings.push(signing_key(args.jwt_key.as_deref().unwrap_or(&home.join(home::SIGNING_KEY_FILE))));
        }
        Err(error) => findings.push(Finding::fail(format!("{error:#}"), "set ORY_PROXY_HOME")),
    }
    findings.push(port(&args.listen.host, args.listen.port));
    findings.extend(ory(args).await);
    findings.extend(wsl(&std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default()));
    findings
}

/// The local CA, and whether each trust store of this OS trusts it.
fn local_ca(home: &Path) -> Vec<Finding> {
    let cert = home.join(tls::CA_CERT_FILE);
    if !cert.exists() {
        return vec![Finding::note(
            format!("no local CA yet in {}", home.display()),
            "the first `ory-proxy local` makes it and installs it (or serve with --no-https)",
        )];
    }
    let ca = match tls::LocalCa::load_or_create(home) {
        Ok(ca) => ca,
        Err(error) => {
            return vec![Finding::fail(
                format!("the local CA in {} cannot be read: {error:#}", home.display()),
                "remove its files to make a new one (then trust it again)",
            )];
        }
    };
    let mut findings = vec![Finding::ok(format!("local CA {}", ca.cert_path().display()))];
    let report = trust::check(&ca, home, &trust::TrustEnv::from_system());
    for outcome in report.outcomes {
        findings.push(match outcome {
            trust::Outcome::AlreadyInstalled(store) => Finding::ok(format!("trusted by {store}")),
            trust::Outcome::Failed(store, why) => Finding::fail(
                format!("{store} does not trust the local CA: {why}"),
                "run `ory-proxy local` once to install it, or trust `ory-proxy cert path` there yourself",
            ),
            trust::Outcome::Installed(store) | trust::Outcome::Removed(store) => Finding::ok(store),
        });
    }
    findings
}

/// The signing key: readable, a key, and readable by its owner only.
fn signing_key(path: &Path) -> Finding {
    if !path.exists() {
        return Finding::note(
            format!("no signing key yet at {}", path.display()),
            "the first `ory-proxy local` makes one",
        );
    }
    if let Err(error) = home::read_signing_key(path) {
        return Finding::fail(
            format!("{error:#}"),
            "give a P-256 key in PEM or JWK form, or remove the file to make a new one",
        );
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(path).map(|meta| meta.permissions().mode() & 0o777).unwrap_or(0);
        if mode & 0o077 != 0 {
            return Finding::fail(
                format!("the signing key {} can be read by others (mode {mode:o})", path.display()),
                format!("chmod 600 {}", path.display()),
            );
        }
    }
    Finding::ok(format!("signing key {} (readable by its owner only)", path.display()))
}

/// Whether the port can be listened on.
fn port(host: &str, port: u16) -> Finding {
    match std::net::TcpListener::bind((host, port)) {
        Ok(_) => Finding::ok(format!("{host}:{port} is free")),
        Err(error) if error.kind() == std::io::ErrorKind::AddrInUse => Finding::fail(
            format!("{host}:{port} is in use"),
            "stop what listens there, or give `ory-proxy local` another --port",
        ),
        Err(error) => {
            Finding::fail(format!("cannot listen on {host}:{port} ({error})"), "choose another --port or --host")
        }
    }
}

/// Where Ory is, whether it answers whoami as Ory does, and whether our clock agrees with its.
async fn ory(args: &DoctorArgs) -> Vec<Finding> {
    let url = match deployment::find_ory(&args.ory).await {
        Ok(url) => url,
        Err(error) => return vec![Finding::fail(format!("{error:#}"), "say where Ory is")],
    };
    let whoami = match url.join(&format!("{}/sessions/whoami", url.path().trim_end_matches('/'))) {
        Ok(whoami) => whoami,
        Err(error) => return vec![Finding::fail(format!("{url}: {error}"), "give Ory's public URL")],
    };
    let accept = [(http::header::ACCEPT, "application/json".to_string())];
    let asked_at = SystemTime::now();
    let (parts, body) = match ory_url::get(&whoami, &accept, Duration::from_secs(10)).await {
        Ok(answer) => answer,
        Err(error) => {
            return vec![Finding::fail(
                format!("Ory at {url} cannot be reached: {error:#}"),
                "check the URL and your network (a self-hosted Kratos must be running)",
            )];
        }
    };
    vec![whoami_answer(&url, parts.status, &body), clock(&url, parts.headers.get(http::header::DATE), asked_at)]
}

/// What Ory says to a whoami without credentials: 401 with an error JSON.
fn whoami_answer(url: &Url, status: http::StatusCode, body: &[u8]) -> Finding {
    let error_code = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|json| json.pointer("/error/code").and_then(serde_json::Value::as_u64));
    if status == http::StatusCode::UNAUTHORIZED && error_code == Some(401) {
        return Finding::ok(format!("Ory at {url} answers whoami as Ory does (401 without a session)"));
    }
    Finding::fail(
        format!("{url} answered whoami with {status}, not Ory's 401 error"),
        "give the public URL of your Ory project or Kratos (not the app's, nor Kratos' admin API)",
    )
}

/// Our clock against Ory's `Date`.
fn clock(url: &Url, date: Option<&http::HeaderValue>, asked_at: SystemTime) -> Finding {
    let Some(theirs) = date.and_then(|value| value.to_str().ok()).and_then(|text| httpdate::parse_http_date(text).ok())
    else {
        return Finding::note(format!("{url} sent no Date"), "the clock could not be compared");
    };
    // Date has whole seconds: allow the one it may be off by.
    let skew = match asked_at.duration_since(theirs) {
        Ok(ahead) => ahead,
        Err(behind) => behind.duration(),
    };
    if skew <= MAX_CLOCK_SKEW + Duration::from_secs(1) {
        return Finding::ok(format!("the clock agrees with Ory's (within {}s)", skew.as_secs()));
    }
    Finding::fail(
        format!("the clock is {}s off Ory's", skew.as_secs()),
        "JWTs and session expiry go wrong: synchronise it (e.g. `sudo timedatectl set-ntp true`)",
    )
}

/// Under WSL, the browsers are Windows', which do not see a Linux-side CA.
fn wsl(osrelease: &str) -> Option<Finding> {
    osrelease.to_ascii_lowercase().contains("microsoft").then(|| {
        Finding::note(
            "this is WSL: browsers on Windows do not trust a CA installed on the Linux side",
            "import `ory-proxy cert path` into Windows (certutil -user -addstore Root <file>), or use --no-https",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ory_answers_whoami_like_ory() {
        let url = Url::parse("https://x.projects.oryapis.com").unwrap();
        let ory = br#"{"error":{"code":401,"status":"Unauthorized","message":"No valid session credentials found"}}"#;
        assert_eq!(whoami_answer(&url, http::StatusCode::UNAUTHORIZED, ory).verdict, Verdict::Ok);
        assert_eq!(whoami_answer(&url, http::StatusCode::OK, b"<html>").verdict, Verdict::Fail);
        assert_eq!(whoami_answer(&url, http::StatusCode::UNAUTHORIZED, b"nope").verdict, Verdict::Fail);
    }

    #[test]
    fn a_clock_off_by_more_than_a_few_seconds_fails() {
        let url = Url::parse("http://127.0.0.1:4433").unwrap();
        let now = SystemTime::now();
        let date = |offset: i64| {
            let at = if offset >= 0 {
                now + Duration::from_secs(offset as u64)
            } else {
                now - Duration::from_secs((-offset) as u64)
            };
            http::HeaderValue::from_str(&httpdate::fmt_http_date(at)).unwrap()
        };
        assert_eq!(clock(&url, Some(&date(2)), now).verdict, Verdict::Ok);
        assert_eq!(clock(&url, Some(&date(-30)), now).verdict, Verdict::Fail);
        assert_eq!(clock(&url, Some(&date(120)), now).verdict, Verdict::Fail);
        assert_eq!(clock(&url, None, now).verdict, Verdict::Note);
    }

    #[test]
    fn wsl_is_recognised_by_its_kernel() {
        assert!(wsl("5.15.153.1-microsoft-standard-WSL2").is_some());
        assert!(wsl("6.1.0-18-amd64").is_none());
    }

    #[test]
    fn findings_read_as_one_line_each() {
        let finding = Finding::fail("127.0.0.1:4000 is in use", "choose another --port");
        assert_eq!(finding.to_string(), "FAIL  127.0.0.1:4000 is in use — choose another --port");
        assert_eq!(Finding::ok("fine").to_string(), "ok    fine");
    }
}
