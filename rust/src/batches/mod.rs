//! Batches: groups of jobs with callbacks, Sidekiq Pro's documented semantics
//! on kiq's own keys (`kiq:batch|<bid>`...) and payload fields (`kiq_bid`...).
//!
//! A batch's jobs carry its bid (and its ancestors' bids); their results are
//! counted in the same atomic step that writes them (`settle.lua`, with
//! `batch_lib.lua`), once per jid however often a job runs, and the step that
//! makes an event due writes its callback jobs, once. Callbacks are ordinary
//! jobs (`class` = the target, `args` = `[status, options]`), so a Ruby worker
//! can be one. This module holds the shared vocabulary; `build` ends a
//! `jobs()` block, `status` reads batches back, `watch` is what fetchers check.

pub mod build;
pub mod status;
pub mod watch;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::error::{KiqError, Result};
use crate::job::{NewJob, Payload, Retry, field, json_string};

/// A batch lives this long after its last `jobs()` block (Pro's 30 days).
pub const LIVE_SECS: u64 = 30 * 24 * 3600;
/// And this long after it succeeded (Pro's 24 hours).
pub const KEEP_SECS: u64 = 24 * 3600;

/// A batch event, with Pro's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Every job ran once (succeeded, or failed and waiting to retry).
    Complete,
    /// Every job succeeded.
    Success,
    /// The first job died.
    Death,
}

impl Event {
    pub const ALL: [Event; 3] = [Event::Complete, Event::Success, Event::Death];

    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "complete" => Ok(Self::Complete),
            "success" => Ok(Self::Success),
            "death" => Ok(Self::Death),
            other => Err(KiqError::config(format!(
                "unknown batch event {other:?}: use \"success\", \"complete\" or \"death\""
            ))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Complete => "complete",
            Self::Success => "success",
            Self::Death => "death",
        }
    }
}

/// A new batch id: 10 random bytes as 14 characters of URL-safe Base64, the
/// shape of Sidekiq Pro's bids.
pub fn new_bid() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 10]>())
}

/// Checks a bid given by a caller (to reopen, inspect or invalidate a batch).
pub fn check_bid(bid: &str) -> Result<()> {
    let ok = !bid.is_empty() && bid.len() <= 64 && bid.bytes().all(|b| b.is_ascii_graphic() && b != b'|');
    if ok {
        Ok(())
    } else {
        Err(KiqError::config(format!("{bid:?} is not a batch id (1-64 printable characters, no spaces or '|')")))
    }
}

/// What a fetched job is to its batch: a member, or a callback of one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchRef {
    /// The batch, then its ancestors, nearest first.
    pub chain: Vec<String>,
    /// `Some(event)` on a callback job of `chain[0]`; an unawaited callback
    /// (no `kiq_callback_bid`) has an empty chain.
    pub callback: Option<Event>,
}

impl BatchRef {
    /// Read from kiq's payload fields (never from Pro's `bid`).
    pub fn of(payload: &Payload) -> Option<Self> {
        let (bid, callback) = if let Some(bid) = payload.string(field::BATCH) {
            (bid, None)
        } else {
            let event = Event::parse(&payload.string(field::CALLBACK)?).ok()?;
            match payload.string(field::CALLBACK_BATCH) {
                Some(bid) => (bid, Some(event)),
                None => return Some(Self { chain: Vec::new(), callback: Some(event) }),
            }
        };
        if check_bid(&bid).is_err() {
            return None;
        }
        let mut chain = vec![bid];
        if let Some(up) = payload.get(field::BATCH_UP).and_then(|t| serde_json::from_str::<Vec<String>>(t).ok()) {
            chain.extend(up.into_iter().filter(|b| check_bid(b).is_ok()));
        }
        Some(Self { chain, callback })
    }

    /// The batch (None for an unawaited callback, which names none).
    pub fn bid(&self) -> Option<&str> {
        self.chain.first().map(String::as_str)
    }
}

/// How a batch job ended, for its batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Succeeded, or will never run (expired, or skipped in an invalidated batch).
    Ok,
    /// Failed: waiting to retry, or dropped (`retry: false`).
    Fail,
    /// Died: out of retries (in the dead set, or dropped with `dead: false`).
    Dead,
}

impl Outcome {
    /// How a failure's disposition counts for its batch.
    pub fn of(d: &crate::retry::Disposition) -> Self {
        use crate::retry::Disposition;
        match d {
            Disposition::Retry { .. } | Disposition::Discard => Self::Fail,
            Disposition::Dead { .. } | Disposition::Dropped => Self::Dead,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Fail => "fail",
            Self::Dead => "dead",
        }
    }
}

/// A finished job's batch bookkeeping, written with its result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled {
    pub chain: Vec<String>,
    pub jid: String,
    /// `Err(event)`: a callback job of that event ran (only successes count).
    pub what: std::result::Result<Outcome, Event>,
}

impl Settled {
    /// The bookkeeping for a job of `batch` that ended with `outcome`; None when
    /// there is none (a callback job that did not succeed).
    pub fn new(batch: &BatchRef, jid: &str, outcome: Outcome) -> Option<Self> {
        Self::from_ref(batch.clone(), jid.to_owned(), outcome)
    }

    /// [`Settled::new`], taking the batch and jid instead of copying them (a job's end).
    pub fn from_ref(batch: BatchRef, jid: String, outcome: Outcome) -> Option<Self> {
        if batch.chain.is_empty() {
            return None;
        }
        let what = match batch.callback {
            None => Ok(outcome),
            Some(event) if outcome == Outcome::Ok => Err(event),
            Some(_) => return None,
        };
        Some(Self { chain: batch.chain, jid, what })
    }

    /// `settle.lua`'s batch part: role, outcome or event, then the level numbers.
    pub fn spec(&self, levels: &[usize]) -> String {
        let (role, what) = match self.what {
            Ok(o) => ("m", o.as_str()),
            Err(e) => ("c", e.as_str()),
        };
        let levels: Vec<String> = levels.iter().map(ToString::to_string).collect();
        format!("{role} {what} {}", levels.join(" "))
    }
}

/// A callback: an ordinary job of class `class` whose args are the batch's
/// status hash and `options`, pushed once when its event fires.
#[derive(Debug, Clone, PartialEq)]
pub struct Callback {
    pub event: Event,
    pub class: String,
    pub queue: String,
    pub retry: Retry,
    /// JSON text of the options hash (an object).
    pub options: String,
    /// Further payload fields (the target worker's options: tags, backtrace...).
    pub fields: Vec<(String, String)>,
    /// The event counts as done (for the parent, and `callbacks_done`) only
    /// once this job succeeded in a kiq process. A callback that may run
    /// elsewhere (a Ruby worker) is not awaited: kiq would never see it end.
    pub awaited: bool,
}

impl Callback {
    /// Validates a callback: a known event, a class name kiq can push (Pro's
    /// `"Class#method"` form is refused: kiq's callbacks are ordinary jobs),
    /// options that are a JSON object.
    pub fn new(event: &str, class: &str, queue: &str, retry: Retry, options: &str) -> Result<Self> {
        let event = Event::parse(event)?;
        if class.is_empty() {
            return Err(KiqError::config("a batch callback needs a target: a worker or a class name"));
        }
        if class.contains('#') {
            return Err(KiqError::config(format!(
                "callback target {class:?}: kiq's callbacks are ordinary jobs, so name a worker class (its \
                 perform(status, options) runs); Sidekiq Pro's \"Class#method\" form is not supported"
            )));
        }
        let value: serde_json::Value = serde_json::from_str(options)
            .map_err(|e| KiqError::codec(format!("batch callback options are not valid JSON: {e}")))?;
        if !value.is_object() {
            return Err(KiqError::codec("batch callback options must be a dict (Sidekiq Pro's options hash)"));
        }
        crate::job::check_queue_name(queue)?;
        Ok(Self {
            event,
            class: class.to_owned(),
            queue: queue.to_owned(),
            retry,
            options: options.to_owned(),
            fields: Vec::new(),
            awaited: true,
        })
    }

    /// The template `batch_lib.lua` completes: the payload before the status
    /// hash, NUL, the payload from after it up to the jid's opening quote, NUL.
    pub fn template(&self, chain: &[String]) -> Result<String> {
        let mut job = NewJob::new(self.class.clone(), "[]");
        job.queue.clone_from(&self.queue);
        job.retry = self.retry;
        job.options.clone_from(&self.fields);
        job.validate_names()?;
        job.options.push((field::CALLBACK.to_owned(), json_string(self.event.as_str())));
        // Only an awaited callback names its batch: its success is counted there.
        if self.awaited {
            job.options.push((field::CALLBACK_BATCH.to_owned(), json_string(&chain[0])));
            if chain.len() > 1 {
                job.options.push((field::BATCH_UP.to_owned(), serde_json::to_string(&chain[1..])?));
            }
        }
        let t = job.template();
        Ok(format!("{}[\0,{}]{}\0", t.head(), self.options, t.mid()))
    }
}

/// The payload fields a member job of `chain` carries.
pub fn member_fields(chain: &[String]) -> Vec<(String, String)> {
    let mut fields = vec![(field::BATCH.to_owned(), json_string(&chain[0]))];
    if chain.len() > 1 {
        fields.push((field::BATCH_UP.to_owned(), serde_json::to_string(&chain[1..]).unwrap_or_default()));
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bids_look_like_pro_bids() {
        let bid = new_bid();
        assert_eq!(bid.len(), 14);
        assert!(check_bid(&bid).is_ok());
        assert_ne!(bid, new_bid());
        assert!(check_bid("").is_err());
        assert!(check_bid("a b").is_err());
        assert!(check_bid("a|b").is_err());
    }

    #[test]
    fn members_and_callbacks_are_read_from_kiq_fields_only() {
        let p = Payload::parse(r#"{"class":"X","args":[],"kiq_bid":"B","kiq_bid_up":["P","G"]}"#).unwrap();
        assert_eq!(
            BatchRef::of(&p),
            Some(BatchRef { chain: vec!["B".into(), "P".into(), "G".into()], callback: None })
        );
        let pro = Payload::parse(r#"{"class":"X","args":[],"bid":"B"}"#).unwrap();
        assert_eq!(BatchRef::of(&pro), None);
        let cb = Payload::parse(r#"{"class":"X","args":[],"kiq_callback":"success","kiq_callback_bid":"B"}"#).unwrap();
        assert_eq!(BatchRef::of(&cb).unwrap().callback, Some(Event::Success));
        let settled = Settled::new(&BatchRef::of(&cb).unwrap(), "j", Outcome::Fail);
        assert_eq!(settled, None, "a failed callback counts for nothing");
        let m = Settled::new(&BatchRef::of(&p).unwrap(), "j", Outcome::Dead).unwrap();
        assert_eq!(m.spec(&[2, 3, 4]), "m dead 2 3 4");
    }

    #[test]
    fn callbacks_are_checked_and_rendered_in_sidekiq_order() {
        assert!(Event::parse("sucess").unwrap_err().to_string().contains("unknown batch event"));
        assert!(
            Callback::new("success", "A#b", "default", Retry::Default, "{}").unwrap_err().to_string().contains('#')
        );
        assert!(Callback::new("success", "A", "default", Retry::Default, "[1]").is_err());
        let cb = Callback::new("death", "Billing::Done", "cb", Retry::Times(3), r#"{"k":1}"#).unwrap();
        let t = cb.template(&["B".into(), "P".into()]).unwrap();
        let filled = t.replacen('\0', r#"{"bid":"B"}"#, 1).replacen('\0', "0123", 1) + r#"","created_at":1.5}"#;
        assert_eq!(
            filled,
            r#"{"retry":3,"queue":"cb","kiq_callback":"death","kiq_callback_bid":"B","kiq_bid_up":["P"],"args":[{"bid":"B"},{"k":1}],"class":"Billing::Done","jid":"0123","created_at":1.5}"#
        );
        let unawaited = Callback { awaited: false, ..cb }.template(&["B".into(), "P".into()]).unwrap();
        assert!(unawaited.contains(r#""kiq_callback":"death","args":["#), "names no batch: {unawaited}");
        let p = Payload::parse(r#"{"class":"X","args":[],"kiq_callback":"death"}"#).unwrap();
        let r = BatchRef::of(&p).unwrap();
        assert_eq!((r.bid(), r.callback, Settled::new(&r, "j", Outcome::Ok)), (None, Some(Event::Death), None));
    }
}
