//! `error_backtrace` in Sidekiq's encoding: JSON array of lines → zlib
//! (RFC 1950) → Base64. kiq writes strict Base64 without newlines, which every
//! Sidekiq version reads (7.2.1–7.2.2 reject the line-wrapped form older
//! versions wrote); it reads both forms, and a bare JSON array as Sidekiq 6 did.

use std::io::{Read, Write};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use flate2::Compression;
use flate2::read::ZlibDecoder;
use flate2::write::ZlibEncoder;

use crate::error::{KiqError, Result};

/// Encodes backtrace lines for the `error_backtrace` field.
pub fn encode(lines: &[String]) -> String {
    let json = serde_json::to_vec(lines).unwrap_or_else(|_| b"[]".to_vec());
    let mut z = ZlibEncoder::new(Vec::with_capacity(json.len() / 2 + 16), Compression::default());
    // Writing to a Vec cannot fail.
    let _ = z.write_all(&json);
    let bytes = z.finish().unwrap_or_default();
    STANDARD.encode(bytes)
}

/// Decodes an `error_backtrace` value written by any Sidekiq version or by kiq.
pub fn decode(value: &str) -> Result<Vec<String>> {
    let trimmed = value.trim();
    if trimmed.starts_with('[') {
        return Ok(serde_json::from_str(trimmed)?);
    }
    let compact: String = trimmed.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let bytes = STANDARD
        .decode(compact.as_bytes())
        .map_err(|e| KiqError::codec(format!("error_backtrace is not Base64: {e}")))?;
    let mut json = Vec::new();
    ZlibDecoder::new(&bytes[..])
        .read_to_end(&mut json)
        .map_err(|e| KiqError::codec(format!("error_backtrace is not zlib data: {e}")))?;
    Ok(serde_json::from_slice(&json)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_strict() {
        let lines = vec!["app.py:3:in `perform'".to_owned(), "é ünïcode".to_owned()];
        let enc = encode(&lines);
        assert!(!enc.contains('\n'));
        assert_eq!(decode(&enc).unwrap(), lines);
    }

    #[test]
    fn reads_line_wrapped_base64_from_old_sidekiq() {
        let lines: Vec<String> = (0..20).map(|i| format!("/usr/lib/ruby/file_{i}.rb:{i}:in `block'")).collect();
        let enc = encode(&lines);
        let mut wrapped = String::new();
        for chunk in enc.as_bytes().chunks(60) {
            wrapped.push_str(std::str::from_utf8(chunk).unwrap());
            wrapped.push('\n');
        }
        assert_eq!(decode(&wrapped).unwrap(), lines);
    }

    #[test]
    fn reads_raw_json_and_rejects_garbage() {
        assert_eq!(decode(r#"["a"]"#).unwrap(), vec!["a".to_owned()]);
        assert!(decode("!!!").is_err());
    }
}
