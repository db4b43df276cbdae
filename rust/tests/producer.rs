//! The producer façade against a real redis-server: plain, unique, scheduled
//! and bulk pushes, buffered or synchronous, and the checks it makes.

mod support;

use std::time::Duration;

use _kiq::crontab::Crontab;
use _kiq::job::NewJob;
use _kiq::periodic;
use _kiq::pool::RedisConfig;
use _kiq::producer::{BufferOptions, Extras, Producer, ProducerConfig, seal_keys};
use _kiq::runtime;
use _kiq::timestamp::{self, TimestampUnit};

fn open(url: String, buffered: bool) -> Producer {
    let config = ProducerConfig {
        redis: RedisConfig::new(url),
        namespace: None,
        unit: TimestampUnit::Seconds,
        buffer: buffered.then(|| BufferOptions {
            flush_interval: 0.01,
            max_bytes: 1 << 20,
            full_timeout: 5.0,
            path: None,
            fsync: "interval".into(),
            undeliverable_path: None,
        }),
        path_without_buffer: false,
        full_timeout: 5.0,
        keyring: None,
    };
    let _guard = runtime::get().enter();
    Producer::open(config).unwrap()
}

fn redis_int(p: &Producer, cmd: &str, key: &str) -> i64 {
    let pool = p.pool.clone();
    let (cmd, key) = (cmd.to_owned(), key.to_owned());
    runtime::get().block_on(async move { redis::cmd(&cmd).arg(key).query_async(&mut pool.get()).await.unwrap() })
}

fn job(class: &str, args: &str) -> NewJob {
    NewJob::new(class, args)
}

#[test]
fn plain_and_scheduled_jobs_go_through_the_buffer() {
    let redis = support::RedisServer::start();
    let p = open(redis.url(), true);
    let now = timestamp::now();
    let prepared = vec![
        p.prepare(&job("A", "[1]"), None, now).unwrap(),
        p.prepare(&job("A", "[2]"), None, now).unwrap(),
        p.prepare(&job("A", "[3]"), Some(now + 3600.0), now).unwrap(),
    ];
    assert!(prepared.iter().all(|(_, _, lock)| lock.is_none()));
    assert!(p.deliver(prepared, false).unwrap().is_empty());
    p.flush(Duration::from_secs(5)).unwrap();
    assert_eq!(redis_int(&p, "LLEN", &p.keys.queue("default")), 2);
    assert_eq!(redis_int(&p, "ZCARD", &p.keys.schedule()), 1);
    let (stats, _) = p.buffer_stats().unwrap();
    assert_eq!(stats.jobs, 0);
}

#[test]
fn a_unique_job_is_pushed_once_and_the_second_learns_who_holds_the_lock() {
    let redis = support::RedisServer::start();
    let p = open(redis.url(), true);
    let mut unique = job("U", "[7]");
    Extras { unique_for: Some(60.0), unique_until: None, expires_in: None }.apply(&mut unique).unwrap();
    let now = timestamp::now();
    let first = p.prepare(&unique, None, now).unwrap();
    let first_jid = first.0.clone();
    assert!(first.2.is_some(), "a unique job takes a lock");
    assert!(p.deliver(vec![first], false).unwrap().is_empty());
    let second = p.prepare(&unique, None, now).unwrap();
    let second_jid = second.0.clone();
    let skipped = p.deliver(vec![second], false).unwrap();
    assert_eq!(skipped.get(&second_jid), Some(&Some(first_jid)));
    // Unique pushes are synchronous even with a buffer: in Redis already.
    assert_eq!(redis_int(&p, "LLEN", &p.keys.queue("default")), 1);
}

#[test]
fn without_a_buffer_pushes_are_synchronous_and_bulk_takes_the_fast_path() {
    let redis = support::RedisServer::start();
    let p = open(redis.url(), false);
    assert!(p.buffer_stats().is_none());
    let now = timestamp::now();
    let bulk = p.bulk(&job("B", "[]"), false, None, now).expect("a plain template renders each job");
    let items: Vec<_> = (0..5).map(|i| bulk.item(&format!("[{i}]")).1).collect();
    p.deliver_items(items, false).unwrap();
    assert_eq!(redis_int(&p, "LLEN", &p.keys.queue("default")), 5);
    let mut expiring = job("B", "[]");
    Extras { expires_in: Some(5.0), ..Extras::default() }.apply(&mut expiring).unwrap();
    assert!(p.bulk(&expiring, false, None, now).is_none(), "an expiry is computed per job");
    assert!(p.bulk(&job("B", "[]"), true, None, now).is_none(), "each encrypted job is sealed on its own");
}

#[test]
fn the_producer_checks_options_once() {
    let mut j = job("X", "[]");
    let bad = |e: Extras<'_>, j: &mut NewJob| e.apply(j).unwrap_err().to_string();
    assert!(
        bad(Extras { unique_for: Some(0.0), ..Extras::default() }, &mut j)
            .contains("unique_for must be a positive number")
    );
    assert!(
        bad(Extras { unique_for: Some(1.0), unique_until: Some("never"), ..Extras::default() }, &mut j)
            .contains("unique_until")
    );
    assert!(bad(Extras { expires_in: Some(f64::NAN), ..Extras::default() }, &mut j).contains("expires_in"));
    assert!(seal_keys(true, None).unwrap_err().to_string().contains("encryption keys"));
    assert!(seal_keys(false, None).unwrap().is_none());
}

#[test]
fn periodic_entry_ids_are_stable_and_differ_by_schedule() {
    let every = Crontab::parse("* * * * *").unwrap();
    let hourly = Crontab::parse("0 * * * *").unwrap();
    let a = periodic::Entry::new(every, job("Tick", "[1]")).unwrap();
    let b = periodic::Entry::new(every, job("Tick", "[1]")).unwrap();
    let c = periodic::Entry::new(hourly, job("Tick", "[1]")).unwrap();
    assert_eq!(a.id, b.id);
    assert_eq!(a.id.len(), 32);
    assert_ne!(a.id, c.id);
}
