//! The stand-in's in-memory data and the JSON shapes Kratos gives them.

use serde::Deserialize;
use serde_json::{Value, json};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::util::rfc3339;

/// The schema id every identity here uses, as self-hosted Kratos names its default schema.
pub const SCHEMA_ID: &str = "default";

/// An identity to create: email, password, whether a second factor is required.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IdentitySeed {
    pub email: String,
    pub password: String,
    /// When true, whoami answers 403 `session_aal2_required` until the session completed the
    /// second factor (the login page's one-time code, see `second_factor_code`).
    #[serde(default)]
    pub needs_aal2: bool,
    /// The one-time code the stand-in accepts as second factor (default `123456`).
    #[serde(default)]
    pub second_factor_code: Option<String>,
    /// A fixed identity id (a random UUID otherwise).
    #[serde(default)]
    pub id: Option<Uuid>,
    /// Extra traits merged next to `email`.
    #[serde(default)]
    pub traits: Option<serde_json::Map<String, Value>>,
    /// Whether the email address counts as verified.
    #[serde(default)]
    pub verified: bool,
}

impl IdentitySeed {
    pub fn new(email: impl Into<String>, password: impl Into<String>) -> Self {
        IdentitySeed {
            email: email.into(),
            password: password.into(),
            needs_aal2: false,
            second_factor_code: None,
            id: None,
            traits: None,
            verified: false,
        }
    }

    /// Require a second factor for this identity.
    pub fn needs_aal2(mut self, yes: bool) -> Self {
        self.needs_aal2 = yes;
        self
    }

    /// Fix the identity id.
    pub fn with_id(mut self, id: Uuid) -> Self {
        self.id = Some(id);
        self
    }
}

/// The seed file: either a JSON array of identities or `{"identities": [...]}`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum SeedFile {
    List(Vec<IdentitySeed>),
    Object { identities: Vec<IdentitySeed> },
}

impl SeedFile {
    pub fn into_vec(self) -> Vec<IdentitySeed> {
        match self {
            SeedFile::List(v) | SeedFile::Object { identities: v } => v,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Identity {
    pub id: Uuid,
    pub email: String,
    pub password: String,
    pub needs_aal2: bool,
    pub second_factor_code: String,
    pub traits: serde_json::Map<String, Value>,
    pub verified: bool,
    pub created_at: OffsetDateTime,
    pub verifiable_address_id: Uuid,
    pub recovery_address_id: Uuid,
}

impl Identity {
    pub fn from_seed(seed: IdentitySeed, now: OffsetDateTime) -> Self {
        let mut traits = seed.traits.unwrap_or_default();
        traits.insert("email".to_owned(), Value::String(seed.email.clone()));
        Identity {
            id: seed.id.unwrap_or_else(Uuid::new_v4),
            email: seed.email,
            password: seed.password,
            needs_aal2: seed.needs_aal2,
            second_factor_code: seed.second_factor_code.unwrap_or_else(|| "123456".to_owned()),
            traits,
            verified: seed.verified,
            created_at: now,
            verifiable_address_id: Uuid::new_v4(),
            recovery_address_id: Uuid::new_v4(),
        }
    }

    /// The Identity object (schema `identity`).
    pub fn to_json(&self, public_url: &str) -> Value {
        let created = rfc3339(self.created_at);
        let mut verifiable = json!({
            "id": self.verifiable_address_id,
            "value": self.email,
            "verified": self.verified,
            "via": "email",
            "status": if self.verified { "completed" } else { "sent" },
            "created_at": created,
            "updated_at": created,
        });
        if self.verified
            && let Some(obj) = verifiable.as_object_mut()
        {
            obj.insert("verified_at".to_owned(), Value::String(created.clone()));
        }
        json!({
            "id": self.id,
            "schema_id": SCHEMA_ID,
            "schema_url": format!("{public_url}/schemas/{}", schema_url_id()),
            "state": "active",
            "state_changed_at": created,
            "traits": Value::Object(self.traits.clone()),
            "verifiable_addresses": [verifiable],
            "recovery_addresses": [{
                "id": self.recovery_address_id,
                "value": self.email,
                "via": "email",
                "created_at": created,
                "updated_at": created,
            }],
            "metadata_public": null,
            "created_at": created,
            "updated_at": created,
        })
    }
}

/// The id in `schema_url`: base64url of the schema id, as Kratos encodes it.
pub fn schema_url_id() -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(SCHEMA_ID)
}

/// The identity JSON schema served at `/schemas/{id}`.
pub fn identity_schema() -> Value {
    json!({
        "$id": "https://schemas.ory.sh/presets/kratos/quickstart/email-password/identity.schema.json",
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "Person",
        "type": "object",
        "properties": {
            "traits": {
                "type": "object",
                "properties": {
                    "email": {
                        "type": "string",
                        "format": "email",
                        "title": "E-Mail",
                        "minLength": 3,
                        "ory.sh/kratos": {
                            "credentials": {"password": {"identifier": true}},
                            "verification": {"via": "email"},
                            "recovery": {"via": "email"}
                        }
                    }
                },
                "required": ["email"],
                "additionalProperties": true
            }
        }
    })
}

#[derive(Debug, Clone)]
pub struct AuthMethod {
    pub method: &'static str,
    pub aal: &'static str,
    pub completed_at: OffsetDateTime,
}

#[derive(Debug, Clone)]
pub struct Device {
    pub id: Uuid,
    pub ip_address: String,
    pub user_agent: String,
}

#[derive(Debug, Clone)]
pub struct Session {
    pub id: Uuid,
    pub token: String,
    pub logout_token: String,
    pub identity_id: Uuid,
    pub active: bool,
    pub issued_at: OffsetDateTime,
    pub authenticated_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
    pub aal: &'static str,
    pub methods: Vec<AuthMethod>,
    pub devices: Vec<Device>,
    /// The expiry carried by the last session cookie handed out, to know when whoami must
    /// refresh the cookie (the session was extended since).
    pub cookie_expires_at: Option<OffsetDateTime>,
}

impl Session {
    pub fn is_valid(&self, now: OffsetDateTime) -> bool {
        self.active && self.expires_at > now
    }

    /// The Session object (schema `session`).
    pub fn to_json(&self, identity: &Identity, public_url: &str) -> Value {
        json!({
            "id": self.id,
            "active": self.active,
            "expires_at": rfc3339(self.expires_at),
            "authenticated_at": rfc3339(self.authenticated_at),
            "authenticator_assurance_level": self.aal,
            "authentication_methods": self.methods.iter().map(|m| json!({
                "method": m.method,
                "aal": m.aal,
                "completed_at": rfc3339(m.completed_at),
            })).collect::<Vec<_>>(),
            "issued_at": rfc3339(self.issued_at),
            "identity": identity.to_json(public_url),
            "devices": self.devices.iter().map(|d| json!({
                "id": d.id,
                "ip_address": d.ip_address,
                "user_agent": d.user_agent,
                "location": "",
            })).collect::<Vec<_>>(),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowKind {
    Login,
    Registration,
}

impl FlowKind {
    pub fn name(self) -> &'static str {
        match self {
            FlowKind::Login => "login",
            FlowKind::Registration => "registration",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Flow {
    pub id: Uuid,
    pub kind: FlowKind,
    pub request_url: String,
    pub return_to: Option<String>,
    pub issued_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
    pub csrf_token: String,
    pub requested_aal: &'static str,
    pub refresh: bool,
    pub messages: Vec<Value>,
    pub identifier: String,
    pub active: Option<&'static str>,
}

/// A `uiText`.
pub fn ui_text(id: i64, text: &str, kind: &str) -> Value {
    json!({"id": id, "text": text, "type": kind})
}

fn input_node(
    group: &str,
    name: &str,
    input_type: &str,
    value: Option<&str>,
    autocomplete: Option<&str>,
    required: bool,
    label: Option<Value>,
) -> Value {
    let mut attributes = json!({
        "name": name,
        "type": input_type,
        "disabled": false,
        "node_type": "input",
    });
    if let Some(obj) = attributes.as_object_mut() {
        if let Some(v) = value {
            obj.insert("value".to_owned(), Value::String(v.to_owned()));
        }
        if let Some(a) = autocomplete {
            obj.insert("autocomplete".to_owned(), Value::String(a.to_owned()));
        }
        if required {
            obj.insert("required".to_owned(), Value::Bool(true));
        }
    }
    let meta = match label {
        Some(label) => json!({"label": label}),
        None => json!({}),
    };
    json!({
        "type": "input",
        "group": group,
        "attributes": attributes,
        "messages": [],
        "meta": meta,
    })
}

impl Flow {
    pub fn is_expired(&self, now: OffsetDateTime) -> bool {
        self.expires_at <= now
    }

    /// Where the form posts to.
    pub fn action(&self, public_url: &str) -> String {
        format!("{public_url}/self-service/{}?flow={}", self.kind.name(), self.id)
    }

    /// The UI nodes of the form.
    pub fn nodes(&self) -> Vec<Value> {
        let csrf = input_node("default", "csrf_token", "hidden", Some(&self.csrf_token), None, true, None);
        match (self.kind, self.requested_aal) {
            (FlowKind::Login, "aal2") => vec![
                csrf,
                input_node(
                    "totp",
                    "totp_code",
                    "text",
                    None,
                    Some("one-time-code"),
                    true,
                    Some(ui_text(1070006, "Verify code", "info")),
                ),
                input_node(
                    "totp",
                    "method",
                    "submit",
                    Some("totp"),
                    None,
                    false,
                    Some(ui_text(1010009, "Use Authenticator", "info")),
                ),
            ],
            (FlowKind::Login, _) => vec![
                csrf,
                input_node(
                    "default",
                    "identifier",
                    "text",
                    Some(&self.identifier),
                    Some("username"),
                    true,
                    Some(ui_text(1070004, "ID", "info")),
                ),
                input_node(
                    "password",
                    "password",
                    "password",
                    None,
                    Some("current-password"),
                    true,
                    Some(ui_text(1070001, "Password", "info")),
                ),
                input_node(
                    "password",
                    "method",
                    "submit",
                    Some("password"),
                    None,
                    false,
                    Some(ui_text(1010001, "Sign in", "info")),
                ),
            ],
            (FlowKind::Registration, _) => vec![
                csrf,
                input_node(
                    "password",
                    "traits.email",
                    "email",
                    Some(&self.identifier),
                    Some("email"),
                    true,
                    Some(ui_text(1070002, "E-Mail", "info")),
                ),
                input_node(
                    "password",
                    "password",
                    "password",
                    None,
                    Some("new-password"),
                    true,
                    Some(ui_text(1070001, "Password", "info")),
                ),
                input_node(
                    "password",
                    "method",
                    "submit",
                    Some("password"),
                    None,
                    false,
                    Some(ui_text(1040001, "Sign up", "info")),
                ),
            ],
        }
    }

    /// The flow object (schemas `loginFlow` / `registrationFlow`).
    pub fn to_json(&self, public_url: &str) -> Value {
        let mut ui = json!({
            "action": self.action(public_url),
            "method": "POST",
            "nodes": self.nodes(),
        });
        if !self.messages.is_empty()
            && let Some(obj) = ui.as_object_mut()
        {
            obj.insert("messages".to_owned(), Value::Array(self.messages.clone()));
        }
        let mut flow = json!({
            "id": self.id,
            "type": "browser",
            "expires_at": rfc3339(self.expires_at),
            "issued_at": rfc3339(self.issued_at),
            "request_url": self.request_url,
            "ui": ui,
            "state": "choose_method",
        });
        if let Some(obj) = flow.as_object_mut() {
            if let Some(rt) = &self.return_to {
                obj.insert("return_to".to_owned(), Value::String(rt.clone()));
            }
            if let Some(active) = self.active {
                obj.insert("active".to_owned(), Value::String(active.to_owned()));
            }
            if self.kind == FlowKind::Login {
                obj.insert("created_at".to_owned(), json!(rfc3339(self.issued_at)));
                obj.insert("updated_at".to_owned(), json!(rfc3339(self.issued_at)));
                obj.insert("refresh".to_owned(), Value::Bool(self.refresh));
                obj.insert("requested_aal".to_owned(), Value::String(self.requested_aal.to_owned()));
            }
        }
        flow
    }
}

/// An error in Ory's `errorGeneric` shape.
pub fn error_body(code: u16, id: Option<&str>, reason: Option<&str>, message: &str, details: Option<Value>) -> Value {
    let status = http::StatusCode::from_u16(code).ok().and_then(|s| s.canonical_reason()).unwrap_or("Error");
    let mut error = serde_json::Map::new();
    if let Some(id) = id {
        error.insert("id".to_owned(), json!(id));
    }
    error.insert("code".to_owned(), json!(code));
    error.insert("status".to_owned(), json!(status));
    if let Some(reason) = reason {
        error.insert("reason".to_owned(), json!(reason));
    }
    if let Some(details) = details {
        error.insert("details".to_owned(), details);
    }
    error.insert("message".to_owned(), json!(message));
    json!({ "error": Value::Object(error) })
}
