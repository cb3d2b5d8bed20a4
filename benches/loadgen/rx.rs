//! The receive hot path. Each subscriber is one tokio task that waits for readiness and then
//! reads up to 64 KiB with `try_read` into a buffer shared by every connection on that thread
//! (so 10,000 connections do not hold 10,000 big buffers), parses WebSocket frames straight out
//! of the chunk, and pulls `t` and `s` out of each `msg` by scanning. Only a frame that straddles
//! two reads is copied (into a small per-connection remainder).

use crate::codec::{self, Codec, Scan};
use crate::conn::Ws;
use crate::hist::Recorder;
use crate::wire::{self, Head, MaskRng, OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT};
use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;

const CHUNK: usize = 64 << 10;

thread_local! {
    static RBUF: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; CHUNK].into_boxed_slice());
}

/// State shared by all receivers.
pub struct Shared {
    pub hist: Recorder,
    /// Unique deliveries so far (all subscribers).
    pub delivered: AtomicU64,
    /// Receive time (bench clock, ns) of the latest new delivery.
    pub last_rx_ns: AtomicU64,
}

/// What one subscriber saw.
#[derive(Default, Clone, Debug)]
pub struct SubStats {
    pub topic: usize,
    /// Distinct bench messages received.
    pub unique: u64,
    /// A seq received again.
    pub dups: u64,
    /// A seq received after a higher one.
    pub out_of_order: u64,
    /// A seq beyond what was published to the topic (e.g. left over from another run).
    pub unexpected: u64,
    /// `msg` frames without our `t`/`s`.
    pub foreign: u64,
    /// `error` frames pushed by the server during the run.
    pub server_errors: u64,
    pub first_error: Option<String>,
    pub frames: u64,
    pub bytes: u64,
    /// Why the connection ended before the bench stopped it, if it did.
    pub ended: Option<String>,
}

struct Rx<'a> {
    codec: Codec,
    sh: &'a Shared,
    st: SubStats,
    bits: Vec<u64>,
    nbits: u64,
    highest: Option<u64>,
    fresh: u64,
    /// Remainder of a frame that straddles two reads.
    left: Vec<u8>,
    /// Fragmented message being reassembled (the server does not fragment; tolerated).
    frag: Vec<u8>,
    /// Pongs to write.
    out: Vec<u8>,
    rng: MaskRng,
}

/// Run one subscriber until `stop` or until the server ends the connection.
pub async fn run(
    ws: Ws,
    topic: usize,
    topic_msgs: u64,
    sh: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> SubStats {
    let Ws {
        mut stream,
        reader,
        rng,
        codec,
    } = ws;
    let words = topic_msgs.div_ceil(64) as usize;
    let mut rx = Rx {
        codec,
        sh: &sh,
        st: SubStats {
            topic,
            ..Default::default()
        },
        bits: vec![0; words],
        nbits: topic_msgs,
        highest: None,
        fresh: 0,
        left: Vec::new(),
        frag: Vec::new(),
        out: Vec::new(),
        rng,
    };
    let early = reader.into_leftover();
    if !early.is_empty() {
        rx.on_chunk(&early, crate::now_ns());
    }
    loop {
        if rx.st.ended.is_some() || *stop.borrow() {
            break;
        }
        if !rx.out.is_empty() {
            if let Err(e) = stream.write_all(&rx.out).await {
                rx.st.ended = Some(format!("write: {}", e.kind()));
                break;
            }
            rx.out.clear();
        }
        tokio::select! {
            biased;
            r = stop.changed() => if r.is_err() || *stop.borrow() { break },
            r = stream.readable() => if let Err(e) = r {
                rx.st.ended = Some(format!("read: {}", e.kind()));
                break;
            },
        }
        let res = RBUF.with(|b| {
            let mut b = b.borrow_mut();
            match stream.try_read(&mut b[..]) {
                Ok(0) => Err("connection closed by server (EOF)".to_string()),
                Ok(n) => {
                    rx.on_chunk(&b[..n], crate::now_ns());
                    Ok(())
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
                Err(e) => Err(format!("read: {}", e.kind())),
            }
        });
        if let Err(e) = res {
            rx.st.ended = Some(e);
        }
    }
    if rx.st.ended.is_none() {
        close_politely(&stream, &mut rx.rng);
    }
    rx.st
}

/// Best effort: a close frame if the socket can take it right now.
fn close_politely(stream: &TcpStream, rng: &mut MaskRng) {
    let mut out = Vec::with_capacity(8);
    wire::push_frame(&mut out, OP_CLOSE, &1000u16.to_be_bytes(), rng);
    let _ = stream.try_write(&out);
}

impl Rx<'_> {
    fn on_chunk(&mut self, chunk: &[u8], now: u64) {
        self.st.bytes += chunk.len() as u64;
        let mut pos = 0;
        if !self.left.is_empty() {
            let mut left = std::mem::take(&mut self.left);
            loop {
                let need = match wire::head(&left) {
                    Err(e) => return self.fail(e),
                    Ok(Some(h)) if left.len() >= h.total() => {
                        self.frame(h, &left, now);
                        left.clear();
                        self.left = left;
                        break;
                    }
                    Ok(Some(h)) => h.total(),
                    Ok(None) => wire::head_len_needed(&left),
                };
                let take = (need - left.len()).min(chunk.len() - pos);
                if take == 0 {
                    self.left = left;
                    return self.flush();
                }
                left.extend_from_slice(&chunk[pos..pos + take]);
                pos += take;
            }
        }
        while pos < chunk.len() {
            let rest = &chunk[pos..];
            match wire::head(rest) {
                Err(e) => return self.fail(e),
                Ok(Some(h)) if h.total() <= rest.len() => {
                    self.frame(h, &rest[..h.total()], now);
                    pos += h.total();
                }
                _ => {
                    self.left.extend_from_slice(rest);
                    break;
                }
            }
        }
        self.flush();
    }

    fn flush(&mut self) {
        if self.fresh > 0 {
            self.sh.delivered.fetch_add(self.fresh, Relaxed);
            self.sh.last_rx_ns.fetch_max(crate::now_ns(), Relaxed);
            self.fresh = 0;
        }
    }

    fn fail(&mut self, e: wire::WireError) {
        self.flush();
        self.st.ended = Some(e.to_string());
    }

    /// One whole frame (header included).
    fn frame(&mut self, h: Head, whole: &[u8], now: u64) {
        let owned;
        let payload = match h.mask {
            None => &whole[h.head_len..],
            Some(m) => {
                let mut p = whole[h.head_len..].to_vec();
                wire::unmask(&mut p, m);
                owned = p;
                &owned[..]
            }
        };
        match h.opcode {
            OP_TEXT | OP_BINARY if h.fin => self.message(payload, now),
            OP_TEXT | OP_BINARY => {
                self.frag.clear();
                self.frag.extend_from_slice(payload);
            }
            OP_CONT => {
                self.frag.extend_from_slice(payload);
                if h.fin {
                    let f = std::mem::take(&mut self.frag);
                    self.message(&f, now);
                }
            }
            OP_CLOSE => {
                let code = if payload.len() >= 2 {
                    u16::from_be_bytes([payload[0], payload[1]])
                } else {
                    1005
                };
                self.st.ended = Some(format!("closed by server with code {code}"));
            }
            OP_PING => wire::push_frame(&mut self.out, OP_PONG, payload, &mut self.rng),
            _ => {}
        }
    }

    #[inline]
    fn message(&mut self, p: &[u8], now: u64) {
        self.st.frames += 1;
        match codec::scan(self.codec, p) {
            Scan::Msg { t, s } => {
                if s >= self.nbits {
                    self.st.unexpected += 1;
                    return;
                }
                let (w, b) = ((s / 64) as usize, 1u64 << (s % 64));
                if self.bits[w] & b != 0 {
                    self.st.dups += 1;
                    return;
                }
                self.bits[w] |= b;
                self.st.unique += 1;
                self.fresh += 1;
                match self.highest {
                    Some(h) if s < h => self.st.out_of_order += 1,
                    _ => self.highest = Some(s),
                }
                self.sh.hist.record(now.saturating_sub(t));
            }
            Scan::ForeignMsg => self.st.foreign += 1,
            Scan::Other => {
                if let Some(v) = codec::decode(self.codec, p) {
                    if v.get("op").and_then(|o| o.as_str()) == Some("error") {
                        self.st.server_errors += 1;
                        if self.st.first_error.is_none() {
                            self.st.first_error = Some(v.to_string().chars().take(160).collect());
                        }
                    }
                }
            }
        }
    }
}
