//! The receive hot path. Each subscriber is one tokio task that waits for readiness and then
//! reads up to 64 KiB with `try_read` into a buffer shared by every connection on that thread
//! (so 10,000 connections do not hold 10,000 big buffers), parses WebSocket frames straight out
//! of the chunk, and pulls `t` and `s` out of each `msg` by scanning. Only a frame that straddles
//! two reads is copied (into a small per-connection remainder). On a connection that negotiated
//! permessage-deflate, compressed messages are inflated into a buffer per thread first.

use crate::codec::{self, Codec, Scan};
use crate::conn::Ws;
use crate::hist::Recorder;
use crate::wire::{self, Head, OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT};
use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::TcpStream;

const CHUNK: usize = 64 << 10;

thread_local! {
    static RBUF: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; CHUNK].into_boxed_slice());
    /// Latencies of the chunk being processed, recorded in one batch (per thread, like the
    /// buffer: a chunk is processed without yielding).
    static LAT: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
    /// The inflated form of the compressed message being processed.
    static ZBUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// State shared by all receivers.
pub(crate) struct Shared {
    pub hist: Recorder,
    /// Unique deliveries so far (all subscribers).
    pub delivered: AtomicU64,
    /// Receive time (bench clock, ns) of the latest new delivery.
    pub last_rx_ns: AtomicU64,
}

/// What one subscriber saw.
#[derive(Default, Clone, Debug)]
pub(crate) struct SubStats {
    pub conn: usize,
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
    /// Frames that arrived compressed (RSV1).
    pub compressed: u64,
    /// The connection negotiated permessage-deflate.
    pub deflate: bool,
    pub bytes: u64,
    /// Why the connection ended before the bench stopped it, if it did.
    pub ended: Option<String>,
}

struct Rx {
    codec: Codec,
    sh: Arc<Shared>,
    st: SubStats,
    bits: Vec<u64>,
    nbits: u64,
    highest: Option<u64>,
    fresh: u64,
    /// Remainder of a frame that straddles two reads.
    left: Vec<u8>,
    /// Fragmented message being reassembled (the server does not fragment; tolerated).
    frag: Vec<u8>,
    /// The fragmented message in `frag` is compressed (RSV1 on its first frame).
    frag_z: bool,
    /// permessage-deflate was negotiated.
    deflate: bool,
    /// Pongs to write.
    out: Vec<u8>,
    rng: wire::MaskRng,
}

/// Where subscribers leave their stats when they end, however they end.
pub(crate) type Sink = Arc<Mutex<Vec<SubStats>>>;

/// A running subscriber. Its stats reach the sink in `Drop`, so the bench stops subscribers by
/// aborting their tasks: no stop signal is polled on the hot path.
struct Sub {
    stream: TcpStream,
    rx: Rx,
    sink: Sink,
}

impl Drop for Sub {
    fn drop(&mut self) {
        self.rx.flush();
        if self.rx.st.ended.is_none() {
            // Best effort: a close frame if the socket can take it right now.
            let mut out = Vec::with_capacity(8);
            wire::push_frame(&mut out, OP_CLOSE, &1000u16.to_be_bytes(), &mut self.rx.rng);
            let _ = self.stream.try_write(&out);
        }
        let st = std::mem::take(&mut self.rx.st);
        self.sink.lock().unwrap_or_else(|p| p.into_inner()).push(st);
    }
}

/// Run one subscriber until its task is aborted or the server ends the connection.
pub(crate) async fn run(
    ws: Ws,
    conn: usize,
    topic: usize,
    topic_msgs: u64,
    sh: Arc<Shared>,
    sink: Sink,
) {
    let Ws {
        stream,
        reader,
        rng,
        codec,
        deflate,
    } = ws;
    let words = topic_msgs.div_ceil(64) as usize;
    let rx = Rx {
        codec,
        sh,
        st: SubStats {
            conn,
            topic,
            deflate,
            ..Default::default()
        },
        bits: vec![0; words],
        nbits: topic_msgs,
        highest: None,
        fresh: 0,
        left: Vec::new(),
        frag: Vec::new(),
        frag_z: false,
        deflate,
        out: Vec::new(),
        rng,
    };
    let mut sub = Sub { stream, rx, sink };
    let early = reader.into_leftover();
    if !early.is_empty() {
        sub.rx.on_chunk(&early, crate::now_ns());
    }
    sub.serve().await;
}

impl Sub {
    async fn serve(&mut self) {
        let Sub { stream, rx, .. } = self;
        while rx.st.ended.is_none() {
            if !rx.out.is_empty() {
                if let Err(e) = stream.write_all(&rx.out).await {
                    rx.st.ended = Some(format!("write: {}", e.kind()));
                    break;
                }
                rx.out.clear();
            }
            if let Err(e) = stream.readable().await {
                rx.st.ended = Some(format!("read: {}", e.kind()));
                break;
            }
            // One read per wake-up. A short read means the socket is drained: answering
            // WouldBlock from the closure makes tokio clear the readiness now, instead of after
            // a second `read` that would only return WouldBlock (tokio's tick check keeps data
            // that arrives meanwhile from being missed).
            let res = stream.try_io(Interest::READABLE, || {
                RBUF.with(|b| {
                    let mut b = b.borrow_mut();
                    let n = stream.try_read(&mut b[..])?;
                    if n == 0 {
                        rx.st.ended = Some("connection closed by server (EOF)".to_string());
                        return Ok(());
                    }
                    rx.on_chunk(&b[..n], crate::now_ns());
                    if n < b.len() {
                        Err(std::io::ErrorKind::WouldBlock.into())
                    } else {
                        Ok(())
                    }
                })
            });
            match res {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => rx.st.ended = Some(format!("read: {}", e.kind())),
            }
        }
    }
}

impl Rx {
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
            LAT.with(|l| {
                let mut l = l.borrow_mut();
                self.sh.hist.record_batch(&l);
                l.clear();
            });
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
        if h.rsv1 && (!self.deflate || !matches!(h.opcode, OP_TEXT | OP_BINARY)) {
            return self.fail(wire::WireError::Protocol(
                "RSV1 without permessage-deflate, or not on a message's first frame".into(),
            ));
        }
        match h.opcode {
            OP_TEXT | OP_BINARY if h.fin && h.rsv1 => self.compressed(payload, now),
            OP_TEXT | OP_BINARY if h.fin => self.message(payload, now),
            OP_TEXT | OP_BINARY => {
                self.frag.clear();
                self.frag.extend_from_slice(payload);
                self.frag_z = h.rsv1;
            }
            OP_CONT => {
                self.frag.extend_from_slice(payload);
                if h.fin {
                    let f = std::mem::take(&mut self.frag);
                    if self.frag_z {
                        self.compressed(&f, now);
                    } else {
                        self.message(&f, now);
                    }
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

    /// A whole compressed message: inflated, then read as any other.
    fn compressed(&mut self, p: &[u8], now: u64) {
        self.st.compressed += 1;
        ZBUF.with(|z| {
            let mut z = z.borrow_mut();
            match wire::inflate(p, &mut z) {
                Ok(()) => self.message(&z, now),
                Err(e) => self.fail(e),
            }
            if z.capacity() > 1 << 20 {
                *z = Vec::new();
            }
        });
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
                LAT.with(|l| l.borrow_mut().push(now.saturating_sub(t)));
            }
            Scan::ForeignMsg => self.st.foreign += 1,
            Scan::Other => {
                if let Some(v) = codec::decode(self.codec, p)
                    && v.get("op").and_then(|o| o.as_str()) == Some("error")
                {
                    self.st.server_errors += 1;
                    if self.st.first_error.is_none() {
                        self.st.first_error = Some(v.to_string().chars().take(160).collect());
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
        out.push(0x80 | opcode);
        if payload.len() < 126 {
            out.push(payload.len() as u8);
        } else {
            out.push(126);
            out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        }
        out.extend_from_slice(payload);
    }

    fn rx(nbits: u64) -> Rx {
        Rx {
            codec: Codec::Json,
            sh: Arc::new(Shared {
                hist: Recorder::new(1),
                delivered: AtomicU64::new(0),
                last_rx_ns: AtomicU64::new(0),
            }),
            st: SubStats::default(),
            bits: vec![0; nbits.div_ceil(64) as usize],
            nbits,
            highest: None,
            fresh: 0,
            left: Vec::new(),
            frag: Vec::new(),
            frag_z: false,
            deflate: true,
            out: Vec::new(),
            rng: wire::MaskRng::new(),
        }
    }

    #[test]
    fn frames_split_anywhere_are_counted_once() {
        let mut stream = Vec::new();
        for s in 0..40u64 {
            let pad = "x".repeat(if s % 3 == 0 { 200 } else { 5 });
            let msg = format!(
                r#"{{"op":"msg","topic":"b","offset":{s},"epoch":"e","data":{{"p":"{pad}","s":{s},"t":{}}}}}"#,
                1000 + s
            );
            server_frame(&mut stream, OP_TEXT, msg.as_bytes());
            if s == 7 {
                server_frame(&mut stream, OP_PING, b"hi");
            }
        }
        // Seq 5 again, and one beyond what was published.
        for s in [5u64, 99] {
            let msg = format!(
                r#"{{"op":"msg","topic":"b","offset":1,"epoch":"e","data":{{"s":{s},"t":1}}}}"#
            );
            server_frame(&mut stream, OP_TEXT, msg.as_bytes());
        }
        for split in [1usize, 2, 3, 7, 64, 127, 1000, stream.len()] {
            let mut r = rx(40);
            for chunk in stream.chunks(split) {
                r.on_chunk(chunk, 10_000);
            }
            assert_eq!(r.st.unique, 40, "split {split}");
            assert_eq!(r.st.dups, 1, "split {split}");
            assert_eq!(r.st.unexpected, 1, "split {split}");
            assert_eq!(r.st.out_of_order, 0, "split {split}");
            assert!(r.left.is_empty(), "split {split}");
            assert_eq!(r.sh.delivered.load(Relaxed), 40);
            assert_eq!(r.sh.hist.snapshot().count(), 40);
            let pong = wire::head(&r.out).unwrap().unwrap();
            assert_eq!((pong.opcode, pong.payload_len), (OP_PONG, 2));
        }
    }

    #[test]
    fn compressed_messages_are_inflated_and_counted() {
        use std::io::Write as _;
        let mut stream = Vec::new();
        for s in 0..10u64 {
            let msg = format!(
                r#"{{"op":"msg","topic":"b","offset":{s},"epoch":"e","data":{{"p":"{}","s":{s},"t":1}}}}"#,
                "y".repeat(500)
            );
            let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(msg.as_bytes()).unwrap();
            e.flush().unwrap();
            let mut z = e.get_ref().clone();
            z.truncate(z.len() - 4);
            let at = stream.len();
            server_frame(&mut stream, OP_TEXT, &z);
            stream[at] |= 0x40;
        }
        for split in [1usize, 5, 100, stream.len()] {
            let mut r = rx(10);
            for chunk in stream.chunks(split) {
                r.on_chunk(chunk, 10);
            }
            assert_eq!((r.st.unique, r.st.compressed), (10, 10), "split {split}");
            assert!(r.st.ended.is_none(), "{:?}", r.st.ended);
        }
        // Not negotiated: RSV1 ends the connection.
        let mut r = rx(10);
        r.deflate = false;
        r.on_chunk(&stream, 10);
        assert!(r.st.ended.is_some());
    }

    #[test]
    fn reordering_is_counted() {
        let mut stream = Vec::new();
        for s in [0u64, 2, 1, 3] {
            let msg = format!(
                r#"{{"op":"msg","topic":"b","offset":1,"epoch":"e","data":{{"s":{s},"t":1}}}}"#
            );
            server_frame(&mut stream, OP_TEXT, msg.as_bytes());
        }
        server_frame(&mut stream, OP_CLOSE, &4008u16.to_be_bytes());
        let mut r = rx(10);
        r.on_chunk(&stream, 5);
        assert_eq!((r.st.unique, r.st.out_of_order), (4, 1));
        assert_eq!(
            r.st.ended.as_deref(),
            Some("closed by server with code 4008")
        );
    }
}
