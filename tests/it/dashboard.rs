//! `GET /dashboard`: the admin key as a bearer or, once given in `?key=`, as a cookie that holds
//! a digest of it (and opens the dashboard only); a page whose assets are all the node's own;
//! `/dashboard/data` with this node's points and, through Redis, every live node's summary.
//! (The page drawing in a real browser: `tests/browser`, run by `./test.sh`.)

use std::time::Duration;

use hyper::Method;
use serde_json::Value;

use crate::support::redis::RedisServer;
use crate::support::{API_KEY, Codec, Node, WAIT};

/// `GET path` with `headers`.
async fn get(node: &Node, path: &str, headers: &[(&str, &str)]) -> crate::support::http::Response {
    node.http
        .request(Method::GET, path, headers, Vec::new())
        .await
}

/// `/dashboard/data` with the API key (the admin key of these nodes).
async fn data(node: &Node, query: &str) -> Value {
    let auth = format!("Bearer {API_KEY}");
    let r = get(
        node,
        &format!("/dashboard/data{query}"),
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.header("cache-control"), Some("no-store"));
    r.json()
}

/// Reads `/dashboard/data` until `done` holds of it (bounded by `bound`).
async fn data_until(
    node: &Node,
    bound: Duration,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + bound;
    loop {
        let d = data(node, "").await;
        if done(&d) {
            return d;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never: {what} within {bound:?}: {d}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_dashboard_takes_the_admin_key_once_and_keeps_a_digest_of_it_in_a_cookie() {
    let node = Node::start().await;
    for path in ["/dashboard", "/dashboard/data", "/dashboard/app.js"] {
        let r = get(&node, path, &[]).await;
        assert_eq!(
            (r.status, r.json()["error"].as_str()),
            (401, Some("missing_authorization")),
            "{path}"
        );
        let r = get(
            &node,
            path,
            &[("authorization", "Bearer wrong-key-0123456789abc")],
        )
        .await;
        assert_eq!(
            (r.status, r.json()["error"].as_str()),
            (401, Some("invalid_admin_key")),
            "{path}"
        );
    }
    let r = get(&node, "/dashboard?key=wrong-key-0123456789abc", &[]).await;
    assert_eq!(r.status, 401);
    assert!(r.header("set-cookie").is_none());

    // The key once, in the address: a cookie, and a redirect that drops the key.
    let r = get(&node, &format!("/dashboard?key={API_KEY}"), &[]).await;
    assert_eq!(r.status, 303);
    assert_eq!(r.header("location"), Some("/dashboard"));
    let set = r.header("set-cookie").expect("a cookie").to_owned();
    for attribute in ["Path=/dashboard", "HttpOnly", "SameSite=Strict", "Max-Age="] {
        assert!(set.contains(attribute), "{set}");
    }
    assert!(!set.contains("Secure"), "plain HTTP: {set}");
    assert!(
        !set.contains(API_KEY),
        "the cookie holds a digest, not the key: {set}"
    );
    let cookie = set.split(';').next().unwrap().to_owned();

    let page = get(&node, "/dashboard", &[("cookie", &cookie)]).await;
    assert_eq!(page.status, 200, "{}", page.text);
    assert!(
        page.header("content-type")
            .unwrap()
            .starts_with("text/html")
    );
    let csp = page.header("content-security-policy").expect("a CSP");
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    assert!(page.text.contains("<canvas") && page.text.contains("/dashboard/app.js"));
    let script = get(&node, "/dashboard/app.js", &[("cookie", &cookie)]).await;
    assert_eq!(script.status, 200);
    assert!(
        script
            .header("content-type")
            .unwrap()
            .starts_with("text/javascript")
    );
    // Every asset is the node's own: nothing is loaded from anywhere else.
    for text in [&page.text, &script.text] {
        assert!(!text.contains("http://") && !text.contains("https://") && !text.contains("//cdn"));
    }
    let d = get(&node, "/dashboard/data", &[("cookie", &cookie)]).await;
    assert_eq!(d.status, 200);
    // The cookie opens the dashboard only; a cookie of another key opens nothing.
    let auth_only = get(&node, "/metrics", &[("cookie", &cookie)]).await;
    assert_eq!(auth_only.status, 401);
    let forged =
        "herald_dashboard=0000000000000000000000000000000000000000000000000000000000000000";
    assert_eq!(
        get(&node, "/dashboard", &[("cookie", forged)]).await.status,
        401
    );
}

#[tokio::test]
async fn one_node_shows_its_own_points_as_the_cluster() {
    let node = Node::start().await;
    let _c = node.client(Codec::Json).await;
    let d = data_until(&node, WAIT, "a point with the connection", |d| {
        d["points"]
            .as_array()
            .and_then(|p| p.last())
            .is_some_and(|p| p["connections"] == 1.0)
    })
    .await;
    assert_eq!(d["node"], crate::support::NODE_ID);
    assert_eq!(d["redis"], false);
    let last = d["points"].as_array().unwrap().last().unwrap().clone();
    for field in [
        "at",
        "deliveries_per_sec",
        "publish_to_write_ms",
        "disconnects_per_sec",
        "slow_consumers_total",
        "cpu",
        "rss_bytes",
    ] {
        assert!(last.get(field).is_some(), "{field} missing: {last}");
    }
    assert!(last["redis"].is_null());
    let nodes = d["cluster"]["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 1, "{d}");
    assert_eq!(nodes[0]["node"], crate::support::NODE_ID);
    // `since`: only the points after it.
    let at = last["at"].as_u64().unwrap();
    let later = data(&node, &format!("?since={at}")).await;
    assert!(
        later["points"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["at"].as_u64().unwrap() > at)
    );
    let auth = format!("Bearer {API_KEY}");
    let bad = get(
        &node,
        "/dashboard/data?since=yesterday",
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(
        (bad.status, bad.json()["error"].as_str()),
        (400, Some("bad_request"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_of_a_cluster_shows_in_each_nodes_dashboard() {
    let redis = RedisServer::start();
    let url = redis.url();
    let a = Node::with(&[
        ("HERALD_REDIS_URL", url.as_str()),
        ("HERALD_NODE_ID", "dash-a"),
    ])
    .await;
    let b = Node::with(&[
        ("HERALD_REDIS_URL", url.as_str()),
        ("HERALD_NODE_ID", "dash-b"),
    ])
    .await;
    let _c = b.client(Codec::Json).await;
    let both = |d: &Value| {
        let nodes = d["cluster"]["nodes"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let mut ids: Vec<String> = nodes
            .iter()
            .filter_map(|n| n["node"].as_str().map(str::to_owned))
            .collect();
        ids.sort();
        ids == ["dash-a", "dash-b"]
            && nodes
                .iter()
                .any(|n| n["node"] == "dash-b" && n["connections"] == 1.0)
    };
    let d = data_until(&a, WAIT, "both nodes in a's view", both).await;
    assert_eq!(d["redis"], true);
    let nodes = d["cluster"]["nodes"].as_array().unwrap();
    assert!(nodes.iter().all(|n| n["redis"]["connected"] == true), "{d}");
    data_until(&b, WAIT, "both nodes in b's view", both).await;
    // Each summary lives a few seconds unless shared again: in Redis under the nodes' hash tag.
    let ttl: i64 = redis
        .cli(&["PTTL", "herald:{nodes}:summary:dash-a"])
        .trim()
        .parse()
        .unwrap();
    assert!((1..=5000).contains(&ttl), "{ttl}");
}
