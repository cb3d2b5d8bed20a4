//! The keys a JWT may be signed with, each pinned to the algorithms of its own family.
//!
//! A key comes from `jwt_secret` (HMAC: HS256/384/512), from a PEM public key file
//! (`jwt_public_key_files`: RSA for RS*/PS*, EC P-256 for ES256, EC P-384 for ES384, Ed25519 for
//! EdDSA) or from a JWKS document (`jwt_jwks_url`; a JWK's own `alg`, when it has one, narrows
//! it to that algorithm). The algorithm a token's header names only selects among the algorithms
//! its key already allows: `alg: none`, an HMAC token checked against an RSA public key, or an
//! RS256 token against an EC key are refused before any signature is computed.
//!
//! Pure: bytes in, keys out. Reading files is the caller's (config) and fetching JWKS is
//! [`super::jwks`]'s.

use std::path::{Path, PathBuf};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use serde::Deserialize;

/// Most keys taken from one JWKS document; the rest are ignored (with a warning). Bounds the
/// signatures one token without `kid` can cost.
pub(crate) const MAX_JWKS_KEYS: usize = 32;

/// Why a key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// A PEM file that holds no RSA, EC (P-256, P-384) or Ed25519 public key.
    #[error(
        "{path}: not a PEM public key of a supported type (RSA, EC P-256 or P-384, Ed25519); \
         a certificate or a private key is not accepted here"
    )]
    Pem {
        /// The file.
        path: PathBuf,
    },
    /// A private key file (for signing) that holds no RSA, EC or Ed25519 private key, or one
    /// of another family than the algorithm asked for.
    #[error(
        "{path}: not a PEM private key of a supported type (RSA, EC P-256 or P-384, Ed25519) \
         for the algorithm asked (RS*/PS* need RSA, ES256 P-256, ES384 P-384, EdDSA Ed25519)"
    )]
    PrivatePem {
        /// The file.
        path: PathBuf,
    },
    /// A JWKS document that is not `{"keys": [...]}`.
    #[error("the JWKS is not a JSON object with a `keys` array: {0}")]
    Jwks(#[source] serde_json::Error),
}

/// One verification key and what it may verify.
#[derive(Debug)]
pub(crate) struct VerifyKey {
    /// The JWK's `kid`, when it has one (keys from a secret or a PEM file have none).
    pub(crate) kid: Option<String>,
    /// The algorithms this key verifies: never more than its family's.
    pub(crate) algorithms: Vec<Algorithm>,
    pub(crate) key: DecodingKey,
}

impl VerifyKey {
    /// The HMAC key `jwt_secret`.
    pub(crate) fn secret(secret: &[u8]) -> VerifyKey {
        VerifyKey {
            kid: None,
            algorithms: AlgorithmFamily::Hmac.algorithms().to_vec(),
            key: DecodingKey::from_secret(secret),
        }
    }

    /// A public key from the PEM text `pem` (read from `path`, named in errors).
    pub(crate) fn from_pem(path: &Path, pem: &[u8]) -> Result<VerifyKey, KeyError> {
        let key = DecodingKey::from_rsa_pem(pem)
            .or_else(|_| DecodingKey::from_ec_pem(pem))
            .or_else(|_| DecodingKey::from_ed_pem(pem))
            .map_err(|_| KeyError::Pem {
                path: path.to_owned(),
            })?;
        let algorithms = match key.family() {
            // The uncompressed point's length tells the curve: 65 bytes on P-256, 97 on P-384.
            AlgorithmFamily::Ec => match key.try_get_as_bytes().map(<[u8]>::len) {
                Ok(65) => vec![Algorithm::ES256],
                Ok(97) => vec![Algorithm::ES384],
                _ => {
                    return Err(KeyError::Pem {
                        path: path.to_owned(),
                    });
                }
            },
            family => family.algorithms().to_vec(),
        };
        Ok(VerifyKey {
            kid: None,
            algorithms,
            key,
        })
    }

    /// A key from one JWK; `None` for what a JWKS may hold but does not verify signatures here:
    /// encryption keys, symmetric keys (a public document cannot hold a secret), P-521, or keys
    /// that do not parse.
    fn from_jwk(jwk: &Jwk) -> Option<VerifyKey> {
        if matches!(
            jwk.common.public_key_use,
            Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))
        ) {
            return None;
        }
        let family_algorithms: Vec<Algorithm> = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => AlgorithmFamily::Rsa.algorithms().to_vec(),
            AlgorithmParameters::EllipticCurve(p) => match p.curve {
                EllipticCurve::P256 => vec![Algorithm::ES256],
                EllipticCurve::P384 => vec![Algorithm::ES384],
                _ => return None,
            },
            AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
                vec![Algorithm::EdDSA]
            }
            _ => return None,
        };
        let algorithms = match jwk.common.key_algorithm {
            None => family_algorithms,
            Some(a) => {
                let pinned = signing_algorithm(a)?;
                if !family_algorithms.contains(&pinned) {
                    return None;
                }
                vec![pinned]
            }
        };
        let key = DecodingKey::from_jwk(jwk).ok()?;
        Some(VerifyKey {
            kid: jwk.common.key_id.clone(),
            algorithms,
            key,
        })
    }

    /// True when this key may verify a token signed with `alg`.
    pub(crate) fn allows(&self, alg: Algorithm) -> bool {
        self.algorithms.contains(&alg)
    }
}

/// The keys of a JWKS document, and how many of its entries were not usable.
#[derive(Debug, Default)]
pub(crate) struct JwksKeys {
    pub(crate) keys: Vec<VerifyKey>,
    pub(crate) skipped: usize,
}

/// Reads a JWKS document (`{"keys": [...]}`), keeping at most [`MAX_JWKS_KEYS`] usable keys.
/// Entries that are not signature keys of a supported type are skipped, not fatal: identity
/// providers publish encryption keys beside signing keys.
pub(crate) fn parse_jwks(body: &[u8]) -> Result<JwksKeys, KeyError> {
    #[derive(Deserialize)]
    struct Doc {
        keys: Vec<serde_json::Value>,
    }
    let doc: Doc = serde_json::from_slice(body).map_err(KeyError::Jwks)?;
    let mut out = JwksKeys::default();
    for entry in doc.keys {
        let key = serde_json::from_value::<Jwk>(entry)
            .ok()
            .and_then(|jwk| VerifyKey::from_jwk(&jwk));
        match key {
            Some(k) if out.keys.len() < MAX_JWKS_KEYS => out.keys.push(k),
            _ => out.skipped += 1,
        }
    }
    Ok(out)
}

fn signing_algorithm(a: KeyAlgorithm) -> Option<Algorithm> {
    Some(match a {
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_jwks_keeps_signature_keys_and_skips_the_rest() {
        let doc = json!({"keys": [
            {"kty": "RSA", "kid": "r1", "use": "sig", "alg": "RS256",
             "n": "AQAB", "e": "AQAB"},
            {"kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB"},
            {"kty": "oct", "kid": "h", "k": "c2VjcmV0"},
            {"kty": "EC", "kid": "p521", "crv": "P-521", "x": "AA", "y": "AA"},
            {"kty": "nonsense"},
        ]});
        let keys = parse_jwks(doc.to_string().as_bytes()).unwrap();
        assert_eq!(keys.keys.len(), 1);
        assert_eq!(keys.skipped, 4);
        let k = &keys.keys[0];
        assert_eq!(k.kid.as_deref(), Some("r1"));
        assert_eq!(k.algorithms, vec![Algorithm::RS256]);
        assert!(!k.allows(Algorithm::HS256));
    }

    #[test]
    fn a_jwk_whose_alg_is_outside_its_family_is_skipped() {
        let doc = json!({"keys": [
            {"kty": "EC", "kid": "e", "alg": "RS256", "crv": "P-256",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
             "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
        ]});
        let keys = parse_jwks(doc.to_string().as_bytes()).unwrap();
        assert!(keys.keys.is_empty());
        assert_eq!(keys.skipped, 1);
    }

    #[test]
    fn a_jwks_that_is_not_a_key_set_is_an_error() {
        for bad in [&b"[]"[..], b"{}", b"{\"keys\": 1}", b"<html>"] {
            assert!(parse_jwks(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn the_secret_allows_only_hmac() {
        let k = VerifyKey::secret(b"0123456789abcdef0123456789abcdef");
        assert!(k.allows(Algorithm::HS384));
        assert!(!k.allows(Algorithm::RS256));
        assert!(!k.allows(Algorithm::EdDSA));
    }

    #[test]
    fn a_pem_that_is_not_a_public_key_is_refused_by_path() {
        let err =
            VerifyKey::from_pem(Path::new("/k.pem"), b"-----BEGIN NOTHING-----\n").unwrap_err();
        assert!(err.to_string().contains("/k.pem"));
    }
}
