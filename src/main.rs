//! The `herald` command: `serve` a node, mint a development `token`, `publish` over the HTTP API,
//! `subscribe` over WebSocket. Loads the config, sets up the logs (to stderr, `RUST_LOG`
//! filtering, default `herald=info`; as text, or as JSON lines when the config says
//! `log_format = "json"`: `serve` loads its config before anything is logged), maps errors to
//! exit codes (64 for a bad config, 1 for anything else). The only place that uses `anyhow` or
//! exits the process.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use futures_util::{SinkExt, StreamExt};
use herald::auth::{RawGrants, Signer, mint_token};
use herald::config::Config;
use herald::config::operations::LogFormat;
use herald::protocol::Codec;
use herald::protocol::frame::ServerFrame;
use tokio_tungstenite::tungstenite::Message as WsMessage;

#[derive(Parser)]
#[command(name = "herald", version, about = "Pub/sub fan-out WebSocket gateway")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a node. With nothing configured: development mode on 127.0.0.1:8080.
    Serve {
        /// TOML config file (HERALD_* environment variables override it).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Mint a JWT signed with the configured secret (HERALD_JWT_SECRET) or a private key
    /// (--key-file), for development and tests.
    Token {
        /// TOML config file.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Sign with this PEM private key (RSA, EC P-256/P-384, Ed25519) instead of the secret;
        /// the node verifies with its public key (jwt_public_key_files) or a JWKS.
        #[arg(long)]
        key_file: Option<PathBuf>,
        /// The algorithm (default: HS256 with the secret; RS256, ES256/ES384 or EdDSA by the
        /// key's type). PS256/384/512 and RS384/512 need it.
        #[arg(long)]
        alg: Option<String>,
        /// A `kid` for the header (the key's id in a JWKS).
        #[arg(long)]
        kid: Option<String>,
        /// An `aud` claim (for a node with jwt_audience).
        #[arg(long)]
        aud: Option<String>,
        /// An `iss` claim (for a node with jwt_issuer).
        #[arg(long)]
        iss: Option<String>,
        /// The user (`sub` claim).
        #[arg(long, default_value = "dev")]
        user: String,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl_secs: u64,
        /// Topic patterns the user may subscribe to (repeatable). No grant flags: every grant.
        #[arg(long)]
        subscribe: Vec<String>,
        /// Topic patterns the user may publish to (repeatable).
        #[arg(long)]
        publish: Vec<String>,
        /// Services the user may send to (repeatable).
        #[arg(long)]
        send: Vec<String>,
    },
    /// Publish a message through POST /v1/publish.
    Publish {
        /// The topic.
        topic: String,
        /// The payload: any JSON.
        data: String,
        /// The node's base URL.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        /// The server API key.
        #[arg(long, env = "HERALD_API_KEY", hide_env_values = true)]
        api_key: String,
    },
    /// Check a node's health (GET /healthz): exit 0 when it answers 200 within 3 s, 1
    /// otherwise. For container health checks, where no curl is installed.
    Health {
        /// The node's base URL.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        /// The path to check (`/readyz` for readiness).
        #[arg(long, default_value = "/healthz")]
        path: String,
    },
    /// Subscribe to topics over WebSocket and print each message as a JSON line.
    Subscribe {
        /// Topics.
        #[arg(required = true)]
        topics: Vec<String>,
        /// The node's base URL.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        /// A JWT (exchanged for a ticket first).
        #[arg(long, env = "HERALD_TOKEN", hide_env_values = true)]
        token: String,
        /// Resume after this offset (needs --epoch; applies to every topic given).
        #[arg(long, requires = "epoch")]
        since: Option<u64>,
        /// The epoch that --since belongs to.
        #[arg(long, requires = "since")]
        epoch: Option<String>,
        /// Use MessagePack frames instead of JSON.
        #[arg(long)]
        msgpack: bool,
        /// Exit after this many messages.
        #[arg(long)]
        count: Option<u64>,
    },
}

fn main() {
    let cli = Cli::parse();
    let done = match cli.cmd {
        // `serve` reads its config first: the log format is in it.
        Cmd::Serve { config } => {
            let config = load(config).unwrap_or_else(|e| exit_with(&e));
            init_logs(config.log_format);
            runtime().block_on(serve(config))
        }
        other => {
            init_logs(LogFormat::Text);
            runtime().block_on(dispatch(other))
        }
    };
    if let Err(e) = done {
        exit_with(&e);
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Logs to stderr in `format`, filtered by `RUST_LOG` (default `herald=info`).
fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "herald=info".into());
    // Colours only on a terminal: a log file or a collector gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.init(),
        // One object a line: the event's fields under `fields`, the current span's (a
        // connection's id, user and node) under `span`; not every span up to the root.
        LogFormat::Json => logs
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
}

/// Prints the error and exits: 64 for a bad config, 1 for anything else.
fn exit_with(e: &anyhow::Error) -> ! {
    eprintln!("herald: {e:#}");
    let code = if e.downcast_ref::<herald::config::ConfigError>().is_some() {
        64
    } else {
        1
    };
    std::process::exit(code);
}

fn load(config: Option<PathBuf>) -> anyhow::Result<Config> {
    let env: Vec<(String, String)> = std::env::vars().collect();
    Ok(Config::load(config.as_deref(), &env)?)
}

/// `herald serve` with its loaded config.
async fn serve(config: Config) -> anyhow::Result<()> {
    if config.dev_mode {
        print_dev_banner(&config)?;
    }
    herald::server::run(config).await?;
    Ok(())
}

async fn dispatch(cmd: Cmd) -> anyhow::Result<()> {
    match cmd {
        Cmd::Serve { config } => serve(load(config)?).await,
        Cmd::Token {
            config,
            key_file,
            alg,
            kid,
            aud,
            iss,
            user,
            ttl_secs,
            subscribe,
            publish,
            send,
        } => {
            let alg = alg
                .map(|a| {
                    a.parse::<jsonwebtoken::Algorithm>()
                        .map_err(|_| anyhow::anyhow!("--alg {a:?}: not a JWT algorithm"))
                })
                .transpose()?;
            let signer = match key_file {
                Some(path) => {
                    let pem = std::fs::read(&path)
                        .with_context(|| format!("cannot read {}", path.display()))?;
                    Signer::from_pem(&path, &pem, alg, kid)?
                }
                None => {
                    if alg.is_some_and(|a| a != jsonwebtoken::Algorithm::HS256) || kid.is_some() {
                        bail!("--alg other than HS256 and --kid need --key-file");
                    }
                    let env: Vec<(String, String)> = std::env::vars().collect();
                    let Some(secret) = Config::load_jwt_secret(config.as_deref(), &env)? else {
                        bail!(
                            "no JWT secret configured: set HERALD_JWT_SECRET (or jwt_secret in \
                             --config), or sign with a private key: --key-file"
                        );
                    };
                    Signer::hmac(&secret)
                }
            }
            .with_claims(aud, iss);
            let grants = if subscribe.is_empty() && publish.is_empty() && send.is_empty() {
                RawGrants::all()
            } else {
                RawGrants {
                    subscribe,
                    publish,
                    send,
                }
            };
            let t = signer.mint(&user, &grants, Duration::from_secs(ttl_secs))?;
            println!("{t}");
            Ok(())
        }
        Cmd::Publish {
            topic,
            data,
            url,
            api_key,
        } => {
            let data: serde_json::Value =
                serde_json::from_str(&data).context("the data argument must be JSON")?;
            let body = serde_json::json!({"topic": topic, "data": data});
            let out = http_post(&format!("{url}/v1/publish"), &api_key, &body.to_string()).await?;
            println!("{out}");
            Ok(())
        }
        Cmd::Health { url, path } => health(&format!("{url}{path}")).await,
        Cmd::Subscribe {
            topics,
            url,
            token,
            since,
            epoch,
            msgpack,
            count,
        } => subscribe(topics, url, token, since.zip(epoch), msgpack, count).await,
    }
}

fn print_dev_banner(config: &Config) -> anyhow::Result<()> {
    let Some(secret) = &config.jwt_secret else {
        bail!("development mode always has a JWT secret");
    };
    let jwt = mint_token(
        secret,
        "dev",
        &RawGrants::all(),
        Duration::from_secs(24 * 3600),
    )?;
    let base = format!("http://{}", config.listen);
    let ws = format!("ws://{}", config.listen);
    let key = config.api_key.as_str();
    let secret = config
        .generated
        .jwt_secret
        .as_deref()
        .unwrap_or("(configured: HERALD_JWT_SECRET)");
    let lines = [
        String::new(),
        "==================== HERALD DEVELOPMENT MODE ====================".into(),
        "Nothing was configured, so this node runs with generated secrets,".into(),
        "binds only loopback, and allows only loopback browser origins.".into(),
        "NOT FOR PRODUCTION: set HERALD_JWT_SECRET and HERALD_API_KEY.".into(),
        String::new(),
        format!("JWT signing secret : {secret}"),
        format!("server API key     : {key}"),
        "JWT for user `dev` (every grant, 24 h):".into(),
        jwt.clone(),
        String::new(),
        "Try it (three shells):".into(),
        format!(
            "  1. ticket:    curl -s -X POST {base}/v1/tickets -H 'Authorization: Bearer {jwt}'"
        ),
        format!("  2. subscribe: websocat '{ws}/topics/news?ticket=<ticket from 1>'"),
        format!("                (or: herald subscribe news --url {base} --token {jwt})"),
        format!(
            "  3. publish:   curl -s {base}/v1/publish -H 'Authorization: Bearer {key}' -d '{{\"topic\":\"news\",\"data\":{{\"hello\":\"world\"}}}}'"
        ),
        "=================================================================".into(),
    ];
    eprintln!("{}", lines.join("\n"));
    Ok(())
}

/// GETs `url`: Ok when it answers 200 within 3 s.
async fn health(url: &str) -> anyhow::Result<()> {
    use http_body_util::Empty;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    let client: Client<_, Empty<bytes::Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let uri: hyper::Uri = url
        .parse()
        .with_context(|| format!("{url:?} is not a URL"))?;
    let resp = tokio::time::timeout(Duration::from_secs(3), client.get(uri))
        .await
        .with_context(|| format!("GET {url}: no answer within 3 s"))?
        .with_context(|| format!("GET {url}"))?;
    if resp.status() != 200 {
        bail!("GET {url}: {}", resp.status());
    }
    Ok(())
}

/// POSTs `body` with a bearer token and returns the response body; non-2xx is an error.
async fn http_post(url: &str, bearer: &str, body: &str) -> anyhow::Result<String> {
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    let client: Client<_, Full<bytes::Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let req = hyper::Request::post(url)
        .header("authorization", format!("Bearer {bearer}"))
        .header("content-type", "application/json")
        .body(Full::new(bytes::Bytes::from(body.to_owned())))
        .context("building the request")?;
    let resp = client
        .request(req)
        .await
        .with_context(|| format!("POST {url}"))?;
    let status = resp.status();
    let bytes = resp.into_body().collect().await?.to_bytes();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    if !status.is_success() {
        bail!("POST {url}: {status}: {text}");
    }
    Ok(text)
}

async fn subscribe(
    topics: Vec<String>,
    url: String,
    token: String,
    since: Option<(u64, String)>,
    msgpack: bool,
    count: Option<u64>,
) -> anyhow::Result<()> {
    let out = http_post(&format!("{url}/v1/tickets"), &token, "").await?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    let ticket = v["ticket"].as_str().context("no ticket in the answer")?;
    let ws_url = format!("{}/ws?ticket={ticket}", url.replacen("http", "ws", 1));
    let codec = if msgpack { Codec::MsgPack } else { Codec::Json };
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        ws_url.as_str(),
    )?;
    req.headers_mut()
        .insert("sec-websocket-protocol", codec.subprotocol().parse()?);
    let (mut ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    for (i, t) in topics.iter().enumerate() {
        let mut f = serde_json::json!({"op": "sub", "id": i + 1, "topic": t});
        if let Some((o, e)) = &since {
            f["since"] = serde_json::json!({"offset": o, "epoch": e});
        }
        let m = match codec {
            Codec::Json => WsMessage::text(f.to_string()),
            Codec::MsgPack => WsMessage::binary(rmp_serde::to_vec_named(&f)?),
        };
        ws.send(m).await?;
    }
    let mut seen = 0u64;
    while let Some(m) = ws.next().await {
        let m = m?;
        let payload = match &m {
            WsMessage::Text(t) => t.as_bytes(),
            WsMessage::Binary(b) => &b[..],
            WsMessage::Close(c) => bail!("closed by the server: {c:?}"),
            _ => continue,
        };
        let frame = codec
            .decode_server(payload)
            .map_err(|e| anyhow::anyhow!("bad frame from server: {e}"))?;
        println!("{}", serde_json::to_string(&frame)?);
        if let ServerFrame::Msg { .. } = frame {
            seen += 1;
            if count.is_some_and(|c| seen >= c) {
                return Ok(());
            }
        }
    }
    Ok(())
}
