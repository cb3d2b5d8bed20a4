//! permessage-deflate's tests: the negotiation of offers, compression that any inflater reads,
//! and inflation bounded by the message limit (a bomb is refused without its output allocated).

use std::io::Write;

use flate2::write::DeflateEncoder;

use super::*;
use crate::protocol::websocket::{Assembler, Incoming, Step, client_frame, server_frame};

fn agreed(values: &[&str]) -> Result<&'static str, Declined> {
    negotiate(values.iter().copied()).map(Agreed::answer)
}

#[test]
fn a_plain_offer_is_answered_with_no_context_takeover_both_ways() {
    for offer in [
        "permessage-deflate",
        "permessage-deflate; client_max_window_bits",
        "permessage-deflate; client_max_window_bits=10",
        "permessage-deflate; client_max_window_bits=\"15\"",
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
        "PerMessage-Deflate ;\tclient_no_context_takeover",
        "x-webkit-deflate-frame, permessage-deflate",
    ] {
        assert_eq!(agreed(&[offer]), Ok(ANSWER), "{offer}");
    }
    assert_eq!(
        ANSWER,
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
    );
}

#[test]
fn a_window_of_15_is_accepted_and_answered_and_a_smaller_one_declined() {
    assert_eq!(
        agreed(&["permessage-deflate; server_max_window_bits=15"]),
        Ok(ANSWER_WINDOW)
    );
    assert_eq!(
        agreed(&["permessage-deflate; server_max_window_bits=\"15\""]),
        Ok(ANSWER_WINDOW)
    );
    assert!(matches!(
        agreed(&["permessage-deflate; server_max_window_bits=9"]),
        Err(Declined::Unsupported(_))
    ));
    // The next offer, in the client's order, is taken.
    assert_eq!(
        agreed(&["permessage-deflate; server_max_window_bits=9, permessage-deflate"]),
        Ok(ANSWER)
    );
    // And one from another header line.
    assert_eq!(
        agreed(&[
            "permessage-deflate; server_max_window_bits=10",
            "foo, permessage-deflate; client_max_window_bits"
        ]),
        Ok(ANSWER)
    );
}

#[test]
fn offers_rfc_7692_says_to_decline_are_declined() {
    for offer in [
        "permessage-deflate; server_max_window_bits",
        "permessage-deflate; server_max_window_bits=16",
        "permessage-deflate; server_max_window_bits=08",
        "permessage-deflate; client_max_window_bits=7",
        "permessage-deflate; client_max_window_bits=abc",
        "permessage-deflate; server_no_context_takeover=1",
        "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
        "permessage-deflate; client_max_window_bits; client_max_window_bits=9",
        "permessage-deflate; mystery",
    ] {
        assert!(
            matches!(agreed(&[offer]), Err(Declined::Unsupported(_))),
            "{offer}"
        );
    }
}

#[test]
fn malformed_headers_offer_nothing_and_other_headers_still_count() {
    for offer in [
        "permessage-deflate; client_max_window_bits=\"15",
        "permessage-deflate; client_max_window_bits=\"1 5\"",
        "permessage-deflate; client_max_window_bits=",
        "permessage-deflate; =15",
        "permessage deflate",
        "; permessage-deflate",
    ] {
        assert!(
            matches!(agreed(&[offer]), Err(Declined::Malformed(_))),
            "{offer}: {:?}",
            agreed(&[offer])
        );
    }
    assert_eq!(
        agreed(&["permessage-deflate; a=\"", "permessage-deflate"]),
        Ok(ANSWER)
    );
    // A quoted comma does not split offers.
    assert!(agreed(&["foo; x=\"a,permessage-deflate\""]).is_err());
    assert_eq!(agreed(&[]), Err(Declined::NotOffered));
    assert_eq!(agreed(&["", " , ", "foo; bar"]), Err(Declined::NotOffered));
}

#[test]
fn only_so_many_offers_are_read() {
    let many = vec!["foo"; MAX_OFFERS].join(", ") + ", permessage-deflate";
    assert_eq!(agreed(&[&many]), Err(Declined::NotOffered));
    let enough = vec!["foo"; MAX_OFFERS - 1].join(", ") + ", permessage-deflate";
    assert_eq!(agreed(&[&enough]), Ok(ANSWER));
}

/// A compressible JSON-like text of about `n` bytes.
fn json(n: usize) -> Vec<u8> {
    let mut s = String::from("[");
    let mut i = 0;
    while s.len() < n {
        s.push_str(&format!(
            "{{\"symbol\":\"ABC{}\",\"price\":{}.25,\"side\":\"buy\"}},",
            i % 7,
            100 + i
        ));
        i += 1;
    }
    s.push_str("0]");
    s.into_bytes()
}

/// Inflates a server frame's payload the way a client would, with flate2 alone.
fn client_inflate(payload: &[u8]) -> Vec<u8> {
    let mut d = flate2::Decompress::new(false);
    let mut input = payload.to_vec();
    input.extend_from_slice(&TAIL);
    let mut out = Vec::with_capacity(1 << 20);
    d.decompress_vec(&input, &mut out, flate2::FlushDecompress::Sync)
        .unwrap();
    out
}

#[test]
fn a_compressed_frame_has_rsv1_is_smaller_and_inflates_to_the_message() {
    for n in [600, 5000, 70_000] {
        let text = json(n);
        let plain = server_frame(OpCode::Text, &text);
        let z = deflate_frame(&plain);
        assert_eq!(z[0], 0xC1, "FIN, RSV1, text");
        assert!(
            z.len() < plain.len() / 2,
            "{} against {}",
            z.len(),
            plain.len()
        );
        let (_, payload) = split_server_frame(&z).unwrap();
        assert!(!payload.ends_with(&TAIL), "the sync tail is removed");
        assert_eq!(client_inflate(payload), text);
        // Our own client side reads it too.
        match Assembler::client(1 << 20).with_deflate(true).step(&z) {
            Ok(Step::Message(used, Incoming::Text(t))) => {
                assert_eq!((used, t), (z.len(), text));
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn each_message_is_compressed_on_its_own() {
    // The second compression of the same text is identical: nothing of the first is referred to.
    let plain = server_frame(OpCode::Binary, &json(3000));
    let (a, b) = (deflate_frame(&plain), deflate_frame(&plain));
    assert_eq!(a, b);
    assert_eq!(a[0], 0xC2);
    let (_, payload) = split_server_frame(&b).unwrap();
    assert_eq!(client_inflate(payload), json(3000));
}

#[test]
fn what_does_not_shrink_stays_plain() {
    let plain = server_frame(OpCode::Text, b"{\"a\":1}");
    assert_eq!(deflate_frame(&plain), plain);
    let mut noise = vec![0u8; 4096];
    getrandom::fill(&mut noise).unwrap();
    let plain = server_frame(OpCode::Binary, &noise);
    let z = deflate_frame(&plain);
    assert_eq!(z.as_ptr(), plain.as_ptr(), "the same frame, shared");
    // Control frames are never compressed.
    let ping = server_frame(OpCode::Ping, &[b'a'; 100]);
    assert_eq!(deflate_frame(&ping), ping);
}

fn deflated(data: &[u8]) -> Vec<u8> {
    let mut e = DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    // A final block (as some clients send): the tail that would follow is ignored.
    e.finish().unwrap()
}

fn sync_deflated(data: &[u8]) -> Vec<u8> {
    let mut c = flate2::Compress::new(flate2::Compression::default(), false);
    let mut out = Vec::new();
    assert!(deflate_into(&mut c, data, &mut out));
    out.truncate(out.len() - TAIL.len());
    out
}

#[test]
fn a_message_inflates_whether_it_ends_in_a_sync_flush_or_a_final_block() {
    let text = json(20_000);
    assert_eq!(inflate(&sync_deflated(&text), 1 << 20).unwrap(), text);
    assert_eq!(inflate(&deflated(&text), 1 << 20).unwrap(), text);
    // An empty message: one 0x00 byte, or nothing at all.
    assert_eq!(inflate(&[0x00], 100).unwrap(), b"");
    assert_eq!(inflate(&sync_deflated(b""), 100).unwrap(), b"");
    assert_eq!(inflate(&[], 100).unwrap(), b"");
}

#[test]
fn exactly_the_limit_inflates_and_one_byte_more_is_too_big() {
    let data = vec![b'x'; 10_000];
    let z = sync_deflated(&data);
    assert_eq!(inflate(&z, 10_000).unwrap(), data);
    assert_eq!(
        inflate(&z, 9_999),
        Err(WsError::TooBig {
            size: 10_000,
            limit: 9_999
        })
    );
}

#[test]
fn a_bomb_is_too_big_before_its_output_is_allocated() {
    // 64 MiB of zeros, deflated to about 64 KiB.
    let mut e = DeflateEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..64 {
        e.write_all(&zeros).unwrap();
    }
    e.flush().unwrap();
    let bomb = e.get_ref().clone();
    assert!(bomb.len() < 1 << 17, "{}", bomb.len());
    let limit = 64 * 1024;
    let mut out = Vec::new();
    let err = inflate_into(&bomb, limit, &mut out).unwrap_err();
    assert!(matches!(err, WsError::TooBig { .. }), "{err:?}");
    assert_eq!(err.close_code().code(), 1009);
    assert!(
        out.capacity() <= limit,
        "the buffer grew to {} bytes, past the limit of {limit}",
        out.capacity()
    );
    // Through the assembler, as a client message: the same answer.
    let mut f = client_frame(OpCode::Binary, true, &bomb, [1, 2, 3, 4]);
    f[0] |= 0x40;
    let mut a = Assembler::server(limit).with_deflate(true);
    assert!(matches!(a.step(&f), Err(WsError::TooBig { .. })));
}

#[test]
fn garbage_is_bad_deflate_data() {
    let err = inflate(&[0xff, 0xff, 0xff, 0xff, 0x00], 1000).unwrap_err();
    assert_eq!(err, WsError::BadDeflate);
    assert_eq!(err.close_code().code(), 1007);
}

#[test]
fn the_assembler_inflates_rsv1_messages_only_where_negotiated() {
    let m = [9, 8, 7, 6];
    let text = json(3000);
    let z = sync_deflated(&text);
    let mut f = client_frame(OpCode::Text, true, &z, m);
    f[0] |= 0x40;
    // Negotiated: inflated.
    let got = Assembler::server(1 << 20).with_deflate(true).step(&f);
    assert_eq!(
        got,
        Ok(Step::Message(f.len(), Incoming::Text(text.clone())))
    );
    // Not negotiated: 1002.
    let err = Assembler::server(1 << 20).step(&f).unwrap_err();
    assert_eq!(err.close_code().code(), 1002);
    // RSV1 on a control frame or a continuation frame: 1002.
    let mut ping = client_frame(OpCode::Ping, true, b"p", m);
    ping[0] |= 0x40;
    let err = Assembler::server(100).with_deflate(true).step(&ping);
    assert_eq!(err.unwrap_err().close_code().code(), 1002);
    let mut a = Assembler::server(1 << 20).with_deflate(true);
    let first = client_frame(OpCode::Text, false, b"ab", m);
    assert!(matches!(a.step(&first), Ok(Step::Consumed(_))));
    let mut cont = client_frame(OpCode::Continuation, true, b"c", m);
    cont[0] |= 0x40;
    assert_eq!(a.step(&cont).unwrap_err().close_code().code(), 1002);
    // RSV2 and RSV3 stay reserved.
    let mut rsv2 = client_frame(OpCode::Text, true, b"a", m);
    rsv2[0] |= 0x20;
    assert!(
        Assembler::server(100)
            .with_deflate(true)
            .step(&rsv2)
            .is_err()
    );
}

#[test]
fn a_fragmented_compressed_message_is_inflated_once_reassembled() {
    let m = [1, 1, 2, 3];
    let text = json(5000);
    let z = sync_deflated(&text);
    let (a, b) = z.split_at(z.len() / 2);
    let mut first = client_frame(OpCode::Text, false, a, m);
    first[0] |= 0x40;
    let mut asm = Assembler::server(1 << 20).with_deflate(true);
    assert!(matches!(asm.step(&first), Ok(Step::Consumed(_))));
    let last = client_frame(OpCode::Continuation, true, b, m);
    assert_eq!(
        asm.step(&last),
        Ok(Step::Message(last.len(), Incoming::Text(text)))
    );
    // Inflated text is checked for UTF-8 like any other.
    let mut bad = client_frame(OpCode::Text, true, &sync_deflated(&[0xff, 0xfe]), m);
    bad[0] |= 0x40;
    assert_eq!(
        Assembler::server(100).with_deflate(true).step(&bad),
        Err(WsError::InvalidUtf8)
    );
    // An uncompressed message on a negotiated connection is read as it is.
    let plain = client_frame(OpCode::Text, true, b"hello", m);
    assert_eq!(
        Assembler::server(100).with_deflate(true).step(&plain),
        Ok(Step::Message(
            plain.len(),
            Incoming::Text(b"hello".to_vec())
        ))
    );
}
