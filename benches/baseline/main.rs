//! herald-baseline: the smallest tokio-tungstenite fan-out server, the yardstick Herald is
//! measured against where nothing can be batched (benches/README.md, "The baseline").
//! `benches/scenario.sh` runs it after Herald with the same `herald-bench` options (`--baseline`).
//!
//! It speaks only the part of Herald's JSON protocol that `herald-bench` uses, with frames of the
//! same shape and size:
//!
//! - on connect, `{"op":"welcome",...}`;
//! - `{"op":"sub","id":N,"topic":T}`: the connection joins T; `{"op":"ok","id":N,"offset":O,"epoch":E}`;
//! - `{"op":"pub","id":N,"topic":T,"data":D}`: the same `ok`, and ONE frame
//!   `{"op":"msg","topic":T,"offset":O,"epoch":E,"data":D}` encoded for all of T's subscribers
//!   (`D` as it arrived, `O` a per-topic counter from 1, `E` as long as Herald's epochs). Each
//!   subscriber's queue gets a clone of the same `Message::Text`, whose bytes are shared.
//!
//! Each connection has a reader task (requests) and a writer task that takes everything queued
//! for the connection (`feed` each frame, one `flush`: the batch leaves in one write). Pings are
//! answered by tungstenite. The WebSocket settings are `accept_async`'s defaults: among them a
//! 128 KiB read buffer per connection, zero-filled at each read (about 138 KiB of RSS per
//! subscribed connection).
//!
//! Left out on purpose, because it is a baseline and not a gateway: authentication and tickets
//! (any path is upgraded, the query is ignored), topic validation and grants, every limit
//! (connections, frame rate, frame size beyond tungstenite's, queue length: a subscriber's queue
//! is unbounded), heartbeats and idle timeouts, `unsub` (a second `sub` to a topic gets a second
//! copy of each message), history and `since`, presence, `send`, MessagePack, permessage-deflate,
//! HTTP publish, metrics and the graceful drain. Loopback addresses only.

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::hash::BuildHasher as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::{self, UnboundedSender};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// A connection's queue of frames to write.
type Queue = UnboundedSender<Message>;

/// Most frames one batch takes from a queue (what is left goes in the next batch).
const MAX_BATCH: usize = 1024;

struct Topic {
    /// Subscribers' queues; those whose connection ended are dropped at the next publish.
    subs: Vec<Queue>,
    /// The offset of the last message (0: none yet).
    offset: u64,
    epoch: String,
}

struct Hub {
    topics: Mutex<HashMap<String, Topic>>,
    /// 8 random hex digits; a topic's epoch is this and the topic's number in hex, as Herald's
    /// in-memory epochs are, so that `msg` frames have the same size.
    node_epoch: String,
}

impl Hub {
    /// Runs `f` on `name`'s topic (created if new) under the lock; `f` never waits.
    fn with_topic<R>(&self, name: &str, f: impl FnOnce(&mut Topic) -> R) -> R {
        let mut topics = self.topics.lock().unwrap_or_else(PoisonError::into_inner);
        let n = topics.len();
        let topic = topics.entry(name.to_owned()).or_insert_with(|| Topic {
            subs: Vec::new(),
            offset: 0,
            epoch: format!("{}{n:x}", self.node_epoch),
        });
        f(topic)
    }
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut listen = "127.0.0.1:8080".to_owned();
    while let Some(a) = args.next() {
        match (a.as_str(), args.next()) {
            ("--listen", Some(v)) => listen = v,
            _ => {
                eprintln!(
                    "usage: herald-baseline [--listen 127.0.0.1:PORT]  (default 127.0.0.1:8080)"
                );
                return ExitCode::from(2);
            }
        }
    }
    let addr = match listen.parse::<SocketAddr>() {
        Ok(a) if a.ip().is_loopback() => a,
        _ => {
            eprintln!(
                "herald-baseline: --listen must be a loopback address and port, not {listen:?}"
            );
            return ExitCode::from(2);
        }
    };
    // Herald's default runtime: multi-threaded, one worker per CPU this process may run on.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build();
    match rt
        .map_err(|e| e.to_string())
        .and_then(|rt| rt.block_on(serve(addr)))
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herald-baseline: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(addr: SocketAddr) -> Result<(), String> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let random = std::collections::hash_map::RandomState::new().hash_one(std::process::id());
    let hub = Arc::new(Hub {
        topics: Mutex::default(),
        node_epoch: format!("{:08x}", random as u32),
    });
    eprintln!("herald-baseline listening on {addr}");
    let mut n = 0u64;
    loop {
        match listener.accept().await {
            Ok((tcp, _)) => {
                n += 1;
                tokio::spawn(connection(hub.clone(), tcp, n));
            }
            Err(e) => {
                // Out of file descriptors, typically: back off instead of spinning.
                eprintln!("herald-baseline: accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn connection(hub: Arc<Hub>, tcp: TcpStream, n: u64) {
    let _ = tcp.set_nodelay(true);
    let Ok(ws) = tokio_tungstenite::accept_async(tcp).await else {
        return;
    };
    let (mut sink, mut stream) = ws.split();
    let (queue, mut rx) = mpsc::unbounded_channel::<Message>();
    let welcome = format!(
        r#"{{"op":"welcome","conn":"c{n}","node":"herald-baseline","user":"anonymous","ping":0}}"#
    );
    let _ = queue.send(Message::text(welcome));
    // The writer: everything queued, one `feed` per frame and one `flush` per batch.
    let writer = tokio::spawn(async move {
        let mut batch = Vec::with_capacity(16);
        while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
            for m in batch.drain(..) {
                if sink.feed(m).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
    });
    // The reader, woken only when the socket is readable: polling tungstenite's read side on
    // every write would zero its 128 KiB read buffer each time.
    while let Some(Ok(m)) = stream.next().await {
        match m {
            Message::Text(t) => request(&hub, &queue, t.as_str()),
            Message::Close(_) => break,
            _ => {}
        }
    }
    // Subscribers' queues elsewhere keep `rx` open until the next publish finds it dead.
    writer.abort();
}

/// Handles one request, queueing the reply (and, for `pub`, the message to every subscriber).
fn request(hub: &Hub, queue: &Queue, text: &str) {
    let req = serde_json::from_str::<HashMap<&str, &RawValue>>(text).unwrap_or_default();
    let str_field = |k| {
        req.get(k)
            .and_then(|v| serde_json::from_str::<&str>(v.get()).ok())
    };
    let id = req.get("id").and_then(|v| v.get().parse::<u64>().ok());
    // A topic read as a borrowed string has no escapes: it goes into frames as it is.
    let (offset, epoch) = match (str_field("op"), id, str_field("topic")) {
        (Some("sub"), Some(_), Some(topic)) => hub.with_topic(topic, |t| {
            t.subs.push(queue.clone());
            (t.offset, t.epoch.clone())
        }),
        (Some("pub"), Some(_), Some(topic)) => {
            let data = req.get("data").map_or("null", |d| d.get());
            hub.with_topic(topic, |t| {
                t.offset += 1;
                let frame = format!(
                    r#"{{"op":"msg","topic":"{topic}","offset":{},"epoch":"{}","data":{data}}}"#,
                    t.offset, t.epoch
                );
                // Encoded once; each clone shares the bytes.
                let msg = Message::Text(Utf8Bytes::from(frame));
                t.subs.retain(|s| s.send(msg.clone()).is_ok());
                (t.offset, t.epoch.clone())
            })
        }
        _ => {
            let id = id.map_or(String::new(), |id| format!(r#""id":{id},"#));
            let error = format!(
                r#"{{"op":"error",{id}"code":"bad_frame","message":"herald-baseline knows only sub and pub, each with an id and a topic"}}"#
            );
            let _ = queue.send(Message::text(error));
            return;
        }
    };
    let id = id.unwrap_or_default();
    let ok = format!(r#"{{"op":"ok","id":{id},"offset":{offset},"epoch":"{epoch}"}}"#);
    let _ = queue.send(Message::text(ok));
}
