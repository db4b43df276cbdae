//! Batches in the core against a real redis-server: commit, settle, callbacks
//! once, children before parents, deaths up the chain.

mod support;

use std::time::{Duration, Instant};

use _kiq::batches::build::{Builder, Spec};
use _kiq::batches::{Callback, status};
use _kiq::capsule::Capsule;
use _kiq::client::{self, PushItem};
use _kiq::heartbeat::ProcessInfo;
use _kiq::job::{NewJob, Retry};
use _kiq::keys::Keys;
use _kiq::lane::{Delivery, Take};
use _kiq::pool::{Pool, RedisConfig};
use _kiq::retry::{Failure, RetryPolicy};
use _kiq::scheduled::PollConfig;
use _kiq::server::{Server, ServerConfig};
use _kiq::timestamp::{self, TimestampUnit};
use redis::AsyncCommands;

fn config() -> ServerConfig {
    ServerConfig {
        process: ProcessInfo {
            identity: "test:1:bbbbbbbbbbbb".into(),
            hostname: "test".into(),
            pid: 1,
            tag: String::new(),
            labels: Vec::new(),
            capsules: vec![Capsule::single("default", 10), Capsule::single("cb", 10)],
            started_at: timestamp::now(),
            version: "kiq-test".into(),
        },
        policy: RetryPolicy::default(),
        poll: PollConfig { average_scheduled_poll_interval: 5.0, poll_interval_average: Some(60.0) },
        scheduler: false,
        beat: None,
        leader_ttl: None,
        orphan_check: None,
        max_recoveries: 3,
        periodics: Vec::new(),
        clock: _kiq::periodic::Clock::Real,
        health: None,
        max_jobs: None,
        max_rss_kb: None,
        stuck_after: None,
        quiet: false,
        prefetch: _kiq::lane::Prefetch::Fixed(0),
        workers: _kiq::worker::Workers::default(),
        limits: None,
        keyring: None,
    }
}

fn builder(bid: &str, up: &[&str], events: &[&str]) -> Builder {
    let callbacks = events
        .iter()
        .map(|e| Callback::new(e, "Done", "cb", Retry::Default, &format!(r#"{{"of":"{bid}"}}"#)).unwrap())
        .collect();
    Builder::new(Spec {
        bid: bid.into(),
        up: up.iter().map(|s| (*s).to_owned()).collect(),
        new: true,
        description: Some(format!("batch {bid}")),
        callback_queue: Some("cb".into()),
        callbacks,
    })
    .unwrap()
}

fn add_jobs(b: &mut Builder, n: usize, retry: Retry) {
    let items: Vec<PushItem> = (0..n)
        .map(|i| {
            let mut job = NewJob::new("Echo", format!("[{i}]"));
            job.retry = retry;
            b.tag(&mut job).unwrap();
            client::prepare(&job, None, timestamp::now(), TimestampUnit::Seconds).1
        })
        .collect();
    assert!(b.add(items).is_none());
}

fn commit(pool: &Pool, b: Builder) -> usize {
    let deadline = Instant::now() + Duration::from_secs(5);
    _kiq::runtime::get()
        .block_on(b.plan().unwrap().run(pool, &Keys::default(), TimestampUnit::Seconds, deadline))
        .unwrap()
}

fn take(server: &Server, lane: usize) -> Box<Delivery> {
    match server.take(lane, Some(Duration::from_secs(5))).unwrap() {
        Take::Job(mut d) => {
            server.begin(&mut d);
            d
        }
        other => panic!("no job in lane {lane}: {other:?}"),
    }
}

/// No job arrives in `lane` for a while.
fn nothing(server: &Server, lane: usize) {
    if let Take::Job(d) = server.take(lane, Some(Duration::from_millis(300))).unwrap() {
        panic!("unexpected job {} {}", d.class, d.payload.source());
    }
}

fn read(pool: &Pool, bid: &str) -> status::Status {
    _kiq::runtime::get().block_on(status::read(pool, &Keys::default(), bid)).unwrap().expect("the batch exists")
}

fn fail(server: &Server, d: Box<Delivery>) {
    let failure = Failure { error_class: "ValueError".into(), error_message: "no".into(), ..Default::default() };
    server.fail(d, &failure);
}

#[test]
fn callbacks_fire_once_and_a_job_run_twice_counts_once() {
    let redis = support::RedisServer::start();
    let rt = _kiq::runtime::get();
    let _g = rt.enter();
    let pool = Pool::new(RedisConfig::new(redis.url())).unwrap();
    let mut b = builder("B1", &[], &["complete", "success"]);
    add_jobs(&mut b, 3, Retry::Default);
    assert_eq!(commit(&pool, b), 0);
    let server = Server::start(pool.clone(), Keys::default(), config()).unwrap();
    let first = take(&server, 0);
    let again = first.payload.source().to_owned();
    server.complete(first);
    fail(&server, take(&server, 0));
    let third = take(&server, 0);
    nothing(&server, 1);
    // The first job runs a second time (a crash before its result, say): counted once.
    let mut conn = pool.get();
    let _: () = rt.block_on(conn.rpush("queue:default", &again)).unwrap();
    server.complete(take(&server, 0));
    nothing(&server, 1);
    server.complete(third);
    let cb = take(&server, 1);
    assert_eq!(cb.class, "Done");
    assert_eq!(cb.args[0]["event"], "complete");
    assert_eq!((cb.args[0]["total"].as_i64(), cb.args[0]["pending"].as_i64()), (Some(3), Some(1)));
    assert_eq!(cb.args[0]["failed_jids"].as_array().map(Vec::len), Some(1));
    assert_eq!(cb.args[1], serde_json::json!({"of": "B1"}));
    server.complete(cb);
    nothing(&server, 1);
    // The failed job's retry succeeds: success fires, once.
    let retry: Vec<String> = rt.block_on(conn.zrange("retry", 0, -1)).unwrap();
    let _: () = rt.block_on(conn.zrem("retry", &retry[0])).unwrap();
    let _: () = rt.block_on(conn.rpush("queue:default", &retry[0])).unwrap();
    server.complete(take(&server, 0));
    let cb = take(&server, 1);
    assert_eq!(cb.args[0]["event"], "success");
    assert_eq!((cb.args[0]["pending"].as_i64(), cb.args[0]["failures"].as_i64()), (Some(0), Some(0)));
    server.complete(cb);
    nothing(&server, 1);
    let s = read(&pool, "B1");
    assert_eq!((s.total, s.pending, s.failures), (3, 0, 0));
    assert_eq!((s.fired.clone(), s.done.clone()), (vec!["complete", "success"], vec!["complete", "success"]));
    assert!(s.expires_in.is_some_and(|t| t <= 24 * 3600), "kept a day after success: {:?}", s.expires_in);
    let scheduled: i64 = rt.block_on(conn.zcard("schedule")).unwrap();
    assert_eq!(scheduled, 0, "callbacks were moved to their queue at once");
    server.begin_stop();
    rt.block_on(server.finish_stop(Instant::now() + Duration::from_secs(2))).unwrap();
}

#[test]
fn children_callbacks_run_before_their_parents_and_deaths_go_up_once() {
    let redis = support::RedisServer::start();
    let rt = _kiq::runtime::get();
    let _g = rt.enter();
    let pool = Pool::new(RedisConfig::new(redis.url())).unwrap();
    let mut top = builder("P", &[], &["success", "death"]);
    let mut mid = builder("C", &["P"], &["success", "death"]);
    let mut leaf = builder("G", &["C", "P"], &["success"]);
    add_jobs(&mut leaf, 1, Retry::Default);
    add_jobs(&mut mid, 1, Retry::Default);
    mid.defer(leaf);
    top.defer(mid);
    commit(&pool, top);
    let server = Server::start(pool.clone(), Keys::default(), config()).unwrap();
    server.complete(take(&server, 0));
    server.complete(take(&server, 0));
    let order = |d: &Delivery| d.args[1]["of"].as_str().unwrap().to_owned();
    let g = take(&server, 1);
    assert_eq!(order(&g), "G");
    nothing(&server, 1);
    server.complete(g);
    let c = take(&server, 1);
    assert_eq!(order(&c), "C");
    nothing(&server, 1);
    server.complete(c);
    let p = take(&server, 1);
    assert_eq!((order(&p), p.args[0]["event"].as_str()), ("P".into(), Some("success")));
    assert_eq!(p.args[0]["child_count"].as_i64(), Some(1));
    server.complete(p);
    nothing(&server, 1);

    // A second family: the leaf's job dies; death fires in it, then in each ancestor, once.
    let mut top = builder("P2", &[], &["death"]);
    let mut mid = builder("C2", &["P2"], &["death"]);
    add_jobs(&mut mid, 2, Retry::Times(0));
    top.defer(mid);
    commit(&pool, top);
    fail(&server, take(&server, 0));
    let c = take(&server, 1);
    assert_eq!((order(&c), c.args[0]["event"].as_str()), ("C2".into(), Some("death")));
    assert_eq!(c.args[0]["dead_jids"].as_array().map(Vec::len), Some(1));
    nothing(&server, 1);
    server.complete(c);
    let p = take(&server, 1);
    assert_eq!((order(&p), p.args[0]["event"].as_str()), ("P2".into(), Some("death")));
    server.complete(p);
    fail(&server, take(&server, 0));
    nothing(&server, 1);
    let s = read(&pool, "C2");
    assert_eq!((s.failures, s.dead_jids.len(), s.complete()), (2, 2, true));
    server.begin_stop();
    rt.block_on(server.finish_stop(Instant::now() + Duration::from_secs(2))).unwrap();
}

#[test]
fn an_empty_batch_fires_at_once_and_a_raised_block_pushes_nothing() {
    let redis = support::RedisServer::start();
    let rt = _kiq::runtime::get();
    let _g = rt.enter();
    let pool = Pool::new(RedisConfig::new(redis.url())).unwrap();
    assert_eq!(commit(&pool, builder("E", &[], &["complete", "success"])), 2);
    let mut conn = pool.get();
    let cbs: Vec<String> = rt.block_on(conn.lrange("queue:cb", 0, -1)).unwrap();
    assert_eq!(cbs.len(), 2);
    // A block that raised after staging a chunk: its jobs go nowhere.
    let mut b = builder("R", &[], &["success"]);
    let mut staged = None;
    for i in 0.._kiq::batches::build::CHUNK_JOBS {
        let mut job = NewJob::new("Echo", format!("[{i}]"));
        b.tag(&mut job).unwrap();
        staged = staged.or(b.add(vec![client::prepare(&job, None, timestamp::now(), TimestampUnit::Seconds).1]));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    rt.block_on(staged.expect("a chunk").send(&pool, &Keys::default(), deadline)).unwrap();
    let ids = b.staged_ids();
    rt.block_on(_kiq::batches::build::discard(&pool, &Keys::default(), &ids)).unwrap();
    let keys: Vec<String> = rt.block_on(conn.keys("*")).unwrap();
    assert!(keys.iter().all(|k| !k.contains("staged") && !k.contains("batch|R")), "{keys:?}");
    let queued: i64 = rt.block_on(conn.llen("queue:default")).unwrap();
    assert_eq!(queued, 0);
}

#[test]
fn a_poison_pill_is_a_death_for_its_batch() {
    let redis = support::RedisServer::start();
    let rt = _kiq::runtime::get();
    let _g = rt.enter();
    let pool = Pool::new(RedisConfig::new(redis.url())).unwrap();
    let mut b = builder("PP", &[], &["death"]);
    add_jobs(&mut b, 1, Retry::Default);
    commit(&pool, b);
    let mut conn = pool.get();
    let raw: String = rt.block_on(conn.rpop("queue:default", None)).unwrap();
    let wip = "kiq:wip|gone:1:cccccccccccc|default";
    let _: () = rt.block_on(conn.lpush(wip, &raw)).unwrap();
    let verdict = _kiq::poison::Verdict::Blame;
    let policy = RetryPolicy::default();
    let outcome = rt
        .block_on(_kiq::poison::hand_back(
            &pool,
            &Keys::default(),
            &policy,
            0,
            wip,
            "default",
            raw.as_bytes(),
            verdict,
            "gone:1:cccccccccccc",
            "died",
        ))
        .unwrap();
    assert_eq!(outcome, _kiq::poison::Outcome::Poisoned);
    let cbs: Vec<String> = rt.block_on(conn.lrange("queue:cb", 0, -1)).unwrap();
    assert_eq!(cbs.len(), 1, "the batch's death callback, moved to its queue at once");
    assert!(cbs[0].contains(r#""event":"death""#) && cbs[0].contains(r#""dead_jids":[""#), "{}", cbs[0]);
    let s = read(&pool, "PP");
    assert_eq!((s.failures, s.dead_jids.len(), s.fired.clone()), (1, 1, vec!["complete", "death"]));
}
