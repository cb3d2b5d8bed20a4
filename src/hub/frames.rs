//! The frames of one fan-out: a message's encoding per codec, plain and permessage-deflated, each
//! made at most once and only when some subscriber reads it. A subscriber that did not negotiate
//! deflate costs what it did before (one branch more); the compressed frame is made once per
//! codec, only for a subscriber that negotiated deflate and a message of at least the configured
//! size, from the plain one (which smaller messages, and messages that do not shrink, stay).

use bytes::Bytes;

use super::Subscriber;
use super::probe::{Armed, Probe};
use crate::protocol::Codec;
use crate::protocol::deflate::deflate_frame;

/// The probe's slot of a frame: its codec, then whether it is the deflate subscribers' one.
pub(crate) fn slot(codec: Codec, deflate: bool) -> usize {
    let c = match codec {
        Codec::Json => 0,
        Codec::MsgPack => 1,
    };
    c + 2 * usize::from(deflate)
}

/// One fan-out's frames, made on demand by `make` (one call per codec at most).
pub(crate) struct Frames<'p, F: Fn(Codec) -> Bytes> {
    make: F,
    /// Payloads smaller than this go plain to deflate subscribers too.
    min_deflate: usize,
    /// Told of every frame made, when this fan-out is timed.
    timed: Option<(&'p Probe, Armed)>,
    plain: [Option<Bytes>; 2],
    deflated: [Option<Bytes>; 2],
}

impl<'p, F: Fn(Codec) -> Bytes> Frames<'p, F> {
    pub(crate) fn new(make: F, min_deflate: usize, timed: Option<(&'p Probe, Armed)>) -> Self {
        Frames {
            make,
            min_deflate,
            timed,
            plain: [None, None],
            deflated: [None, None],
        }
    }

    /// The frame `sub` reads: shared with every other subscriber of its codec and deflate choice.
    #[inline]
    pub(crate) fn get(&mut self, sub: &Subscriber) -> &Bytes {
        let codec = sub.codec;
        let i = slot(codec, false);
        let (make, timed) = (&self.make, self.timed);
        let plain = self.plain[i].get_or_insert_with(|| noted(timed, i, make(codec)));
        if !sub.deflate {
            return plain;
        }
        let min = self.min_deflate;
        self.deflated[i].get_or_insert_with(|| {
            let f = if payload_len(plain) >= min {
                deflate_frame(plain)
            } else {
                plain.clone()
            };
            noted(timed, slot(codec, true), f)
        })
    }
}

/// `frame`, once the probe (when this fan-out is timed) knows it as the frame of `slot`.
fn noted(timed: Option<(&Probe, Armed)>, slot: usize, frame: Bytes) -> Bytes {
    if let Some((probe, armed)) = timed {
        probe.frame(armed, slot, &frame);
    }
    frame
}

/// The payload length of a server frame made by this crate (its header is 2, 4 or 10 bytes).
fn payload_len(frame: &[u8]) -> usize {
    let header = match frame.get(1).map(|b| b & 0x7f) {
        Some(126) => 4,
        Some(127) => 10,
        _ => 2,
    };
    frame.len().saturating_sub(header)
}
