//! The framing's tests: RFC 6455 rules, the size limit, fragments, and any split of a stream.

use super::*;
use proptest::prelude::*;

fn whole(a: &mut Assembler, mut input: &[u8]) -> Result<Vec<Incoming>, WsError> {
    let mut out = Vec::new();
    loop {
        match a.step(input)? {
            Step::NeedMore => return Ok(out),
            Step::Consumed(n) => input = &input[n..],
            Step::Message(n, m) => {
                out.push(m);
                input = &input[n..];
            }
        }
    }
}

#[test]
fn accept_key_matches_rfc_example() {
    assert_eq!(
        accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    );
}

#[test]
fn server_frames_use_the_shortest_length_form() {
    assert_eq!(
        &server_frame(OpCode::Text, b"hi")[..],
        &[0x81, 2, b'h', b'i']
    );
    let f = server_frame(OpCode::Binary, &[7u8; 200]);
    assert_eq!(&f[..4], &[0x82, 126, 0, 200]);
    assert_eq!(f.len(), 204);
    let f = server_frame(OpCode::Binary, &vec![1u8; 70_000]);
    assert_eq!(&f[..2], &[0x82, 127]);
    assert_eq!(f.len(), 70_010);
}

#[test]
fn fragments_are_joined_and_control_frames_may_interleave() {
    let m = [1, 2, 3, 4];
    let mut input = client_frame(OpCode::Text, false, b"hel", m);
    input.extend(client_frame(OpCode::Ping, true, b"p", m));
    input.extend(client_frame(OpCode::Continuation, true, b"lo", m));
    let got = whole(&mut Assembler::server(1024), &input).unwrap();
    assert_eq!(
        got,
        vec![
            Incoming::Ping(b"p".to_vec()),
            Incoming::Text(b"hello".to_vec())
        ]
    );
}

#[test]
fn oversize_is_refused_from_the_header_alone() {
    let mut a = Assembler::server(100);
    let f = client_frame(OpCode::Text, true, &[b'a'; 101], [9, 9, 9, 9]);
    assert!(matches!(
        a.step(&f[..8]),
        Err(WsError::TooBig { size: 101, .. })
    ));
}

#[test]
fn rfc_violations_are_protocol_errors() {
    let m = [1, 1, 1, 1];
    let unmasked = [0x81, 0x01, b'a'];
    assert!(matches!(
        Assembler::server(10).step(&unmasked),
        Err(WsError::Protocol(_))
    ));
    let mut rsv = client_frame(OpCode::Text, true, b"a", m);
    rsv[0] |= 0x40;
    assert!(matches!(
        Assembler::server(10).step(&rsv),
        Err(WsError::Protocol(_))
    ));
    let frag_ping = client_frame(OpCode::Ping, false, b"a", m);
    assert!(Assembler::server(10).step(&frag_ping).is_err());
    let cont = client_frame(OpCode::Continuation, true, b"a", m);
    assert!(Assembler::server(10).step(&cont).is_err());
    let bad_utf8 = client_frame(OpCode::Text, true, &[0xff, 0xfe], m);
    assert_eq!(
        Assembler::server(10).step(&bad_utf8),
        Err(WsError::InvalidUtf8)
    );
    let mut reserved_op = client_frame(OpCode::Text, true, b"a", m);
    reserved_op[0] = 0x83;
    assert!(Assembler::server(10).step(&reserved_op).is_err());
}

#[test]
fn close_frames_carry_a_valid_code() {
    let m = [5, 6, 7, 8];
    let mut p = 1000u16.to_be_bytes().to_vec();
    p.extend_from_slice(b"bye");
    let f = client_frame(OpCode::Close, true, &p, m);
    assert_eq!(
        whole(&mut Assembler::server(10), &f).unwrap(),
        vec![Incoming::Close(Some(1000))]
    );
    let f = client_frame(OpCode::Close, true, &999u16.to_be_bytes(), m);
    assert!(Assembler::server(10).step(&f).is_err());
}

#[test]
fn every_registered_close_code_is_accepted_and_no_reserved_one() {
    let m = [5, 6, 7, 8];
    let close = |code: u16| {
        let f = client_frame(OpCode::Close, true, &code.to_be_bytes(), m);
        Assembler::server(10).step(&f).is_ok()
    };
    for code in [
        1000, 1001, 1002, 1003, 1007, 1010, 1011, 1012, 1013, 1014, 3000, 4999,
    ] {
        assert!(close(code), "{code} is a code a peer may send");
    }
    for code in [
        0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
    ] {
        assert!(!close(code), "{code} may not be sent");
    }
}

proptest! {
    #[test]
    fn any_split_of_a_frame_stream_decodes_the_same(
        payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..5),
        mask in any::<[u8; 4]>(),
        cut in 0usize..2000,
    ) {
        let mut input = Vec::new();
        for p in &payloads {
            input.extend(client_frame(OpCode::Binary, true, p, mask));
        }
        let cut = cut.min(input.len());
        let mut a = Assembler::server(1 << 20);
        // Feed in two pieces, the way reads split a stream.
        let mut buf = input[..cut].to_vec();
        let mut got = Vec::new();
        for rest in [&input[cut..], &[][..]] {
            loop {
                match a.step(&buf).unwrap() {
                    Step::NeedMore => break,
                    Step::Consumed(n) => { buf.drain(..n); }
                    Step::Message(n, m) => { buf.drain(..n); got.push(m); }
                }
            }
            buf.extend_from_slice(rest);
        }
        let want: Vec<Incoming> = payloads.into_iter().map(Incoming::Binary).collect();
        prop_assert_eq!(got, want);
    }

    #[test]
    fn assembler_never_panics_on_garbage(input in proptest::collection::vec(any::<u8>(), 0..64)) {
        let _ = Assembler::server(1024).step(&input);
        let _ = Assembler::client(1024).step(&input);
    }
}
