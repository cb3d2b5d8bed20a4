//! The two subprotocols as the bench needs them: building requests, and pulling `t`/`s` out of
//! `msg` frames by scanning bytes (JSON) or walking the MessagePack map minimally, never by full
//! deserialisation on the hot path. Replies on the control path are decoded fully (they are rare).

use crate::msgpack::{self, mp_data, mp_map, mp_str, mp_uint};
use crate::wire::find;
use serde_json::Value;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    Json,
    Msgpack,
}

impl Codec {
    pub fn subprotocol(self) -> &'static str {
        match self {
            Codec::Json => "herald.v1.json",
            Codec::Msgpack => "herald.v1.msgpack",
        }
    }
    pub fn opcode(self) -> u8 {
        match self {
            Codec::Json => crate::wire::OP_TEXT,
            Codec::Msgpack => crate::wire::OP_BINARY,
        }
    }
}

/// What fills a message up to its size (`--payload`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Payload {
    /// `"p":"xxx..."`: one string of `x` (compresses to almost nothing).
    Pad,
    /// `"p":[{"px":..,"qty":..,"side":..,"sym":..},...]`: market ticks that vary with the
    /// message, as compressible as a real JSON feed (JSON only).
    Feed,
}

/// What a fast scan found in a server frame.
pub(crate) enum Scan {
    Msg {
        t: u64,
        s: u64,
    },
    /// A `msg` whose data has no numeric `t`/`s` (not ours).
    ForeignMsg,
    /// Anything else (`ok`, `error`, `welcome`, ...).
    Other,
}

/// Decode a control-path frame fully (welcome, ok, error).
pub(crate) fn decode(codec: Codec, payload: &[u8]) -> Option<Value> {
    match codec {
        Codec::Json => serde_json::from_slice(payload).ok(),
        Codec::Msgpack => rmp_serde::from_slice(payload).ok(),
    }
}

pub(crate) fn sub_request(codec: Codec, id: u64, topic: &str) -> Vec<u8> {
    match codec {
        Codec::Json => format!(r#"{{"op":"sub","id":{id},"topic":"{topic}"}}"#).into_bytes(),
        Codec::Msgpack => {
            let mut o = Vec::with_capacity(32 + topic.len());
            mp_map(&mut o, 3);
            mp_str(&mut o, "op");
            mp_str(&mut o, "sub");
            mp_str(&mut o, "id");
            mp_uint(&mut o, id);
            mp_str(&mut o, "topic");
            mp_str(&mut o, topic);
            o
        }
    }
}

/// The `data` object in JSON: `{"t":..,"s":..,"p":"xxx"}` (no `p` when `pad` is 0), or with
/// [`Payload::Feed`] `{"t":..,"s":..,"p":[ticks]}` with about `pad` bytes of ticks.
pub(crate) fn json_data(out: &mut Vec<u8>, t: u64, s: u64, pad: usize, payload: Payload) {
    use std::io::Write as _;
    let _ = write!(out, r#"{{"t":{t},"s":{s}"#);
    if pad > 0 {
        match payload {
            Payload::Pad => {
                out.extend_from_slice(br#","p":""#);
                out.resize(out.len() + pad, b'x');
                out.push(b'"');
            }
            Payload::Feed => {
                out.extend_from_slice(br#","p":"#);
                feed(out, s, pad);
            }
        }
    }
    out.push(b'}');
}

/// A JSON array of market ticks of about `budget` bytes (at least one tick), different for each
/// `seq`: what a price feed sends, with its usual redundancy (keys, symbols, sides) and its
/// usual entropy (prices, sizes).
fn feed(out: &mut Vec<u8>, seq: u64, budget: usize) {
    use std::io::Write as _;
    const SYMS: [&str; 16] = [
        "AAPL", "MSFT", "GOOG", "AMZN", "META", "NVDA", "TSLA", "NFLX", "ORCL", "INTC", "AMD",
        "IBM", "SAP", "ADBE", "CRM", "QCOM",
    ];
    let start = out.len();
    out.push(b'[');
    let mut tick = Vec::with_capacity(64);
    for i in 0u64.. {
        // splitmix64 of (seq, i): the same message always, another one differs.
        let mut x = seq
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(i.wrapping_mul(0xBF58_476D_1CE4_E5B9));
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^= x >> 31;
        tick.clear();
        let _ = write!(
            tick,
            r#"{{"px":{}.{:02},"qty":{},"side":"{}","sym":"{}"}}"#,
            10 + x % 990,
            (x >> 12) % 100,
            1 + (x >> 20) % 5000,
            if (x >> 40) & 1 == 0 { "buy" } else { "sell" },
            SYMS[((x >> 44) % 16) as usize]
        );
        let sep = usize::from(i > 0);
        if i > 0 && out.len() - start + sep + tick.len() + 1 > budget {
            break;
        }
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&tick);
    }
    out.push(b']');
}

/// A `pub` request for the WebSocket publisher, appended to `out`.
pub(crate) fn pub_request(
    codec: Codec,
    out: &mut Vec<u8>,
    id: u64,
    topic: &str,
    t: u64,
    s: u64,
    (pad, payload): (usize, Payload),
) {
    match codec {
        Codec::Json => {
            use std::io::Write as _;
            let _ = write!(out, r#"{{"op":"pub","id":{id},"topic":"{topic}","data":"#);
            json_data(out, t, s, pad, payload);
            out.push(b'}');
        }
        Codec::Msgpack => {
            mp_map(out, 4);
            mp_str(out, "op");
            mp_str(out, "pub");
            mp_str(out, "id");
            mp_uint(out, id);
            mp_str(out, "topic");
            mp_str(out, topic);
            mp_str(out, "data");
            mp_data(out, t, s, pad);
        }
    }
}

/// Padding length so that the `msg` frame a subscriber receives is about `size` bytes in total
/// (WebSocket header included), given the topic and epoch as the server reported them. 0 means
/// no `p` at all (the smallest frame).
pub(crate) fn pad_for(
    codec: Codec,
    payload: Payload,
    size: usize,
    topic: &str,
    epoch: &str,
) -> usize {
    // Representative values: t about 10^10 ns (11 digits), offset and seq of 5 digits.
    let (t, s, offset) = (10_000_000_000u64, 10_000u64, 10_000u64);
    let frame = |pad: usize| {
        let mut o = Vec::new();
        match codec {
            Codec::Json => {
                o.extend_from_slice(
                    format!(r#"{{"op":"msg","topic":"{topic}","offset":{offset},"epoch":"{epoch}","data":"#).as_bytes(),
                );
                json_data(&mut o, t, s, pad, payload);
                o.push(b'}');
            }
            Codec::Msgpack => {
                mp_map(&mut o, 5);
                for (k, v) in [("op", "msg"), ("topic", topic), ("epoch", epoch)] {
                    mp_str(&mut o, k);
                    mp_str(&mut o, v);
                }
                mp_str(&mut o, "offset");
                mp_uint(&mut o, offset);
                mp_str(&mut o, "data");
                mp_data(&mut o, t, s, pad);
            }
        }
        let n = o.len();
        n + match n {
            0..126 => 2,
            126..65536 => 4,
            _ => 10,
        }
    };
    // Frame size grows with the pad (by 1 per byte, plus header steps): search from an estimate.
    let with_one = frame(1);
    if with_one > size {
        return 0;
    }
    let mut pad = 1 + (size - with_one);
    while pad > 1 && frame(pad) > size {
        pad -= 1;
    }
    // A feed grows a tick at a time, and its first tick came with `frame(1)`: give it the room.
    let mut more = 0;
    while payload == Payload::Feed && more < 256 && frame(pad + 1) <= size {
        pad += 1;
        more += 1;
    }
    pad
}

// ---------------------------------------------------------------------------------------------
// Hot path scanning.

/// Scan a server frame for a bench `msg`.
#[inline]
pub(crate) fn scan(codec: Codec, p: &[u8]) -> Scan {
    match codec {
        Codec::Json => scan_json(p),
        Codec::Msgpack => msgpack::scan(p),
    }
}

fn scan_json(p: &[u8]) -> Scan {
    const FAST: &[u8] = br#"{"op":"msg""#;
    if !p.starts_with(FAST) && find(p, br#""op":"msg""#).is_none() {
        return Scan::Other;
    }
    if let Some((t, s)) = json_tail(p) {
        return Scan::Msg { t, s };
    }
    let Some(d) = find(p, br#""data":"#) else {
        return Scan::ForeignMsg;
    };
    let data = &p[d + 7..];
    match (
        json_uint_after(data, br#""t":"#),
        json_uint_after(data, br#""s":"#),
    ) {
        (Some(t), Some(s)) => Scan::Msg { t, s },
        _ => Scan::ForeignMsg,
    }
}

/// Fast path: `data` is the frame's last field and ends with `"s":N,"t":N}}` (keys sorted, as
/// serde_json prints a map) or `"t":N,"s":N}}`. Parsed backwards from the end, so the padding
/// is never scanned. `None` sends the caller to the general scan.
fn json_tail(p: &[u8]) -> Option<(u64, u64)> {
    let mut i = p.len().checked_sub(2)?;
    if &p[i..] != b"}}" {
        return None;
    }
    let (k2, v2) = tail_field(p, &mut i)?;
    if i == 0 || p[i - 1] != b',' {
        return None;
    }
    i -= 1;
    let (k1, v1) = tail_field(p, &mut i)?;
    match (k1, k2) {
        (b's', b't') => Some((v2, v1)),
        (b't', b's') => Some((v1, v2)),
        _ => None,
    }
}

/// Reads `"k":digits` ending at `*end` backwards; moves `*end` to its start.
fn tail_field(p: &[u8], end: &mut usize) -> Option<(u8, u64)> {
    let stop = *end;
    let mut j = stop;
    while j > 0 && p[j - 1].is_ascii_digit() {
        j -= 1;
    }
    let n = stop - j;
    if n == 0 || n > 19 || j < 4 || p[j - 1] != b':' || p[j - 2] != b'"' || p[j - 4] != b'"' {
        return None;
    }
    let v = p[j..stop].iter().fold(0u64, |a, &b| {
        a.wrapping_mul(10).wrapping_add((b - b'0') as u64)
    });
    *end = j - 4;
    Some((p[j - 3], v))
}

pub(crate) fn json_uint_after(hay: &[u8], key: &[u8]) -> Option<u64> {
    let at = find(hay, key)? + key.len();
    let rest = &hay[at..];
    let skip = rest.iter().take_while(|b| b.is_ascii_whitespace()).count();
    let digits = &rest[skip..];
    let n = digits.iter().take_while(|b| b.is_ascii_digit()).count();
    if n == 0 || n > 19 {
        return None;
    }
    Some(
        digits[..n]
            .iter()
            .fold(0u64, |a, &b| a * 10 + (b - b'0') as u64),
    )
}

/// For publisher replies: (is ok, id) without full decoding in the common case.
pub(crate) fn scan_reply(codec: Codec, p: &[u8]) -> Option<(bool, u64)> {
    match codec {
        Codec::Json => {
            let ok = p.starts_with(br#"{"op":"ok""#) || find(p, br#""op":"ok""#).is_some();
            let err = !ok && find(p, br#""op":"error""#).is_some();
            if !ok && !err {
                return None;
            }
            Some((ok, json_uint_after(p, br#""id":"#).unwrap_or(0)))
        }
        Codec::Msgpack => msgpack::scan_reply(p),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_scan_finds_t_and_s_in_any_order() {
        let a = br#"{"op":"msg","topic":"bench.0","offset":3,"epoch":"e","data":{"p":"xx","s":7,"t":123}}"#;
        assert!(matches!(scan(Codec::Json, a), Scan::Msg { t: 123, s: 7 }));
        let b = br#"{"topic":"bench.0","op":"msg","data":{"t":5,"s":6,"p":""},"offset":1}"#;
        assert!(matches!(scan(Codec::Json, b), Scan::Msg { t: 5, s: 6 }));
        let c = br#"{"op":"msg","topic":"b","offset":1,"epoch":"e","data":{"t":55,"s":66}}"#;
        assert!(matches!(scan(Codec::Json, c), Scan::Msg { t: 55, s: 66 }));
        let d = br#"{"op":"msg","topic":"b","offset":1,"epoch":"e","data":{"x":1,"t":2}}"#;
        assert!(matches!(scan(Codec::Json, d), Scan::ForeignMsg));
        assert!(matches!(scan(Codec::Json, b), Scan::Msg { t: 5, s: 6 }));
        assert!(matches!(
            scan(Codec::Json, br#"{"op":"ok","id":1}"#),
            Scan::Other
        ));
    }

    #[test]
    fn msgpack_scan_matches_rmp_encoding() {
        let v = serde_json::json!({"op":"msg","topic":"bench.1","offset":99,"epoch":"ep",
            "data":{"t": 12_345_678_901u64, "s": 300, "p": "x".repeat(40)}});
        let bytes = rmp_serde::to_vec_named(&v).unwrap();
        assert!(matches!(
            scan(Codec::Msgpack, &bytes),
            Scan::Msg {
                t: 12_345_678_901,
                s: 300
            }
        ));
        let ok =
            rmp_serde::to_vec_named(&serde_json::json!({"op":"ok","id":77,"offset":1})).unwrap();
        assert_eq!(scan_reply(Codec::Msgpack, &ok), Some((true, 77)));
    }

    #[test]
    fn msgpack_pub_request_decodes() {
        let mut o = Vec::new();
        pub_request(
            Codec::Msgpack,
            &mut o,
            9,
            "bench.3",
            1 << 40,
            5,
            (50, Payload::Pad),
        );
        let v: Value = rmp_serde::from_slice(&o).unwrap();
        assert_eq!(v["op"], "pub");
        assert_eq!(v["data"]["t"], 1u64 << 40);
        assert_eq!(v["data"]["p"].as_str().unwrap().len(), 50);
        let mut j = Vec::new();
        pub_request(Codec::Json, &mut j, 9, "bench.3", 1, 5, (3, Payload::Pad));
        let v: Value = serde_json::from_slice(&j).unwrap();
        assert_eq!(v["data"]["p"], "xxx");
    }

    #[test]
    fn pad_hits_target_size() {
        let frame = |size: usize| {
            let p = pad_for(Codec::Json, Payload::Pad, size, "bench.0", "abcdefgh");
            let mut d = Vec::new();
            json_data(&mut d, 10_000_000_000, 10_000, p, Payload::Pad);
            let head = r#"{"op":"msg","topic":"bench.0","offset":10000,"epoch":"abcdefgh","data":"#;
            let n = head.len() + d.len() + 1;
            (p, n + if n < 126 { 2 } else { 4 })
        };
        assert_eq!(frame(120).1, 120);
        assert_eq!(frame(1000).1, 1000);
        // Too small for any padding: no `p` at all.
        assert_eq!(frame(90).0, 0);
        assert!(pad_for(Codec::Msgpack, Payload::Pad, 1000, "bench.0", "e") > 900);
    }

    #[test]
    fn a_feed_is_json_of_about_its_size_that_the_scan_reads() {
        let p = pad_for(Codec::Json, Payload::Feed, 1000, "bench.0", "abcdefgh");
        let mut d = Vec::new();
        json_data(&mut d, 12_345, 77, p, Payload::Feed);
        let v: Value = serde_json::from_slice(&d).unwrap();
        assert!(v["p"].as_array().unwrap().len() > 10, "{v}");
        let frame = format!(
            r#"{{"op":"msg","topic":"bench.0","offset":1,"epoch":"e","data":{}}}"#,
            v
        );
        // Ticks are about 55 bytes each: the size is met to within one.
        assert!((920..=1010).contains(&frame.len()), "{}", frame.len());
        assert!(matches!(
            scan(Codec::Json, frame.as_bytes()),
            Scan::Msg { t: 12_345, s: 77 }
        ));
        // Another message, other ticks.
        let mut e = Vec::new();
        json_data(&mut e, 12_345, 78, p, Payload::Feed);
        assert_ne!(d[20..], e[20..]);
    }
}
