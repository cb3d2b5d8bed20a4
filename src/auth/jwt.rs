//! JWT verification against every configured key (`jwt_secret`, `jwt_public_key_files`,
//! `jwt_jwks_url`), and minting tokens for the `herald token` command and development mode.
//!
//! A token must carry `sub` (the user), `exp` and `grants` (see [`RawGrants`]); `nbf` is checked
//! when present. `aud` and `iss` are checked when `jwt_audience` / `jwt_issuer` are configured
//! (then required), and ignored otherwise.
//!
//! Which key: when the token's header has a `kid` that a key has, only the keys with that `kid`;
//! otherwise the keys without a `kid` (the secret, PEM files) and, for a token without `kid`,
//! every key. Of those, only keys whose family allows the header's `alg` are tried
//! ([`super::keys`]): the algorithm is never taken from the token alone. A `kid` that no key has
//! asks the JWKS cache for a refetch (rate-limited there) and is tried once more. Until the
//! JWKS has been fetched once, a token that no other key verifies is `unavailable`, not refused
//! as invalid and never accepted.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, AlgorithmFamily, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::jwks::{Jwks, Refetch};
use super::keys::{KeyError, VerifyKey};
use super::{AuthError, Grants, Identity, RawGrants};

/// Every algorithm Herald verifies.
const ALGORITHMS: [Algorithm; 12] = [
    Algorithm::HS256,
    Algorithm::HS384,
    Algorithm::HS512,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// Verifies JWTs against the configured keys. Cheap to share (`Arc`) across tasks.
#[derive(Clone, Debug)]
pub struct JwtVerifier {
    /// The keys from `jwt_secret` and `jwt_public_key_files`, fixed at start.
    fixed: Arc<[VerifyKey]>,
    /// The JWKS cache, when `jwt_jwks_url` is set (its refresh task runs beside the server).
    jwks: Option<Arc<Jwks>>,
    /// One validation per algorithm (claims, leeway, audience and issuer are the same in all):
    /// jsonwebtoken checks that a validation's algorithms are of the key's family.
    validations: Arc<[(Algorithm, Validation)]>,
    /// Parsed grants by their raw form: most users share a few grant sets, and every open
    /// connection holds its grants, so identical sets are parsed once and shared. Bounded:
    /// cleared when it reaches [`GRANTS_CACHE`] entries. Locked only for a lookup or an insert.
    grants: Arc<Mutex<HashMap<RawGrants, Arc<Grants>>>>,
}

/// Most distinct grant sets kept parsed.
const GRANTS_CACHE: usize = 1024;

/// The claims Herald reads. Every field is optional here, so that a token with a missing or
/// ill-typed claim reaches [`jsonwebtoken`]'s own checks (expiry first) and gets a precise error.
#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    sub: Option<Value>,
    #[serde(default)]
    exp: Option<Value>,
    #[serde(default)]
    grants: Option<Value>,
}

/// What one pass over the keys at hand found.
enum Attempt {
    Done(Result<Identity, AuthError>),
    /// The token names a `kid` no key has, and a JWKS refetch might bring it.
    UnknownKid,
    /// No key at hand verified it, and the JWKS has never been fetched.
    NeedKeys,
}

impl JwtVerifier {
    /// A verifier for the given keys and JWKS cache, allowing `leeway` of clock skew on `exp`
    /// and `nbf`.
    pub(crate) fn new(
        keys: Vec<VerifyKey>,
        jwks: Option<Arc<Jwks>>,
        leeway: Duration,
    ) -> JwtVerifier {
        let validations = ALGORITHMS
            .iter()
            .map(|&alg| {
                let mut v = Validation::new(alg);
                v.leeway = leeway.as_secs();
                v.validate_exp = true;
                v.validate_nbf = true;
                v.set_required_spec_claims(&["exp", "sub"]);
                // A token's `aud` is ignored unless an audience is configured (`with_claims`).
                v.validate_aud = false;
                (alg, v)
            })
            .collect();
        JwtVerifier {
            fixed: keys.into(),
            jwks,
            validations,
            grants: Arc::default(),
        }
    }

    /// A verifier for HS256, HS384 and HS512 tokens signed with `secret` and nothing else.
    pub fn hmac(secret: &[u8], leeway: Duration) -> JwtVerifier {
        JwtVerifier::new(vec![VerifyKey::secret(secret)], None, leeway)
    }

    /// Requires `aud` to name `audience` and `iss` to be `issuer`, each when given
    /// (`jwt_audience`, `jwt_issuer`); a token without the claim is then refused too.
    pub fn with_claims(mut self, audience: Option<&str>, issuer: Option<&str>) -> JwtVerifier {
        let mut required = vec!["exp", "sub"];
        if audience.is_some() {
            required.push("aud");
        }
        if issuer.is_some() {
            required.push("iss");
        }
        let mut validations = self.validations.to_vec();
        for (_, v) in &mut validations {
            if let Some(a) = audience {
                v.set_audience(&[a]);
                v.validate_aud = true;
            }
            if let Some(i) = issuer {
                v.set_issuer(&[i]);
            }
            v.set_required_spec_claims(&required);
        }
        self.validations = validations.into();
        self
    }

    /// Checks `token` (key, algorithm, signature, `exp`, `nbf`, `sub`, and `aud`/`iss` when
    /// configured) and reads its grants. A `kid` nobody knows, or a JWKS never fetched, asks
    /// for one JWKS refetch (rate-limited there) and the token is tried once more.
    pub async fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        match self.attempt(token) {
            Attempt::Done(r) => r,
            first => {
                let refetched = match &self.jwks {
                    Some(j) => j.refetch().await,
                    None => Refetch::Throttled,
                };
                let again = match refetched {
                    Refetch::Done => self.attempt(token),
                    Refetch::Throttled => first,
                    // The keys may well be there once the JWKS server answers: not `invalid`.
                    Refetch::TimedOut => return Err(AuthError::KeysUnavailable),
                };
                match again {
                    Attempt::Done(r) => r,
                    Attempt::NeedKeys => Err(AuthError::KeysUnavailable),
                    Attempt::UnknownKid => Err(unknown_kid()),
                }
            }
        }
    }

    /// The JWKS fetch attempts finished so far (good or bad); `None` without a JWKS.
    pub fn jwks_attempts(&self) -> Option<u64> {
        self.jwks.as_ref().map(|j| j.attempts())
    }

    /// [`JwtVerifier::verify`] with the keys at hand, no refetch.
    pub fn verify_cached(&self, token: &str) -> Result<Identity, AuthError> {
        match self.attempt(token) {
            Attempt::Done(r) => r,
            Attempt::NeedKeys => Err(AuthError::KeysUnavailable),
            Attempt::UnknownKid => Err(unknown_kid()),
        }
    }

    fn attempt(&self, token: &str) -> Attempt {
        let header = match jsonwebtoken::decode_header(token) {
            Ok(h) => h,
            Err(e) => return Attempt::Done(Err(map_jwt_error(e))),
        };
        let alg = header.alg;
        let kid = header.kid.as_deref();
        let fetched = self.jwks.as_ref().map(|j| j.current());
        // Some(None): a JWKS is configured and was never fetched.
        let jwks_missing = matches!(fetched, Some(None));
        let from_jwks: &[VerifyKey] = match &fetched {
            Some(Some(keys)) => keys,
            _ => &[],
        };
        let all = || self.fixed.iter().chain(from_jwks.iter());
        let named = kid.is_some_and(|kid| all().any(|k| k.kid.as_deref() == Some(kid)));
        let candidates = all().filter(|k| match (kid, named) {
            (Some(kid), true) => k.kid.as_deref() == Some(kid),
            (Some(_), false) => k.kid.is_none(),
            (None, _) => true,
        });
        let mut tried = 0;
        let mut mismatch = None;
        for key in candidates.filter(|k| k.allows(alg)) {
            tried += 1;
            match jsonwebtoken::decode::<Claims>(token, &key.key, self.validation(alg)) {
                Ok(data) => return Attempt::Done(self.identity(data.claims)),
                Err(e) if matches!(e.kind(), ErrorKind::InvalidSignature) => mismatch = Some(e),
                Err(e) => return Attempt::Done(Err(map_jwt_error(e))),
            }
        }
        if jwks_missing {
            return Attempt::NeedKeys;
        }
        if kid.is_some() && !named && self.jwks.is_some() {
            return Attempt::UnknownKid;
        }
        Attempt::Done(Err(match (tried, mismatch) {
            (0, _) if named => invalid("its `alg` is not one the key its `kid` names allows"),
            (0, _) => invalid("no configured key accepts its `alg`"),
            (_, Some(e)) => map_jwt_error(e),
            (_, None) => invalid("it could not be verified"),
        }))
    }

    fn validation(&self, alg: Algorithm) -> &Validation {
        self.validations
            .iter()
            .find(|(a, _)| *a == alg)
            .map(|(_, v)| v)
            .expect("a validation for every algorithm a key allows")
    }

    fn identity(&self, claims: Claims) -> Result<Identity, AuthError> {
        let user = match claims.sub {
            Some(Value::String(s)) if !s.is_empty() => s,
            _ => return Err(invalid("its `sub` claim (the user) is missing or empty")),
        };
        let expires_at = claims
            .exp
            .as_ref()
            .and_then(exp_seconds)
            .ok_or_else(|| invalid("its `exp` claim is not a number of seconds"))?;
        let raw = match claims.grants {
            None | Some(Value::Null) => return Err(AuthError::MissingGrants),
            Some(v) => serde_json::from_value::<RawGrants>(v).map_err(AuthError::InvalidGrants)?,
        };
        let cached = self.grants.lock().get(&raw).cloned();
        let grants = match cached {
            Some(g) => g,
            None => {
                let g = Arc::new(Grants::from_raw(&raw)?);
                let mut cache = self.grants.lock();
                if cache.len() >= GRANTS_CACHE {
                    cache.clear();
                }
                cache.insert(raw, g.clone());
                g
            }
        };
        Ok(Identity {
            user: user.into(),
            grants,
            expires_at,
        })
    }
}

fn unknown_kid() -> AuthError {
    invalid("its `kid` names no key this node knows (not in jwt_public_key_files or the JWKS)")
}

/// Reads a PEM private key of one family.
type Loader = fn(&[u8]) -> jsonwebtoken::errors::Result<EncodingKey>;

/// A private key to sign tokens with (`herald token --key-file`), and its algorithm.
pub struct Signer {
    key: EncodingKey,
    alg: Algorithm,
    kid: Option<String>,
    /// `aud` and `iss` to put in every token, when set.
    audience: Option<String>,
    issuer: Option<String>,
}

impl Signer {
    /// HS256 with the shared secret.
    pub fn hmac(secret: &[u8]) -> Signer {
        Signer {
            key: EncodingKey::from_secret(secret),
            alg: Algorithm::HS256,
            kid: None,
            audience: None,
            issuer: None,
        }
    }

    /// The private key in the PEM text `pem` (RSA, EC P-256 or P-384, Ed25519; PKCS#8, or
    /// PKCS#1/SEC1), signing with `alg` or, when `None`, RS256, ES256/ES384 (by the curve) or
    /// EdDSA. `alg` must be of the key's family.
    pub fn from_pem(
        path: &Path,
        pem: &[u8],
        alg: Option<Algorithm>,
        kid: Option<String>,
    ) -> Result<Signer, KeyError> {
        let refused = || KeyError::PrivatePem {
            path: path.to_owned(),
        };
        let candidates: &[(Loader, &[Algorithm])] = &[
            (EncodingKey::from_rsa_pem, &[Algorithm::RS256]),
            (
                EncodingKey::from_ec_pem,
                &[Algorithm::ES256, Algorithm::ES384],
            ),
            (EncodingKey::from_ed_pem, &[Algorithm::EdDSA]),
        ];
        for (load, defaults) in candidates {
            let Ok(key) = load(pem) else { continue };
            // The key type is right; the curve (for EC) shows when signing.
            let family: AlgorithmFamily = defaults[0].family();
            let tries: Vec<Algorithm> = match alg {
                Some(a) if a.family() == family => vec![a],
                Some(_) => return Err(refused()),
                None => defaults.to_vec(),
            };
            for a in tries {
                if jsonwebtoken::encode(&Header::new(a), &serde_json::json!({}), &key).is_ok() {
                    return Ok(Signer {
                        key,
                        alg: a,
                        kid,
                        audience: None,
                        issuer: None,
                    });
                }
            }
            return Err(refused());
        }
        Err(refused())
    }

    /// Puts `aud` and `iss` in every token it signs (each when given).
    pub fn with_claims(mut self, audience: Option<String>, issuer: Option<String>) -> Signer {
        self.audience = audience;
        self.issuer = issuer;
        self
    }

    /// The algorithm it signs with.
    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    /// Signs a token for `user` with `grants`, valid for `ttl` from now (claims `sub`, `iat`,
    /// `exp`, `grants`), with the signer's `kid` in the header when it has one.
    pub fn mint(&self, user: &str, grants: &RawGrants, ttl: Duration) -> Result<String, AuthError> {
        #[derive(Serialize)]
        struct MintClaims<'a> {
            sub: &'a str,
            iat: u64,
            exp: u64,
            grants: &'a RawGrants,
            #[serde(skip_serializing_if = "Option::is_none")]
            aud: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            iss: Option<&'a str>,
        }
        let iat = unix_now();
        let claims = MintClaims {
            sub: user,
            iat,
            exp: iat.saturating_add(ttl.as_secs()),
            grants,
            aud: self.audience.as_deref(),
            iss: self.issuer.as_deref(),
        };
        let mut header = Header::new(self.alg);
        header.kid = self.kid.clone();
        jsonwebtoken::encode(&header, &claims, &self.key).map_err(AuthError::Signing)
    }
}

/// Signs an HS256 token for `user` with `grants`, valid for `ttl` from now (claims `sub`, `iat`,
/// `exp`, `grants`).
pub fn mint_token(
    secret: &[u8],
    user: &str,
    grants: &RawGrants,
    ttl: Duration,
) -> Result<String, AuthError> {
    Signer::hmac(secret).mint(user, grants, ttl)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Reads `exp` the way jsonwebtoken validated it: an unsigned integer, or a non-negative float
/// rounded to the nearest second.
fn exp_seconds(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| {
        v.as_f64()
            .filter(|f| f.is_finite() && *f >= 0.0 && *f < u64::MAX as f64)
            .map(|f| f.round() as u64)
    })
}

fn invalid(reason: &'static str) -> AuthError {
    AuthError::InvalidToken {
        reason,
        source: None,
    }
}

fn map_jwt_error(err: jsonwebtoken::errors::Error) -> AuthError {
    let reason = match err.kind() {
        ErrorKind::ExpiredSignature => return AuthError::TokenExpired(err),
        ErrorKind::ImmatureSignature => return AuthError::TokenNotYetValid(err),
        ErrorKind::InvalidSignature => "its signature matches none of the configured keys",
        ErrorKind::InvalidAlgorithm => {
            "its `alg` is not one its key allows (each key verifies only its own family: \
             HS256/384/512 for jwt_secret, RS*/PS* for RSA, ES256 or ES384 for EC, EdDSA)"
        }
        ErrorKind::MissingRequiredClaim(claim) if claim == "sub" => {
            "its `sub` claim (the user) is missing or not a string"
        }
        ErrorKind::MissingRequiredClaim(claim) if claim == "exp" => {
            "its `exp` claim (expiry, unix seconds) is missing or not a number"
        }
        ErrorKind::InvalidClaimFormat(claim) if claim == "nbf" => {
            "its `nbf` claim is not a number of seconds"
        }
        ErrorKind::InvalidClaimFormat(_) => "its `exp` claim is not a number of seconds",
        ErrorKind::InvalidAudience => "its `aud` claim does not name the configured jwt_audience",
        ErrorKind::InvalidIssuer => "its `iss` claim is not the configured jwt_issuer",
        ErrorKind::MissingRequiredClaim(claim) if claim == "aud" => {
            "it has no `aud` claim, and jwt_audience is configured"
        }
        ErrorKind::MissingRequiredClaim(claim) if claim == "iss" => {
            "it has no `iss` claim, and jwt_issuer is configured"
        }
        ErrorKind::InvalidToken
        | ErrorKind::Base64(_)
        | ErrorKind::Json(_)
        | ErrorKind::Utf8(_) => {
            "it is not a well-formed JWT (three base64url parts of JSON: header.claims.signature)"
        }
        _ => "it could not be verified",
    };
    AuthError::InvalidToken {
        reason,
        source: Some(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use serde_json::json;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    const LEEWAY: Duration = Duration::from_secs(30);

    fn verifier() -> JwtVerifier {
        JwtVerifier::hmac(SECRET, LEEWAY)
    }

    fn sign(alg: Algorithm, claims: &Value, secret: &[u8]) -> String {
        jsonwebtoken::encode(&Header::new(alg), claims, &EncodingKey::from_secret(secret)).unwrap()
    }

    fn claims(exp_from_now: i64) -> Value {
        json!({
            "sub": "alice",
            "exp": unix_now().checked_add_signed(exp_from_now).unwrap(),
            "grants": {"subscribe": ["news.>"], "publish": ["chat.*"]},
        })
    }

    fn code(token: &str) -> &'static str {
        verifier().verify_cached(token).unwrap_err().code()
    }

    #[test]
    fn a_valid_token_yields_user_grants_and_expiry() {
        let c = claims(600);
        let id = verifier()
            .verify_cached(&sign(Algorithm::HS256, &c, SECRET))
            .unwrap();
        assert_eq!(&*id.user, "alice");
        assert_eq!(id.expires_at, c["exp"].as_u64().unwrap());
        assert!(id.grants.can_subscribe("news.eu"));
        assert!(id.grants.can_publish("chat.room1"));
        assert!(!id.grants.can_send("orders"));
    }

    #[test]
    fn hs384_and_hs512_are_accepted() {
        for alg in [Algorithm::HS384, Algorithm::HS512] {
            assert!(
                verifier()
                    .verify_cached(&sign(alg, &claims(600), SECRET))
                    .is_ok()
            );
        }
    }

    #[test]
    fn minted_tokens_verify() {
        let token = mint_token(SECRET, "bob", &RawGrants::all(), Duration::from_secs(60)).unwrap();
        let id = verifier().verify_cached(&token).unwrap();
        assert_eq!(&*id.user, "bob");
        assert!(id.grants.can_send("anything"));
        assert!(id.expires_at >= unix_now() + 59);
    }

    #[test]
    fn an_expired_token_is_token_expired_beyond_the_leeway_only() {
        assert_eq!(
            code(&sign(Algorithm::HS256, &claims(-100), SECRET)),
            "token_expired"
        );
        assert!(
            verifier()
                .verify_cached(&sign(Algorithm::HS256, &claims(-10), SECRET))
                .is_ok()
        );
    }

    #[test]
    fn a_token_before_its_nbf_is_token_not_yet_valid() {
        let mut c = claims(600);
        c["nbf"] = json!(unix_now() + 120);
        assert_eq!(
            code(&sign(Algorithm::HS256, &c, SECRET)),
            "token_not_yet_valid"
        );
        c["nbf"] = json!(unix_now() + 10);
        assert!(
            verifier()
                .verify_cached(&sign(Algorithm::HS256, &c, SECRET))
                .is_ok()
        );
    }

    #[test]
    fn a_token_signed_with_another_key_is_invalid() {
        let token = sign(
            Algorithm::HS256,
            &claims(600),
            b"another secret, also 32 bytes long",
        );
        assert_eq!(code(&token), "invalid_token");
    }

    #[test]
    fn a_tampered_token_is_invalid() {
        let token = sign(Algorithm::HS256, &claims(600), SECRET);
        let mut parts: Vec<&str> = token.split('.').collect();
        let evil = URL_SAFE_NO_PAD.encode(
            json!({"sub": "mallory", "exp": unix_now() + 600, "grants": RawGrants::all()})
                .to_string(),
        );
        parts[1] = &evil;
        assert_eq!(code(&parts.join(".")), "invalid_token");
    }

    #[test]
    fn alg_none_is_refused() {
        let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
        let body = URL_SAFE_NO_PAD.encode(claims(600).to_string());
        assert_eq!(code(&format!("{header}.{body}.")), "invalid_token");
        assert_eq!(code(&format!("{header}.{body}")), "invalid_token");
    }

    #[test]
    fn an_asymmetric_alg_header_is_refused_with_the_hmac_key() {
        // Header says RS256, signature is an HMAC: classic alg confusion.
        let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256","typ":"JWT"}"#);
        let body = URL_SAFE_NO_PAD.encode(claims(600).to_string());
        let token = format!("{header}.{body}.c2lnbmF0dXJl");
        let err = verifier().verify_cached(&token).unwrap_err();
        assert_eq!(err.code(), "invalid_token");
        assert!(err.to_string().contains("`alg`"), "{err}");
    }

    #[test]
    fn garbage_is_invalid_token() {
        for token in ["", "abc", "a.b.c", "....", "eyJ.eyJ.sig"] {
            assert_eq!(code(token), "invalid_token", "{token:?}");
        }
    }

    #[test]
    fn a_missing_or_empty_sub_is_invalid_token() {
        let mut c = claims(600);
        c.as_object_mut().unwrap().remove("sub");
        assert_eq!(code(&sign(Algorithm::HS256, &c, SECRET)), "invalid_token");
        c["sub"] = json!("");
        assert_eq!(code(&sign(Algorithm::HS256, &c, SECRET)), "invalid_token");
        c["sub"] = json!(42);
        assert_eq!(code(&sign(Algorithm::HS256, &c, SECRET)), "invalid_token");
    }

    #[test]
    fn a_missing_exp_is_invalid_token() {
        let mut c = claims(600);
        c.as_object_mut().unwrap().remove("exp");
        assert_eq!(code(&sign(Algorithm::HS256, &c, SECRET)), "invalid_token");
    }

    #[test]
    fn a_missing_grants_claim_is_missing_grants() {
        let mut c = claims(600);
        c.as_object_mut().unwrap().remove("grants");
        assert_eq!(code(&sign(Algorithm::HS256, &c, SECRET)), "missing_grants");
    }

    #[test]
    fn grants_of_the_wrong_shape_are_invalid_grants() {
        for grants in [
            json!(["news"]),
            json!({"subscribe": "news"}),
            json!({"subscribe": [1]}),
        ] {
            let mut c = claims(600);
            c["grants"] = grants.clone();
            assert_eq!(
                code(&sign(Algorithm::HS256, &c, SECRET)),
                "invalid_grants",
                "{grants}"
            );
        }
    }

    #[test]
    fn a_bad_pattern_is_invalid_grants_naming_the_pattern() {
        let mut c = claims(600);
        c["grants"] = json!({"subscribe": ["news.>", "bad pattern"]});
        let err = verifier()
            .verify_cached(&sign(Algorithm::HS256, &c, SECRET))
            .unwrap_err();
        assert_eq!(err.code(), "invalid_grants");
        assert!(err.to_string().contains("bad pattern"), "{err}");
    }

    #[test]
    fn a_token_with_an_audience_is_accepted_when_no_audience_is_configured() {
        let mut c = claims(600);
        c["aud"] = json!("someone-else");
        assert!(
            verifier()
                .verify_cached(&sign(Algorithm::HS256, &c, SECRET))
                .is_ok()
        );
    }

    #[test]
    fn a_configured_audience_and_issuer_must_match_and_be_present() {
        let v = verifier().with_claims(Some("herald"), Some("https://id.example.com"));
        let check = |aud: Option<Value>, iss: Option<&str>| {
            let mut c = claims(600);
            if let Some(a) = aud {
                c["aud"] = a;
            }
            if let Some(i) = iss {
                c["iss"] = json!(i);
            }
            v.verify_cached(&sign(Algorithm::HS256, &c, SECRET))
                .map(|_| ())
        };
        let iss = Some("https://id.example.com");
        assert!(check(Some(json!("herald")), iss).is_ok());
        assert!(
            check(Some(json!(["other", "herald"])), iss).is_ok(),
            "aud may be a list"
        );
        for (aud, iss) in [
            (Some(json!("other")), iss),
            (None, iss),
            (Some(json!("herald")), Some("https://evil.example.com")),
            (Some(json!("herald")), None),
        ] {
            let e = check(aud.clone(), iss).unwrap_err();
            assert_eq!(e.code(), "invalid_token", "{aud:?} {iss:?}");
        }
    }

    #[test]
    fn error_messages_never_echo_the_token() {
        let token = sign(
            Algorithm::HS256,
            &claims(600),
            b"wrong secret wrong secret wrong!!",
        );
        let err = verifier().verify_cached(&token).unwrap_err();
        let mut text = err.to_string();
        let mut source = std::error::Error::source(&err);
        while let Some(s) = source {
            text.push_str(&s.to_string());
            source = s.source();
        }
        for part in token.split('.') {
            assert!(!text.contains(part), "{text}");
        }
    }
}
