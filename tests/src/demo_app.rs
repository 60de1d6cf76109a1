//! The demo app: what an app behind ory-proxy does. It reads the `Authorization: Bearer` JWT the
//! proxy adds, verifies it (ES256, `exp`, `nbf`, `iss`, optional `aud`) against the proxy's
//! `/.ory/jwks.json`, and greets the user by the email in `session.identity.traits.email`.
//! Pages under `/members` are the protected example; `/logout` logs out through the proxy.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use clap::Parser;
use http::{Method, Request, StatusCode, header};
use hyper::body::Incoming;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use url::Url;

use crate::http::{DropConnection, HttpClient, Resp, ServerHandle, bind_loopback, redirect, response, spawn_server};
use crate::util::html_escape as esc;

/// How to run the demo app.
#[derive(Debug, Clone)]
pub struct DemoAppConfig {
    /// Port on 127.0.0.1; 0 picks a free one.
    pub port: u16,
    /// Where the proxy serves its public keys.
    pub jwks_url: String,
    /// The `iss` the JWT must carry: the Ory URL the proxy is configured with.
    pub issuer: String,
    /// The `aud` the JWT must carry, if any.
    pub audience: Option<String>,
    /// The proxy's public URL, for logging out through `/.ory/` (default: the JWKS URL's origin).
    pub proxy_url: Option<String>,
    /// Clock leeway for `exp` and `nbf`, in seconds.
    pub leeway_secs: u64,
}

impl Default for DemoAppConfig {
    fn default() -> Self {
        DemoAppConfig {
            port: 0,
            jwks_url: "http://127.0.0.1:4000/.ory/jwks.json".to_owned(),
            issuer: "http://127.0.0.1:4433".to_owned(),
            audience: None,
            proxy_url: None,
            leeway_secs: 0,
        }
    }
}

/// Command line of `demo-app`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "demo-app",
    version,
    about = "Demo app for ory-proxy: verifies the proxy's JWT against its JWKS and shows who is \
             logged in. Pages under /members are the protected example."
)]
pub struct DemoAppCli {
    /// Port to listen on (127.0.0.1 only).
    #[arg(long, env = "DEMO_APP_PORT", default_value_t = 3000)]
    pub port: u16,
    /// The proxy's JWKS URL.
    #[arg(long, env = "DEMO_APP_JWKS_URL", default_value = "http://127.0.0.1:4000/.ory/jwks.json")]
    pub jwks_url: String,
    /// Expected `iss` claim: the Ory URL as the proxy is configured with it.
    #[arg(long, env = "DEMO_APP_ISSUER", default_value = "http://127.0.0.1:4433")]
    pub issuer: String,
    /// Expected `aud` claim (not checked when absent).
    #[arg(long, env = "DEMO_APP_AUDIENCE")]
    pub audience: Option<String>,
    /// The proxy's public URL, used to log out through /.ory/ [default: origin of --jwks-url].
    #[arg(long, env = "DEMO_APP_PROXY_URL")]
    pub proxy_url: Option<String>,
    /// Clock leeway in seconds for exp/nbf.
    #[arg(long, env = "DEMO_APP_LEEWAY_SECS", default_value_t = 0)]
    pub leeway_secs: u64,
}

impl DemoAppCli {
    pub fn into_config(self) -> DemoAppConfig {
        DemoAppConfig {
            port: self.port,
            jwks_url: self.jwks_url,
            issuer: self.issuer,
            audience: self.audience,
            proxy_url: self.proxy_url,
            leeway_secs: self.leeway_secs,
        }
    }
}

/// The claims ory-proxy puts in its JWT.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub iss: String,
    pub exp: u64,
    #[serde(default)]
    pub iat: Option<u64>,
    #[serde(default)]
    pub nbf: Option<u64>,
    #[serde(default)]
    pub jti: Option<String>,
    #[serde(default)]
    pub aud: Option<Value>,
    #[serde(default)]
    pub session: Value,
}

impl Claims {
    /// `session.identity.traits.email`.
    pub fn email(&self) -> Option<&str> {
        self.session.get("identity")?.get("traits")?.get("email")?.as_str()
    }
}

/// What the app concluded about a request.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// A valid JWT.
    LoggedIn(Box<Claims>),
    /// No `Authorization: Bearer` header.
    NoToken,
    /// A token that does not verify, and why.
    Invalid(String),
}

struct KeyCache {
    keys: Option<JwkSet>,
    fetched_at: Option<Instant>,
}

struct AppState {
    config: DemoAppConfig,
    proxy_url: String,
    client: HttpClient,
    keys: tokio::sync::Mutex<KeyCache>,
}

/// Entry point: `DemoApp::start(config)`.
pub struct DemoApp;

impl DemoApp {
    pub async fn start(config: DemoAppConfig) -> Result<RunningDemoApp> {
        let jwks =
            Url::parse(&config.jwks_url).with_context(|| format!("JWKS URL {:?} is not a URL", config.jwks_url))?;
        if jwks.scheme() != "http" {
            return Err(anyhow!("the demo app fetches the JWKS over plain http only; got {}", config.jwks_url));
        }
        let proxy_url = match &config.proxy_url {
            Some(u) => u.trim_end_matches('/').to_owned(),
            None => jwks.origin().ascii_serialization(),
        };
        let listener = bind_loopback(config.port).await?;
        let state = Arc::new(AppState {
            config,
            proxy_url,
            client: HttpClient::with_timeout(Duration::from_secs(5)),
            keys: tokio::sync::Mutex::new(KeyCache { keys: None, fetched_at: None }),
        });
        let handler_state = Arc::clone(&state);
        let server = spawn_server(listener, move |req, peer| {
            let state = Arc::clone(&handler_state);
            async move { Ok::<_, DropConnection>(handle(state, req, peer).await) }
        })?;
        tracing::info!(
            listen = %server.local_addr(),
            jwks = %state.config.jwks_url,
            issuer = %state.config.issuer,
            "demo app is up"
        );
        Ok(RunningDemoApp { server })
    }
}

/// A running demo app.
pub struct RunningDemoApp {
    server: ServerHandle,
}

impl RunningDemoApp {
    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.server.local_addr())
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    pub async fn shutdown(self) {
        self.server.shutdown().await;
    }

    pub async fn wait(self) {
        self.server.wait().await;
    }
}

impl AppState {
    async fn verify(&self, headers: &http::HeaderMap) -> Verdict {
        let Some(auth) = headers.get(header::AUTHORIZATION) else {
            return Verdict::NoToken;
        };
        let Ok(auth) = auth.to_str() else {
            return Verdict::Invalid("the Authorization header is not valid text".to_owned());
        };
        let token = match auth.trim().split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
            _ => {
                return Verdict::Invalid("the Authorization header does not carry a Bearer token".to_owned());
            }
        };
        let head = match decode_header(token) {
            Ok(h) => h,
            Err(err) => return Verdict::Invalid(format!("the token is malformed ({err})")),
        };
        if head.alg != Algorithm::ES256 {
            return Verdict::Invalid(format!("the token is signed with {:?}, not ES256", head.alg));
        }
        let key = match self.key_for(head.kid.as_deref()).await {
            Ok(k) => k,
            Err(reason) => return Verdict::Invalid(reason),
        };
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_issuer(&[self.config.issuer.as_str()]);
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        validation.leeway = self.config.leeway_secs;
        validation.validate_nbf = true;
        match &self.config.audience {
            Some(aud) => validation.set_audience(&[aud.as_str()]),
            None => validation.validate_aud = false,
        }
        match decode::<Claims>(token, &key, &validation) {
            Ok(data) => Verdict::LoggedIn(Box::new(data.claims)),
            Err(err) => Verdict::Invalid(match err.kind() {
                ErrorKind::ExpiredSignature => "the token has expired".to_owned(),
                ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)".to_owned(),
                ErrorKind::InvalidIssuer => {
                    format!("the token was issued by someone else (iss is not {})", self.config.issuer)
                }
                ErrorKind::InvalidAudience => "the token is for another audience".to_owned(),
                ErrorKind::InvalidSignature => "the token's signature does not verify".to_owned(),
                ErrorKind::MissingRequiredClaim(c) => format!("the token lacks the {c} claim"),
                other => format!("the token does not verify ({other:?})"),
            }),
        }
    }

    /// The key for `kid`, fetching the JWKS when unknown (at most once a second).
    async fn key_for(&self, kid: Option<&str>) -> Result<DecodingKey, String> {
        let mut cache = self.keys.lock().await;
        if let Some(key) = find_key(cache.keys.as_ref(), kid) {
            return key;
        }
        let recently = cache.fetched_at.is_some_and(|t| t.elapsed() < Duration::from_secs(1));
        if !recently {
            cache.fetched_at = Some(Instant::now());
            match self.fetch_jwks().await {
                Ok(set) => cache.keys = Some(set),
                Err(err) => return Err(format!("the JWKS could not be fetched ({err:#})")),
            }
        }
        find_key(cache.keys.as_ref(), kid)
            .unwrap_or_else(|| Err(format!("no key with kid {:?} in the proxy's JWKS", kid.unwrap_or(""))))
    }

    async fn fetch_jwks(&self) -> Result<JwkSet> {
        let resp = self.client.get(&self.config.jwks_url, &[("accept", "application/json")]).await?;
        if resp.status != StatusCode::OK {
            return Err(anyhow!("{} answered {}", self.config.jwks_url, resp.status));
        }
        serde_json::from_slice(&resp.body).context("the JWKS is not a valid JWK set")
    }
}

fn find_key(set: Option<&JwkSet>, kid: Option<&str>) -> Option<Result<DecodingKey, String>> {
    let set = set?;
    let jwk = match kid {
        Some(kid) => set.find(kid)?,
        None if set.keys.len() == 1 => set.keys.first()?,
        None => return None,
    };
    Some(DecodingKey::from_jwk(jwk).map_err(|err| format!("the JWKS key is unusable ({err})")))
}

async fn handle(state: Arc<AppState>, req: Request<Incoming>, _peer: SocketAddr) -> Resp {
    let path = req.uri().path().to_owned();
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return response(StatusCode::METHOD_NOT_ALLOWED, "text/plain; charset=utf-8", "method not allowed\n");
    }
    match path.as_str() {
        "/healthz" => response(StatusCode::OK, "text/plain; charset=utf-8", "ok\n"),
        "/logout" => logout(&state, req.headers()).await,
        "/api/me" => {
            let verdict = state.verify(req.headers()).await;
            let (status, body) = match &verdict {
                Verdict::LoggedIn(c) => (
                    StatusCode::OK,
                    json!({"logged_in": true, "sub": c.sub, "email": c.email(), "iss": c.iss,
                           "exp": c.exp, "session_id": c.session.get("id")}),
                ),
                Verdict::NoToken => (StatusCode::UNAUTHORIZED, json!({"logged_in": false, "reason": "no token"})),
                Verdict::Invalid(reason) => (StatusCode::UNAUTHORIZED, json!({"logged_in": false, "reason": reason})),
            };
            response(status, "application/json", body.to_string())
        }
        "/" => {
            let verdict = state.verify(req.headers()).await;
            response(StatusCode::OK, "text/html; charset=utf-8", home_page(&verdict))
        }
        p if p == "/members" || p.starts_with("/members/") => {
            let verdict = state.verify(req.headers()).await;
            let status = match verdict {
                Verdict::LoggedIn(_) => StatusCode::OK,
                _ => StatusCode::UNAUTHORIZED,
            };
            response(status, "text/html; charset=utf-8", members_page(&verdict, p))
        }
        _ => response(
            StatusCode::NOT_FOUND,
            "text/html; charset=utf-8",
            page("Not found", "<h1>Not found</h1><p><a href=\"/\">Home</a></p>", None),
        ),
    }
}

/// `https://host/p?q` → `/p?q`; anything that is not an absolute URL is returned as it is.
fn same_origin_path(url: &str) -> String {
    match Url::parse(url) {
        Ok(parsed) => parsed[url::Position::BeforePath..].to_string(),
        Err(_) => url.to_string(),
    }
}

/// Log out through the proxy: ask `/.ory/self-service/logout/browser` with the user's cookies,
/// then send the browser to the `logout_url` it answers.
async fn logout(state: &AppState, headers: &http::HeaderMap) -> Resp {
    let url = format!("{}/.ory/self-service/logout/browser", state.proxy_url);
    let mut forwarded: Vec<(&str, &str)> = vec![("accept", "application/json")];
    let cookies: Vec<&str> = headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).collect();
    let cookie = cookies.join("; ");
    if !cookie.is_empty() {
        forwarded.push(("cookie", &cookie));
    }
    match state.client.get(&url, &forwarded).await {
        Ok(resp) if resp.status == StatusCode::OK => {
            match resp.json().ok().and_then(|v| v.get("logout_url")?.as_str().map(str::to_owned)) {
                // Keep the browser on the origin it uses (this app may reach the proxy under
                // another name): only the path and query of the logout URL matter.
                Some(logout_url) => redirect(StatusCode::SEE_OTHER, &same_origin_path(&logout_url)),
                None => response(
                    StatusCode::BAD_GATEWAY,
                    "text/html; charset=utf-8",
                    page("Logout failed", "<h1>Logout failed</h1><p>The logout flow had no logout_url.</p>", None),
                ),
            }
        }
        Ok(resp) if resp.status == StatusCode::UNAUTHORIZED => redirect(StatusCode::SEE_OTHER, "/"),
        Ok(resp) => response(
            StatusCode::BAD_GATEWAY,
            "text/html; charset=utf-8",
            page(
                "Logout failed",
                &format!("<h1>Logout failed</h1><p>The proxy answered {}.</p>", resp.status.as_u16()),
                None,
            ),
        ),
        Err(err) => response(
            StatusCode::BAD_GATEWAY,
            "text/html; charset=utf-8",
            page("Logout failed", &format!("<h1>Logout failed</h1><p>{}</p>", esc(&format!("{err:#}"))), None),
        ),
    }
}

fn page(title: &str, body: &str, who: Option<&Claims>) -> String {
    let account = match who {
        Some(c) => format!(
            "Signed in as <strong>{}</strong> · <a href=\"/logout\">Log out</a>",
            esc(c.email().unwrap_or(&c.sub))
        ),
        None => "<a href=\"/.ory/self-service/login/browser\">Log in</a> · \
                 <a href=\"/.ory/self-service/registration/browser\">Sign up</a>"
            .to_owned(),
    };
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} · ory-proxy demo</title>\
         <style>body{{font-family:system-ui,sans-serif;max-width:40rem;margin:2rem auto;padding:0 1rem}}\
         nav{{display:flex;justify-content:space-between;border-bottom:1px solid #ddd;padding-bottom:.5rem}}\
         .why{{color:#a00}}code{{background:#f4f4f4;padding:0 .2rem}}</style></head><body>\
         <nav><span><a href=\"/\">Home</a> · <a href=\"/members\">Members</a></span><span>{account}</span></nav>\
         {body}</body></html>\n",
        title = esc(title),
    )
}

fn reason_html(verdict: &Verdict) -> String {
    match verdict {
        Verdict::Invalid(reason) => {
            format!("<p class=\"why\" id=\"reason\">Your token was refused: {}.</p>", esc(reason))
        }
        _ => String::new(),
    }
}

fn home_page(verdict: &Verdict) -> String {
    match verdict {
        Verdict::LoggedIn(c) => {
            let email = c.email().unwrap_or("(no email)");
            let session_id = c.session.get("id").and_then(Value::as_str).unwrap_or("");
            let aal = c.session.get("authenticator_assurance_level").and_then(Value::as_str).unwrap_or("");
            let body = format!(
                "<h1>Hello, {email}!</h1>\
                 <p>The proxy vouched for you with a signed JWT that this app verified against \
                 <code>/.ory/jwks.json</code>.</p>\
                 <ul><li>Identity: <code>{sub}</code></li><li>Session: <code>{session_id}</code> ({aal})</li>\
                 <li>Issuer: <code>{iss}</code></li><li>Token expires at: <code>{exp}</code> (Unix time)</li></ul>\
                 <p>See the <a href=\"/members\">members area</a>.</p>",
                email = esc(email),
                sub = esc(&c.sub),
                session_id = esc(session_id),
                aal = esc(aal),
                iss = esc(&c.iss),
                exp = c.exp,
            );
            page("Home", &body, Some(c))
        }
        other => {
            let body = format!(
                "<h1>You are not logged in</h1>{}\
                 <p><a href=\"/.ory/self-service/login/browser\">Log in</a> through the proxy to \
                 see your name here.</p>",
                reason_html(other)
            );
            page("Home", &body, None)
        }
    }
}

fn members_page(verdict: &Verdict, path: &str) -> String {
    match verdict {
        Verdict::LoggedIn(c) => {
            let body = format!(
                "<h1>Members area</h1><p>Welcome to <code>{}</code>, {}. Only logged-in users see this.</p>",
                esc(path),
                esc(c.email().unwrap_or(&c.sub)),
            );
            page("Members", &body, Some(c))
        }
        other => {
            let body = format!(
                "<h1>Members only</h1><p>You are not logged in.</p>{}\
                 <p><a href=\"/.ory/self-service/login/browser\">Log in</a></p>",
                reason_html(other)
            );
            page("Members", &body, None)
        }
    }
}
