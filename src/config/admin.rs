//! The second stage of the admin settings: the key of `/metrics` and the dashboard
//! (`admin_key`, or the API key when unset) and whether `/metrics` is open to scrapers without
//! it (`metrics_public`).

use super::*;
use raw::ADMIN_KEY;

/// Who may read `/metrics` and the dashboard.
#[derive(Clone, Debug)]
pub struct Admin {
    /// `admin_key`; `None`: the API key is the admin key too.
    pub key: Option<Redacted<String>>,
    /// `/metrics` answers without a key (the dashboard still needs one).
    pub metrics_public: bool,
}

/// `admin_key`: as long as the API key at least, visible ASCII (it travels in an
/// `Authorization: Bearer` header).
pub(super) fn validate(raw: &mut RawConfig) -> Result<Admin, ConfigError> {
    let key = match raw.admin_key.take() {
        None => None,
        Some(k) => {
            let n = k.chars().count();
            if n < MIN_API_KEY_CHARS {
                return Err(invalid(
                    ADMIN_KEY,
                    format!(
                        "too short: expected at least {MIN_API_KEY_CHARS} characters, got {n}; \
                         use a long random string such as the output of `openssl rand -base64 24`"
                    ),
                ));
            }
            if !k.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(invalid(
                    ADMIN_KEY,
                    "expected visible ASCII characters only, without spaces: it is sent in an \
                     `Authorization: Bearer` header",
                ));
            }
            Some(Redacted(k))
        }
    };
    Ok(Admin {
        key,
        metrics_public: raw.metrics_public.take().unwrap_or(false),
    })
}

impl Config {
    /// The key of `/metrics` and the dashboard: `admin_key`, or the API key when unset.
    pub fn admin_key(&self) -> &str {
        self.admin.key.as_deref().unwrap_or(&self.api_key)
    }
}
