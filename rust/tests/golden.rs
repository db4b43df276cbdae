//! Golden payloads written by Sidekiq 6.4.1 (captured), 7.x and 8.x
//! (constructed from the wire reference): they decode, re-encode byte for
//! byte, and keep every field kiq does not own through a failure.

use _kiq::backtrace;
use _kiq::job::{Payload, field};
use _kiq::retry::{self, Disposition, Failure, RetryPolicy};
use _kiq::worker::WorkerOptions;

const FIXTURES: [(&str, &str); 3] = [
    ("6.4.1", include_str!("../../tests/fixtures/sidekiq/sidekiq-6.4.1.json")),
    ("7.x", include_str!("../../tests/fixtures/sidekiq/sidekiq-7.x.json")),
    ("8.x", include_str!("../../tests/fixtures/sidekiq/sidekiq-8.x.json")),
];

/// Fields the retry path writes; everything else must survive verbatim.
const OWNED: [&str; 7] = [
    field::QUEUE,
    field::ERROR_MESSAGE,
    field::ERROR_CLASS,
    field::FAILED_AT,
    field::RETRIED_AT,
    field::RETRY_COUNT,
    field::ERROR_BACKTRACE,
];

fn payloads() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (version, text) in FIXTURES {
        let doc: serde_json::Value = serde_json::from_str(text).unwrap();
        for p in doc["payloads"].as_array().unwrap() {
            out.push((format!("{version}/{}", p["name"].as_str().unwrap()), p["payload"].as_str().unwrap().to_owned()));
        }
    }
    out
}

fn top_level_keys(json: &str) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    v.as_object().unwrap().keys().cloned().collect()
}

#[test]
fn every_golden_payload_round_trips_byte_for_byte() {
    for (name, raw) in payloads() {
        let p = Payload::parse(raw.clone()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(p.encode(), raw, "{name}");
        assert!(p.class().is_some(), "{name}");
        assert!(p.args().is_some(), "{name}");
        assert!(p.time(field::CREATED_AT).unwrap() > 1.7e9, "{name}: created_at in seconds");
        assert!(p.time(field::CREATED_AT).unwrap() < 2.0e9, "{name}: created_at in seconds");
    }
}

#[test]
fn a_failure_keeps_every_field_it_does_not_own() {
    for (name, raw) in payloads() {
        let before = Payload::parse(raw.clone()).unwrap();
        let failure =
            Failure { error_class: "RuntimeError".into(), error_message: "again".into(), ..Default::default() };
        let out = retry::on_failure(
            before.clone(),
            "default",
            &failure,
            &WorkerOptions::default(),
            &RetryPolicy::default(),
            1.8e9,
            0.5,
        )
        .0;
        let payload = match out {
            Disposition::Retry { payload, .. } | Disposition::Dead { payload } => payload,
            Disposition::Discard | Disposition::Dropped => panic!("{name}: discarded"),
        };
        let after = Payload::parse(payload).unwrap();
        for key in top_level_keys(&raw) {
            if !OWNED.contains(&key.as_str()) {
                assert_eq!(after.get(&key), before.get(&key), "{name}: field {key}");
            }
        }
        let expected = before.retry_count().map_or(0, |c| c + 1);
        assert_eq!(after.retry_count(), Some(expected), "{name}");
        if before.contains(field::FAILED_AT) {
            assert_eq!(after.get(field::FAILED_AT), before.get(field::FAILED_AT), "{name}: first failure time kept");
        }
    }
}

#[test]
fn golden_backtraces_decode() {
    for (name, raw) in payloads() {
        let p = Payload::parse(raw).unwrap();
        if let Some(bt) = p.get(field::ERROR_BACKTRACE) {
            let text: String = serde_json::from_str(bt).unwrap();
            let lines = backtrace::decode(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(!lines.is_empty(), "{name}");
        }
    }
}
