//! Responses the filter makes itself: redirects, small HTML pages and Ory's JSON error shape.

use serde::Serialize;

/// A response made by the filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalResponse {
    pub status: u32,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Replies about one request's session must not be stored by shared caches.
const NO_STORE: (&str, &str) = ("cache-control", "private, no-store");

/// `303 See Other` to `location`.
pub fn redirect(location: String) -> LocalResponse {
    LocalResponse {
        status: 303,
        headers: vec![("location".into(), location), (NO_STORE.0.into(), NO_STORE.1.into())],
        body: Vec::new(),
    }
}

/// A JSON body with `status`.
pub fn json_reply(status: u32, body: Vec<u8>) -> LocalResponse {
    LocalResponse {
        status,
        headers: vec![("content-type".into(), "application/json".into()), (NO_STORE.0.into(), NO_STORE.1.into())],
        body,
    }
}

/// A minimal HTML page for browsers: `title` as heading, `message` below it.
pub fn html_reply(status: u32, title: &str, message: &str) -> LocalResponse {
    let body = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title></head>\
         <body><h1>{title}</h1><p>{message}</p></body></html>\n"
    );
    LocalResponse {
        status,
        headers: vec![
            ("content-type".into(), "text/html; charset=utf-8".into()),
            (NO_STORE.0.into(), NO_STORE.1.into()),
        ],
        body: body.into_bytes(),
    }
}

/// Ory's error document: `errorGeneric` in the Kratos API, with `redirect_browser_to` beside
/// the error where Kratos puts it (for a second factor).
#[derive(Serialize)]
struct ErrorDocument<'a> {
    error: GenericError<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    redirect_browser_to: Option<&'a str>,
}

#[derive(Serialize)]
struct GenericError<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    code: u32,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<Details<'a>>,
}

#[derive(Serialize)]
struct Details<'a> {
    redirect_browser_to: &'a str,
}

/// The reason phrase Ory puts in `status`, for the codes the filter answers with.
fn status_text(code: u32) -> &'static str {
    match code {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        405 => "Method Not Allowed",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        _ => "Error",
    }
}

impl ErrorDocument<'_> {
    fn to_json(&self) -> Vec<u8> {
        // Plain strings and numbers only: serialising cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// Ory's error body for `code`, with an optional `reason` (what went wrong) and a `message`.
pub fn error_json(code: u32, reason: Option<&str>, message: &str) -> Vec<u8> {
    let error = GenericError { id: None, code, status: status_text(code), reason, message, details: None };
    ErrorDocument { error, redirect_browser_to: None }.to_json()
}

/// Ory's error shape as a JSON reply of that status.
pub fn error_reply(code: u32, reason: &str, message: &str) -> LocalResponse {
    json_reply(code, error_json(code, Some(reason), message))
}

/// `400` for a request target the proxy refuses to decide on.
pub fn bad_request(reason: &str) -> LocalResponse {
    error_reply(400, reason, "The request path was refused")
}

/// `500` for a failure inside the filter.
pub fn internal_error(reason: &str) -> LocalResponse {
    error_reply(500, reason, "The proxy failed")
}

/// `401` for an API client on a protected path without a session.
pub fn unauthorized() -> LocalResponse {
    json_reply(401, unauthorized_json())
}

fn unauthorized_json() -> Vec<u8> {
    let reason = "This path requires an active Ory session and the request carried none.";
    error_json(401, Some(reason), "The request is not authorized")
}

/// `403` for an API client whose session needs a second factor; `location` is where a browser
/// would continue, given in the error's details and beside it, as Kratos does.
pub fn aal2_required(location: &str) -> LocalResponse {
    json_reply(403, aal2_json(location))
}

fn aal2_json(location: &str) -> Vec<u8> {
    let error = GenericError {
        id: Some("session_aal2_required"),
        code: 403,
        status: status_text(403),
        reason: Some("This path requires a second authentication factor."),
        message: "The request is not authorized",
        details: Some(Details { redirect_browser_to: location }),
    };
    ErrorDocument { error, redirect_browser_to: Some(location) }.to_json()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(body: &[u8]) -> serde_json::Value {
        serde_json::from_slice(body).expect("JSON")
    }

    #[test]
    fn errors_have_orys_shape() {
        let body = json(&bad_request("bad path").body);
        assert_eq!(
            body,
            serde_json::json!({ "error": {
                "code": 400, "status": "Bad Request", "reason": "bad path", "message": "The request path was refused",
            } })
        );
        let without_reason = json(&error_json(405, None, "Use GET."));
        assert_eq!(
            without_reason,
            serde_json::json!({ "error": { "code": 405, "status": "Method Not Allowed", "message": "Use GET." } })
        );
        let aal2 = json(&aal2_required("http://a.test/x").body);
        assert_eq!(aal2["error"]["id"], "session_aal2_required");
        assert_eq!(aal2["error"]["code"], 403);
        assert_eq!(aal2["error"]["status"], "Forbidden");
        assert_eq!(aal2["error"]["details"]["redirect_browser_to"], "http://a.test/x");
        assert_eq!(aal2["redirect_browser_to"], "http://a.test/x");
    }

    #[test]
    fn replies_are_not_stored() {
        for reply in [redirect("/x".into()), internal_error("x"), html_reply(502, "t", "m")] {
            assert!(reply.headers.contains(&("cache-control".into(), "private, no-store".into())), "{reply:?}");
        }
    }

    #[test]
    fn unauthorized_body_has_orys_error_shape() {
        let body = json(&unauthorized_json());
        assert_eq!(body["error"]["code"], 401);
        assert_eq!(body["error"]["status"], "Unauthorized");
        assert!(body["error"]["reason"].is_string());
        assert!(body["error"]["message"].is_string());
    }

    /// Checks the body against `errorGeneric` in the Kratos OpenAPI document kept in shared/
    /// beside the repository, when it is there.
    #[test]
    fn unauthorized_body_matches_the_kratos_openapi_schema() {
        let spec_path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/ory/kratos-openapi.json");
        let Ok(spec) = std::fs::read(spec_path) else {
            eprintln!("skipped: {spec_path} is not there");
            return;
        };
        let spec: serde_json::Value = serde_json::from_slice(&spec).expect("the spec is JSON");
        let schema = &spec["components"]["schemas"]["errorGeneric"];
        assert!(schema.is_object(), "errorGeneric is missing from the spec");
        check_against_schema(&spec, schema, &json(&unauthorized_json()), "body");
    }

    /// Just enough JSON Schema for Ory's error shapes: $ref, type, required, properties.
    fn check_against_schema(spec: &serde_json::Value, schema: &serde_json::Value, value: &serde_json::Value, at: &str) {
        if let Some(reference) = schema["$ref"].as_str() {
            let pointer = reference.trim_start_matches('#');
            let target = spec.pointer(pointer).unwrap_or_else(|| panic!("{reference} not found"));
            return check_against_schema(spec, target, value, at);
        }
        let type_ok = match schema["type"].as_str() {
            Some("object") => value.is_object(),
            Some("string") => value.is_string(),
            Some("integer") => value.is_i64() || value.is_u64(),
            Some("boolean") => value.is_boolean(),
            Some("array") => value.is_array(),
            _ => true,
        };
        assert!(type_ok, "{at}: expected {}, got {value}", schema["type"]);
        for required in schema["required"].as_array().into_iter().flatten() {
            let name = required.as_str().expect("required names are strings");
            assert!(value.get(name).is_some(), "{at}: {name} is required");
        }
        if let Some(object) = value.as_object() {
            let properties = schema["properties"].as_object().expect("the schema lists properties");
            for (name, field) in object {
                let field_schema = properties.get(name).unwrap_or_else(|| panic!("{at}.{name} is not in the schema"));
                check_against_schema(spec, field_schema, field, &format!("{at}.{name}"));
            }
        }
    }
}
