//! The wire protocol, v1: client requests, server frames, their two codecs (JSON text frames,
//! MessagePack binary frames), RFC 6455 framing, permessage-deflate, error codes and close codes.
//!
//! Pure: no tokio, no I/O, nothing from other modules. This is what `proto/README.md`
//! documents; the golden examples in `proto/golden/` are loaded by the tests of this module.

pub mod close;
pub mod codec;
pub mod deflate;
pub mod error_code;
pub mod frame;
pub mod topic;
pub mod websocket;

pub use close::CloseCode;
pub use codec::Codec;
pub use error_code::ErrorCode;
pub use frame::{Position, Request};
pub use topic::{Pattern, Topic};

/// A published message as it travels from the bus to the hub: the topic, its place in the
/// topic's history, and the payload as JSON text.
#[derive(Clone, Debug)]
pub struct Message {
    /// The topic it was published to.
    pub topic: Topic,
    /// Its offset in the topic (1, 2, ...).
    pub offset: u64,
    /// The topic's epoch when it was published.
    pub epoch: std::sync::Arc<str>,
    /// The payload, JSON text (validated when it was published).
    pub data: bytes::Bytes,
}
