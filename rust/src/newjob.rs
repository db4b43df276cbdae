//! Writing a new job: the payload a push sends, from a [`NewJob`] (one job)
//! or a [`Template`] (a bulk push's jobs, differing only in args and jid).
//! Reading and changing a stored payload is `job.rs`.

use serde_json::value::RawValue;

use crate::crypto::Seal;
use crate::error::{KiqError, Result};
use crate::job::{DEFAULT_QUEUE, Retry, Unique, field, json_string};
use crate::timestamp::TimestampUnit;

/// A fresh job id: 12 random bytes as 24 lowercase hex digits, like Sidekiq's.
pub fn new_jid() -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    // 96 random bits, written as bytes first: one job each, so it counts.
    let bits: u128 = rand::random::<u128>() >> 32;
    let mut out = vec![0u8; 24];
    for (i, digit) in out.iter_mut().enumerate() {
        *digit = HEX[((bits >> (4 * (23 - i))) & 0xf) as usize];
    }
    String::from_utf8(out).expect("hex digits are ASCII")
}

/// Appends `s` as a JSON string, exactly as [`json_string`] writes it: between
/// quotes as it is when nothing in it needs escaping (the usual case, no allocation).
pub fn push_json_str(out: &mut String, s: &str) {
    if s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        out.push_str(&json_string(s));
    } else {
        out.push('"');
        out.push_str(s);
        out.push('"');
    }
}

/// Validates the JSON text of `args`: it must parse and be an array.
pub fn check_args(args_json: &str) -> Result<()> {
    let raw: &RawValue =
        serde_json::from_str(args_json).map_err(|e| KiqError::codec(format!("job args are not valid JSON: {e}")))?;
    if raw.get().starts_with('[') { Ok(()) } else { Err(KiqError::codec("job args must be a JSON array")) }
}

/// Everything needed to write a new job payload.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub class: String,
    pub queue: String,
    /// JSON text of the argument array (see [`check_args`]).
    pub args: String,
    pub retry: Retry,
    /// Further fields as (name, JSON text), written between `queue` and `args`
    /// as Sidekiq places a class's options (`backtrace`, `retry_queue`, `dead`, `tags`, ...).
    pub options: Vec<(String, String)>,
    /// A caller-chosen jid; a fresh one otherwise.
    pub jid: Option<String>,
    /// Unique-job settings (the lock is taken with the push).
    pub unique: Option<Unique>,
    /// Seconds after its run time that a job not yet started is dropped.
    pub expires_in: Option<f64>,
    /// Sidekiq Enterprise encryption: `"encrypt": true` is written and the
    /// last argument sealed at every push (`args` then holds the others).
    pub encrypt: Option<Seal>,
}

impl NewJob {
    pub fn new(class: impl Into<String>, args: impl Into<String>) -> Self {
        Self {
            class: class.into(),
            queue: DEFAULT_QUEUE.to_owned(),
            args: args.into(),
            retry: Retry::Default,
            options: Vec::new(),
            jid: None,
            unique: None,
            expires_in: None,
            encrypt: None,
        }
    }

    /// Checks the parts Sidekiq requires before anything is written.
    pub fn validate(&self) -> Result<()> {
        self.validate_names()?;
        for (name, value) in &self.options {
            serde_json::from_str::<&RawValue>(value)
                .map_err(|e| KiqError::codec(format!("job option {name:?} is not valid JSON: {e}")))?;
        }
        check_args(&self.args)
    }

    /// The checks [`NewJob::validate`] makes besides parsing `args` and option
    /// values, for callers whose JSON comes from kiq's own encoder.
    pub fn validate_names(&self) -> Result<()> {
        if self.class.is_empty() {
            return Err(KiqError::codec("job class must be a non-empty string"));
        }
        check_queue_name(&self.queue)?;
        if let Some((name, _)) = self.options.iter().find(|(n, _)| RESERVED.contains(&n.as_str())) {
            return Err(KiqError::codec(format!("job option {name:?} is set by kiq and cannot be given")));
        }
        Ok(())
    }

    /// Encodes the payload in Sidekiq's key order: `retry`, `queue`, options,
    /// `args`, `class`, `jid`, `created_at`, then `enqueued_at` for immediate pushes.
    pub fn encode(&self, jid: &str, now: f64, unit: TimestampUnit, enqueued: bool) -> String {
        let stamp = unit.encode(now);
        let options: usize = self.options.iter().map(|(k, v)| k.len() + v.len() + 4).sum();
        let mut out = String::with_capacity(
            112 + self.queue.len() + options + self.args.len() + self.class.len() + 2 * stamp.len(),
        );
        self.write_head(&mut out);
        out.push_str(&self.args);
        write_mid(&mut out, &self.class);
        finish(&mut out, jid, &stamp, enqueued);
        out
    }

    /// The payload up to `args`'s value (`..."args":`).
    fn write_head(&self, head: &mut String) {
        head.push_str("{\"");
        head.push_str(field::RETRY);
        head.push_str("\":");
        self.retry.push_json(head);
        head.push_str(",\"");
        head.push_str(field::QUEUE);
        head.push_str("\":");
        push_json_str(head, &self.queue);
        if self.encrypt.is_some() {
            head.push_str(",\"");
            head.push_str(field::ENCRYPT);
            head.push_str("\":true");
        }
        for (k, v) in &self.options {
            head.push(',');
            push_json_str(head, k);
            head.push(':');
            head.push_str(v);
        }
        head.push_str(",\"");
        head.push_str(field::ARGS);
        head.push_str("\":");
    }

    /// The parts of the payload every job of a bulk push shares.
    pub fn template(&self) -> Template {
        let mut head = String::with_capacity(64);
        self.write_head(&mut head);
        let mut mid = String::with_capacity(32 + self.class.len());
        write_mid(&mut mid, &self.class);
        Template { head, mid }
    }
}

/// The payload from after `args`'s value up to the jid's opening quote.
fn write_mid(out: &mut String, class: &str) {
    out.push_str(",\"");
    out.push_str(field::CLASS);
    out.push_str("\":");
    push_json_str(out, class);
    out.push_str(",\"");
    out.push_str(field::JID);
    out.push_str("\":\"");
}

/// The payload from the jid on: the jid, `created_at`, and `enqueued_at` for immediate pushes.
fn finish(out: &mut String, jid: &str, stamp: &str, enqueued: bool) {
    out.push_str(jid);
    out.push_str("\",\"");
    out.push_str(field::CREATED_AT);
    out.push_str("\":");
    out.push_str(stamp);
    if enqueued {
        out.push_str(",\"");
        out.push_str(field::ENQUEUED_AT);
        out.push_str("\":");
        out.push_str(stamp);
    }
    out.push('}');
}

/// A new job's payload with holes for `args`, `jid` and the timestamps.
#[derive(Debug, Clone)]
pub struct Template {
    head: String,
    mid: String,
}

impl Template {
    /// The payload up to `args`'s value (`..."args":`).
    pub fn head(&self) -> &str {
        &self.head
    }

    /// The payload from after `args`'s value up to the jid's opening quote.
    pub fn mid(&self) -> &str {
        &self.mid
    }

    /// The payload for these args (JSON text), jid and timestamp (JSON text).
    pub fn render(&self, args: &str, jid: &str, stamp: &str, enqueued: bool) -> String {
        let len = self.head.len() + args.len() + self.mid.len() + jid.len() + 2 * stamp.len() + 36;
        let mut out = String::with_capacity(len);
        out.push_str(&self.head);
        out.push_str(args);
        out.push_str(&self.mid);
        finish(&mut out, jid, stamp, enqueued);
        out
    }
}

/// Why a job cannot be both unique and encrypted.
pub const UNIQUE_AND_ENCRYPT: &str = "unique_for and encrypt cannot be combined: each push encrypts the last \
    argument under a fresh IV, so two pushes of the same arguments never look alike (as in Sidekiq Enterprise)";

/// Fields kiq itself sets on a new job, which options must not override.
const RESERVED: &[&str] = &[
    field::BATCH,
    field::BATCH_UP,
    field::CALLBACK,
    field::CALLBACK_BATCH,
    field::ENCRYPT,
    field::EXPIRES_AT,
    field::UNIQUE_TOKEN,
    field::UNIQUE_UNTIL,
    field::CLASS,
    field::ARGS,
    field::QUEUE,
    field::JID,
    field::RETRY,
    field::CREATED_AT,
    field::ENQUEUED_AT,
    field::AT,
];

/// Queue names are limited to what Sidekiq's Web UI can show (`[a-z_:.\-0-9]`,
/// any case); `|` would also break kiq's in-progress list names.
pub fn check_queue_name(name: &str) -> Result<()> {
    let ok =
        !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b':' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(KiqError::codec(format!(
            "invalid queue name {name:?}: use letters, digits, '_', ':', '.' and '-' (what Sidekiq's Web UI accepts)"
        )))
    }
}
