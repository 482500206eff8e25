//! Topic names and MQTT-style topic patterns.
//!
//! A topic is UTF-8, at most [`MAX_TOPIC_BYTES`] bytes, made of `/`-separated non-empty
//! segments, with no wildcard characters (`+`, `#`) and no control characters. A pattern
//! is a topic in which a segment may be `+` (exactly one segment) and the last segment
//! may be `#` (that level and everything below it, including the parent itself).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Longest topic name, in bytes.
pub const MAX_TOPIC_BYTES: usize = 255;
/// Most segments in a topic or pattern.
pub const MAX_TOPIC_SEGMENTS: usize = 32;

/// Why a topic name or pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TopicError {
    /// The name is empty.
    #[error("topic is empty")]
    Empty,
    /// The name is longer than [`MAX_TOPIC_BYTES`].
    #[error("topic is {0} bytes long; the limit is {MAX_TOPIC_BYTES}")]
    TooLong(usize),
    /// More than [`MAX_TOPIC_SEGMENTS`] segments.
    #[error("topic has {0} segments; the limit is {MAX_TOPIC_SEGMENTS}")]
    TooManySegments(usize),
    /// Leading, trailing or doubled `/`.
    #[error("topic has an empty segment (leading, trailing or doubled '/')")]
    EmptySegment,
    /// A wildcard in a topic name, or a misplaced one in a pattern.
    #[error(
        "wildcard '{0}' is not allowed here (topics have none; in patterns '+' and '#' must fill a whole segment and '#' must be last)"
    )]
    Wildcard(char),
    /// A control character (including NUL).
    #[error("topic contains a control character")]
    ControlChar,
}

fn check_common(s: &str) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > MAX_TOPIC_BYTES {
        return Err(TopicError::TooLong(s.len()));
    }
    if s.chars().any(char::is_control) {
        return Err(TopicError::ControlChar);
    }
    let segments = s.split('/').count();
    if segments > MAX_TOPIC_SEGMENTS {
        return Err(TopicError::TooManySegments(segments));
    }
    if s.split('/').any(str::is_empty) {
        return Err(TopicError::EmptySegment);
    }
    Ok(())
}

/// A validated topic name. Invariant: passes [`Topic::new`]'s checks.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Topic(String);

impl Topic {
    /// Validates `name` as a topic.
    pub fn new(name: impl Into<String>) -> Result<Self, TopicError> {
        let name = name.into();
        check_common(&name)?;
        if let Some(c) = name.chars().find(|c| *c == '+' || *c == '#') {
            return Err(TopicError::Wildcard(c));
        }
        Ok(Self(name))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The `/`-separated segments.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }
}

impl<'de> Deserialize<'de> for Topic {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Topic::new(s).map_err(serde::de::Error::custom)
    }
}

impl FromStr for Topic {
    type Err = TopicError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Topic::new(s)
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Topic({:?})", self.0)
    }
}

impl AsRef<str> for Topic {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// An MQTT-style topic filter: `sensors/+/temp`, `sensors/#`, `#`.
///
/// As in MQTT, a pattern that starts with a wildcard does not match topics that start
/// with `$` (the fleet's own, `$fleet/…`): `#` is every application topic, and
/// `$fleet/#` names the fleet's.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Pattern(String);

impl Pattern {
    /// Validates `pattern`.
    pub fn new(pattern: impl Into<String>) -> Result<Self, TopicError> {
        let pattern = pattern.into();
        check_common(&pattern)?;
        let count = pattern.split('/').count();
        for (i, seg) in pattern.split('/').enumerate() {
            match seg {
                "+" => {}
                "#" if i + 1 == count => {}
                "#" => return Err(TopicError::Wildcard('#')),
                _ => {
                    if let Some(c) = seg.chars().find(|c| *c == '+' || *c == '#') {
                        return Err(TopicError::Wildcard(c));
                    }
                }
            }
        }
        Ok(Self(pattern))
    }

    /// The pattern text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The exact topic this pattern names, if it has no wildcard.
    pub fn as_topic(&self) -> Option<Topic> {
        Topic::new(self.0.clone()).ok()
    }

    /// Does `topic` match this pattern?
    pub fn matches(&self, topic: &Topic) -> bool {
        self.matches_str(topic.as_str())
    }

    /// Is there a topic both patterns match? (`sensors/#` and `+/7/temp` overlap;
    /// `sensors/#` and `cmd/#` do not.)
    pub fn overlaps(&self, other: &Pattern) -> bool {
        let wild = |p: &Pattern| p.0.starts_with('#') || p.0.starts_with('+');
        if (wild(self) && other.0.starts_with('$')) || (wild(other) && self.0.starts_with('$')) {
            return false;
        }
        let mut a = self.0.split('/');
        let mut b = other.0.split('/');
        loop {
            match (a.next(), b.next()) {
                (Some("#"), _) | (_, Some("#")) => return true,
                (None, None) => return true,
                (None, Some(_)) | (Some(_), None) => return false,
                (Some(x), Some(y)) => {
                    if x != "+" && y != "+" && x != y {
                        return false;
                    }
                }
            }
        }
    }

    /// Does the topic name `topic` match this pattern? (No validation of `topic`.)
    pub fn matches_str(&self, topic: &str) -> bool {
        if topic.starts_with('$') && (self.0.starts_with('#') || self.0.starts_with('+')) {
            return false;
        }
        let mut t = topic.split('/');
        for p in self.0.split('/') {
            match p {
                "#" => return true,
                "+" => {
                    if t.next().is_none() {
                        return false;
                    }
                }
                lit => {
                    if t.next() != Some(lit) {
                        return false;
                    }
                }
            }
        }
        t.next().is_none()
    }
}

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Pattern::new(s).map_err(serde::de::Error::custom)
    }
}

impl FromStr for Pattern {
    type Err = TopicError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Pattern::new(s)
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pattern({:?})", self.0)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn patterns_overlap_when_some_topic_matches_both() {
        let p = |s: &str| super::Pattern::new(s).unwrap();
        for (a, b) in [
            ("#", "x/y"),
            ("sensors/#", "+/7/temp"),
            ("sensors/+/temp", "sensors/7/#"),
            ("a/b", "a/b"),
            ("a/+", "+/b"),
            ("a/#", "a"),
            ("$fleet/#", "$fleet/health"),
            ("$fleet/+", "$fleet/policy"),
        ] {
            assert!(p(a).overlaps(&p(b)), "{a} {b}");
            assert!(p(b).overlaps(&p(a)), "{b} {a}");
        }
        for (a, b) in [
            ("sensors/#", "cmd/#"),
            ("a/b", "a/c"),
            ("a/+", "a"),
            ("a/+/c", "a/b/d"),
            ("a/b", "a/b/c"),
            // As in MQTT: a leading wildcard does not reach `$` topics.
            ("#", "$fleet/health"),
            ("+/health", "$fleet/health"),
            ("+/#", "$fleet/#"),
        ] {
            assert!(!p(a).overlaps(&p(b)), "{a} {b}");
            assert!(!p(b).overlaps(&p(a)), "{b} {a}");
        }
    }

    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_leading_wildcard_does_not_match_dollar_topics() {
        let t = |s: &str| Topic::new(s).unwrap();
        let p = |s: &str| Pattern::new(s).unwrap();
        assert!(!p("#").matches(&t("$fleet/health")));
        assert!(!p("+/health").matches(&t("$fleet/health")));
        assert!(p("$fleet/#").matches(&t("$fleet/health")));
        assert!(p("$fleet/+").matches(&t("$fleet/policy")));
        assert!(p("#").matches(&t("a$/b")));
        assert!(p("a/#").matches(&t("a/$b")));
    }

    #[test]
    fn topic_validation() {
        assert!(Topic::new("sensors/kitchen/temp").is_ok());
        assert!(Topic::new("a").is_ok());
        assert!(Topic::new("ünïcode/🙂").is_ok());
        assert_eq!(Topic::new(""), Err(TopicError::Empty));
        assert_eq!(Topic::new("/a"), Err(TopicError::EmptySegment));
        assert_eq!(Topic::new("a/"), Err(TopicError::EmptySegment));
        assert_eq!(Topic::new("a//b"), Err(TopicError::EmptySegment));
        assert_eq!(Topic::new("a/+/b"), Err(TopicError::Wildcard('+')));
        assert_eq!(Topic::new("a/#"), Err(TopicError::Wildcard('#')));
        assert_eq!(Topic::new("a\0b"), Err(TopicError::ControlChar));
        assert_eq!(Topic::new("x".repeat(256)), Err(TopicError::TooLong(256)));
        assert!(Topic::new("x".repeat(255)).is_ok());
        assert_eq!(
            Topic::new(vec!["a"; 33].join("/")),
            Err(TopicError::TooManySegments(33))
        );
    }

    #[test]
    fn pattern_validation() {
        assert!(Pattern::new("#").is_ok());
        assert!(Pattern::new("+").is_ok());
        assert!(Pattern::new("a/+/c/#").is_ok());
        assert_eq!(Pattern::new("a/#/c"), Err(TopicError::Wildcard('#')));
        assert_eq!(Pattern::new("a/b+"), Err(TopicError::Wildcard('+')));
        assert_eq!(Pattern::new("a/#x"), Err(TopicError::Wildcard('#')));
    }

    #[test]
    fn pattern_matching() {
        let t = |s: &str| Topic::new(s).unwrap();
        let p = |s: &str| Pattern::new(s).unwrap();
        assert!(p("sensors/+/temp").matches(&t("sensors/kitchen/temp")));
        assert!(!p("sensors/+/temp").matches(&t("sensors/kitchen/hum")));
        assert!(!p("sensors/+/temp").matches(&t("sensors/a/b/temp")));
        assert!(!p("sensors/+/temp").matches(&t("sensors/temp")));
        assert!(p("sensors/#").matches(&t("sensors")));
        assert!(p("sensors/#").matches(&t("sensors/a/b/c")));
        assert!(!p("sensors/#").matches(&t("sensorsx/a")));
        assert!(p("#").matches(&t("anything/at/all")));
        assert!(p("a/b").matches(&t("a/b")));
        assert!(!p("a/b").matches(&t("a/b/c")));
        assert!(!p("a/b/c").matches(&t("a/b")));
        assert!(p("+/+").matches(&t("x/y")));
    }

    proptest! {
        #[test]
        fn a_topic_matches_itself_and_hash(segs in proptest::collection::vec("[a-z0-9_-]{1,8}", 1..6)) {
            let topic = Topic::new(segs.join("/")).unwrap();
            prop_assert!(Pattern::new(topic.as_str()).unwrap().matches(&topic));
            prop_assert!(Pattern::new("#").unwrap().matches(&topic));
            let plus = vec!["+"; segs.len()].join("/");
            prop_assert!(Pattern::new(plus).unwrap().matches(&topic));
            let prefix = format!("{}/#", segs[0]);
            prop_assert!(Pattern::new(prefix).unwrap().matches(&topic));
        }
    }
}
