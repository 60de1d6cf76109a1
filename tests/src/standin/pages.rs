//! The stand-in's HTML pages (its "account experience"). Every link is absolute on the public
//! URL, as Ory's are; every piece of data is HTML-escaped.

use serde_json::Value;

use super::model::Flow;
use super::{DEMO_EMAIL, DEMO_PASSWORD, Settings};
use crate::util::html_escape as esc;

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:32rem;margin:2rem auto;padding:0 1rem;color:#111}\
.banner{background:#fff3cd;border:1px solid #e0c36a;padding:.5rem .75rem;border-radius:6px;font-size:.9rem}\
label{display:block;margin:.75rem 0}input{display:block;width:100%;padding:.4rem;margin-top:.25rem;box-sizing:border-box}\
button{margin-top:1rem;padding:.5rem 1rem}.error{color:#a00}.hint{color:#555;font-size:.9rem}";

fn page(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} · Ory stand-in</title><style>{STYLE}</style></head><body>\
         <p class=\"banner\">Ory stand-in: a development and test tool, not Ory.</p>\n{body}\n</body></html>\n",
        title = esc(title),
    )
}

fn messages(flow: &Flow) -> String {
    flow.messages
        .iter()
        .map(|m| {
            let text = m.get("text").and_then(Value::as_str).unwrap_or("");
            let id = m.get("id").and_then(Value::as_i64).unwrap_or(0);
            format!("<p class=\"error\" data-message-id=\"{id}\">{}</p>", esc(text))
        })
        .collect()
}

pub fn login(settings: &Settings, flow: &Flow) -> String {
    let public = &settings.public_url;
    let action = esc(&flow.action(public));
    let csrf = esc(&flow.csrf_token);
    if flow.requested_aal == "aal2" {
        let body = format!(
            "<h1>Second factor</h1>{msgs}\
             <form method=\"POST\" action=\"{action}\">\
             <input type=\"hidden\" name=\"csrf_token\" value=\"{csrf}\">\
             <label>One-time code<input name=\"totp_code\" type=\"text\" autocomplete=\"one-time-code\" required autofocus></label>\
             <button type=\"submit\" name=\"method\" value=\"totp\">Verify</button></form>\
             <p class=\"hint\">The stand-in accepts the identity's configured code (123456 unless set).</p>",
            msgs = messages(flow),
        );
        return page("Second factor", &body);
    }
    let mut registration = format!("{public}/self-service/registration/browser");
    if let Some(rt) = &flow.return_to {
        registration.push_str("?return_to=");
        registration.push_str(&super::handlers::encode(rt));
    }
    let hint = if settings.demo_identity {
        format!(
            "<p class=\"hint\">Demo identity: <code>{}</code> / <code>{}</code></p>",
            esc(DEMO_EMAIL),
            esc(DEMO_PASSWORD)
        )
    } else {
        String::new()
    };
    let body = format!(
        "<h1>Sign in</h1>{msgs}\
         <form method=\"POST\" action=\"{action}\">\
         <input type=\"hidden\" name=\"csrf_token\" value=\"{csrf}\">\
         <label>Email<input name=\"identifier\" type=\"email\" autocomplete=\"username\" value=\"{identifier}\" required autofocus></label>\
         <label>Password<input name=\"password\" type=\"password\" autocomplete=\"current-password\" required></label>\
         <button type=\"submit\" name=\"method\" value=\"password\">Sign in</button></form>\
         <p>No account yet? <a href=\"{registration}\">Sign up</a></p>{hint}",
        msgs = messages(flow),
        identifier = esc(&flow.identifier),
        registration = esc(&registration),
    );
    page("Sign in", &body)
}

pub fn registration(settings: &Settings, flow: &Flow) -> String {
    let public = &settings.public_url;
    let mut login = format!("{public}/self-service/login/browser");
    if let Some(rt) = &flow.return_to {
        login.push_str("?return_to=");
        login.push_str(&super::handlers::encode(rt));
    }
    let body = format!(
        "<h1>Sign up</h1>{msgs}\
         <form method=\"POST\" action=\"{action}\">\
         <input type=\"hidden\" name=\"csrf_token\" value=\"{csrf}\">\
         <label>Email<input name=\"traits.email\" type=\"email\" autocomplete=\"email\" value=\"{identifier}\" required autofocus></label>\
         <label>Password (8 characters or more)<input name=\"password\" type=\"password\" autocomplete=\"new-password\" minlength=\"8\" required></label>\
         <button type=\"submit\" name=\"method\" value=\"password\">Sign up</button></form>\
         <p>Have an account? <a href=\"{login}\">Sign in</a></p>",
        msgs = messages(flow),
        action = esc(&flow.action(public)),
        csrf = esc(&flow.csrf_token),
        identifier = esc(&flow.identifier),
        login = esc(&login),
    );
    page("Sign up", &body)
}

/// `who`: the signed-in email and the session's logout token.
pub fn welcome(settings: &Settings, who: Option<(String, String)>) -> String {
    let public = &settings.public_url;
    let body = match who {
        Some((email, logout_token)) => format!(
            "<h1>Welcome</h1><p>You are signed in as <strong>{}</strong>.</p>\
             <p><a href=\"{}\">Sign out</a></p>",
            esc(&email),
            esc(&format!("{public}/self-service/logout?token={}", super::handlers::encode(&logout_token))),
        ),
        None => format!(
            "<h1>Welcome</h1><p>You are not signed in.</p>\
             <p><a href=\"{}\">Sign in</a> · <a href=\"{}\">Sign up</a></p>",
            esc(&format!("{public}/self-service/login/browser")),
            esc(&format!("{public}/self-service/registration/browser")),
        ),
    };
    page("Welcome", &body)
}

pub fn error(settings: &Settings, error: Option<&Value>) -> String {
    let public = &settings.public_url;
    let field = |name: &str| {
        error
            .and_then(|e| e.get(name))
            .map(|v| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .unwrap_or_default()
    };
    let body = match error {
        Some(_) => format!(
            "<h1>An error occurred</h1><p><strong>{code} {status}</strong></p>\
             <p class=\"error\" id=\"reason\">{reason}</p><p>{message}</p>\
             <p><a href=\"{home}\">Back</a></p>",
            code = esc(&field("code")),
            status = esc(&field("status")),
            reason = esc(&field("reason")),
            message = esc(&field("message")),
            home = esc(&format!("{public}/ui/welcome")),
        ),
        None => format!(
            "<h1>Error not found</h1><p>This error does not exist or has expired.</p>\
             <p><a href=\"{}\">Back</a></p>",
            esc(&format!("{public}/ui/welcome"))
        ),
    };
    page("Error", &body)
}

pub fn not_provided(settings: &Settings, name: &str) -> String {
    let body = format!(
        "<h1>{}</h1><p>The stand-in does not provide this page.</p><p><a href=\"{}\">Back</a></p>",
        esc(name),
        esc(&format!("{}/ui/welcome", settings.public_url)),
    );
    page(name, &body)
}
