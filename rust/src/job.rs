//! The job payload: Sidekiq's JSON hash, read and written field by field.
//!
//! A payload is kept as its ordered list of top-level fields, each value held
//! as the JSON text it arrived with. Only the fields kiq changes are
//! re-serialised, so everything else (unknown keys from Sidekiq Pro, ActiveJob,
//! OpenTelemetry, big integers, float digits) survives retries and reschedules
//! byte for byte. This is the only file that spells wire field names.
//! Writing a new job's payload is `newjob.rs` (re-exported here).

use std::borrow::Cow;
use std::ops::Range;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::error::{KiqError, Result};
pub use crate::newjob::{NewJob, Template, UNIQUE_AND_ENCRYPT, check_args, check_queue_name, new_jid};
use crate::timestamp;

/// Wire field names, as Sidekiq spells them.
pub mod field {
    pub const CLASS: &str = "class";
    pub const ARGS: &str = "args";
    pub const QUEUE: &str = "queue";
    pub const JID: &str = "jid";
    pub const RETRY: &str = "retry";
    pub const CREATED_AT: &str = "created_at";
    pub const ENQUEUED_AT: &str = "enqueued_at";
    pub const AT: &str = "at";
    pub const RETRY_COUNT: &str = "retry_count";
    pub const FAILED_AT: &str = "failed_at";
    pub const RETRIED_AT: &str = "retried_at";
    pub const ERROR_MESSAGE: &str = "error_message";
    pub const ERROR_CLASS: &str = "error_class";
    pub const ERROR_BACKTRACE: &str = "error_backtrace";
    pub const BACKTRACE: &str = "backtrace";
    pub const RETRY_QUEUE: &str = "retry_queue";
    pub const RETRY_FOR: &str = "retry_for";
    pub const DEAD: &str = "dead";
    pub const TAGS: &str = "tags";
    pub const WRAPPED: &str = "wrapped";
    pub const DISPLAY_CLASS: &str = "display_class";
    /// Sidekiq Enterprise: `true` when the last argument is ciphertext (see
    /// `crypto.rs`); dashboards show `[encrypted data]` in its place.
    pub const ENCRYPT: &str = "encrypt";
    /// W3C trace context and baggage, at the top level of the job as
    /// OpenTelemetry's Ruby Sidekiq instrumentation injects them.
    pub const TRACE_CONTEXT: [&str; 3] = ["traceparent", "tracestate", "baggage"];
    /// Epoch seconds (float) after which a job that has not started is dropped
    /// (the field Sidekiq Pro's expiry uses, same meaning).
    pub const EXPIRES_AT: &str = "expires_at";
    /// kiq's unique-job lock token and release mode (kiq's own names, so
    /// Sidekiq Enterprise's middleware never mistakes them for its own).
    pub const UNIQUE_TOKEN: &str = "kiq_unique";
    pub const UNIQUE_UNTIL: &str = "kiq_unique_until";
    /// The minute a periodic job was enqueued for (epoch seconds).
    pub const PERIODIC_AT: &str = "kiq_periodic_at";
    /// `true` on a job that was in flight when a process died: it runs alone
    /// next time (see `isolation.rs`), so a second death blames it for sure.
    pub const SUSPECT: &str = "kiq_suspect";
    /// A Sidekiq Pro batch id. kiq never writes it: Pro's server middleware
    /// does the accounting for such jobs (see `batches::foreign`).
    pub const BID: &str = "bid";
    /// kiq's batch id of a batch job (kiq's own name, so a Sidekiq Pro server
    /// never tries to account for it).
    pub const BATCH: &str = "kiq_bid";
    /// The batch's ancestors, nearest first (a child batch's jobs and callbacks):
    /// the settlement updates each of them in the same atomic step.
    pub const BATCH_UP: &str = "kiq_bid_up";
    /// On a batch callback job: the event ("success", "complete", "death")
    /// and the batch whose callback it is.
    pub const CALLBACK: &str = "kiq_callback";
    pub const CALLBACK_BATCH: &str = "kiq_callback_bid";
    /// Sidekiq Enterprise's count of the times a job was rescheduled because
    /// a rate limiter was over its limit (`overlimit.rs`).
    pub const OVERRATED: &str = "overrated";
    /// How many times a throttle parked the job (`throttle.rs`), for its growing pause.
    pub const THROTTLED: &str = "kiq_throttled";
}

/// When a unique job's lock is released (besides its `unique_for` running out).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UniqueUntil {
    /// When the job succeeds, or dies (the default).
    #[default]
    Success,
    /// When the job starts.
    Start,
}

impl UniqueUntil {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "success" => Some(Self::Success),
            "start" => Some(Self::Start),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Start => "start",
        }
    }
}

/// A unique job's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Unique {
    /// Seconds the lock lasts at most (counted from the run time of a scheduled job).
    pub for_secs: f64,
    pub until: UniqueUntil,
}

/// The unique-job token of (class, queue, args): SHA-256 hex of a canonical
/// JSON encoding (`[class, queue, args]`, object keys sorted, no spaces), so
/// equal arguments always collide and different ones never do.
pub fn unique_token(class: &str, queue: &str, args_json: &str) -> Result<String> {
    canonical_sha256(&format!("[{},{},{args_json}]", json_string(class), json_string(queue)))
}

/// SHA-256 hex of JSON text in canonical form (object keys sorted, no spaces).
pub fn canonical_sha256(json: &str) -> Result<String> {
    use sha2::{Digest, Sha256};
    let value: serde_json::Value = serde_json::from_str(json)?;
    let mut canonical = String::with_capacity(json.len());
    write_canonical(&value, &mut canonical);
    let digest = Sha256::digest(canonical.as_bytes());
    let mut hex = String::with_capacity(64);
    for b in digest {
        let _ = std::fmt::Write::write_fmt(&mut hex, format_args!("{b:02x}"));
    }
    Ok(hex)
}

fn write_canonical(v: &serde_json::Value, out: &mut String) {
    match v {
        serde_json::Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        serde_json::Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&json_string(k));
                out.push(':');
                write_canonical(&map[k], out);
            }
            out.push('}');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// Sidekiq's default queue name.
pub const DEFAULT_QUEUE: &str = "default";

/// The `retry` option of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// `true`: retry up to the configured maximum (Sidekiq's default, 25).
    Default,
    /// `false`: no retries, and no dead set either.
    Never,
    /// An integer: at most this many retries (0 = straight to dead).
    Times(u32),
}

impl Retry {
    pub fn to_json(self) -> String {
        let mut out = String::new();
        self.push_json(&mut out);
        out
    }

    /// Appends [`Retry::to_json`]'s text to `out` (every enqueue writes it: no allocation).
    pub fn push_json(self, out: &mut String) {
        match self {
            Self::Default => out.push_str("true"),
            Self::Never => out.push_str("false"),
            Self::Times(n) => out.push_str(itoa::Buffer::new().format(n)),
        }
    }
}

/// The `backtrace` option: how many backtrace lines a failure keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backtrace {
    Off,
    All,
    Lines(usize),
}

#[derive(Debug, Clone)]
enum Text {
    /// A slice of the payload's source text.
    Src(Range<usize>),
    Owned(String),
}

impl Text {
    /// The text, given the source it may be a slice of.
    fn of<'a>(&'a self, src: &'a str) -> &'a str {
        match self {
            Self::Src(r) => &src[r.clone()],
            Self::Owned(s) => s,
        }
    }
}

/// A decoded job payload that re-encodes without disturbing what it did not change.
#[derive(Debug, Clone)]
pub struct Payload {
    src: String,
    /// (key, value) pairs in order; keys without escapes point into `src`
    /// too, so decoding a payload allocates little.
    entries: Vec<(Text, Text)>,
    /// A filter of the keys present ([`key_bit`]): a key whose bit is clear
    /// is absent. Most lookups are of fields a job lacks (`expires_at`,
    /// `unique_token`, `bid`, ...), each a scan of every key without it.
    keys: u64,
}

/// A key's bit in [`Payload::keys`], from its length and end bytes.
fn key_bit(key: &[u8]) -> u64 {
    let (first, last) = (key.first().copied().unwrap_or(0), key.last().copied().unwrap_or(0));
    #[allow(clippy::cast_possible_truncation)] // only the low bits are used
    let h = (key.len() as u32).wrapping_mul(0x9E37_79B9)
        ^ u32::from(first).wrapping_mul(0x85EB_CA6B)
        ^ u32::from(last).wrapping_mul(0xC2B2_AE35);
    1 << (h >> 26)
}

/// A key borrowed from the payload's text unless it has escapes (serde's own
/// `Cow<str>` always allocates: eight needless copies per fetched job).
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> std::result::Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> std::result::Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// Reads a payload's fields as spans of its text: one pass, one allocation.
struct Fields<'a> {
    src: &'a str,
}

impl Fields<'_> {
    fn span(&self, s: &str) -> Range<usize> {
        let start = s.as_ptr() as usize - self.src.as_ptr() as usize;
        start..start + s.len()
    }
}

impl<'de> DeserializeSeed<'de> for Fields<'de> {
    type Value = (Vec<(Text, Text)>, u64);
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> std::result::Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Fields<'de> {
    type Value = (Vec<(Text, Text)>, u64);
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Self::Value, A::Error> {
        // Sidekiq's payloads have 7 fields; retried ones a few more.
        let mut out: Vec<(Text, Text)> = Vec::with_capacity(8);
        let mut keys = 0;
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            let value = Text::Src(self.span(map.next_value::<&'de RawValue>()?.get()));
            let bit = key_bit(key.as_bytes());
            // A repeated key keeps its first position and its last value, as Ruby's JSON.parse does.
            let seen = if keys & bit == 0 { None } else { out.iter_mut().find(|(k, _)| k.of(self.src) == key) };
            if let Some(slot) = seen {
                slot.1 = value;
            } else {
                keys |= bit;
                let key = match key {
                    Cow::Borrowed(k) => Text::Src(self.span(k)),
                    Cow::Owned(k) => Text::Owned(k),
                };
                out.push((key, value));
            }
        }
        Ok((out, keys))
    }
}

impl Payload {
    /// Parses a payload; anything but a JSON object is an error.
    pub fn parse(src: impl Into<String>) -> Result<Self> {
        Self::try_parse(src.into()).map_err(|(e, _)| e)
    }

    /// Like [`Payload::parse`], handing the text back on error (to bury it as it was).
    pub fn try_parse(src: String) -> std::result::Result<Self, (KiqError, String)> {
        let mut de = serde_json::Deserializer::from_str(&src);
        let fields = Fields { src: &src };
        let (entries, keys) = match fields.deserialize(&mut de).and_then(|e| de.end().map(|()| e)) {
            Ok(parsed) => parsed,
            Err(e) => {
                return Err((KiqError::codec(format!("job payload is not a JSON object: {e}")), src));
            }
        };
        Ok(Self { src, entries, keys })
    }

    /// The JSON text this payload was parsed from, byte for byte.
    pub fn source(&self) -> &str {
        &self.src
    }

    fn text<'a>(&'a self, t: &'a Text) -> &'a str {
        t.of(&self.src)
    }

    fn position(&self, key: &str) -> Option<usize> {
        // Called several times per job: compare lengths, then bytes (no char-boundary checks).
        let key = key.as_bytes();
        if self.keys & key_bit(key) == 0 {
            return None;
        }
        self.entries.iter().position(|(k, _)| match k {
            Text::Src(r) => r.len() == key.len() && &self.src.as_bytes()[r.clone()] == key,
            Text::Owned(s) => s.as_bytes() == key,
        })
    }

    /// The JSON text of a top-level field.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.position(key).map(|i| self.text(&self.entries[i].1))
    }

    pub fn contains(&self, key: &str) -> bool {
        self.position(key).is_some()
    }

    /// Sets a field to the given JSON text, in place if present, else at the end.
    pub fn set_json(&mut self, key: &str, json: String) {
        if let Some(i) = self.position(key) {
            self.entries[i].1 = Text::Owned(json);
        } else {
            self.keys |= key_bit(key.as_bytes());
            self.entries.push((Text::Owned(key.to_owned()), Text::Owned(json)));
        }
    }

    pub fn set_str(&mut self, key: &str, value: &str) {
        self.set_json(key, json_string(value));
    }

    /// Inserts a field at the front unless present (Sidekiq's normalise puts `retry` first).
    pub fn insert_front_if_absent(&mut self, key: &str, json: String) {
        if !self.contains(key) {
            self.keys |= key_bit(key.as_bytes());
            self.entries.insert(0, (Text::Owned(key.to_owned()), Text::Owned(json)));
        }
    }

    pub fn remove(&mut self, key: &str) {
        while let Some(i) = self.position(key) {
            self.entries.remove(i);
        }
    }

    /// The payload as JSON text: untouched fields are copied verbatim.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(self.src.len() + 64);
        out.push('{');
        for (i, (k, t)) in self.entries.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&json_string(self.text(k)));
            out.push(':');
            out.push_str(self.text(t));
        }
        out.push('}');
        out
    }

    fn parsed<'a, T: Deserialize<'a>>(&'a self, key: &str) -> Option<T> {
        self.get(key).and_then(|t| serde_json::from_str(t).ok())
    }

    /// A top-level field that is a JSON string, decoded.
    pub fn string(&self, key: &str) -> Option<String> {
        let text = self.get(key)?;
        // The text is valid JSON (parsed whole, or written by `set`): a string
        // without escapes is exactly what its quotes enclose. Most jids and
        // class names take this path, read once per fetched job.
        if let Some(inner) = text.strip_prefix('"').and_then(|t| t.strip_suffix('"'))
            && !inner.contains('\\')
        {
            return Some(inner.to_owned());
        }
        serde_json::from_str(text).ok()
    }

    /// `class`, when it is a string.
    pub fn class(&self) -> Option<String> {
        self.string(field::CLASS)
    }

    pub fn queue(&self) -> Option<String> {
        self.string(field::QUEUE).filter(|q| !q.is_empty())
    }

    pub fn jid(&self) -> Option<String> {
        self.string(field::JID)
    }

    /// The JSON text of `args`, when it is an array.
    pub fn args(&self) -> Option<&str> {
        self.get(field::ARGS).filter(|t| t.starts_with('['))
    }

    /// `retry` as written, or `None` when missing or null (the worker's option then decides).
    pub fn retry(&self) -> Option<Retry> {
        match serde_json::from_str::<serde_json::Value>(self.get(field::RETRY)?).ok()? {
            serde_json::Value::Bool(true) => Some(Retry::Default),
            serde_json::Value::Bool(false) => Some(Retry::Never),
            serde_json::Value::Number(n) => Some(n.as_i64().map_or(Retry::Default, |n| Retry::Times(n.max(0) as u32))),
            _ => None,
        }
    }

    /// `retry_count` (-1 after a Web UI "Retry Now" of a first failure, as
    /// Sidekiq writes it); a count beyond 64 bits (or a huge float) saturates.
    pub fn retry_count(&self) -> Option<i64> {
        let n = self.parsed::<serde_json::Number>(field::RETRY_COUNT)?;
        Some(n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)).unwrap_or_else(|| {
            // Digits past i64 (or 1e400): as far as it goes, keeping the sign.
            if n.as_str().starts_with('-') { i64::MIN } else { i64::MAX }
        }))
    }

    /// `dead`: `Some(false)` keeps an exhausted job out of the dead set.
    pub fn dead(&self) -> Option<bool> {
        self.parsed::<bool>(field::DEAD)
    }

    pub fn backtrace(&self) -> Option<Backtrace> {
        match serde_json::from_str::<serde_json::Value>(self.get(field::BACKTRACE)?).ok()? {
            serde_json::Value::Bool(true) => Some(Backtrace::All),
            serde_json::Value::Bool(false) | serde_json::Value::Null => Some(Backtrace::Off),
            serde_json::Value::Number(n) => Some(match n.as_u64() {
                Some(0) | None => Backtrace::Off,
                Some(n) => Backtrace::Lines(n as usize),
            }),
            _ => None,
        }
    }

    pub fn retry_queue(&self) -> Option<String> {
        self.string(field::RETRY_QUEUE).filter(|q| !q.is_empty())
    }

    /// `retry_for` in seconds (Sidekiq 7.1.3+ time-based retry window).
    pub fn retry_for(&self) -> Option<f64> {
        self.parsed::<serde_json::Number>(field::RETRY_FOR).and_then(|n| n.as_f64())
    }

    /// A job timestamp field in epoch seconds, whichever unit it was written in.
    pub fn time(&self, key: &str) -> Option<f64> {
        self.parsed::<serde_json::Number>(key).and_then(|n| timestamp::decode(&n))
    }

    pub fn failed_at(&self) -> Option<f64> {
        self.time(field::FAILED_AT)
    }

    /// `overrated`: times the job was rescheduled over a rate limit (0 when
    /// absent or not a count; a huge count saturates).
    pub fn overrated(&self) -> u64 {
        self.parsed::<serde_json::Number>(field::OVERRATED)
            .and_then(|n| n.as_u64().or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64)))
            .unwrap_or(0)
    }

    /// Whether `encrypt` says the last argument is encrypted (any value but
    /// `null` and `false`, as Ruby reads it).
    pub fn encrypted(&self) -> bool {
        self.get(field::ENCRYPT).is_some_and(|v| v != "null" && v != "false")
    }
}

/// A JSON string literal.
pub fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timestamp::TimestampUnit;

    #[test]
    fn round_trip_is_byte_exact() {
        let src = r#"{"retry":true,"queue":"default","args":[1,"two",{"k":3.5},123456789012345678901234567890],"class":"HardJob","jid":"0895ff12a0bb053e87f6f620","created_at":1796108970.1376758,"enqueued_at":1796108970.1377625,"x-trace":{"a":[1.10,2]}}"#;
        let p = Payload::parse(src).unwrap();
        assert_eq!(p.encode(), src);
        assert_eq!(p.class().as_deref(), Some("HardJob"));
        assert_eq!(p.args(), Some(r#"[1,"two",{"k":3.5},123456789012345678901234567890]"#));
        assert_eq!(p.retry(), Some(Retry::Default));
        assert_eq!(p.time(field::CREATED_AT), Some(1_796_108_970.137_675_8));
    }

    #[test]
    fn escaped_keys_are_read_and_repeated_keys_keep_the_last_value() {
        let p = Payload::parse(r#"{"cl\u0061ss":"A","args":[1],"class":"B"}"#).unwrap();
        assert_eq!(p.class().as_deref(), Some("B"));
        assert_eq!(p.args(), Some("[1]"));
        assert_eq!(p.encode(), r#"{"class":"B","args":[1]}"#);
    }

    #[test]
    fn set_keeps_order_and_other_bytes() {
        let mut p = Payload::parse(r#"{"a":1.50,"enqueued_at":1,"z":"\u00e9"}"#).unwrap();
        p.set_json("enqueued_at", "2.5".into());
        p.set_str("new", "v");
        assert_eq!(p.encode(), r#"{"a":1.50,"enqueued_at":2.5,"z":"\u00e9","new":"v"}"#);
        p.remove("a");
        p.insert_front_if_absent("retry", "true".into());
        assert_eq!(p.encode(), r#"{"retry":true,"enqueued_at":2.5,"z":"\u00e9","new":"v"}"#);
    }

    #[test]
    fn the_key_filter_never_hides_a_key() {
        // 200 keys over 64 bits: every bit collides; each is still found, once.
        let names: Vec<String> = (0..200).map(|i| format!("k{i}x")).collect();
        let body: Vec<String> = names.iter().enumerate().map(|(i, k)| format!("\"{k}\":{i}")).collect();
        let mut p = Payload::parse(format!("{{{},\"k7x\":\"again\"}}", body.join(","))).unwrap();
        for (i, k) in names.iter().enumerate() {
            let want = if k == "k7x" { "\"again\"".to_owned() } else { i.to_string() };
            assert_eq!(p.get(k), Some(want.as_str()), "{k}");
        }
        assert_eq!(p.get(""), None);
        assert_eq!(p.get("absent"), None);
        p.set_json("late", "1".into());
        p.insert_front_if_absent("early", "2".into());
        p.remove("k3x");
        assert_eq!((p.get("late"), p.get("early"), p.get("k3x")), (Some("1"), Some("2"), None));
        let q = Payload::parse(r#"{"":1,"a":2}"#).unwrap();
        assert_eq!((q.get(""), q.get("a"), q.get("b")), (Some("1"), Some("2"), None));
    }

    #[test]
    fn rejects_non_objects() {
        assert!(Payload::parse("[1,2]").is_err());
        assert!(Payload::parse("not json").is_err());
        assert!(Payload::parse(r#"{"a":1"#).is_err());
        assert!(Payload::parse(r#"{"a":1} x"#).is_err(), "trailing text");
    }

    #[test]
    fn string_fields_decode_escapes_and_refuse_other_types() {
        let p = Payload::parse(r#"{"class":"A\"B\u00e9","jid":"plain","queue":7,"x":"","y":"\\"}"#).unwrap();
        assert_eq!(p.class().as_deref(), Some("A\"B\u{e9}"));
        assert_eq!(p.jid().as_deref(), Some("plain"));
        assert_eq!(p.string("queue"), None);
        assert_eq!(p.string("x").as_deref(), Some(""));
        assert_eq!(p.string("y").as_deref(), Some("\\"));
    }

    #[test]
    fn typed_fields() {
        let p = Payload::parse(r#"{"retry":5,"backtrace":10,"dead":false,"retry_count":2,"failed_at":1739522600123}"#)
            .unwrap();
        assert_eq!(p.retry(), Some(Retry::Times(5)));
        assert_eq!(p.backtrace(), Some(Backtrace::Lines(10)));
        assert_eq!(p.dead(), Some(false));
        assert_eq!(p.retry_count(), Some(2));
        assert!((p.failed_at().unwrap() - 1_739_522_600.123).abs() < 1e-6);
        let q = Payload::parse(r#"{"retry":null,"args":"str"}"#).unwrap();
        assert_eq!(q.retry(), None);
        assert_eq!(q.args(), None);
        assert_eq!(Payload::parse(r#"{"retry":false}"#).unwrap().retry(), Some(Retry::Never));
    }

    #[test]
    fn new_job_in_sidekiq_order() {
        let mut j = NewJob::new("HardJob", "[1,2]");
        j.options.push(("backtrace".into(), "true".into()));
        j.validate().unwrap();
        let s = j.encode("aaaaaaaaaaaaaaaaaaaaaaaa", 1_700_000_000.0, TimestampUnit::Seconds, true);
        assert_eq!(
            s,
            r#"{"retry":true,"queue":"default","backtrace":true,"args":[1,2],"class":"HardJob","jid":"aaaaaaaaaaaaaaaaaaaaaaaa","created_at":1700000000.0,"enqueued_at":1700000000.0}"#
        );
        let ms = j.encode("b", 1_700_000_000.5, TimestampUnit::Millis, false);
        assert!(ms.ends_with(r#""created_at":1700000000500}"#));
    }

    #[test]
    fn validation_errors_name_the_problem() {
        let mut j = NewJob::new("X", "{}");
        assert!(j.validate().unwrap_err().to_string().contains("array"));
        j.args = "[]".into();
        j.queue = "bad queue".into();
        assert!(j.validate().unwrap_err().to_string().contains("queue name"));
        j.queue = "ok".into();
        j.options.push(("jid".into(), "\"x\"".into()));
        assert!(j.validate().unwrap_err().to_string().contains("jid"));
    }

    #[test]
    fn unique_tokens_are_canonical() {
        let a = unique_token("X", "default", r#"[1,{"b":2,"a":[3,{"d":1,"c":2}]}]"#).unwrap();
        let b = unique_token("X", "default", r#"[1, {"a":[3,{"c":2,"d":1}], "b":2}]"#).unwrap();
        assert_eq!(a, b, "key order and spaces do not matter");
        assert_eq!(a.len(), 64);
        assert_ne!(a, unique_token("X", "default", r#"[1,{"b":2,"a":[3,{"d":1,"c":3}]}]"#).unwrap());
        assert_ne!(a, unique_token("X", "other", r#"[1,{"b":2,"a":[3,{"d":1,"c":2}]}]"#).unwrap());
        assert_ne!(a, unique_token("Y", "default", r#"[1,{"b":2,"a":[3,{"d":1,"c":2}]}]"#).unwrap());
        // Long arguments that share a prefix do not collide (Kiq's inspect-based tokens did).
        let long1 = format!("[\"{}a\"]", "x".repeat(5000));
        let long2 = format!("[\"{}b\"]", "x".repeat(5000));
        assert_ne!(unique_token("X", "q", &long1).unwrap(), unique_token("X", "q", &long2).unwrap());
        assert_ne!(unique_token("X", "q", "[1]").unwrap(), unique_token("X", "q", "[\"1\"]").unwrap());
    }

    #[test]
    fn jids_are_24_hex() {
        let a = new_jid();
        assert_eq!(a.len(), 24);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_ne!(a, new_jid());
    }
}
