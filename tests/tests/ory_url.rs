//! Finding Ory by access token: the console lookup, against the stand-in's console endpoint.

use ory_proxy::ory_url::{self, OrySource};
use ory_proxy_tests::standin::{Standin, StandinConfig};
use url::Url;

#[tokio::test]
async fn an_access_token_names_its_project_through_the_console() {
    let standin = Standin::start(StandinConfig {
        access_token: Some("ory_pat_right".into()),
        slug: Some("happy-cat-123".into()),
        ..StandinConfig::default()
    })
    .await
    .unwrap();
    let console = Url::parse(&standin.url()).unwrap();
    let api = Url::parse("https://oryapis.com").unwrap();

    let url = ory_url::resolve(&OrySource::AccessToken("ory_pat_right".into()), &api, &console).await.unwrap();
    assert_eq!(url.as_str(), "https://happy-cat-123.projects.oryapis.com/");

    let refused = ory_url::resolve(&OrySource::AccessToken("ory_pat_wrong".into()), &api, &console).await.unwrap_err();
    assert!(refused.to_string().contains("refused ORY_ACCESS_TOKEN"), "{refused:#}");
    standin.shutdown().await;
}

#[tokio::test]
async fn an_unreachable_console_is_a_clear_error() {
    let closed = Url::parse("http://127.0.0.1:9").unwrap();
    let api = Url::parse("https://oryapis.com").unwrap();
    let error = ory_url::resolve(&OrySource::AccessToken("t".into()), &api, &closed).await.unwrap_err();
    assert!(format!("{error:#}").contains("backoffice/token/slug"), "{error:#}");
}
