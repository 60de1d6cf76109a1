//! Where Ory is: a public URL given directly, a project slug, or an access token whose project
//! the console names — exactly one of them, as the original `ory proxy` required.

use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use url::Url;

/// One way of naming the Ory project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrySource {
    /// `--sdk-url` / `ORY_SDK_URL` / `ORY_KRATOS_URL`: any Ory Network or Kratos public URL.
    SdkUrl(Url),
    /// `--project` / `ORY_PROJECT_SLUG`.
    Project(String),
    /// `ORY_ACCESS_TOKEN`: the console says which project it belongs to.
    AccessToken(String),
}

const WHAT_TO_SET: &str = "set one of --sdk-url (or ORY_SDK_URL) with your Ory or Kratos public URL, \
--project (or ORY_PROJECT_SLUG) with your project slug, or ORY_ACCESS_TOKEN";

/// Picks the one source given; none, or more than one, is an error saying what to set.
pub fn choose(
    sdk_url: Option<Url>,
    project: Option<String>,
    access_token: Option<String>,
) -> anyhow::Result<OrySource> {
    let given: Vec<OrySource> = [
        sdk_url.map(OrySource::SdkUrl),
        project.filter(|v| !v.is_empty()).map(OrySource::Project),
        access_token.filter(|v| !v.is_empty()).map(OrySource::AccessToken),
    ]
    .into_iter()
    .flatten()
    .collect();
    match given.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!("ory-proxy needs to know where Ory is: {WHAT_TO_SET}"),
        many => {
            let names: Vec<&str> = many
                .iter()
                .map(|source| match source {
                    OrySource::SdkUrl(_) => "--sdk-url/ORY_SDK_URL",
                    OrySource::Project(_) => "--project/ORY_PROJECT_SLUG",
                    OrySource::AccessToken(_) => "ORY_ACCESS_TOKEN",
                })
                .collect();
            bail!("could not decide where Ory is: {} are all set; set only one", names.join(" and "))
        }
    }
}

/// `https://<slug>.projects.<api-endpoint host>`, with the API endpoint's scheme and port.
pub fn project_url(slug: &str, api_endpoint: &Url) -> anyhow::Result<Url> {
    let valid = !slug.is_empty()
        && slug.len() <= 63
        && slug.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !slug.starts_with('-')
        && !slug.ends_with('-');
    if !valid {
        bail!("`{slug}` is not a project slug (lower-case letters, digits and dashes)");
    }
    let host = api_endpoint.host_str().context("--api-endpoint has no host")?;
    let port = api_endpoint.port().map(|p| format!(":{p}")).unwrap_or_default();
    Url::parse(&format!("{}://{slug}.projects.{host}{port}", api_endpoint.scheme())).context("building the project URL")
}

/// A GET with these headers, over HTTPS (public roots) or HTTP, answered within `timeout`: the
/// response head and the whole body.
pub async fn get(
    url: &Url,
    headers: &[(http::HeaderName, String)],
    timeout: Duration,
) -> anyhow::Result<(http::response::Parts, Bytes)> {
    let connector =
        hyper_rustls::HttpsConnectorBuilder::new().with_webpki_roots().https_or_http().enable_http1().build();
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
    let mut request = http::Request::get(url.as_str());
    for (name, value) in headers {
        request = request.header(name, value);
    }
    let request = request.body(Empty::new()).with_context(|| format!("building a request for {url}"))?;
    let answer = async {
        let response = client.request(request).await?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        anyhow::Ok((parts, body))
    };
    tokio::time::timeout(timeout, answer).await.with_context(|| format!("{url} did not answer within {timeout:?}"))?
}

/// Asks the console which project an access token belongs to (`GET /backoffice/token/slug`).
pub async fn slug_for_token(console_url: &Url, token: &str) -> anyhow::Result<String> {
    let endpoint = console_url.join("/backoffice/token/slug").context("--console-url")?;
    let headers = [
        (http::header::AUTHORIZATION, format!("Bearer {token}")),
        (http::header::ACCEPT, "application/json".to_string()),
    ];
    let (parts, body) = get(&endpoint, &headers, Duration::from_secs(15))
        .await
        .with_context(|| format!("asking {endpoint} for the project of ORY_ACCESS_TOKEN"))?;
    let status = parts.status;
    if status == http::StatusCode::UNAUTHORIZED || status == http::StatusCode::FORBIDDEN {
        bail!("the console refused ORY_ACCESS_TOKEN ({status}): check the token");
    }
    if !status.is_success() {
        bail!("{endpoint} answered {status} when asked for the project of ORY_ACCESS_TOKEN");
    }
    let parsed: serde_json::Value =
        serde_json::from_slice(&body).with_context(|| format!("{endpoint} did not answer JSON"))?;
    match parsed.get("slug").and_then(|s| s.as_str()) {
        Some(slug) if !slug.is_empty() => Ok(slug.to_string()),
        _ => bail!("{endpoint} answered without a project slug"),
    }
}

/// The Ory public URL a source names.
pub async fn resolve(source: &OrySource, api_endpoint: &Url, console_url: &Url) -> anyhow::Result<Url> {
    match source {
        OrySource::SdkUrl(url) => Ok(url.clone()),
        OrySource::Project(slug) => project_url(slug, api_endpoint).context("--project"),
        OrySource::AccessToken(token) => {
            let slug = slug_for_token(console_url, token).await?;
            project_url(&slug, api_endpoint)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn some(value: &str) -> Option<String> {
        Some(value.to_string())
    }

    #[test]
    fn exactly_one_source() {
        let url = Url::parse("http://x").unwrap();
        assert_eq!(choose(Some(url.clone()), None, None).unwrap(), OrySource::SdkUrl(url));
        assert_eq!(choose(None, some("slug"), None).unwrap(), OrySource::Project("slug".into()));
        assert_eq!(choose(None, None, some("tok")).unwrap(), OrySource::AccessToken("tok".into()));
        // Empty environment variables count as unset.
        assert_eq!(choose(None, some(""), some("tok")).unwrap(), OrySource::AccessToken("tok".into()));
    }

    #[test]
    fn none_or_several_say_what_to_set() {
        let none = choose(None, None, None).unwrap_err().to_string();
        assert!(none.contains("--sdk-url") && none.contains("ORY_PROJECT_SLUG") && none.contains("ORY_ACCESS_TOKEN"));
        let two = choose(Url::parse("http://x").ok(), None, some("tok")).unwrap_err().to_string();
        assert!(two.contains("could not decide") && two.contains("--sdk-url") && two.contains("ORY_ACCESS_TOKEN"));
    }

    #[test]
    fn project_urls_follow_the_api_endpoint() {
        let api = Url::parse("https://oryapis.com").unwrap();
        assert_eq!(project_url("happy-cat-123", &api).unwrap().as_str(), "https://happy-cat-123.projects.oryapis.com/");
        let local = Url::parse("http://localhost:4433").unwrap();
        assert_eq!(project_url("x", &local).unwrap().as_str(), "http://x.projects.localhost:4433/");
        for bad in ["", "Upper", "evil.com/", "a b", "-x", "x@y"] {
            assert!(project_url(bad, &api).is_err(), "{bad}");
        }
    }
}
