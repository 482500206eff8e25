//! Key layout shared by the RocksDB column families.
//!
//! A *log key* is `topic bytes || 0x00 || author (32)`. Topics never contain NUL, so log
//! keys are prefix-free, and all logs of one topic are adjacent (`topic || 0x00` is a
//! prefix). An *event key* is `log key || seq (8, big-endian)`, so one log is one
//! contiguous, ordered key range.

use murmur_core::{AuthorId, Seq, Topic};

pub(crate) fn log_key(topic: &Topic, author: &AuthorId) -> Vec<u8> {
    let t = topic.as_str().as_bytes();
    let mut k = Vec::with_capacity(t.len() + 1 + 32 + 8);
    k.extend_from_slice(t);
    k.push(0);
    k.extend_from_slice(&author.0);
    k
}

pub(crate) fn topic_prefix(topic: &Topic) -> Vec<u8> {
    let mut k = topic.as_str().as_bytes().to_vec();
    k.push(0);
    k
}

pub(crate) fn event_key(log_key: &[u8], seq: Seq) -> Vec<u8> {
    let mut k = Vec::with_capacity(log_key.len() + 8);
    k.extend_from_slice(log_key);
    k.extend_from_slice(&seq.0.to_be_bytes());
    k
}

/// Splits a log key into topic and author; `None` for a malformed key.
pub(crate) fn split_log_key(key: &[u8]) -> Option<(Topic, AuthorId)> {
    if key.len() < 34 {
        return None;
    }
    let (t, rest) = key.split_at(key.len() - 33);
    if rest[0] != 0 {
        return None;
    }
    let topic = Topic::new(std::str::from_utf8(t).ok()?).ok()?;
    let mut a = [0u8; 32];
    a.copy_from_slice(&rest[1..]);
    Some((topic, AuthorId(a)))
}

/// Splits an event key into log key and seq.
pub(crate) fn split_event_key(key: &[u8]) -> Option<(&[u8], Seq)> {
    if key.len() < 34 + 8 {
        return None;
    }
    let (lk, s) = key.split_at(key.len() - 8);
    Some((lk, Seq(u64::from_be_bytes(s.try_into().ok()?))))
}

/// The topic part of a log or event key, without validating it.
pub(crate) fn topic_of(key: &[u8]) -> Option<&str> {
    let end = key.iter().position(|b| *b == 0)?;
    std::str::from_utf8(&key[..end]).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        let t = Topic::new("a/b").unwrap();
        let a = AuthorId([9; 32]);
        let lk = log_key(&t, &a);
        assert_eq!(split_log_key(&lk), Some((t.clone(), a)));
        let ek = event_key(&lk, Seq(258));
        assert_eq!(split_event_key(&ek), Some((lk.as_slice(), Seq(258))));
        assert_eq!(topic_of(&ek), Some("a/b"));
        assert!(lk.starts_with(&topic_prefix(&t)));
        // "a" is not a prefix match of "a/b"'s logs.
        assert!(!lk.starts_with(&topic_prefix(&Topic::new("a").unwrap())));
    }
}
