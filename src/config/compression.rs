//! The second stage of the compression settings: whether upgrades may negotiate
//! permessage-deflate (`compression`, on by default) and the smallest message that is sent
//! compressed (`compression_min_bytes`). See [`crate::protocol::deflate`].

use super::*;
use raw::COMPRESSION_MIN_BYTES;

/// Default `compression_min_bytes` (see [`crate::protocol::deflate::DEFAULT_MIN_BYTES`]).
pub const DEFAULT_MIN_BYTES: u64 = crate::protocol::deflate::DEFAULT_MIN_BYTES as u64;

/// permessage-deflate, validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Compression {
    /// Upgrades may negotiate permessage-deflate; when false, no answer ever names it.
    pub enabled: bool,
    /// Messages whose payload is smaller go uncompressed to everyone.
    pub min_bytes: usize,
}

impl Default for Compression {
    fn default() -> Compression {
        Compression {
            enabled: true,
            min_bytes: DEFAULT_MIN_BYTES as usize,
        }
    }
}

/// Validates the keys of this module in `raw` (which it takes from).
pub(super) fn validate(raw: &mut RawConfig) -> Result<Compression, ConfigError> {
    Ok(Compression {
        enabled: raw.compression.take().unwrap_or(true),
        min_bytes: size(
            COMPRESSION_MIN_BYTES,
            raw.compression_min_bytes.take(),
            DEFAULT_MIN_BYTES,
            0,
            16 * MIB,
        )?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use raw::COMPRESSION;

    fn load(extra: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env: Vec<(String, String)> = extra
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::load(None, &env)
    }

    #[test]
    fn compression_is_on_by_default_from_512_bytes() {
        let c = load(&[]).unwrap();
        assert_eq!(c.compression, Compression::default());
        assert_eq!(
            (c.compression.enabled, c.compression.min_bytes),
            (true, 512)
        );
    }

    #[test]
    fn compression_keys_are_read_and_checked() {
        let c = load(&[
            ("HERALD_COMPRESSION", "false"),
            ("HERALD_COMPRESSION_MIN_BYTES", "0"),
        ])
        .unwrap();
        assert_eq!((c.compression.enabled, c.compression.min_bytes), (false, 0));
        let e = load(&[("HERALD_COMPRESSION", "maybe")]).unwrap_err();
        assert_eq!(e.key(), Some(COMPRESSION));
        let e = load(&[("HERALD_COMPRESSION_MIN_BYTES", "20000000")]).unwrap_err();
        assert_eq!(e.key(), Some(COMPRESSION_MIN_BYTES));
        assert!(e.to_string().contains("from 0 to 16777216"), "{e}");
    }
}
