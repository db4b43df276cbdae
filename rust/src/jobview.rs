//! A job as a dashboard shows it: Sidekiq's Web UI display rules, decided once.
//!
//! The class shown is `display_class`, else the ActiveJob `wrapped` class,
//! else `class`; an ActiveJob envelope shows its inner arguments; a job with
//! `"encrypt": true` never shows its last argument (the ciphertext of Sidekiq
//! Enterprise's encryption), only `[encrypted data]`. Fields outside Sidekiq's
//! standard set are "extras", listed as they are.

use crate::activejob;
use crate::backtrace;
use crate::job::{Payload, field};

/// The fields a job page shows in their own rows (Sidekiq's list); the rest are extras.
const STANDARD: [&str; 17] = [
    field::QUEUE,
    field::CLASS,
    field::ARGS,
    field::RETRY_COUNT,
    field::RETRIED_AT,
    field::FAILED_AT,
    field::JID,
    field::ERROR_MESSAGE,
    field::ERROR_CLASS,
    field::BACKTRACE,
    field::ERROR_BACKTRACE,
    field::ENQUEUED_AT,
    field::RETRY,
    field::WRAPPED,
    field::CREATED_AT,
    field::TAGS,
    field::DISPLAY_CLASS,
];

/// One job, ready to display. Times are epoch seconds, whatever unit the
/// payload used; text fields are raw (the page escapes them).
#[derive(Debug, Clone, Default)]
pub struct JobView {
    /// The stored JSON, byte for byte (actions address the job by it).
    pub payload: String,
    /// Its score in a sorted set (due time, or time of death), if it is in one.
    pub score: Option<f64>,
    pub jid: String,
    /// The class to show (see the module comment).
    pub class: String,
    /// The `class` field itself (the ActiveJob wrapper, for ActiveJob jobs).
    pub raw_class: String,
    pub queue: String,
    /// Each argument as JSON text; for an encrypted job the last is [`crate::crypto::REDACTED`].
    pub args: Vec<String>,
    /// The last argument is encrypted and not shown.
    pub encrypted: bool,
    /// `retry` as JSON text.
    pub retry: Option<String>,
    pub retry_count: Option<i64>,
    pub created_at: Option<f64>,
    pub enqueued_at: Option<f64>,
    pub failed_at: Option<f64>,
    pub retried_at: Option<f64>,
    pub error_class: Option<String>,
    pub error_message: Option<String>,
    pub tags: Vec<String>,
    pub bid: Option<String>,
    /// The payload is not a JSON object (shown raw).
    pub unreadable: bool,
    /// Decoded `error_backtrace` (only for [`JobView::detail`]).
    pub backtrace: Vec<String>,
    /// Non-standard fields as `(name, JSON text)` (only for [`JobView::detail`]).
    pub extras: Vec<(String, String)>,
}

impl JobView {
    /// The view a list row needs.
    pub fn new(payload: String, score: Option<f64>) -> Self {
        let Ok(job) = Payload::parse(payload.as_str()) else {
            return Self { payload, score, unreadable: true, ..Self::default() };
        };
        let raw_class = job.class().unwrap_or_default();
        let wrapped = job.string(field::WRAPPED);
        let class = job.string(field::DISPLAY_CLASS).or_else(|| wrapped.clone()).unwrap_or_else(|| raw_class.clone());
        let encrypted = job.get(field::ENCRYPT) == Some("true");
        let mut args = display_args(&job, &raw_class);
        if encrypted && let Some(last) = args.last_mut() {
            crate::crypto::REDACTED.clone_into(last);
        }
        let tags = job.get(field::TAGS).and_then(|t| serde_json::from_str::<Vec<String>>(t).ok()).unwrap_or_default();
        Self {
            score,
            jid: job.jid().unwrap_or_default(),
            class,
            raw_class,
            queue: job.string(field::QUEUE).unwrap_or_default(),
            args,
            encrypted,
            retry: job.get(field::RETRY).map(str::to_owned),
            retry_count: job.retry_count(),
            created_at: job.time(field::CREATED_AT),
            enqueued_at: job.time(field::ENQUEUED_AT),
            failed_at: job.time(field::FAILED_AT),
            retried_at: job.time(field::RETRIED_AT),
            error_class: job.string(field::ERROR_CLASS),
            error_message: job.string(field::ERROR_MESSAGE),
            tags,
            bid: job.string(field::BID),
            unreadable: false,
            backtrace: Vec::new(),
            extras: Vec::new(),
            payload,
        }
    }

    /// The view a job page needs: also the decoded backtrace and the extras.
    pub fn detail(payload: String, score: Option<f64>) -> Self {
        let mut view = Self::new(payload, score);
        if let Ok(job) = Payload::parse(view.payload.as_str()) {
            view.backtrace = job
                .string(field::ERROR_BACKTRACE)
                .map(|b| backtrace::decode(&b).unwrap_or_else(|e| vec![format!("(unreadable backtrace: {e})")]))
                .unwrap_or_default();
            view.extras = extras(&view.payload);
        }
        view
    }
}

/// Each shown argument as JSON text: an ActiveJob envelope shows the job's
/// own arguments (keyword arguments as a last hash), as Sidekiq's UI does.
fn display_args(job: &Payload, class: &str) -> Vec<String> {
    let Some(args) = job.args() else { return Vec::new() };
    if activejob::is_wrapper(class)
        && let Ok(call) = activejob::unwrap(args)
    {
        let (_, inner, kwargs) = call.into_json();
        let mut out = split_array(&inner);
        out.extend(kwargs);
        return out;
    }
    split_array(args)
}

/// The items of a JSON array as their JSON texts.
fn split_array(json: &str) -> Vec<String> {
    serde_json::from_str::<Vec<&serde_json::value::RawValue>>(json)
        .map(|items| items.into_iter().map(|r| r.get().to_owned()).collect())
        .unwrap_or_default()
}

/// Fields outside Sidekiq's standard set, in payload order.
fn extras(payload: &str) -> Vec<(String, String)> {
    serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(payload)
        .map(|m| {
            m.into_iter().filter(|(k, _)| !STANDARD.contains(&k.as_str())).map(|(k, v)| (k, v.to_string())).collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encrypted_last_argument_is_never_shown() {
        let v = JobView::new(r#"{"class":"Secret","args":[1,"c2VjcmV0"],"jid":"a","encrypt":true}"#.into(), None);
        assert_eq!(v.args, ["1", crate::crypto::REDACTED]);
        assert!(v.encrypted && !v.payload.is_empty());
        let plain = JobView::new(r#"{"class":"Plain","args":[1,"x"],"jid":"a","encrypt":false}"#.into(), None);
        assert_eq!(plain.args, ["1", "\"x\""]);
    }

    #[test]
    fn display_class_and_active_job() {
        let v = JobView::new(
            r#"{"class":"ActiveJob::QueueAdapters::SidekiqAdapter::JobWrapper","wrapped":"InvoiceJob","queue":"q","args":[{"job_class":"InvoiceJob","job_id":"x","arguments":[7,{"user":"ada","_aj_ruby2_keywords":["user"]}],"queue_name":"q"}],"jid":"b"}"#.into(),
            Some(5.5),
        );
        assert_eq!((v.class.as_str(), v.queue.as_str(), v.score), ("InvoiceJob", "q", Some(5.5)));
        assert_eq!(v.args, ["7", r#"{"user":"ada"}"#]);
        let d = JobView::new(r#"{"class":"A","display_class":"Shown","args":[]}"#.into(), None);
        assert_eq!(d.class, "Shown");
    }

    #[test]
    fn detail_decodes_backtrace_and_lists_extras() {
        let bt = backtrace::encode(&["a.py:1:in `f'".to_owned()]);
        let src = format!(
            r#"{{"class":"A","args":[],"jid":"c","error_backtrace":"{bt}","x":{{"y":1}},"failed_at":1700000000123,"created_at":1.5}}"#
        );
        let v = JobView::detail(src, None);
        assert_eq!(v.backtrace, ["a.py:1:in `f'"]);
        assert_eq!(v.extras, [("x".to_owned(), r#"{"y":1}"#.to_owned())]);
        assert_eq!((v.failed_at, v.created_at), (Some(1_700_000_000.123), Some(1.5)));
        assert!(JobView::new("not json".into(), None).unreadable);
    }
}
