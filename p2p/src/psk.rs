//! Pre-shared fleet keys, in the `swarm.key` format other libp2p tools use:
//!
//! ```text
//! /key/swarm/psk/1.0.0/
//! /base16/
//! <64 hex characters>
//! ```

/// Parses a key file (the three-line format, or just the 64 hex characters).
pub fn parse(text: &str) -> Result<[u8; 32], String> {
    let hex = text
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .ok_or_else(|| "the key file is empty".to_string())?;
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if lines.len() == 3 && (lines[0] != "/key/swarm/psk/1.0.0/" || lines[1] != "/base16/") {
        return Err("expected /key/swarm/psk/1.0.0/ and /base16/ before the key".into());
    }
    if hex.len() != 64 {
        return Err(format!(
            "the key is {} characters; expected 64 hex characters",
            hex.len()
        ));
    }
    let mut key = [0u8; 32];
    for (i, pair) in hex.as_bytes().chunks_exact(2).enumerate() {
        let s = std::str::from_utf8(pair).map_err(|_| "the key is not hex".to_string())?;
        key[i] = u8::from_str_radix(s, 16).map_err(|_| "the key is not hex".to_string())?;
    }
    Ok(key)
}

/// Formats a key file.
pub fn to_file(key: &[u8; 32]) -> String {
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    format!("/key/swarm/psk/1.0.0/\n/base16/\n{hex}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        let k = [0xab; 32];
        assert_eq!(parse(&to_file(&k)).unwrap(), k);
        assert_eq!(parse(&"cd".repeat(32)).unwrap(), [0xcd; 32]);
        assert!(parse("").is_err());
        assert!(parse("abc").is_err());
        assert!(parse(&"zz".repeat(32)).is_err());
        assert!(parse(&format!("/wrong/\n/base16/\n{}", "ab".repeat(32))).is_err());
    }
}
