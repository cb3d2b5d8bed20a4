//! JWT verification with a shared HMAC secret (HS256, HS384, HS512), and minting tokens for the
//! `herald token` command and development mode.
//!
//! A token must carry `sub` (the user), `exp` and `grants` (see [`RawGrants`]); `nbf` is checked
//! when present. `aud` and `iss` are checked when `jwt_audience` / `jwt_issuer` are configured
//! (then required), and ignored otherwise.
//! The algorithm list is fixed here, never taken from the token header: `none` and asymmetric
//! algorithms are refused with the HMAC key.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{AuthError, Grants, Identity, RawGrants};

/// Verifies JWTs signed with one HMAC secret. Cheap to share (`Arc`) across tasks.
#[derive(Clone, Debug)]
pub struct JwtVerifier {
    key: DecodingKey,
    validation: Validation,
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

impl JwtVerifier {
    /// A verifier for HS256, HS384 and HS512 tokens signed with `secret`, allowing `leeway` of
    /// clock skew on `exp` and `nbf`.
    pub fn hmac(secret: &[u8], leeway: Duration) -> JwtVerifier {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];
        validation.leeway = leeway.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        // A token's `aud` is ignored unless an audience is configured (`with_claims`).
        validation.validate_aud = false;
        JwtVerifier {
            key: DecodingKey::from_secret(secret),
            validation,
            grants: Arc::default(),
        }
    }

    /// Requires `aud` to name `audience` and `iss` to be `issuer`, each when given
    /// (`jwt_audience`, `jwt_issuer`); a token without the claim is then refused too.
    pub fn with_claims(mut self, audience: Option<&str>, issuer: Option<&str>) -> JwtVerifier {
        let mut required = vec!["exp", "sub"];
        if let Some(a) = audience {
            self.validation.set_audience(&[a]);
            self.validation.validate_aud = true;
            required.push("aud");
        }
        if let Some(i) = issuer {
            self.validation.set_issuer(&[i]);
            required.push("iss");
        }
        self.validation.set_required_spec_claims(&required);
        self
    }

    /// Checks `token` (signature, algorithm, `exp`, `nbf`, `sub`) and reads its grants.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(map_jwt_error)?;
        let claims = data.claims;

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

/// Signs an HS256 token for `user` with `grants`, valid for `ttl` from now (claims `sub`, `iat`,
/// `exp`, `grants`).
pub fn mint_token(
    secret: &[u8],
    user: &str,
    grants: &RawGrants,
    ttl: Duration,
) -> Result<String, AuthError> {
    #[derive(Serialize)]
    struct MintClaims<'a> {
        sub: &'a str,
        iat: u64,
        exp: u64,
        grants: &'a RawGrants,
    }
    let iat = unix_now();
    let claims = MintClaims {
        sub: user,
        iat,
        exp: iat.saturating_add(ttl.as_secs()),
        grants,
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .map_err(AuthError::Signing)
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
        ErrorKind::InvalidSignature => "its signature does not match the configured secret",
        ErrorKind::InvalidAlgorithm => "it is not signed with HS256, HS384 or HS512",
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
        verifier().verify(token).unwrap_err().code()
    }

    #[test]
    fn a_valid_token_yields_user_grants_and_expiry() {
        let c = claims(600);
        let id = verifier()
            .verify(&sign(Algorithm::HS256, &c, SECRET))
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
            assert!(verifier().verify(&sign(alg, &claims(600), SECRET)).is_ok());
        }
    }

    #[test]
    fn minted_tokens_verify() {
        let token = mint_token(SECRET, "bob", &RawGrants::all(), Duration::from_secs(60)).unwrap();
        let id = verifier().verify(&token).unwrap();
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
                .verify(&sign(Algorithm::HS256, &claims(-10), SECRET))
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
                .verify(&sign(Algorithm::HS256, &c, SECRET))
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
        let err = verifier().verify(&token).unwrap_err();
        assert_eq!(err.code(), "invalid_token");
        assert!(err.to_string().contains("HS256"), "{err}");
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
            .verify(&sign(Algorithm::HS256, &c, SECRET))
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
                .verify(&sign(Algorithm::HS256, &c, SECRET))
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
            v.verify(&sign(Algorithm::HS256, &c, SECRET)).map(|_| ())
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
        let err = verifier().verify(&token).unwrap_err();
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
