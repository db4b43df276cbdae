//! ActiveJob's envelope on Sidekiq, both ways.
//!
//! Rails' Sidekiq adapter pushes `class` = a wrapper class, `wrapped` = the
//! ActiveJob class, and `args` = `[job.serialize]`: one hash whose
//! `arguments` use ActiveJob's own argument encoding. Reading unwraps it, so
//! a Python worker named as the ActiveJob class gets plain arguments (and
//! Ruby keyword arguments as keyword arguments). Writing builds it, so a Ruby
//! ActiveJob class runs a job enqueued from Python.
//!
//! Facts from activejob 6.1's `core.rb`/`arguments.rb` and Sidekiq's adapter:
//! a hash argument carries `_aj_symbol_keys` (its symbol keys, as strings) or,
//! for keyword arguments, `_aj_ruby2_keywords`; `_aj_hash_with_indifferent_access`
//! marks HashWithIndifferentAccess; `{"_aj_globalid": gid}` is a record;
//! `_aj_serialized` names a custom serializer whose `value` holds the data.

use serde_json::{Map, Value};

use crate::error::{KiqError, Result};

/// The wrapper class Rails' adapter (6.x, 7.x) writes; Sidekiq 8 still defines it as an alias.
pub const WRAPPER: &str = "ActiveJob::QueueAdapters::SidekiqAdapter::JobWrapper";
/// The wrapper class Sidekiq's own adapter writes from 8.0.
pub const SIDEKIQ_WRAPPER: &str = "Sidekiq::ActiveJob::Wrapper";

/// Field names of ActiveJob's serialized job and argument markers.
mod key {
    pub const JOB_CLASS: &str = "job_class";
    pub const JOB_ID: &str = "job_id";
    pub const PROVIDER_JOB_ID: &str = "provider_job_id";
    pub const QUEUE_NAME: &str = "queue_name";
    pub const PRIORITY: &str = "priority";
    pub const ARGUMENTS: &str = "arguments";
    pub const EXECUTIONS: &str = "executions";
    pub const EXCEPTION_EXECUTIONS: &str = "exception_executions";
    pub const LOCALE: &str = "locale";
    pub const TIMEZONE: &str = "timezone";
    pub const ENQUEUED_AT: &str = "enqueued_at";
    pub const GLOBALID: &str = "_aj_globalid";
    pub const SYMBOL_KEYS: &str = "_aj_symbol_keys";
    pub const RUBY2_KEYWORDS: &str = "_aj_ruby2_keywords";
    pub const INDIFFERENT: &str = "_aj_hash_with_indifferent_access";
    pub const SERIALIZED: &str = "_aj_serialized";
    pub const VALUE: &str = "value";
    /// Keys a hash argument may not have (ActiveJob refuses them too).
    pub const RESERVED: [&str; 5] = [GLOBALID, SYMBOL_KEYS, RUBY2_KEYWORDS, INDIFFERENT, SERIALIZED];
}

/// Custom serializers whose `value` is the whole datum (ISO 8601 text for
/// times and dates, seconds for durations, the name for a symbol or module).
const VALUE_SERIALIZERS: [&str; 7] = [
    "ActiveJob::Serializers::SymbolSerializer",
    "ActiveJob::Serializers::TimeSerializer",
    "ActiveJob::Serializers::TimeWithZoneSerializer",
    "ActiveJob::Serializers::DateTimeSerializer",
    "ActiveJob::Serializers::DateSerializer",
    "ActiveJob::Serializers::DurationSerializer",
    "ActiveJob::Serializers::ModuleSerializer",
];

/// The class a job runs as: its `class`, or the job class an ActiveJob wrapper carries.
pub fn runs_as(payload: &crate::job::Payload) -> Option<String> {
    let class = payload.class()?;
    if is_wrapper(&class) { unwrap(payload.args()?).ok().map(|call| call.class) } else { Some(class) }
}

pub fn is_wrapper(class: &str) -> bool {
    class == WRAPPER || class == SIDEKIQ_WRAPPER
}

/// An ActiveJob job as a Python worker runs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    /// The ActiveJob class (`job_class`).
    pub class: String,
    /// Positional arguments, decoded.
    pub args: Vec<Value>,
    /// Ruby keyword arguments, when the job had any.
    pub kwargs: Option<Map<String, Value>>,
}

impl Call {
    /// `(class, args JSON, kwargs JSON)`.
    pub fn into_json(self) -> (String, String, Option<String>) {
        (self.class, Value::Array(self.args).to_string(), self.kwargs.map(|k| Value::Object(k).to_string()))
    }
}

/// Reads the `args` of a wrapper job (`[ {job_class, arguments, ...} ]`).
pub fn unwrap(args_json: &str) -> Result<Call> {
    let bad = |what: &str| KiqError::codec(format!("not an ActiveJob envelope: {what}"));
    let mut outer: Vec<Value> = serde_json::from_str(args_json)?;
    if outer.len() != 1 {
        return Err(bad(&format!("args has {} items, not 1", outer.len())));
    }
    let Value::Object(mut job) = outer.remove(0) else { return Err(bad("args[0] is not a hash")) };
    let class = match job.remove(key::JOB_CLASS) {
        Some(Value::String(c)) if !c.is_empty() => c,
        _ => return Err(bad("no job_class string")),
    };
    let Some(Value::Array(arguments)) = job.remove(key::ARGUMENTS) else {
        return Err(bad("no arguments array"));
    };
    let mut args = Vec::with_capacity(arguments.len());
    let mut kwargs = None;
    let last = arguments.len().saturating_sub(1);
    for (i, arg) in arguments.into_iter().enumerate() {
        match arg {
            // Keyword arguments are the last argument, a hash marked as such.
            Value::Object(mut h) if i == last && h.contains_key(key::RUBY2_KEYWORDS) => {
                h.remove(key::RUBY2_KEYWORDS);
                let plain = h.into_iter().map(|(k, v)| (k, decode(v))).collect();
                kwargs = Some(plain);
            }
            other => args.push(decode(other)),
        }
    }
    Ok(Call { class, args, kwargs })
}

/// One argument, from ActiveJob's encoding to plain JSON.
fn decode(v: Value) -> Value {
    match v {
        Value::Array(items) => Value::Array(items.into_iter().map(decode).collect()),
        Value::Object(mut h) => {
            if h.len() == 1
                && let Some(Value::String(gid)) = h.get(key::GLOBALID)
            {
                return Value::String(gid.clone());
            }
            if let Some(Value::String(serializer)) = h.get(key::SERIALIZED) {
                if VALUE_SERIALIZERS.contains(&serializer.as_str())
                    && let Some(value) = h.remove(key::VALUE)
                {
                    return value;
                }
                return Value::Object(h); // unknown serializer: left for the worker to read
            }
            for marker in [key::SYMBOL_KEYS, key::RUBY2_KEYWORDS, key::INDIFFERENT] {
                h.remove(marker);
            }
            Value::Object(h.into_iter().map(|(k, v)| (k, decode(v))).collect())
        }
        other => other,
    }
}

/// What the envelope of a job enqueued from Python says besides its arguments.
#[derive(Debug, Clone)]
pub struct Envelope<'a> {
    pub class: &'a str,
    pub queue: &'a str,
    pub priority: Option<i64>,
    pub locale: &'a str,
    pub timezone: &'a str,
    /// Epoch seconds, written as ISO 8601 UTC.
    pub enqueued_at: f64,
    /// A UUID, as ActiveJob makes for `job_id`.
    pub job_id: String,
}

/// The `args` of a wrapper job (`[ {...} ]`) for these plain arguments.
pub fn wrap(env: &Envelope<'_>, args: Vec<Value>, kwargs: Option<Map<String, Value>>) -> Result<Value> {
    let mut arguments = args.into_iter().map(encode).collect::<Result<Vec<_>>>()?;
    if let Some(kw) = kwargs {
        let names = kw.keys().cloned().map(Value::String).collect();
        let Value::Object(mut h) = encode(Value::Object(kw))? else { unreachable!("a hash encodes as a hash") };
        h.insert(key::RUBY2_KEYWORDS.into(), Value::Array(names)); // replaces the symbol-keys marker
        h.remove(key::SYMBOL_KEYS);
        arguments.push(Value::Object(h));
    }
    let mut job = Map::new();
    job.insert(key::JOB_CLASS.into(), env.class.into());
    job.insert(key::JOB_ID.into(), env.job_id.clone().into());
    job.insert(key::PROVIDER_JOB_ID.into(), Value::Null);
    job.insert(key::QUEUE_NAME.into(), env.queue.into());
    job.insert(key::PRIORITY.into(), env.priority.map_or(Value::Null, Value::from));
    job.insert(key::ARGUMENTS.into(), Value::Array(arguments));
    job.insert(key::EXECUTIONS.into(), 0.into());
    job.insert(key::EXCEPTION_EXECUTIONS.into(), Value::Object(Map::new()));
    job.insert(key::LOCALE.into(), env.locale.into());
    job.insert(key::TIMEZONE.into(), env.timezone.into());
    job.insert(key::ENQUEUED_AT.into(), iso8601(env.enqueued_at).into());
    Ok(Value::Array(vec![Value::Object(job)]))
}

/// One plain argument in ActiveJob's encoding: hashes get their (empty)
/// symbol-key list, so Ruby reads them back as string-keyed hashes.
fn encode(v: Value) -> Result<Value> {
    match v {
        Value::Array(items) => Ok(Value::Array(items.into_iter().map(encode).collect::<Result<_>>()?)),
        Value::Object(h) => {
            let mut out = Map::with_capacity(h.len() + 1);
            for (k, v) in h {
                if key::RESERVED.contains(&k.as_str()) {
                    return Err(KiqError::codec(format!(
                        "an ActiveJob argument hash cannot have the key {k:?} (ActiveJob reserves it)"
                    )));
                }
                out.insert(k, encode(v)?);
            }
            out.insert(key::SYMBOL_KEYS.into(), Value::Array(Vec::new()));
            Ok(Value::Object(out))
        }
        other => Ok(other),
    }
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ`, which every ActiveJob version reads.
fn iso8601(secs: f64) -> String {
    let micros = (secs * 1e6).round() as i64;
    let (whole, frac) = (micros.div_euclid(1_000_000), micros.rem_euclid(1_000_000));
    let (y, mo, d) = crate::timestamp::civil_from_days(whole.div_euclid(86_400));
    let rem = whole.rem_euclid(86_400);
    format!("{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{frac:06}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// A random (version 4) UUID for `job_id`.
pub fn new_job_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    // The `args` activejob 6.1.7 + Sidekiq 6.4.1 wrote (captured) for
    // `WelcomeJob.perform_later(1, "x", {"a" => {b: 2}}, :sym, Time.utc(2026, 12, 1, 12), user: "ada")`.
    const RAILS: &str = r#"[{"job_class":"WelcomeJob","job_id":"8f3380c4-1e84-4ba5-b569-20239474185f","provider_job_id":null,"queue_name":"mail","priority":null,"arguments":[1,"x",{"a":{"b":2,"_aj_symbol_keys":["b"]},"_aj_symbol_keys":[]},{"_aj_serialized":"ActiveJob::Serializers::SymbolSerializer","value":"sym"},{"_aj_serialized":"ActiveJob::Serializers::TimeSerializer","value":"2026-12-01T12:00:00.000000000Z"},{"user":"ada","_aj_ruby2_keywords":["user"]}],"executions":0,"exception_executions":{},"locale":"en","timezone":null,"enqueued_at":"2026-12-01T12:37:21Z"}]"#;

    #[test]
    fn unwraps_what_rails_writes() {
        let call = unwrap(RAILS).unwrap();
        assert_eq!(call.class, "WelcomeJob");
        assert_eq!(Value::Array(call.args), json!([1, "x", {"a": {"b": 2}}, "sym", "2026-12-01T12:00:00.000000000Z"]));
        assert_eq!(Value::Object(call.kwargs.unwrap()), json!({"user": "ada"}));
    }

    #[test]
    fn a_wrapped_job_runs_as_its_job_class() {
        let payload = |s: &str| crate::job::Payload::parse(s.to_owned()).unwrap();
        let wrapped = format!(r#"{{"class":"{WRAPPER}","args":{RAILS},"jid":"j"}}"#);
        assert_eq!(runs_as(&payload(&wrapped)).as_deref(), Some("WelcomeJob"));
        assert_eq!(runs_as(&payload(r#"{"class":"HardJob","args":[],"jid":"j"}"#)).as_deref(), Some("HardJob"));
        assert_eq!(runs_as(&payload(r#"{"args":[],"jid":"j"}"#)), None);
    }

    #[test]
    fn globalids_and_other_serializers() {
        let call = unwrap(
            r#"[{"job_class":"J","arguments":[{"_aj_globalid":"gid://app/User/1"},
            {"_aj_serialized":"ActiveJob::Serializers::TimeWithZoneSerializer","value":"2026-12-01T12:00:00.000000000Z"},
            {"_aj_serialized":"MyMoneySerializer","cents":5},
            {"h":1,"_aj_hash_with_indifferent_access":true}]}]"#,
        )
        .unwrap();
        assert_eq!(
            Value::Array(call.args),
            json!(["gid://app/User/1", "2026-12-01T12:00:00.000000000Z",
                   {"_aj_serialized": "MyMoneySerializer", "cents": 5}, {"h": 1}])
        );
        assert_eq!(call.kwargs, None);
    }

    #[test]
    fn a_keywords_hash_not_last_is_a_plain_hash() {
        let call = unwrap(r#"[{"job_class":"J","arguments":[{"k":1,"_aj_ruby2_keywords":["k"]},2]}]"#).unwrap();
        assert_eq!(Value::Array(call.args), json!([{"k": 1}, 2]));
        assert_eq!(call.kwargs, None);
    }

    #[test]
    fn bad_envelopes_say_why() {
        for (args, why) in [
            ("[]", "0 items"),
            ("[1]", "not a hash"),
            (r#"[{"arguments":[]}]"#, "job_class"),
            (r#"[{"job_class":"J"}]"#, "arguments"),
        ] {
            let e = unwrap(args).unwrap_err().to_string();
            assert!(e.contains(why), "{args}: {e}");
        }
    }

    #[test]
    fn wraps_for_ruby_and_reads_back() {
        let env = Envelope {
            class: "Welcome",
            queue: "mail",
            priority: Some(5),
            locale: "en",
            timezone: "UTC",
            enqueued_at: 1_796_126_400.25,
            job_id: new_job_id(),
        };
        let kwargs = json!({"user": "ada"}).as_object().cloned();
        let wrapped = wrap(&env, vec![json!(1), json!({"a": [{"b": 2}]})], kwargs).unwrap();
        let job = &wrapped[0];
        assert_eq!(job["job_class"], "Welcome");
        assert_eq!(job["queue_name"], "mail");
        assert_eq!(job["priority"], 5);
        assert_eq!(job["enqueued_at"], "2026-12-01T12:00:00.250000Z");
        assert_eq!(
            job["arguments"],
            json!([1, {"a": [{"b": 2, "_aj_symbol_keys": []}], "_aj_symbol_keys": []},
                   {"user": "ada", "_aj_ruby2_keywords": ["user"]}])
        );
        let id = job["job_id"].as_str().unwrap();
        assert_eq!((id.len(), id.as_bytes()[14]), (36, b'4'));
        let call = unwrap(&wrapped.to_string()).unwrap();
        assert_eq!(Value::Array(call.args.clone()), json!([1, {"a": [{"b": 2}]}]));
        assert_eq!(Value::Object(call.kwargs.clone().unwrap()), json!({"user": "ada"}));
        let (class, args, kwargs) = call.into_json();
        assert_eq!((class.as_str(), args.as_str()), ("Welcome", r#"[1,{"a":[{"b":2}]}]"#));
        assert_eq!(kwargs.as_deref(), Some(r#"{"user":"ada"}"#));
    }

    #[test]
    fn reserved_keys_are_refused() {
        let env = Envelope {
            class: "J",
            queue: "q",
            priority: None,
            locale: "en",
            timezone: "UTC",
            enqueued_at: 0.0,
            job_id: "x".into(),
        };
        let e = wrap(&env, vec![json!({"_aj_globalid": 1})], None).unwrap_err().to_string();
        assert!(e.contains("_aj_globalid"), "{e}");
    }

    #[test]
    fn wrapper_names() {
        assert!(is_wrapper(WRAPPER) && is_wrapper(SIDEKIQ_WRAPPER) && !is_wrapper("HardJob"));
    }
}
