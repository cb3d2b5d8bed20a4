//! Every input the fuzzers ever found a fault with (`fuzz/regressions/<target>/`), and every
//! golden client frame, run through the fuzz targets' own functions (`herald::fuzz`): the bugs
//! they found stay fixed without nightly or cargo-fuzz.

use std::path::{Path, PathBuf};

use herald::fuzz;

type Target = fn(&[u8]);

const TARGETS: [(&str, Target); 5] = [
    ("websocket_frames", fuzz::websocket_frames),
    ("client_frame", fuzz::client_frame),
    ("jwt", fuzz::jwt),
    ("ticket", fuzz::ticket),
    ("redis_envelope", fuzz::redis_envelope),
];

fn regressions(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/regressions")
        .join(target);
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .map(|e| e.expect("a directory entry").path())
            .collect(),
        Err(_) => Vec::new(),
    };
    files.sort();
    files
}

#[test]
fn every_saved_fuzz_finding_stays_fixed() {
    let mut ran = 0;
    for (name, target) in TARGETS {
        for file in regressions(name) {
            let input = std::fs::read(&file).expect("a regression input");
            let outcome = std::panic::catch_unwind(|| target(&input));
            assert!(outcome.is_ok(), "{name}: {} fails again", file.display());
            ran += 1;
        }
    }
    assert!(ran > 0, "no regression inputs found under fuzz/regressions");
}

#[test]
fn every_golden_client_frame_passes_the_fuzz_invariants_in_both_codecs_and_on_the_wire() {
    let golden = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("proto/golden/client.json"),
    )
    .expect("proto/golden/client.json");
    let cases: Vec<serde_json::Value> = serde_json::from_str(&golden).expect("golden JSON");
    assert!(cases.len() > 10);
    for case in cases {
        let text = match case["raw"].as_str() {
            Some(raw) => raw.as_bytes().to_vec(),
            None => serde_json::to_vec(&case["frame"]).expect("JSON"),
        };
        fuzz::client_frame(&[&[0u8][..], &text].concat());
        if !case["frame"].is_null() {
            let packed = rmp_serde::to_vec_named(&case["frame"]).expect("MessagePack");
            fuzz::client_frame(&[&[3u8][..], &packed].concat());
        }
        // The same text in one masked frame, read in cuts of 1, 2, ... 7 bytes.
        let frame = herald::protocol::websocket::client_frame(
            herald::protocol::websocket::OpCode::Text,
            true,
            &text,
            [1, 2, 3, 4],
        );
        for cut in 0..7u8 {
            fuzz::websocket_frames(&[&[cut][..], &frame].concat());
        }
    }
}
