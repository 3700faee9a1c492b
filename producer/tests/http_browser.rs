//! Browser access to the ingest API over real HTTP, publishing to the real broker: CORS for the
//! configured origins only, browser tokens for CLIENT events only, and the sender's address
//! through a trusted proxy.

use audit_client::browser_token::{mint, BrowserUser, SigningKey, DEFAULT_AUDIENCE};
use audit_producer::auth::Tokens;
use audit_producer::browser::BrowserTokens;
use audit_producer::config::{BrowserConfig, BrowserKeyAlgorithm, BrowserKeyConfig};
use audit_producer::http::{router, IngestState, Limits, Network};
use audit_producer::serve::{serve, ServeOptions};
use audit_runtime::ops::Health;
use audit_schemas::redaction::Redactor;
use audit_schemas::*;
use audit_tests::*;
use rdkafka::message::Message;
use std::sync::Arc;
use std::time::Duration;

const SECRET: &str = "browser-secret-0123456789-abcdefghij";
const ORIGIN: &str = "https://app.example.com";

fn token(secret: &str, lifetime: Duration) -> String {
    let key = SigningKey::Hs256 {
        kid: "k1".into(),
        secret: secret.as_bytes().to_vec(),
    };
    let user = BrowserUser {
        user_id: "u-ann".into(),
        session_id: "s-ann".into(),
        tenant: Some("acme".into()),
        login: Some("ann".into()),
    };
    mint(&key, &user, DEFAULT_AUDIENCE, lifetime).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn browsers_post_with_their_token_from_allowed_origins_only() {
    let topics = unique_topics(1);
    create_topics(&topics).await.unwrap();
    let publisher = publisher(&topics, 50_000).unwrap();
    let browser = BrowserConfig {
        origins: vec![ORIGIN.into()],
        keys: vec![BrowserKeyConfig {
            id: "k1".into(),
            algorithm: BrowserKeyAlgorithm::HS256,
            secret: Some(SECRET.into()),
            public_key_pem: None,
        }],
        ..BrowserConfig::default()
    };
    let state = Arc::new(IngestState {
        publisher,
        tokens: Tokens::new(&[], None).with_browser(BrowserTokens::new(&browser), "web"),
        redactor: Redactor::default(),
        limits: Limits::default(),
        scim: None,
        network: Network {
            trusted_proxies: vec!["127.0.0.1/32".parse().unwrap()],
            cors_origins: browser.origins.clone(),
            preflight_max_age: Duration::from_secs(600),
        },
    });
    let app = router(state, Health::default()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1/events", listener.local_addr().unwrap());
    tokio::spawn(serve(
        listener,
        app,
        ServeOptions::default(),
        std::future::pending(),
    ));
    let http = reqwest::Client::new();

    // The preflight is answered for the configured origin, and not for another.
    let preflight = |origin: &'static str| {
        http.request(reqwest::Method::OPTIONS, &url)
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type",
            )
            .send()
    };
    let ok = preflight(ORIGIN).await.unwrap();
    assert_eq!(
        ok.headers()
            .get("access-control-allow-origin")
            .map(|v| v.to_str().unwrap()),
        Some(ORIGIN)
    );
    let foreign = preflight("https://evil.example").await.unwrap();
    assert!(foreign
        .headers()
        .get("access-control-allow-origin")
        .is_none());

    // A post claiming another user, through a trusted proxy.
    let good = token(SECRET, Duration::from_secs(300));
    let response = http
        .post(&url)
        .bearer_auth(&good)
        .header("origin", ORIGIN)
        .header("x-forwarded-for", "6.6.6.6, 198.51.100.7")
        .json(&serde_json::json!({"event_type": "log", "message": "hi", "user_id": "mallory"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202, "{:?}", response.text().await);
    assert_eq!(
        response
            .headers()
            .get("access-control-allow-origin")
            .map(|v| v.to_str().unwrap()),
        Some(ORIGIN)
    );
    let messages = consume_n(&topics.raw.name, 1, 1, Duration::from_secs(20))
        .await
        .unwrap();
    let e = RawAuditEvent::decode(messages[0].payload().unwrap()).unwrap();
    assert_eq!((e.service.as_str(), e.source), ("web", Source::Client));
    assert_eq!(e.user_id.as_deref(), Some("u-ann"));
    assert_eq!(e.session_id.as_deref(), Some("s-ann"));
    assert_eq!(e.username.as_deref(), Some("ann"));
    assert_eq!(e.tenant.as_deref(), Some("acme"));
    let ingest = e.ingest.unwrap();
    assert_eq!(ingest.credential, Credential::BrowserToken);
    assert_eq!(ingest.key_id.as_deref(), Some("k1"));
    assert_eq!(ingest.peer_ip.as_deref(), Some("198.51.100.7"));
    assert_eq!(ingest.overridden["user_id"], "mallory");

    // A browser-token request from a foreign page that got past its browser is refused.
    let forged = http
        .post(&url)
        .bearer_auth(&good)
        .header("origin", "https://evil.example")
        .json(&serde_json::json!({"event_type": "log"}))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);

    // What a browser token may not do, and tokens that are not valid.
    let directory = http
        .put(url.replace("/v1/events", "/v1/directory/users/u-x"))
        .bearer_auth(&good)
        .json(&serde_json::json!({"login": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(directory.status(), 403);
    let server = http
        .post(&url)
        .bearer_auth(&good)
        .json(&serde_json::json!({"event_type": "log", "source": "SERVER"}))
        .send()
        .await
        .unwrap();
    assert_eq!(server.status(), 422);
    for (bad, reason) in [
        (
            token(
                "another-secret-0123456789-abcdefghij",
                Duration::from_secs(300),
            ),
            "invalid",
        ),
        (token(SECRET, Duration::from_secs(7200)), "longer than"),
    ] {
        let refused = http
            .post(&url)
            .bearer_auth(&bad)
            .json(&serde_json::json!({"event_type": "log"}))
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 401);
        let body = refused.text().await.unwrap();
        assert!(body.contains(reason), "{body}");
        assert!(!body.contains(&bad), "the token is never echoed");
    }
}
