//! Request handling of the stand-in: fault injection, then routing to the Kratos endpoints.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::request::Parts;
use http::{Method, Request, StatusCode, header};
use hyper::body::Incoming;
use serde_json::{Value, json};
use time::OffsetDateTime;
use uuid::Uuid;

use super::model::{AuthMethod, Flow, FlowKind, error_body, identity_schema, schema_url_id, ui_text};
use super::{Fault, IdentitySeed, Inner, RecordedRequest, pages};
use crate::http::{DropConnection, Resp, append_header, read_body, redirect, response};
use crate::util::{cookie_value, prefers_json, query_param, random_token, rfc3339};

pub(crate) const JSON_CT: &str = "application/json; charset=utf-8";
pub(crate) const HTML_CT: &str = "text/html; charset=utf-8";

/// Kratos's whoami answer without a usable session, byte for byte.
pub const WHOAMI_401: &str = r#"{"error":{"code":401,"status":"Unauthorized","reason":"No valid session credentials found in the request.","message":"The request could not be authorized"}}"#;

/// What `Fault::Garbage` answers: JSON cut off in the middle.
const GARBAGE: &str = r#"{"id":"0cd29640-3b64-419d-93b0-8c9e84c2090d","active":tr"#;

const MSG_BAD_REQUEST: &str = "The request was malformed or contained invalid parameters";
const MSG_NOT_FOUND: &str = "The requested resource could not be found";
const MSG_UNAUTHORIZED: &str = "The request could not be authorized";
const MSG_FORBIDDEN: &str = "The requested action was forbidden";

const BODY_LIMIT: usize = 64 * 1024;

pub(crate) async fn handle(
    state: Arc<Inner>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Result<Resp, DropConnection> {
    let path = req.uri().path().to_owned();
    state.record(RecordedRequest {
        method: req.method().to_string(),
        path_and_query: req.uri().path_and_query().map_or_else(|| path.clone(), |pq| pq.to_string()),
        headers: req
            .headers()
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect(),
    });
    if path == "/sessions/whoami" {
        state.whoami_calls.fetch_add(1, Ordering::SeqCst);
    }
    let latency = *state.latency.lock().unwrap_or_else(|e| e.into_inner());
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    match state.take_fault(&path) {
        Fault::None => {}
        Fault::Delay(ms) => tokio::time::sleep(std::time::Duration::from_millis(ms)).await,
        Fault::Status(code) => {
            tracing::debug!(%path, code, "injecting a status fault");
            return Ok(json_resp(
                code,
                &error_body(
                    code,
                    None,
                    Some("This error was injected by the Ory stand-in (fault injection)."),
                    "An injected fault occurred",
                    None,
                ),
            ));
        }
        Fault::Garbage => {
            tracing::debug!(%path, "injecting a malformed body");
            return Ok(response(StatusCode::OK, JSON_CT, GARBAGE));
        }
        Fault::Drop => {
            tracing::debug!(%path, "dropping the connection");
            return Err(DropConnection);
        }
    }
    let (parts, body) = req.into_parts();
    let now = OffsetDateTime::now_utc();
    state.store().prune(now);
    let ctx = Ctx { state: &state, parts: &parts, now, peer };
    let resp = ctx.route(body).await;
    tracing::debug!(method = %parts.method, %path, status = resp.status().as_u16(), "answered");
    Ok(resp)
}

pub(crate) fn json_resp(code: u16, body: &Value) -> Resp {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response(status, JSON_CT, body.to_string())
}

fn see_other(location: &str) -> Resp {
    redirect(StatusCode::SEE_OTHER, location)
}

/// One request being answered.
struct Ctx<'a> {
    state: &'a Inner,
    parts: &'a Parts,
    now: OffsetDateTime,
    peer: SocketAddr,
}

enum Credential {
    Token(String),
    Cookie(String),
}

impl Ctx<'_> {
    fn public(&self) -> &str {
        &self.state.settings.public_url
    }

    fn wants_json(&self) -> bool {
        prefers_json(&self.parts.headers)
    }

    fn header(&self, name: impl header::AsHeaderName) -> Option<&str> {
        self.parts.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn query(&self, name: &str) -> Option<String> {
        query_param(&self.parts.uri, name)
    }

    async fn route(&self, body: Incoming) -> Resp {
        let path = self.parts.uri.path();
        let method = &self.parts.method;
        let get = method == Method::GET;
        match path {
            "/sessions/whoami" => self.whoami(),
            "/self-service/login/browser" if get => self.create_flow(FlowKind::Login),
            "/self-service/registration/browser" if get => self.create_flow(FlowKind::Registration),
            "/self-service/login/flows" if get => self.get_flow(FlowKind::Login),
            "/self-service/registration/flows" if get => self.get_flow(FlowKind::Registration),
            "/self-service/login" if method == Method::POST => self.submit(FlowKind::Login, body).await,
            "/self-service/registration" if method == Method::POST => self.submit(FlowKind::Registration, body).await,
            "/self-service/logout/browser" if get => self.logout_browser(),
            "/self-service/logout" if get => self.logout(),
            "/self-service/logout/api" if method == Method::DELETE => self.logout_api(body).await,
            "/self-service/errors" if get => self.get_error(),
            "/ui/login" if get => self.ui_flow(FlowKind::Login),
            "/ui/registration" if get => self.ui_flow(FlowKind::Registration),
            "/ui/welcome" if get => self.ui_welcome(),
            "/ui/error" if get => self.ui_error(),
            "/ui/settings" | "/ui/recovery" | "/ui/verification" | "/ui/sessions" if get => {
                let name = path.trim_start_matches("/ui/");
                response(StatusCode::OK, HTML_CT, pages::not_provided(&self.state.settings, name))
            }
            "/" if get => see_other(&format!("{}/ui/welcome", self.public())),
            "/backoffice/token/slug" if get => self.backoffice_slug(),
            "/health/alive" | "/health/ready" if get => json_resp(200, &json!({"status": "ok"})),
            p if get && p.starts_with("/schemas/") => self.schema(&p["/schemas/".len()..]),
            p if method == Method::PATCH && p.starts_with("/admin/sessions/") && p.ends_with("/extend") => {
                let id = &p["/admin/sessions/".len()..p.len() - "/extend".len()];
                self.admin_extend(id)
            }
            "/self-service/login/browser"
            | "/self-service/registration/browser"
            | "/self-service/login/flows"
            | "/self-service/registration/flows"
            | "/self-service/login"
            | "/self-service/registration"
            | "/self-service/logout/browser"
            | "/self-service/logout"
            | "/self-service/logout/api"
            | "/self-service/errors"
            | "/backoffice/token/slug" => {
                json_resp(405, &error_body(405, None, None, "The requested method is not allowed", None))
            }
            _ => json_resp(404, &error_body(404, None, None, MSG_NOT_FOUND, None)),
        }
    }

    /// Kratos's order: `X-Session-Token`, then the session cookie, then `Authorization: Bearer`.
    /// The first one present is used, valid or not.
    fn credential(&self) -> Option<Credential> {
        if let Some(token) = self.header("x-session-token")
            && !token.trim().is_empty()
        {
            return Some(Credential::Token(token.trim().to_owned()));
        }
        if let Some(value) = cookie_value(&self.parts.headers, &self.state.settings.cookie_name)
            && !value.is_empty()
        {
            return Some(Credential::Cookie(value));
        }
        if let Some(auth) = self.header(header::AUTHORIZATION)
            && let Some((scheme, token)) = auth.trim().split_once(' ')
            && scheme.eq_ignore_ascii_case("bearer")
            && !token.trim().is_empty()
        {
            return Some(Credential::Token(token.trim().to_owned()));
        }
        None
    }

    /// The token of the request's valid session, if any.
    fn session_token(&self) -> Option<String> {
        let token = match self.credential()? {
            Credential::Token(t) | Credential::Cookie(t) => t,
        };
        let store = self.state.store();
        let session = store.sessions.get(&token)?;
        session.is_valid(self.now).then_some(token)
    }

    fn whoami(&self) -> Resp {
        let unauthorized = || response(StatusCode::UNAUTHORIZED, JSON_CT, WHOAMI_401);
        let Some(credential) = self.credential() else {
            return unauthorized();
        };
        let (token, via_cookie) = match credential {
            Credential::Token(t) => (t, false),
            Credential::Cookie(t) => (t, true),
        };
        let mut store = self.state.store();
        let Some(session) = store.sessions.get(&token).cloned() else {
            return unauthorized();
        };
        if !session.is_valid(self.now) {
            return unauthorized();
        }
        let Some(identity) = store.identity(session.identity_id).cloned() else {
            return unauthorized();
        };
        if identity.needs_aal2 && session.aal != "aal2" {
            let redirect_to = format!("{}/self-service/login/browser?aal=aal2", self.public());
            let mut body = error_body(
                403,
                Some("session_aal2_required"),
                Some(
                    "An active session was found but it does not fulfill the requested \
                     Authenticator Assurance Level. Please verify yourself with the second \
                     factor to continue.",
                ),
                "Session does not fulfill the requested Authenticator Assurance Level",
                Some(json!({"redirect_browser_to": redirect_to})),
            );
            if let Some(obj) = body.as_object_mut() {
                obj.insert("redirect_browser_to".to_owned(), json!(redirect_to));
            }
            return json_resp(403, &body);
        }
        let body = session.to_json(&identity, self.public());
        let mut resp = json_resp(200, &body);
        let headers = resp.headers_mut();
        if let Ok(v) = identity.id.to_string().parse() {
            headers.insert("x-kratos-authenticated-identity-id", v);
        }
        headers.insert(
            header::CACHE_CONTROL,
            header::HeaderValue::from_static("private, no-cache, no-store, must-revalidate"),
        );
        headers.insert(header::VARY, header::HeaderValue::from_static("Cookie"));
        if via_cookie && session.cookie_expires_at != Some(session.expires_at) {
            let cookie = self.state.session_cookie(&token, session.expires_at, self.now);
            append_header(&mut resp, header::SET_COOKIE, &cookie);
            if let Some(s) = store.sessions.get_mut(&token) {
                s.cookie_expires_at = Some(s.expires_at);
            }
            tracing::info!(session = %session.id, "session was extended: refreshed the cookie");
        }
        resp
    }

    /// An error for a browser endpoint: JSON to API clients; browsers are sent to the error UI.
    fn fail(&self, code: u16, id: Option<&str>, reason: &str, message: &str) -> Resp {
        let body = error_body(code, id, Some(reason), message, None);
        if self.wants_json() {
            return json_resp(code, &body);
        }
        let error_id = Uuid::new_v4();
        let error = body.get("error").cloned().unwrap_or(Value::Null);
        self.state.store().errors.insert(error_id, (self.now, error));
        see_other(&format!("{}/ui/error?id={error_id}", self.public()))
    }

    /// The checked `return_to` of the request: `Ok(None)` when absent, `Err(return_to)` when it
    /// is not allowed.
    fn checked_return_to(&self) -> Result<Option<String>, String> {
        let Some(return_to) = self.query("return_to").filter(|s| !s.is_empty()) else {
            return Ok(None);
        };
        match self.state.settings.policy.check(&return_to, &self.state.settings.public) {
            Some(url) => Ok(Some(url.to_string())),
            None => {
                tracing::info!(%return_to, "refused a return_to that is not allowed");
                Err(return_to)
            }
        }
    }

    fn return_to_forbidden_body(return_to: &str) -> (String, &'static str) {
        (format!("Requested return_to URL \"{return_to}\" is not allowed."), "self_service_flow_return_to_forbidden")
    }

    /// The answer to a refused `return_to` (error page for browsers, JSON otherwise).
    fn return_to_forbidden(&self, return_to: &str) -> Resp {
        let (reason, id) = Self::return_to_forbidden_body(return_to);
        self.fail(400, Some(id), &reason, MSG_BAD_REQUEST)
    }

    fn default_return(&self) -> String {
        format!("{}/ui/welcome", self.public())
    }

    fn create_flow(&self, kind: FlowKind) -> Resp {
        let return_to = match self.checked_return_to() {
            Ok(rt) => rt,
            Err(rt) => return self.return_to_forbidden(&rt),
        };
        let refresh = self.query("refresh").as_deref() == Some("true");
        let requested_aal = match (kind, self.query("aal").as_deref()) {
            (FlowKind::Registration, _) | (_, None | Some("") | Some("aal1")) => "aal1",
            (FlowKind::Login, Some("aal2")) => "aal2",
            (FlowKind::Login, Some(other)) => {
                return self.fail(
                    400,
                    None,
                    &format!("Unable to parse AuthenticationMethod Assurance Level (AAL): {other}"),
                    MSG_BAD_REQUEST,
                );
            }
        };
        let session = self.session_token().and_then(|t| {
            let store = self.state.store();
            store.sessions.get(&t).cloned()
        });
        let already = match (kind, requested_aal, &session) {
            (FlowKind::Login, "aal2", None) => {
                return self.fail(
                    401,
                    Some("session_aal1_required"),
                    "You can not requested a higher AAL (AAL2/AAL3) without an active session.",
                    MSG_UNAUTHORIZED,
                );
            }
            (FlowKind::Login, "aal2", Some(s)) => s.aal == "aal2",
            (FlowKind::Login, _, Some(_)) => !refresh,
            (FlowKind::Registration, _, Some(_)) => true,
            (_, _, None) => false,
        };
        if already {
            if self.wants_json() {
                return json_resp(
                    400,
                    &error_body(
                        400,
                        Some("session_already_available"),
                        Some(
                            "A valid session was detected and thus login is not possible. \
                             Did you forget to set `?refresh=true`?",
                        ),
                        MSG_BAD_REQUEST,
                        None,
                    ),
                );
            }
            return see_other(&return_to.unwrap_or_else(|| self.default_return()));
        }
        let existing_csrf = cookie_value(&self.parts.headers, &self.state.settings.csrf_cookie_name)
            .filter(|v| !v.is_empty() && v.len() <= 128);
        let csrf_token = existing_csrf.clone().unwrap_or_else(|| random_token(43));
        let lifespan = self.state.settings.flow_lifespan;
        let flow = Flow {
            id: Uuid::new_v4(),
            kind,
            request_url: format!("{}{}", self.public(), self.parts.uri.path_and_query().map_or("/", |pq| pq.as_str())),
            return_to,
            issued_at: self.now,
            expires_at: self.now + lifespan,
            csrf_token: csrf_token.clone(),
            requested_aal,
            refresh,
            messages: Vec::new(),
            identifier: String::new(),
            active: None,
        };
        let flow_json = flow.to_json(self.public());
        let flow_id = flow.id;
        self.state.store().flows.insert(flow.id, flow);
        let mut resp = if self.wants_json() {
            json_resp(200, &flow_json)
        } else {
            see_other(&format!("{}/ui/{}?flow={flow_id}", self.public(), kind.name()))
        };
        if existing_csrf.is_none() {
            append_header(&mut resp, header::SET_COOKIE, &self.state.csrf_cookie(&csrf_token, self.now));
        }
        resp
    }

    /// Look a flow up by the `flow`/`id` query parameter.
    fn find_flow(
        &self,
        kind: FlowKind,
        param: &str,
    ) -> Result<Flow, (u16, Option<&'static str>, String, &'static str)> {
        let Some(raw) = self.query(param) else {
            return Err((400, None, format!("The {param} query parameter is missing or malformed."), MSG_BAD_REQUEST));
        };
        let Ok(id) = Uuid::parse_str(raw.trim()) else {
            return Err((400, None, format!("The {param} query parameter is missing or malformed."), MSG_BAD_REQUEST));
        };
        let store = self.state.store();
        match store.flows.get(&id) {
            Some(flow) if flow.kind == kind => Ok(flow.clone()),
            _ => Err((404, None, format!("Unable to locate the {} flow.", kind.name()), MSG_NOT_FOUND)),
        }
    }

    fn csrf_ok(&self, flow: &Flow, submitted: Option<&str>) -> bool {
        let cookie = cookie_value(&self.parts.headers, &self.state.settings.csrf_cookie_name);
        match (cookie, submitted) {
            (Some(cookie), Some(submitted)) => cookie == flow.csrf_token && submitted == cookie,
            _ => false,
        }
    }

    fn csrf_violation(&self) -> Resp {
        self.fail(
            403,
            Some("security_csrf_violation"),
            "Please retry the flow and optionally clear your cookies. The request was rejected \
             to protect you from Cross-Site-Request-Forgery (CSRF) which could cause account \
             takeover, leaking personal information, and other serious security issues.",
            "the request was rejected to protect you from Cross-Site-Request-Forgery",
        )
    }

    fn get_flow(&self, kind: FlowKind) -> Resp {
        let flow = match self.find_flow(kind, "id") {
            Ok(flow) => flow,
            Err((code, id, reason, message)) => {
                return json_resp(code, &error_body(code, id, Some(&reason), message, None));
            }
        };
        let cookie = cookie_value(&self.parts.headers, &self.state.settings.csrf_cookie_name);
        if cookie.as_deref() != Some(flow.csrf_token.as_str()) {
            return json_resp(
                403,
                &error_body(
                    403,
                    Some("security_csrf_violation"),
                    Some("The anti-CSRF cookie of this flow is missing or does not match."),
                    "the request was rejected to protect you from Cross-Site-Request-Forgery",
                    None,
                ),
            );
        }
        if flow.is_expired(self.now) {
            return self.flow_expired(&flow, true);
        }
        json_resp(200, &flow.to_json(self.public()))
    }

    fn flow_expired(&self, flow: &Flow, json: bool) -> Resp {
        if json {
            return json_resp(
                410,
                &error_body(
                    410,
                    Some("self_service_flow_expired"),
                    Some("The self-service flow expired, please start a new one."),
                    "The requested resource is no longer available",
                    None,
                ),
            );
        }
        let mut url = format!("{}/self-service/{}/browser", self.public(), flow.kind.name());
        if let Some(rt) = &flow.return_to {
            url.push_str("?return_to=");
            url.push_str(&encode(rt));
        }
        see_other(&url)
    }

    async fn submit(&self, kind: FlowKind, body: Incoming) -> Resp {
        let flow = match self.find_flow(kind, "flow") {
            Ok(flow) => flow,
            Err((code, id, reason, message)) => return self.fail(code, id, &reason, message),
        };
        if flow.is_expired(self.now) {
            return self.flow_expired(&flow, self.wants_json());
        }
        let fields = match read_body(body, BODY_LIMIT).await {
            Ok(bytes) => match self.parse_fields(&bytes) {
                Some(fields) => fields,
                None => {
                    return self.fail(
                        400,
                        None,
                        "Unable to decode the request body as a form or a JSON object.",
                        MSG_BAD_REQUEST,
                    );
                }
            },
            Err(err) => return self.fail(400, None, &err.to_string(), MSG_BAD_REQUEST),
        };
        if !self.csrf_ok(&flow, fields.get("csrf_token").map(String::as_str)) {
            return self.csrf_violation();
        }
        let method = fields.get("method").map(String::as_str).unwrap_or("");
        match (kind, flow.requested_aal, method) {
            (FlowKind::Login, "aal1", "password") => self.login_password(flow, &fields),
            (FlowKind::Login, "aal2", "totp") => self.login_second_factor(flow, &fields),
            (FlowKind::Registration, _, "password") => self.register(flow, &fields),
            _ => self.flow_message(
                flow,
                ui_text(
                    4010002,
                    "Could not find a strategy to log you in with. Did you fill out the form correctly?",
                    "error",
                ),
                None,
            ),
        }
    }

    fn parse_fields(&self, bytes: &Bytes) -> Option<HashMap<String, String>> {
        let is_json =
            self.header(header::CONTENT_TYPE).is_some_and(|ct| ct.to_ascii_lowercase().starts_with("application/json"));
        let mut out = HashMap::new();
        if is_json {
            let value: Value = serde_json::from_slice(bytes).ok()?;
            fn flatten(prefix: &str, v: &Value, out: &mut HashMap<String, String>) {
                match v {
                    Value::Object(map) => {
                        for (k, v) in map {
                            let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                            flatten(&key, v, out);
                        }
                    }
                    Value::String(s) => {
                        out.insert(prefix.to_owned(), s.clone());
                    }
                    Value::Null => {}
                    other => {
                        out.insert(prefix.to_owned(), other.to_string());
                    }
                }
            }
            if !value.is_object() {
                return None;
            }
            flatten("", &value, &mut out);
        } else {
            let text = std::str::from_utf8(bytes).ok()?;
            for (k, v) in url::form_urlencoded::parse(text.as_bytes()) {
                out.entry(k.into_owned()).or_insert_with(|| v.into_owned());
            }
        }
        Some(out)
    }

    /// Put a message on the flow and send the user back to its form.
    fn flow_message(&self, mut flow: Flow, message: Value, identifier: Option<&str>) -> Resp {
        flow.messages = vec![message];
        flow.active = Some(if flow.requested_aal == "aal2" { "totp" } else { "password" });
        if let Some(identifier) = identifier {
            flow.identifier = identifier.chars().take(256).collect();
        }
        let json = flow.to_json(self.public());
        let url = format!("{}/ui/{}?flow={}", self.public(), flow.kind.name(), flow.id);
        self.state.store().flows.insert(flow.id, flow);
        if self.wants_json() { json_resp(400, &json) } else { see_other(&url) }
    }

    fn user_agent(&self) -> String {
        self.header(header::USER_AGENT).unwrap_or("").to_owned()
    }

    fn login_password(&self, flow: Flow, fields: &HashMap<String, String>) -> Resp {
        let identifier = fields.get("identifier").map(String::as_str).unwrap_or("");
        let password = fields.get("password").map(String::as_str).unwrap_or("");
        let mut store = self.state.store();
        let identity =
            store.identity_by_email(identifier).filter(|i| !password.is_empty() && i.password == password).cloned();
        let Some(identity) = identity else {
            drop(store);
            tracing::info!(%identifier, "login refused: invalid credentials");
            return self.flow_message(
                flow,
                ui_text(
                    4000006,
                    "The provided credentials are invalid, check for spelling mistakes in your \
                     password or username, email address, or phone number.",
                    "error",
                ),
                Some(identifier),
            );
        };
        let session = store.new_session(
            identity.id,
            self.state.settings.session_lifespan,
            self.now,
            &self.peer.ip().to_string(),
            &self.user_agent(),
        );
        store.flows.remove(&flow.id);
        let session_json = session.to_json(&identity, self.public());
        drop(store);
        tracing::info!(email = %identity.email, session = %session.id, "logged in");
        let target = if identity.needs_aal2 {
            let mut url = format!("{}/self-service/login/browser?aal=aal2", self.public());
            if let Some(rt) = &flow.return_to {
                url.push_str("&return_to=");
                url.push_str(&encode(rt));
            }
            url
        } else {
            flow.return_to.clone().unwrap_or_else(|| self.default_return())
        };
        let mut resp = if self.wants_json() {
            json_resp(200, &json!({"session": session_json, "continue_with": []}))
        } else {
            see_other(&target)
        };
        let cookie = self.state.session_cookie(&session.token, session.expires_at, self.now);
        append_header(&mut resp, header::SET_COOKIE, &cookie);
        resp
    }

    fn login_second_factor(&self, flow: Flow, fields: &HashMap<String, String>) -> Resp {
        let Some(token) = self.session_token() else {
            return self.fail(
                401,
                Some("session_aal1_required"),
                "You can not requested a higher AAL (AAL2/AAL3) without an active session.",
                MSG_UNAUTHORIZED,
            );
        };
        let code = fields.get("totp_code").map(String::as_str).unwrap_or("");
        let mut store = self.state.store();
        let Some(session) = store.sessions.get(&token).cloned() else {
            drop(store);
            return self.fail(401, None, "The session vanished.", MSG_UNAUTHORIZED);
        };
        let Some(identity) = store.identity(session.identity_id).cloned() else {
            drop(store);
            return self.fail(401, None, "The identity vanished.", MSG_UNAUTHORIZED);
        };
        if code.trim() != identity.second_factor_code {
            drop(store);
            return self.flow_message(
                flow,
                ui_text(4000008, "The provided authentication code is invalid, please try again.", "error"),
                None,
            );
        }
        let Some(s) = store.sessions.get_mut(&token) else {
            drop(store);
            return self.fail(401, None, "The session vanished.", MSG_UNAUTHORIZED);
        };
        s.aal = "aal2";
        s.authenticated_at = self.now;
        s.methods.push(AuthMethod { method: "totp", aal: "aal2", completed_at: self.now });
        let session_json = s.to_json(&identity, self.public());
        store.flows.remove(&flow.id);
        drop(store);
        tracing::info!(email = %identity.email, "second factor completed");
        if self.wants_json() {
            json_resp(200, &json!({"session": session_json, "continue_with": []}))
        } else {
            see_other(&flow.return_to.clone().unwrap_or_else(|| self.default_return()))
        }
    }

    fn register(&self, flow: Flow, fields: &HashMap<String, String>) -> Resp {
        let email = fields.get("traits.email").map(|s| s.trim().to_owned()).unwrap_or_default();
        let password = fields.get("password").cloned().unwrap_or_default();
        if email.len() < 3 || !email.contains('@') || email.len() > 320 {
            return self.flow_message(
                flow,
                ui_text(4000001, &format!("{email:?} is not valid \"email\""), "error"),
                Some(&email),
            );
        }
        if password.chars().count() < 8 {
            return self.flow_message(
                flow,
                ui_text(
                    4000032,
                    &format!("The password must be at least 8 characters long, but got {}.", password.chars().count()),
                    "error",
                ),
                Some(&email),
            );
        }
        let mut store = self.state.store();
        let id = match store.add_identity(IdentitySeed::new(&email, &password), self.now) {
            Ok(id) => id,
            Err(_) => {
                drop(store);
                return self.flow_message(
                    flow,
                    ui_text(
                        4000007,
                        "An account with the same identifier (email, phone, username, ...) \
                         exists already.",
                        "error",
                    ),
                    Some(&email),
                );
            }
        };
        let Some(identity) = store.identity(id).cloned() else {
            drop(store);
            return self.fail(500, None, "The new identity vanished.", "Internal error");
        };
        let session = store.new_session(
            id,
            self.state.settings.session_lifespan,
            self.now,
            &self.peer.ip().to_string(),
            &self.user_agent(),
        );
        store.flows.remove(&flow.id);
        drop(store);
        tracing::info!(%email, "registered a new identity");
        let mut resp = if self.wants_json() {
            json_resp(
                200,
                &json!({
                    "identity": identity.to_json(self.public()),
                    "session": session.to_json(&identity, self.public()),
                    "continue_with": [],
                }),
            )
        } else {
            see_other(&flow.return_to.clone().unwrap_or_else(|| self.default_return()))
        };
        let cookie = self.state.session_cookie(&session.token, session.expires_at, self.now);
        append_header(&mut resp, header::SET_COOKIE, &cookie);
        resp
    }

    fn logout_browser(&self) -> Resp {
        let Some(token) = self.session_token() else {
            return response(StatusCode::UNAUTHORIZED, JSON_CT, WHOAMI_401);
        };
        let return_to = match self.checked_return_to() {
            Ok(rt) => rt,
            Err(rt) => {
                let (reason, id) = Self::return_to_forbidden_body(&rt);
                return json_resp(400, &error_body(400, Some(id), Some(&reason), MSG_BAD_REQUEST, None));
            }
        };
        let logout_token = {
            let store = self.state.store();
            match store.sessions.get(&token) {
                Some(s) => s.logout_token.clone(),
                None => return response(StatusCode::UNAUTHORIZED, JSON_CT, WHOAMI_401),
            }
        };
        let mut logout_url = format!("{}/self-service/logout?token={logout_token}", self.public());
        if let Some(rt) = return_to {
            logout_url.push_str("&return_to=");
            logout_url.push_str(&encode(&rt));
        }
        json_resp(200, &json!({"logout_url": logout_url, "logout_token": logout_token}))
    }

    fn logout(&self) -> Resp {
        let Some(token) = self.query("token").filter(|t| !t.is_empty()) else {
            return self.fail(400, None, "Please include a token in the URL query.", MSG_BAD_REQUEST);
        };
        let return_to = match self.checked_return_to() {
            Ok(rt) => rt,
            Err(rt) => return self.return_to_forbidden(&rt),
        };
        if let Some(session_token) = self.session_token() {
            let mut store = self.state.store();
            if let Some(session) = store.sessions.get_mut(&session_token) {
                if session.logout_token != token {
                    drop(store);
                    return self.fail(
                        403,
                        None,
                        "Unable to log out because the logout token in the URL query does not \
                         match the session cookie.",
                        MSG_FORBIDDEN,
                    );
                }
                session.active = false;
                tracing::info!(session = %session.id, "logged out");
            }
        }
        let mut resp = if self.wants_json() {
            let mut r = response(StatusCode::NO_CONTENT, JSON_CT, Bytes::new());
            r.headers_mut().remove(header::CONTENT_TYPE);
            r
        } else {
            see_other(&return_to.unwrap_or_else(|| self.default_return()))
        };
        append_header(&mut resp, header::SET_COOKIE, &self.state.expired_session_cookie());
        resp
    }

    async fn logout_api(&self, body: Incoming) -> Resp {
        let token = match read_body(body, BODY_LIMIT).await {
            Ok(bytes) => serde_json::from_slice::<Value>(&bytes)
                .ok()
                .and_then(|v| v.get("session_token")?.as_str().map(str::to_owned)),
            Err(_) => None,
        };
        let Some(token) = token else {
            return json_resp(
                400,
                &error_body(400, None, Some("The JSON body must contain a session_token."), MSG_BAD_REQUEST, None),
            );
        };
        let mut store = self.state.store();
        match store.sessions.get_mut(&token) {
            Some(s) if s.is_valid(self.now) => {
                s.active = false;
                response(StatusCode::NO_CONTENT, "application/json", Bytes::new())
            }
            _ => json_resp(
                403,
                &error_body(
                    403,
                    None,
                    Some("The provided Ory Session Token could not be found, is invalid, or otherwise malformed."),
                    MSG_FORBIDDEN,
                    None,
                ),
            ),
        }
    }

    fn get_error(&self) -> Resp {
        let id = self.query("id").and_then(|id| Uuid::parse_str(id.trim()).ok());
        let store = self.state.store();
        match id.and_then(|id| store.errors.get(&id).map(|e| (id, e.clone()))) {
            Some((id, (created, error))) => json_resp(
                200,
                &json!({
                    "id": id,
                    "error": error,
                    "created_at": rfc3339(created),
                    "updated_at": rfc3339(created),
                }),
            ),
            None => json_resp(
                404,
                &error_body(404, None, Some("The requested error could not be found."), MSG_NOT_FOUND, None),
            ),
        }
    }

    fn ui_flow(&self, kind: FlowKind) -> Resp {
        let restart = format!("{}/self-service/{}/browser", self.public(), kind.name());
        let flow = match self.find_flow(kind, "flow") {
            Ok(flow) if !flow.is_expired(self.now) => flow,
            Ok(flow) => return self.flow_expired(&flow, false),
            Err(_) => return see_other(&restart),
        };
        let html = match kind {
            FlowKind::Login => pages::login(&self.state.settings, &flow),
            FlowKind::Registration => pages::registration(&self.state.settings, &flow),
        };
        response(StatusCode::OK, HTML_CT, html)
    }

    fn ui_welcome(&self) -> Resp {
        let who = self.session_token().and_then(|token| {
            let store = self.state.store();
            let session = store.sessions.get(&token)?;
            let identity = store.identity(session.identity_id)?;
            Some((identity.email.clone(), session.logout_token.clone()))
        });
        response(StatusCode::OK, HTML_CT, pages::welcome(&self.state.settings, who))
    }

    fn ui_error(&self) -> Resp {
        let id = self.query("id").and_then(|id| Uuid::parse_str(id.trim()).ok());
        let error = id.and_then(|id| self.state.store().errors.get(&id).map(|(_, e)| e.clone()));
        let status = if error.is_some() { StatusCode::OK } else { StatusCode::NOT_FOUND };
        response(status, HTML_CT, pages::error(&self.state.settings, error.as_ref()))
    }

    fn backoffice_slug(&self) -> Resp {
        let settings = &self.state.settings;
        let bearer = self
            .header(header::AUTHORIZATION)
            .and_then(|a| a.trim().split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim().to_owned());
        match (&settings.access_token, &settings.slug, bearer) {
            (Some(expected), Some(slug), Some(given)) if *expected == given => json_resp(200, &json!({"slug": slug})),
            _ => json_resp(
                401,
                &error_body(
                    401,
                    None,
                    Some("The access token is missing or not known to the stand-in."),
                    MSG_UNAUTHORIZED,
                    None,
                ),
            ),
        }
    }

    fn schema(&self, id: &str) -> Resp {
        if id == schema_url_id() || id == super::model::SCHEMA_ID {
            json_resp(200, &identity_schema())
        } else {
            json_resp(
                404,
                &error_body(404, None, Some("The requested identity schema does not exist."), MSG_NOT_FOUND, None),
            )
        }
    }

    fn admin_extend(&self, id: &str) -> Resp {
        let not_found =
            || json_resp(404, &error_body(404, None, Some("Unable to locate the resource"), MSG_NOT_FOUND, None));
        let Ok(id) = Uuid::parse_str(id) else {
            return not_found();
        };
        let mut store = self.state.store();
        let lifespan = self.state.settings.session_lifespan;
        let Some(session) = store.sessions.values_mut().find(|s| s.id == id && s.is_valid(self.now)) else {
            return not_found();
        };
        session.expires_at = self.now + lifespan + time::Duration::seconds(1);
        let session = session.clone();
        match store.identity(session.identity_id) {
            Some(identity) => json_resp(200, &session.to_json(identity, self.public())),
            None => not_found(),
        }
    }
}

/// Percent-encode a query parameter value.
pub(crate) fn encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}
