//! The `herald` command: `serve` (development mode and config errors), `token`, `publish` and
//! `subscribe`, run as the real binary.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::proc::{
    free_addr, herald, run, sigterm, stderr, stdout, wait_exit, wait_healthy,
};
use crate::support::{API_KEY, Codec, JWT_SECRET, Node, grants, upgrade};

const STARTUP: Duration = Duration::from_secs(15);

/// The text after the first `: ` of `line`, trimmed.
fn after_colon(line: &str) -> String {
    line.split_once(": ")
        .expect("a `name : value` line")
        .1
        .trim()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_with_nothing_configured_prints_the_dev_banner_and_serves_on_loopback() {
    let addr = free_addr();
    let listen = addr.to_string();
    let mut child = herald(&["serve"], &[("HERALD_LISTEN", &listen)])
        .spawn()
        .expect("spawning herald serve");
    let mut err = stderr(&mut child);
    err.until(STARTUP, |l| l.contains("DEVELOPMENT MODE")).await;
    let key = after_colon(
        &err.until(STARTUP, |l| l.starts_with("server API key"))
            .await,
    );
    err.until(STARTUP, |l| l.starts_with("JWT for user `dev`"))
        .await;
    let jwt = err
        .until(STARTUP, |l| !l.trim().is_empty())
        .await
        .trim()
        .to_owned();
    err.drain();
    assert_eq!(jwt.split('.').count(), 3, "a JWT: {jwt}");
    assert!(key.len() >= 16, "an API key: {key}");

    let node = Node::external(addr);
    wait_healthy(&node, STARTUP).await;
    // The printed JWT and API key work against the node.
    let ticket = node.ticket_with(&jwt).await;
    let mut c = node
        .open(&format!("/ws?ticket={ticket}"), Codec::Json)
        .await;
    assert_eq!(c.next_frame().await["user"], "dev");
    c.sub(1, "news").await;
    let body = json!({"topic": "news", "data": {"hello": "world"}}).to_string();
    let (status, out) = node.http.post("/v1/publish", Some(&key), &body).await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(c.next_msg("news").await["data"], json!({"hello": "world"}));

    sigterm(&child);
    assert_eq!(wait_exit(&mut child, STARTUP).await.code(), Some(0));
}

#[tokio::test]
async fn dev_mode_refuses_a_non_loopback_listen_address_with_exit_64() {
    let (status, _, err) = run(&["serve"], &[("HERALD_LISTEN", "0.0.0.0:0")]).await;
    assert_eq!(status.code(), Some(64), "{err}");
    assert!(err.contains("listen"), "{err}");
}

#[tokio::test]
async fn invalid_config_value_exits_64_naming_the_key() {
    let listen = free_addr().to_string();
    let (status, _, err) = run(
        &["serve"],
        &[
            ("HERALD_LISTEN", &listen),
            ("HERALD_API_KEY", API_KEY),
            ("HERALD_JWT_SECRET", JWT_SECRET),
            ("HERALD_MAX_MESSAGE_BYTES", "abc"),
        ],
    )
    .await;
    assert_eq!(status.code(), Some(64), "{err}");
    assert!(err.contains("MAX_MESSAGE_BYTES"), "{err}");

    // A misspelt variable is refused too, with a suggestion.
    let (status, _, err) = run(&["serve"], &[("HERALD_LISTN", &listen)]).await;
    assert_eq!(status.code(), Some(64), "{err}");
    assert!(
        err.contains("HERALD_LISTN") && err.contains("HERALD_LISTEN"),
        "{err}"
    );
}

/// Runs `herald token args` with `env`; returns the JWT it printed.
async fn token(args: &[&str], env: &[(&str, &str)]) -> String {
    let mut all = vec!["token"];
    all.extend_from_slice(args);
    let (status, out, err) = run(&all, env).await;
    assert_eq!(status.code(), Some(0), "herald {all:?}: {err}");
    let jwt = out.trim().to_owned();
    assert_eq!(jwt.split('.').count(), 3, "a JWT: {out:?}");
    jwt
}

#[tokio::test]
async fn token_with_only_the_jwt_secret_prints_a_jwt_the_node_accepts() {
    let node = Node::start().await;
    let jwt = token(&["--user", "u"], &[("HERALD_JWT_SECRET", JWT_SECRET)]).await;
    let ticket = node.ticket_with(&jwt).await;
    let mut c = node
        .open(&format!("/ws?ticket={ticket}"), Codec::Json)
        .await;
    assert_eq!(c.next_frame().await["user"], "u");
}

#[tokio::test]
async fn token_grant_flags_limit_what_the_ticket_allows() {
    let node = Node::start().await;
    let env = [
        ("HERALD_JWT_SECRET", JWT_SECRET),
        ("HERALD_API_KEY", API_KEY),
    ];
    let jwt = token(&["--user", "u", "--subscribe", "news.>"], &env).await;
    let ticket = node.ticket_with(&jwt).await;
    let mut c = node
        .open(&format!("/topics/news.eu?ticket={ticket}"), Codec::Json)
        .await;
    assert_eq!(c.next_frame().await["user"], "u");
    let ticket = node.ticket_with(&jwt).await;
    upgrade(node.addr, &format!("/topics/admin?ticket={ticket}"), &[])
        .await
        .assert_refused(403, "forbidden");
    // No grant flag: every grant.
    let jwt = token(&["--user", "root"], &env).await;
    let ticket = node.ticket_with(&jwt).await;
    let mut c = node
        .open(&format!("/ws?ticket={ticket}"), Codec::Json)
        .await;
    c.next_frame().await;
    let ok = c
        .request(json!({"op": "pub", "id": 1, "topic": "any.thing", "data": 1}))
        .await;
    assert_eq!(ok["op"], "ok", "{ok}");
}

#[tokio::test]
async fn publish_command_prints_offset_and_epoch() {
    let node = Node::start().await;
    let mut c = node.client(Codec::MsgPack).await;
    c.sub(1, "news").await;
    let url = format!("http://{}", node.addr);
    let args = [
        "publish",
        "news",
        r#"{"a": [1, "two"]}"#,
        "--url",
        url.as_str(),
        "--api-key",
        API_KEY,
    ];
    let (status, out, err) = run(&args, &[]).await;
    assert_eq!(status.code(), Some(0), "{err}");
    let v: Value = serde_json::from_str(out.trim()).expect("JSON on stdout");
    assert_eq!(v["offset"], 1, "{v}");
    assert!(v["epoch"].is_string(), "{v}");
    let m = c.next_msg("news").await;
    assert_eq!(
        (m["data"].clone(), m["epoch"].clone()),
        (json!({"a": [1, "two"]}), v["epoch"].clone())
    );

    // A wrong key fails with exit 1 and names the refusal.
    let args = [
        "publish",
        "news",
        "1",
        "--url",
        url.as_str(),
        "--api-key",
        "wrong-key-0123456789",
    ];
    let (status, _, err) = run(&args, &[]).await;
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("invalid_api_key"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_command_prints_the_msg_line_and_exits_after_count() {
    let node = Node::start().await;
    let jwt = node.jwt("sam", &grants(&["news"], &[], &[]));
    let url = format!("http://{}", node.addr);
    for flag in [None, Some("--msgpack")] {
        let mut args = vec![
            "subscribe",
            "news",
            "--url",
            url.as_str(),
            "--token",
            jwt.as_str(),
            "--count",
            "1",
        ];
        args.extend(flag);
        let mut child = herald(&args, &[])
            .spawn()
            .expect("spawning herald subscribe");
        stderr(&mut child).drain();
        let mut out = stdout(&mut child);
        // Once the `ok` is printed, the subscription is live.
        out.until(STARTUP, |l| l.contains("\"ok\"")).await;
        let (offset, epoch) = node.publish("news", json!({"flag": flag})).await;
        let line = out.until(STARTUP, |l| l.contains("\"msg\"")).await;
        let m: Value = serde_json::from_str(&line).expect("a JSON line");
        assert_eq!(
            m,
            json!({"op": "msg", "topic": "news", "offset": offset, "epoch": epoch, "data": {"flag": flag}}),
            "{flag:?}"
        );
        let status = wait_exit(&mut child, STARTUP).await;
        assert_eq!(status.code(), Some(0), "{flag:?}: {:?}", out.seen);
    }
}

#[tokio::test]
async fn token_with_a_key_file_signs_with_rsa_ec_and_ed25519_keys_the_node_accepts() {
    use crate::support::keys::{KeyPair, Kind};
    let d = crate::tls::tempdir();
    let keys = [
        KeyPair::make(&d, "rsa", Kind::Rsa),
        KeyPair::make(&d, "p256", Kind::P256),
        KeyPair::make(&d, "p384", Kind::P384),
        KeyPair::make(&d, "ed", Kind::Ed25519),
    ];
    let files: Vec<String> = keys
        .iter()
        .map(|k| k.public.to_string_lossy().into_owned())
        .collect();
    let node = Node::with(&[
        ("HERALD_JWT_SECRET", crate::support::UNSET),
        ("HERALD_JWT_PUBLIC_KEY_FILES", &files.join(",")),
        ("HERALD_JWT_AUDIENCE", "herald"),
    ])
    .await;
    for (key, alg) in keys.iter().zip(["RS256", "ES256", "ES384", "EdDSA"]) {
        let path = key.private.to_string_lossy().into_owned();
        let jwt = token(
            &["--user", "k", "--key-file", &path, "--aud", "herald"],
            &[],
        )
        .await;
        let header: Value = serde_json::from_slice(
            &base64::Engine::decode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                jwt.split('.').next().unwrap(),
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(header["alg"], alg, "the key's own algorithm by default");
        let ticket = node.ticket_with(&jwt).await;
        let mut c = node
            .open(&format!("/ws?ticket={ticket}"), Codec::Json)
            .await;
        assert_eq!(c.next_frame().await["user"], "k");
    }
    // Another algorithm of the family, and a kid in the header.
    let rsa = keys[0].private.to_string_lossy().into_owned();
    let args = [
        "--key-file",
        &rsa,
        "--alg",
        "PS384",
        "--kid",
        "k-2026",
        "--aud",
        "herald",
    ];
    let jwt = token(&args, &[]).await;
    node.ticket_with(&jwt).await;
    // An algorithm outside the key's family is refused by the command.
    let (status, _, err) = run(&["token", "--key-file", &rsa, "--alg", "ES256"], &[]).await;
    assert_ne!(status.code(), Some(0));
    assert!(err.contains("rsa.pem"), "{err}");
    let _ = std::fs::remove_dir_all(d);
}

#[tokio::test]
async fn health_exits_0_for_a_live_node_and_1_when_none_answers() {
    let node = Node::start().await;
    let url = format!("http://{}", node.addr);
    let (status, _, err) = run(&["health", "--url", &url], &[]).await;
    assert_eq!(status.code(), Some(0), "{err}");
    let (status, _, err) = run(&["health", "--url", &url, "--path", "/readyz"], &[]).await;
    assert_eq!(status.code(), Some(0), "{err}");
    let nobody = format!("http://{}", free_addr());
    let (status, _, err) = run(&["health", "--url", &nobody], &[]).await;
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("/healthz"), "{err}");
}

#[test]
fn the_compose_files_node_config_is_valid() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/herald.toml");
    let env: Vec<(String, String)> = [
        ("HERALD_API_KEY", API_KEY),
        ("HERALD_JWT_SECRET", JWT_SECRET),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let c = herald::config::Config::load(Some(&path), &env).expect("deploy/herald.toml is valid");
    assert_eq!(c.auth_service.as_deref(), Some("app"));
    assert!(c.limits.proxy_protocol);
}

#[tokio::test]
async fn serve_raises_its_open_files_limit_and_says_when_max_connections_cannot_fit() {
    // Started under a soft limit of 1024 and a hard limit of 4096 (util-linux's prlimit).
    let addr = free_addr();
    let listen = addr.to_string();
    let mut child = tokio::process::Command::new("prlimit")
        .args(["--nofile=1024:4096", env!("CARGO_BIN_EXE_herald"), "serve"])
        .env_clear()
        .envs([
            ("HERALD_LISTEN", listen.as_str()),
            ("HERALD_API_KEY", API_KEY),
            ("HERALD_JWT_SECRET", JWT_SECRET),
            ("HERALD_MAX_CONNECTIONS", "10000"),
            ("RUST_LOG", "herald=info"),
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("prlimit runs (util-linux)");
    let mut err = stderr(&mut child);
    let line = err
        .until(STARTUP, |l| l.contains("max_connections is"))
        .await;
    // Raised to the hard limit (4096, not 1024), with the fix in the same line.
    assert!(line.contains("only 4096 files"), "{line}");
    assert!(line.contains("LimitNOFILE=10256"), "{line}");
    assert!(line.contains("ulimit -n 10256"), "{line}");
    err.drain();
    wait_healthy(&Node::external(addr), STARTUP).await;
}
