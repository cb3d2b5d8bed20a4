//! JWTs signed with asymmetric keys: PEM public key files and a JWKS server, each key pinned to
//! its algorithm family, chosen by `kid`, rotated, and kept through an outage of the JWKS server.
//! Keys are made by `openssl` for each test; the JWKS server is a real HTTP server.

use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use serde_json::json;

use crate::support::keys::{JwksServer, KeyPair, Kind};
use crate::support::{Codec, Node, UNSET, now_secs};

/// How long a test polls for something the node does on its own schedule (the JWKS retry).
const SLOW: Duration = Duration::from_secs(20);

/// `POST /v1/tickets` with `jwt`: the status and the error code (empty on success).
async fn exchange(node: &Node, jwt: &str) -> (u16, String) {
    let (status, body) = node.http.post("/v1/tickets", Some(jwt), "").await;
    let code = body["error"].as_str().unwrap_or("").to_owned();
    (status, code)
}

/// Polls `POST /v1/tickets` with `jwt` until it is 200 (bounded by [`SLOW`]).
async fn until_accepted(node: &Node, jwt: &str) {
    let deadline = tokio::time::Instant::now() + SLOW;
    loop {
        let (status, code) = exchange(node, jwt).await;
        if status == 200 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never accepted: last answer {status} {code}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn files(keys: &[&KeyPair]) -> String {
    keys.iter()
        .map(|k| k.public.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(",")
}

/// Ticket, upgrade, subscribe, publish, delivery: the whole way with `jwt`.
async fn delivers(node: &Node, jwt: &str, user: &str) {
    let ticket = node.ticket_with(jwt).await;
    let mut c = node
        .open(&format!("/ws?ticket={ticket}"), Codec::Json)
        .await;
    assert_eq!(c.next_frame().await["user"], user);
    c.sub(1, "news").await;
    node.publish("news", json!({"n": 1})).await;
    assert_eq!(c.next_msg("news").await["data"], json!({"n": 1}));
}

fn dir() -> std::path::PathBuf {
    crate::tls::tempdir()
}

#[tokio::test]
async fn every_asymmetric_algorithm_from_a_pem_file_gets_a_ticket_and_delivers() {
    let d = dir();
    let rsa = KeyPair::make(&d, "rsa", Kind::Rsa);
    let p256 = KeyPair::make(&d, "p256", Kind::P256);
    let p384 = KeyPair::make(&d, "p384", Kind::P384);
    let ed = KeyPair::make(&d, "ed", Kind::Ed25519);
    let node = Node::with(&[
        ("HERALD_JWT_SECRET", UNSET),
        (
            "HERALD_JWT_PUBLIC_KEY_FILES",
            &files(&[&rsa, &p256, &p384, &ed]),
        ),
    ])
    .await;
    let cases: [(&KeyPair, &[Algorithm]); 4] = [
        (
            &rsa,
            &[
                Algorithm::RS256,
                Algorithm::RS384,
                Algorithm::RS512,
                Algorithm::PS256,
                Algorithm::PS384,
                Algorithm::PS512,
            ],
        ),
        (&p256, &[Algorithm::ES256]),
        (&p384, &[Algorithm::ES384]),
        (&ed, &[Algorithm::EdDSA]),
    ];
    for (key, algs) in cases {
        for &alg in algs {
            let jwt = key.jwt("u", Some(alg), None);
            assert_eq!(exchange(&node, &jwt).await, (200, String::new()), "{alg:?}");
        }
    }
    // Each key's default algorithm, the whole way.
    for key in [&rsa, &p256, &p384, &ed] {
        delivers(&node, &key.jwt("u", None, None), "u").await;
    }
    // No secret is configured: an HS256 token has no key.
    let hs = herald::auth::mint_token(
        crate::support::JWT_SECRET.as_bytes(),
        "u",
        &herald::auth::RawGrants::all(),
        Duration::from_secs(60),
    )
    .unwrap();
    assert_eq!(exchange(&node, &hs).await, (401, "invalid_token".into()));
    let _ = std::fs::remove_dir_all(d);
}

/// A token whose header is re-encoded with `alg` (the signature kept).
fn with_alg(jwt: &str, alg: &str) -> String {
    let mut parts: Vec<String> = jwt.split('.').map(str::to_owned).collect();
    let header: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&parts[0]).unwrap()).unwrap();
    let mut header = header;
    header["alg"] = json!(alg);
    parts[0] = URL_SAFE_NO_PAD.encode(header.to_string());
    parts.join(".")
}

#[tokio::test]
async fn a_token_whose_algorithm_is_not_its_keys_family_is_refused() {
    let d = dir();
    let rsa = KeyPair::make(&d, "rsa", Kind::Rsa);
    let p256 = KeyPair::make(&d, "p256", Kind::P256);
    // The secret and an RSA public key side by side: the public key must never act as an HMAC
    // secret, nor the secret as anything but one.
    let node = Node::with(&[("HERALD_JWT_PUBLIC_KEY_FILES", &files(&[&rsa]))]).await;
    let claims = json!({"sub": "mallory", "exp": now_secs() + 600, "grants": {"subscribe": [">"]}});

    // HMAC keyed with the RSA public key's PEM text (the classic confusion).
    let confused = crate::support::signed_jwt(&claims, &rsa.public_pem(), Algorithm::HS256);
    assert_eq!(
        exchange(&node, &confused).await,
        (401, "invalid_token".into())
    );
    // alg: none, with and without a signature part.
    let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
    let body = URL_SAFE_NO_PAD.encode(claims.to_string());
    for t in [format!("{header}.{body}."), format!("{header}.{body}")] {
        assert_eq!(
            exchange(&node, &t).await,
            (401, "invalid_token".into()),
            "{t}"
        );
    }
    // A good RS256 token relabelled: HS256 (no RSA key may verify it), PS256 (another RSA
    // padding: the signature fails), ES256 (no EC key).
    let good = rsa.jwt("u", Some(Algorithm::RS256), None);
    assert_eq!(exchange(&node, &good).await.0, 200);
    for alg in ["HS256", "PS256", "ES256", "EdDSA", "none"] {
        let t = with_alg(&good, alg);
        assert_eq!(
            exchange(&node, &t).await,
            (401, "invalid_token".into()),
            "{alg}"
        );
    }
    // An EC key nobody configured.
    let t = p256.jwt("u", None, None);
    assert_eq!(exchange(&node, &t).await, (401, "invalid_token".into()));
    let _ = std::fs::remove_dir_all(d);
}

#[tokio::test]
async fn listing_the_old_and_the_new_key_file_accepts_tokens_of_both_during_a_rotation() {
    let d = dir();
    let old = KeyPair::make(&d, "old", Kind::Rsa);
    let new = KeyPair::make(&d, "new", Kind::P256);
    let other = KeyPair::make(&d, "other", Kind::Rsa);
    let node = Node::with(&[("HERALD_JWT_PUBLIC_KEY_FILES", &files(&[&old, &new]))]).await;
    assert_eq!(exchange(&node, &old.jwt("u", None, None)).await.0, 200);
    assert_eq!(exchange(&node, &new.jwt("u", None, None)).await.0, 200);
    // A `kid` that no key has is no reason to refuse a token a kid-less key verifies.
    assert_eq!(
        exchange(&node, &new.jwt("u", None, Some("2026-11")))
            .await
            .0,
        200
    );
    assert_eq!(
        exchange(&node, &other.jwt("u", None, None)).await,
        (401, "invalid_token".into())
    );
    let _ = std::fs::remove_dir_all(d);
}

#[tokio::test]
async fn a_key_file_that_is_not_a_public_key_stops_the_node_from_starting() {
    let d = dir();
    let rsa = KeyPair::make(&d, "rsa", Kind::Rsa);
    let cert = d.join("cert.pem");
    std::fs::write(
        &cert,
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let load = |file: &Path| {
        let env: Vec<(String, String)> = [
            ("HERALD_LISTEN", "127.0.0.1:0"),
            ("HERALD_API_KEY", crate::support::API_KEY),
            ("HERALD_JWT_PUBLIC_KEY_FILES", file.to_str().unwrap()),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        herald::config::Config::load(None, &env)
    };
    // A private key is refused by the config, naming the key and never showing the key.
    let err = load(&rsa.private).unwrap_err();
    assert!(err.to_string().contains("jwt_public_key_files"), "{err}");
    assert!(err.to_string().contains("private key"), "{err}");
    // Not a key at all: the start fails, naming the file.
    let config = load(&cert).expect("a readable PEM file passes the first stage");
    let err = herald::server::start(config).await.err().expect("refused");
    assert!(err.to_string().contains("cert.pem"), "{err}");
    // A missing file names itself.
    let err = load(&d.join("missing.pem")).unwrap_err();
    assert!(err.to_string().contains("missing.pem"), "{err}");
    let _ = std::fs::remove_dir_all(d);
}

#[tokio::test]
async fn an_rs256_token_from_a_jwks_goes_through_ticket_upgrade_subscribe_and_delivery() {
    let d = dir();
    let k1 = KeyPair::make(&d, "k1", Kind::Rsa);
    let jwks = JwksServer::start(vec![k1.jwk("k1", Some(Algorithm::RS256))]).await;
    let node = Node::with(&[
        ("HERALD_JWT_SECRET", UNSET),
        ("HERALD_JWT_JWKS_URL", &jwks.url()),
    ])
    .await;
    let jwt = k1.jwt("carol", Some(Algorithm::RS256), Some("k1"));
    until_accepted(&node, &jwt).await;
    delivers(&node, &jwt, "carol").await;
    // The JWK says RS256: a PS256 token under the same key and kid is refused.
    let ps = k1.jwt("carol", Some(Algorithm::PS256), Some("k1"));
    assert_eq!(exchange(&node, &ps).await, (401, "invalid_token".into()));
    let _ = std::fs::remove_dir_all(d);
}

#[tokio::test]
async fn a_jwks_that_cannot_be_fetched_at_start_gives_unavailable_until_it_can() {
    let d = dir();
    let k1 = KeyPair::make(&d, "k1", Kind::P256);
    let mut jwks = JwksServer::down_at(vec![k1.jwk("k1", None)]).await;
    let node = Node::with(&[
        ("HERALD_JWT_JWKS_URL", &jwks.url()),
        ("HERALD_JWKS_REFRESH_MIN_SECS", "1"),
    ])
    .await;
    let jwt = k1.jwt("u", None, Some("k1"));
    // Not accepted and not called invalid: the keys are not there yet.
    assert_eq!(exchange(&node, &jwt).await, (503, "unavailable".into()));
    // The secret still works meanwhile.
    node.ticket().await;
    jwks.up().await;
    until_accepted(&node, &jwt).await;
    let _ = std::fs::remove_dir_all(d);
}

#[tokio::test]
async fn an_unknown_kid_refetches_the_jwks_at_most_once_per_interval() {
    let d = dir();
    let k1 = KeyPair::make(&d, "k1", Kind::Ed25519);
    let k2 = KeyPair::make(&d, "k2", Kind::Ed25519);
    let jwks = JwksServer::start(vec![k1.jwk("k1", None)]).await;
    // The default interval, 30 s: far longer than this test.
    let node = Node::with(&[("HERALD_JWT_JWKS_URL", &jwks.url())]).await;
    jwks.answered(1).await;
    // k2 is published after the start: the first token naming it asks for a refetch (or the
    // start's own fetch had not landed yet, and the refetch it asks for brings k2 too).
    jwks.publish(vec![k1.jwk("k1", None), k2.jwk("k2", None)]);
    assert_eq!(exchange(&node, &k2.jwt("u", None, Some("k2"))).await.0, 200);
    let fetched = jwks.hits();
    assert_eq!(fetched, 2, "the start's fetch and one refetch");
    // Made-up kids within the interval: refused at once, and the JWKS server is left alone.
    for i in 0..20 {
        let t = k2.jwt("u", None, Some(&format!("made-up-{i}")));
        assert_eq!(exchange(&node, &t).await, (401, "invalid_token".into()));
    }
    assert_eq!(jwks.hits(), fetched);
    // The keys known still verify.
    assert_eq!(exchange(&node, &k1.jwt("u", None, Some("k1"))).await.0, 200);
    let _ = std::fs::remove_dir_all(d);
}

#[tokio::test]
async fn a_rotation_through_the_jwks_and_an_outage_of_it_fail_no_cached_key() {
    let d = dir();
    let k1 = KeyPair::make(&d, "k1", Kind::Rsa);
    let k2 = KeyPair::make(&d, "k2", Kind::Rsa);
    let k3 = KeyPair::make(&d, "k3", Kind::P384);
    let mut jwks = JwksServer::start(vec![k1.jwk("k1", None)]).await;
    let node = Node::with(&[
        ("HERALD_JWT_SECRET", UNSET),
        ("HERALD_JWT_JWKS_URL", &jwks.url()),
        ("HERALD_JWKS_REFRESH_MIN_SECS", "1"),
    ])
    .await;
    let t1 = k1.jwt("u", None, Some("k1"));
    until_accepted(&node, &t1).await;

    // Rotation: the provider publishes k2 beside k1, then signs with k2.
    jwks.publish(vec![k1.jwk("k1", None), k2.jwk("k2", None)]);
    let t2 = k2.jwt("u", None, Some("k2"));
    until_accepted(&node, &t2).await;
    assert_eq!(exchange(&node, &t1).await.0, 200, "k1 is still published");

    // Outage: the JWKS server goes away. Cached keys keep working; a new kid cannot be
    // fetched and is refused as unknown (not unavailable: the node has keys).
    jwks.down().await;
    let t3 = k3.jwt("u", None, Some("k3"));
    // Until the node has tried (and failed) to fetch for it, at most one try per second.
    let tried = node.gateway().jwt.jwks_attempts().unwrap();
    let deadline = tokio::time::Instant::now() + SLOW;
    while node.gateway().jwt.jwks_attempts().unwrap() == tried {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no refetch was tried"
        );
        assert_eq!(exchange(&node, &t3).await, (401, "invalid_token".into()));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(exchange(&node, &t1).await.0, 200);
    assert_eq!(exchange(&node, &t2).await.0, 200);
    delivers(&node, &t2, "u").await;

    // Back, with k3: it is fetched on demand.
    jwks.publish(vec![k2.jwk("k2", None), k3.jwk("k3", None)]);
    jwks.up().await;
    until_accepted(&node, &t3).await;
    // k1 is no longer published: gone with the refetch.
    assert_eq!(exchange(&node, &t1).await, (401, "invalid_token".into()));
    let _ = std::fs::remove_dir_all(d);
}

#[tokio::test]
async fn a_jwks_answer_over_1_mib_is_not_taken_and_tokens_stay_unavailable() {
    let d = dir();
    let k1 = KeyPair::make(&d, "k1", Kind::P256);
    let jwks = JwksServer::start(vec![k1.jwk("k1", None)]).await;
    // The right key set, then 1.5 MiB of whitespace: a valid document, over the bound.
    jwks.pad(1536 * 1024);
    let node = Node::with(&[("HERALD_JWT_JWKS_URL", &jwks.url())]).await;
    // The start's fetch and the first retry (a second later) were both answered, and refused.
    jwks.answered(2).await;
    let jwt = k1.jwt("u", None, Some("k1"));
    assert_eq!(exchange(&node, &jwt).await, (503, "unavailable".into()));
    // The same key set without the padding is taken at a later retry.
    jwks.pad(0);
    until_accepted(&node, &jwt).await;
    let _ = std::fs::remove_dir_all(d);
}

#[tokio::test]
async fn a_jwks_server_that_never_answers_is_given_up_after_10_s_and_asked_again() {
    let d = dir();
    let k1 = KeyPair::make(&d, "k1", Kind::Ed25519);
    let jwks = JwksServer::start(vec![k1.jwk("k1", None)]).await;
    jwks.stall(1);
    let node = Node::with(&[("HERALD_JWT_JWKS_URL", &jwks.url())]).await;
    let jwt = k1.jwt("u", None, Some("k1"));
    // While the first fetch hangs, tokens are refused after a short wait (2 s), not held.
    assert_eq!(exchange(&node, &jwt).await, (503, "unavailable".into()));
    // The hung fetch is abandoned at its timeout (10 s; without one it would hang for ever and
    // this would fail at its 20 s bound), and the retry brings the key.
    until_accepted(&node, &jwt).await;
    assert_eq!(jwks.hits(), 1, "one answered fetch, after the hung one");
    let _ = std::fs::remove_dir_all(d);
}
