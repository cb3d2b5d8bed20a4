//! Grants: which topics a user may subscribe to and publish to, and which backend services it may
//! `send` to, as lists of topic patterns (`news.>`, `chat.*`, `orders`).
//!
//! [`RawGrants`] is the JSON shape of the JWT's `grants` claim; [`Grants`] is the parsed form the
//! gateway asks questions of. Matching is [`Pattern::matches`]; this module only decides which list
//! a question goes to. A service name is matched against the `send` patterns exactly as a topic is.

use serde::{Deserialize, Serialize};

use super::{AuthError, quote};
use crate::protocol::topic::Pattern;

/// The `grants` claim as it appears in a JWT: three optional lists of pattern strings.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct RawGrants {
    /// Patterns of topics the user may subscribe to.
    #[serde(default)]
    pub subscribe: Vec<String>,
    /// Patterns of topics the user may publish to.
    #[serde(default)]
    pub publish: Vec<String>,
    /// Patterns of service names the user may send directed messages to.
    #[serde(default)]
    pub send: Vec<String>,
}

impl RawGrants {
    /// Everything: `>` in every list.
    pub fn all() -> RawGrants {
        RawGrants {
            subscribe: vec![">".to_owned()],
            publish: vec![">".to_owned()],
            send: vec![">".to_owned()],
        }
    }
}

/// Parsed grants. An empty list grants nothing.
#[derive(Clone, Debug, Default)]
pub struct Grants {
    subscribe: Vec<Pattern>,
    publish: Vec<Pattern>,
    send: Vec<Pattern>,
}

impl Grants {
    /// Parses every pattern; the first one that does not parse is named in the error.
    pub fn from_raw(raw: &RawGrants) -> Result<Grants, AuthError> {
        Ok(Grants {
            subscribe: parse_list("subscribe", &raw.subscribe)?,
            publish: parse_list("publish", &raw.publish)?,
            send: parse_list("send", &raw.send)?,
        })
    }

    /// Everything: `>` in every list.
    pub fn all() -> Grants {
        let all = || vec![Pattern::parse(">").expect("`>` is a valid pattern")];
        Grants {
            subscribe: all(),
            publish: all(),
            send: all(),
        }
    }

    /// The patterns as strings, e.g. to store an identity outside the process.
    pub fn to_raw(&self) -> RawGrants {
        let strings = |list: &[Pattern]| list.iter().map(|p| p.as_str().to_owned()).collect();
        RawGrants {
            subscribe: strings(&self.subscribe),
            publish: strings(&self.publish),
            send: strings(&self.send),
        }
    }

    /// True when the user may subscribe to `topic` (a validated topic name).
    pub fn can_subscribe(&self, topic: &str) -> bool {
        any_matches(&self.subscribe, topic)
    }

    /// True when the user may publish to `topic` (a validated topic name).
    pub fn can_publish(&self, topic: &str) -> bool {
        any_matches(&self.publish, topic)
    }

    /// True when the user may send directed messages to `service`.
    pub fn can_send(&self, service: &str) -> bool {
        any_matches(&self.send, service)
    }
}

fn parse_list(list: &'static str, patterns: &[String]) -> Result<Vec<Pattern>, AuthError> {
    patterns
        .iter()
        .map(|p| {
            Pattern::parse(p).map_err(|source| AuthError::InvalidGrantPattern {
                list,
                pattern: quote(p),
                source,
            })
        })
        .collect()
}

fn any_matches(patterns: &[Pattern], name: &str) -> bool {
    // An empty name is never a valid topic or service; `>` would otherwise match it.
    !name.is_empty() && patterns.iter().any(|p| p.matches(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grants(subscribe: &[&str], publish: &[&str], send: &[&str]) -> Grants {
        let own = |l: &[&str]| l.iter().map(|s| s.to_string()).collect();
        Grants::from_raw(&RawGrants {
            subscribe: own(subscribe),
            publish: own(publish),
            send: own(send),
        })
        .unwrap()
    }

    #[test]
    fn each_question_consults_only_its_own_list() {
        let g = grants(&["news.>"], &["chat.*"], &["orders"]);
        assert!(g.can_subscribe("news.eu"));
        assert!(!g.can_publish("news.eu"));
        assert!(!g.can_send("news.eu"));
        assert!(g.can_publish("chat.room1"));
        assert!(!g.can_subscribe("chat.room1"));
        assert!(g.can_send("orders"));
        assert!(!g.can_send("billing"));
        assert!(!g.can_subscribe("orders"));
    }

    #[test]
    fn empty_grants_allow_nothing() {
        let g = Grants::default();
        assert!(!g.can_subscribe("a"));
        assert!(!g.can_publish("a"));
        assert!(!g.can_send("a"));
    }

    #[test]
    fn all_allows_everything_but_the_empty_name() {
        let g = Grants::all();
        assert!(g.can_subscribe("a.b.c"));
        assert!(g.can_publish("x"));
        assert!(g.can_send("billing"));
        assert!(!g.can_subscribe(""));
        assert_eq!(g.to_raw(), RawGrants::all());
    }

    #[test]
    fn a_bad_pattern_is_named_with_its_list() {
        let raw = RawGrants {
            subscribe: vec!["ok.>".into()],
            publish: vec!["fine".into(), "a.>.b".into()],
            send: vec![],
        };
        let err = Grants::from_raw(&raw).unwrap_err();
        assert_eq!(err.code(), "invalid_grants");
        let msg = err.to_string();
        assert!(msg.contains("grants.publish"), "{msg}");
        assert!(msg.contains("a.>.b"), "{msg}");
        assert!(std::error::Error::source(&err).is_some());
    }

    #[test]
    fn raw_grants_ignore_unknown_fields_and_default_missing_lists() {
        let raw: RawGrants = serde_json::from_str(r#"{"subscribe":["a"]}"#).unwrap();
        assert_eq!(raw.publish, Vec::<String>::new());
        // Other keys belong to other consumers of the JWT (or later versions): ignored.
        let raw: RawGrants = serde_json::from_str(r#"{"subscribe":["a"],"admin":true}"#).unwrap();
        assert_eq!(raw.subscribe, vec!["a".to_string()]);
        assert!(serde_json::from_str::<RawGrants>(r#"{"subscribe":"a"}"#).is_err());
    }

    #[test]
    fn parsed_grants_round_trip_to_raw() {
        let raw = RawGrants {
            subscribe: vec!["a.*".into(), "b".into()],
            publish: vec!["c.>".into()],
            send: vec!["svc".into()],
        };
        assert_eq!(Grants::from_raw(&raw).unwrap().to_raw(), raw);
    }
}
