//! Topic names and topic patterns.
//!
//! A topic is one to many dot-separated segments of `[A-Za-z0-9_-]`, at most 255 bytes in
//! all. A pattern has the same shape, except that a segment may be `*` (exactly one segment)
//! and the last segment may be `>` (one or more trailing segments). This module owns parsing
//! and matching; it knows nothing of who may use which topic (that is `auth`).

use std::fmt;
use std::sync::Arc;

/// Longest topic name or pattern, in bytes.
pub const MAX_TOPIC_LEN: usize = 255;

/// Why a topic name or pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("topic is empty")]
    Empty,
    #[error("topic is longer than {MAX_TOPIC_LEN} bytes")]
    TooLong,
    #[error("topic has an empty segment (two dots, or a dot at an end)")]
    EmptySegment,
    #[error("topic segment {0:?} has a character outside [A-Za-z0-9_-]")]
    BadCharacter(String),
    #[error("wildcards (`*`, `>`) are allowed only in patterns, not in topic names")]
    Wildcard,
    #[error("`>` may only be the last segment of a pattern")]
    TailNotLast,
}

/// A validated topic name. Cheap to clone (shared string).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Topic(Arc<str>);

impl Topic {
    /// Validates `name` as a concrete topic (no wildcards).
    pub fn parse(name: &str) -> Result<Topic, TopicError> {
        check_shape(name)?;
        for seg in name.split('.') {
            if seg == "*" || seg == ">" {
                return Err(TopicError::Wildcard);
            }
            check_segment(seg)?;
        }
        Ok(Topic(Arc::from(name)))
    }

    /// The topic's name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The shared string, for maps keyed by topic.
    pub fn as_arc(&self) -> &Arc<str> {
        &self.0
    }

    /// The topic of a name that was one already (a map's key made from [`Topic::as_arc`]).
    pub(crate) fn from_shared(name: Arc<str>) -> Topic {
        Topic(name)
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Topic({})", &self.0)
    }
}

/// One segment of a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Exact(Box<str>),
    /// `*`: exactly one segment.
    One,
    /// `>`: one or more trailing segments.
    Tail,
}

/// A validated topic pattern, e.g. `chat.*` or `news.>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    source: Box<str>,
    segs: Box<[Seg]>,
}

impl Pattern {
    /// Validates `pattern`.
    pub fn parse(pattern: &str) -> Result<Pattern, TopicError> {
        check_shape(pattern)?;
        let parts: Vec<&str> = pattern.split('.').collect();
        let mut segs = Vec::with_capacity(parts.len());
        for (i, seg) in parts.iter().enumerate() {
            segs.push(match *seg {
                "*" => Seg::One,
                ">" if i + 1 == parts.len() => Seg::Tail,
                ">" => return Err(TopicError::TailNotLast),
                s => {
                    check_segment(s)?;
                    Seg::Exact(s.into())
                }
            });
        }
        Ok(Pattern {
            source: pattern.into(),
            segs: segs.into_boxed_slice(),
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// True when the concrete name `name` matches this pattern.
    pub fn matches(&self, name: &str) -> bool {
        let mut parts = name.split('.');
        for seg in self.segs.iter() {
            match seg {
                Seg::Tail => return parts.next().is_some(),
                Seg::One => {
                    if parts.next().is_none() {
                        return false;
                    }
                }
                Seg::Exact(s) => {
                    if parts.next() != Some(s) {
                        return false;
                    }
                }
            }
        }
        parts.next().is_none()
    }
}

/// True when `s` contains a wildcard segment, i.e. looks like a pattern.
pub fn has_wildcard(s: &str) -> bool {
    s.split('.').any(|seg| seg == "*" || seg == ">")
}

fn check_shape(s: &str) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong);
    }
    Ok(())
}

fn check_segment(seg: &str) -> Result<(), TopicError> {
    if seg.is_empty() {
        return Err(TopicError::EmptySegment);
    }
    if !seg
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(TopicError::BadCharacter(seg.chars().take(40).collect()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn topic_names_follow_the_grammar() {
        assert!(Topic::parse("news").is_ok());
        assert!(Topic::parse("chat.room-1.user_2").is_ok());
        assert_eq!(Topic::parse(""), Err(TopicError::Empty));
        assert_eq!(Topic::parse("a..b"), Err(TopicError::EmptySegment));
        assert_eq!(Topic::parse(".a"), Err(TopicError::EmptySegment));
        assert_eq!(
            Topic::parse("a*"),
            Err(TopicError::BadCharacter("a*".into()))
        );
        assert_eq!(Topic::parse("a.*"), Err(TopicError::Wildcard));
        assert_eq!(Topic::parse("a.>"), Err(TopicError::Wildcard));
        assert_eq!(Topic::parse(&"a".repeat(256)), Err(TopicError::TooLong));
        assert!(Topic::parse(&"a".repeat(255)).is_ok());
    }

    #[test]
    fn patterns_match_one_segment_or_a_tail() {
        let p = Pattern::parse("chat.*").unwrap();
        assert!(p.matches("chat.room1"));
        assert!(!p.matches("chat"));
        assert!(!p.matches("chat.room1.x"));
        let t = Pattern::parse("news.>").unwrap();
        assert!(t.matches("news.eu"));
        assert!(t.matches("news.eu.fr"));
        assert!(!t.matches("news"));
        let all = Pattern::parse(">").unwrap();
        assert!(all.matches("anything.at.all"));
        assert_eq!(Pattern::parse("a.>.b"), Err(TopicError::TailNotLast));
        assert!(Pattern::parse("exact").unwrap().matches("exact"));
        assert!(!Pattern::parse("exact").unwrap().matches("exact.no"));
    }

    proptest! {
        #[test]
        fn a_topic_always_matches_itself_as_a_pattern(name in "[a-z0-9_-]{1,8}(\\.[A-Z0-9_-]{1,8}){0,4}") {
            let t = Topic::parse(&name).unwrap();
            prop_assert!(Pattern::parse(t.as_str()).unwrap().matches(t.as_str()));
            prop_assert!(Pattern::parse(">").unwrap().matches(t.as_str()));
        }
    }
}
