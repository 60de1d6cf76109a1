//! Shared helpers for the integration tests: the Kratos OpenAPI schemas as a JSON Schema
//! validator, a tiny cookie jar, and a scripted browser login against the stand-in.

#![allow(dead_code)]

pub mod app;
pub mod host;
pub mod jwt;
pub mod tls;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, OnceLock};

use ory_proxy_tests::http::{ClientResponse, HttpClient};
use serde_json::{Value, json};

pub const OPENAPI_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/ory/kratos-openapi.json");
pub const SESSION_EXAMPLE_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/ory/session-example.json");

/// OpenAPI 3.0 says `nullable: true`; JSON Schema says `type: [T, "null"]`. Rewrite in place.
fn convert_nullable(v: &mut Value) {
    match v {
        Value::Object(map) => {
            if map.get("nullable") == Some(&Value::Bool(true)) {
                map.remove("nullable");
                match map.get("type").cloned() {
                    Some(Value::String(t)) => {
                        map.insert("type".to_owned(), json!([t, "null"]));
                    }
                    Some(_) => {}
                    None => {
                        if let Some(r) = map.remove("$ref") {
                            map.insert("anyOf".to_owned(), json!([{"$ref": r}, {"type": "null"}]));
                        }
                    }
                }
                if let Some(Value::Array(e)) = map.get_mut("enum") {
                    e.push(Value::Null);
                }
            }
            for child in map.values_mut() {
                convert_nullable(child);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(convert_nullable),
        _ => {}
    }
}

/// The Kratos OpenAPI document, prepared for JSON Schema validation.
///
/// Deviations from the document, each because real Ory answers differ from it:
/// - `genericError.details` is declared `additionalProperties: false` (an always-empty object),
///   but Kratos's 403 `session_aal2_required` carries `redirect_browser_to` in `error.details`:
///   details may hold any properties here.
pub fn openapi() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| {
        let text = std::fs::read_to_string(OPENAPI_PATH).unwrap_or_else(|e| panic!("cannot read {OPENAPI_PATH}: {e}"));
        let mut doc: Value = serde_json::from_str(&text).expect("the OpenAPI document is JSON");
        convert_nullable(&mut doc);
        let details = doc
            .pointer_mut("/components/schemas/genericError/properties/details")
            .expect("genericError.details exists");
        details.as_object_mut().expect("details is an object").remove("additionalProperties");
        doc
    })
}

fn validators() -> &'static Mutex<HashMap<String, &'static jsonschema::Validator>> {
    static V: OnceLock<Mutex<HashMap<String, &'static jsonschema::Validator>>> = OnceLock::new();
    V.get_or_init(|| Mutex::new(HashMap::new()))
}

/// A validator for `#/components/schemas/<name>`, resolved against the whole document.
pub fn validator(name: &str) -> &'static jsonschema::Validator {
    let mut cache = validators().lock().unwrap();
    if let Some(v) = cache.get(name) {
        return v;
    }
    let doc = openapi();
    assert!(doc.pointer(&format!("/components/schemas/{name}")).is_some(), "no schema {name} in the OpenAPI document");
    let mut root = doc.clone();
    let obj = root.as_object_mut().unwrap();
    obj.insert("$ref".to_owned(), Value::String(format!("#/components/schemas/{name}")));
    let validator = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .should_validate_formats(true)
        .build(&root)
        .unwrap_or_else(|e| panic!("cannot build a validator for {name}: {e}"));
    let leaked: &'static jsonschema::Validator = Box::leak(Box::new(validator));
    cache.insert(name.to_owned(), leaked);
    leaked
}

/// Panic with every violation when `instance` does not match schema `name`.
pub fn assert_schema(name: &str, instance: &Value) {
    let errors: Vec<String> =
        validator(name).iter_errors(instance).map(|e| format!("{} at {}", e, e.instance_path())).collect();
    assert!(
        errors.is_empty(),
        "body does not match schema {name}:\n{}\nbody: {}",
        errors.join("\n"),
        serde_json::to_string_pretty(instance).unwrap()
    );
}

/// Whether `instance` matches schema `name`.
pub fn matches_schema(name: &str, instance: &Value) -> bool {
    validator(name).is_valid(instance)
}

/// A browser's cookie jar, as small as the tests need (one host, paths ignored).
#[derive(Debug, Default, Clone)]
pub struct Jar {
    cookies: BTreeMap<String, String>,
}

impl Jar {
    pub fn store(&mut self, resp: &ClientResponse) {
        for set_cookie in resp.header_all("set-cookie") {
            let mut parts = set_cookie.split(';');
            let Some((name, value)) = parts.next().and_then(|p| p.split_once('=')) else {
                continue;
            };
            let expired = parts.any(|a| a.trim().eq_ignore_ascii_case("max-age=0"));
            if expired || value.is_empty() {
                self.cookies.remove(name.trim());
            } else {
                self.cookies.insert(name.trim().to_owned(), value.trim().to_owned());
            }
        }
    }

    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.cookies.get(name).map(String::as_str)
    }

    pub fn set(&mut self, name: &str, value: &str) {
        self.cookies.insert(name.to_owned(), value.to_owned());
    }

    pub fn header(&self) -> String {
        self.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ")
    }

    /// GET with the jar's cookies, storing the answer's cookies.
    pub async fn get(&mut self, client: &HttpClient, url: &str, extra: &[(&str, &str)]) -> ClientResponse {
        let cookie = self.header();
        let mut headers: Vec<(&str, &str)> = extra.to_vec();
        if !cookie.is_empty() {
            headers.push(("cookie", &cookie));
        }
        let resp = client.get(url, &headers).await.expect("GET failed");
        self.store(&resp);
        resp
    }

    /// POST a form with the jar's cookies, storing the answer's cookies.
    pub async fn post_form(
        &mut self,
        client: &HttpClient,
        url: &str,
        extra: &[(&str, &str)],
        fields: &[(&str, &str)],
    ) -> ClientResponse {
        let cookie = self.header();
        let mut headers: Vec<(&str, &str)> = extra.to_vec();
        if !cookie.is_empty() {
            headers.push(("cookie", &cookie));
        }
        let resp = client.post_form(url, &headers, fields).await.expect("POST failed");
        self.store(&resp);
        resp
    }
}

/// The value of an `<input name="NAME" ... value="...">` in a page.
pub fn input_value(html: &str, name: &str) -> Option<String> {
    let needle = format!("name=\"{name}\"");
    let at = html.find(&needle)?;
    let tag_end = html[at..].find('>')? + at;
    let tag = &html[at..tag_end];
    let v = tag.find("value=\"")? + "value=\"".len();
    let end = tag[v..].find('"')? + v;
    Some(unescape(&tag[v..end]))
}

/// The `action` of the first form in a page.
pub fn form_action(html: &str) -> Option<String> {
    let at = html.find("<form")?;
    let a = html[at..].find("action=\"")? + at + "action=\"".len();
    let end = html[a..].find('"')? + a;
    Some(unescape(&html[a..end]))
}

fn unescape(s: &str) -> String {
    s.replace("&quot;", "\"").replace("&#x27;", "'").replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
}

/// A `Set-Cookie` header's attributes, lower-cased names, for assertions.
pub fn cookie_attributes(set_cookie: &str) -> BTreeMap<String, String> {
    set_cookie
        .split(';')
        .skip(1)
        .map(|a| {
            let a = a.trim();
            match a.split_once('=') {
                Some((k, v)) => (k.trim().to_ascii_lowercase(), v.trim().to_owned()),
                None => (a.to_ascii_lowercase(), String::new()),
            }
        })
        .collect()
}

/// Run the browser login flow on the stand-in: start it, open the form, post the credentials.
/// Answers the final POST's response (a 303 on success and on wrong credentials).
pub async fn browser_login(
    client: &HttpClient,
    jar: &mut Jar,
    standin_url: &str,
    email: &str,
    password: &str,
    return_to: Option<&str>,
) -> ClientResponse {
    let mut start = format!("{standin_url}/self-service/login/browser");
    if let Some(rt) = return_to {
        start.push_str("?return_to=");
        start.push_str(&url::form_urlencoded::byte_serialize(rt.as_bytes()).collect::<String>());
    }
    let resp = jar.get(client, &start, &[]).await;
    assert_eq!(resp.status, 303, "login/browser: {}", resp.text());
    let ui = resp.header("location").expect("Location").to_owned();
    let page = jar.get(client, &ui, &[]).await;
    assert_eq!(page.status, 200, "login UI: {}", page.text());
    let html = page.text();
    let action = form_action(&html).expect("a form");
    let csrf = input_value(&html, "csrf_token").expect("csrf_token");
    jar.post_form(
        client,
        &action,
        &[],
        &[("csrf_token", &csrf), ("identifier", email), ("password", password), ("method", "password")],
    )
    .await
}

/// Lower-case hex SHA-256.
pub fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    ory_proxy_tests::util::hex(&sha2::Sha256::digest(s.as_bytes()))
}
