//! The core against a real redis-server: push, fetch, settle, schedule, stop.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use _kiq::capsule::Capsule;
use _kiq::client::{self, PushItem};
use _kiq::heartbeat::{BeatConfig, ProcessInfo};
use _kiq::job::{NewJob, Payload};
use _kiq::keys::Keys;
use _kiq::lane::Take;
use _kiq::pool::{Pool, RedisConfig};
use _kiq::retry::{Failure, RetryPolicy};
use _kiq::scheduled::{self, PollConfig};
use _kiq::server::{Server, ServerConfig};
use _kiq::timestamp::{self, TimestampUnit};
use redis::AsyncCommands;

fn config(queues: &[(&str, usize)]) -> ServerConfig {
    ServerConfig {
        process: ProcessInfo {
            identity: "test:1:abcdefabcdef".into(),
            hostname: "test".into(),
            pid: 1,
            tag: String::new(),
            labels: Vec::new(),
            capsules: queues.iter().map(|(q, n)| Capsule::single(*q, *n)).collect(),
            started_at: timestamp::now(),
            version: "kiq-test".into(),
        },
        policy: RetryPolicy::default(),
        poll: PollConfig { average_scheduled_poll_interval: 5.0, poll_interval_average: Some(0.1) },
        scheduler: true,
        beat: Some(BeatConfig::default()),
        leader_ttl: None,
        orphan_check: None,
        max_recoveries: 3,
        periodics: Vec::new(),
        clock: _kiq::periodic::Clock::Real,
        health: None,
        max_jobs: None,
        max_rss_kb: None,
        stuck_after: None,
        keyring: None,
        prefetch: _kiq::lane::Prefetch::Fixed(0),
        workers: _kiq::worker::Workers::default(),
        limits: None,
        quiet: false,
    }
}

fn push_jobs(rt: &tokio::runtime::Runtime, pool: &Pool, queue: &str, n: usize) {
    let now = timestamp::now();
    let items: Vec<PushItem> = (0..n)
        .map(|i| {
            let mut job = NewJob::new("Echo", format!("[{i}]"));
            queue.clone_into(&mut job.queue);
            client::prepare(&job, None, now, TimestampUnit::Seconds).1
        })
        .collect();
    rt.block_on(client::push(pool, &Keys::default(), &items, Instant::now() + Duration::from_secs(5))).unwrap();
}

fn take(server: &Server, lane: usize) -> Box<_kiq::lane::Delivery> {
    match server.take(lane, Some(Duration::from_secs(5))).unwrap() {
        Take::Job(mut d) => {
            server.begin(&mut d);
            d
        }
        other => panic!("no job: {other:?}"),
    }
}

#[test]
fn jobs_flow_through_fetch_and_ack() {
    let redis = support::RedisServer::start();
    let rt = _kiq::runtime::get();
    let _g = rt.enter();
    let pool = Pool::new(RedisConfig::new(redis.url())).unwrap();
    let server = Server::start(pool.clone(), Keys::default(), config(&[("default", 3)])).unwrap();
    push_jobs(&rt, &pool, "default", 10);
    let mut seen = Vec::new();
    for _ in 0..10 {
        let d = take(&server, 0);
        seen.push(d.args.to_string());
        // Never more than the concurrency out at once.
        assert!(server.lanes()[0].out() <= 3);
        server.complete(d);
    }
    assert_eq!(seen.first().map(String::as_str), Some("[0]"), "FIFO order");
    let mut conn = pool.get();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let processed: Option<i64> = rt.block_on(conn.get("stat:processed")).unwrap();
        let wip: i64 = rt.block_on(conn.llen("kiq:wip|test:1:abcdefabcdef|default")).unwrap();
        if processed == Some(10) && wip == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "processed={processed:?} wip={wip}");
        std::thread::sleep(Duration::from_millis(20));
    }
    server.begin_stop();
    let report = rt.block_on(server.finish_stop(Instant::now() + Duration::from_secs(2))).unwrap();
    assert_eq!(report.requeued, 0);
}

#[test]
fn failures_go_to_retry_and_stop_requeues_the_rest() {
    let redis = support::RedisServer::start();
    let rt = _kiq::runtime::get();
    let _g = rt.enter();
    let pool = Pool::new(RedisConfig::new(redis.url())).unwrap();
    let mut cfg = config(&[("default", 2)]);
    cfg.scheduler = false;
    let server = Server::start(pool.clone(), Keys::default(), cfg).unwrap();
    push_jobs(&rt, &pool, "default", 5);
    let d = take(&server, 0);
    let failure = Failure { error_class: "ValueError".into(), error_message: "boom".into(), ..Default::default() };
    server.fail(d, &failure);
    let running = take(&server, 0);
    // Stop with one job running and one fetched: both must go back.
    std::thread::sleep(Duration::from_millis(100));
    server.begin_stop();
    let mut running = running;
    server.abandon(&mut running);
    let report = rt.block_on(server.finish_stop(Instant::now() + Duration::from_secs(2))).unwrap();
    let mut conn = pool.get();
    let retry: Vec<String> = rt.block_on(conn.zrange("retry", 0, -1)).unwrap();
    assert_eq!(retry.len(), 1);
    let p = Payload::parse(retry[0].clone()).unwrap();
    assert_eq!(p.retry_count(), Some(0));
    assert_eq!(p.get("error_class"), Some("\"ValueError\""));
    let queued: i64 = rt.block_on(conn.llen("queue:default")).unwrap();
    assert_eq!(queued + 1, 5, "every job not failed is back in the queue (report {report:?})");
    assert!(report.requeued >= 1);
    let wip: i64 = rt.block_on(conn.llen("kiq:wip|test:1:abcdefabcdef|default")).unwrap();
    assert_eq!(wip, 0);
    let failed: Option<i64> = rt.block_on(conn.get("stat:failed")).unwrap();
    assert_eq!(failed, Some(1));
}

#[test]
fn due_jobs_move_to_their_queues_once() {
    let redis = support::RedisServer::start();
    let rt = _kiq::runtime::get();
    let _g = rt.enter();
    let pool = Pool::new(RedisConfig::new(redis.url())).unwrap();
    let mut conn = pool.get();
    let now = timestamp::now();
    let _: () = rt
        .block_on(conn.zadd_multiple(
            "schedule",
            &[
                (now - 1.0, r#"{"class":"A","args":[1],"queue":"q2","jid":"a","at":1.0,"x":1.50}"#),
                (now + 100.0, r#"{"class":"B","args":[],"queue":"q2","jid":"b"}"#),
                (now - 2.0, "garbage"),
            ],
        ))
        .unwrap();
    let moved =
        rt.block_on(scheduled::enqueue_due(&pool, &Keys::default(), &RetryPolicy::default(), "schedule", now)).unwrap();
    assert_eq!(moved.moved, 1);
    let again =
        rt.block_on(scheduled::enqueue_due(&pool, &Keys::default(), &RetryPolicy::default(), "schedule", now)).unwrap();
    assert_eq!(again.moved, 0);
    let q: Vec<String> = rt.block_on(conn.lrange("queue:q2", 0, -1)).unwrap();
    assert_eq!(q.len(), 1);
    assert!(
        q[0].starts_with(r#"{"retry":true,"class":"A","args":[1],"queue":"q2","jid":"a","x":1.50,"enqueued_at":"#),
        "{}",
        q[0]
    );
    let queues: Vec<String> = rt.block_on(conn.smembers("queues")).unwrap();
    assert_eq!(queues, vec!["q2".to_owned()]);
    let dead: Vec<String> = rt.block_on(conn.zrange("dead", 0, -1)).unwrap();
    assert_eq!(dead, vec!["garbage".to_owned()]);
    let left: i64 = rt.block_on(conn.zcard("schedule")).unwrap();
    assert_eq!(left, 1);
}

#[test]
fn an_idle_fetcher_picks_up_a_new_job_quickly() {
    let redis = support::RedisServer::start();
    let rt = _kiq::runtime::get();
    let _g = rt.enter();
    let pool = Pool::new(RedisConfig::new(redis.url())).unwrap();
    let server = Server::start(pool.clone(), Keys::default(), config(&[("default", 5)])).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    push_jobs(&rt, &pool, "default", 1);
    let d = take(&server, 0);
    let waited = t0.elapsed();
    assert!(waited < Duration::from_millis(500), "took {waited:?}");
    server.complete(d);
    let t1 = Instant::now();
    server.begin_stop();
    rt.block_on(server.finish_stop(Instant::now() + Duration::from_secs(2))).unwrap();
    // CLIENT UNBLOCK ends the blocked fetch at once instead of after its 2 s.
    assert!(t1.elapsed() < Duration::from_millis(1500), "stop took {:?}", t1.elapsed());
    let _ = Arc::strong_count(&pool);
}

#[test]
fn heartbeat_registers_the_process_and_its_running_jobs() {
    let redis = support::RedisServer::start();
    let rt = _kiq::runtime::get();
    let _g = rt.enter();
    let pool = Pool::new(RedisConfig::new(redis.url())).unwrap();
    let mut cfg = config(&[("default", 2)]);
    cfg.beat = Some(BeatConfig { interval: Duration::from_millis(100), ..BeatConfig::default() });
    let server = Server::start(pool.clone(), Keys::default(), cfg).unwrap();
    push_jobs(&rt, &pool, "default", 1);
    let d = take(&server, 0);
    let mut conn = pool.get();
    let id = "test:1:abcdefabcdef";
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let busy: Option<String> = rt.block_on(conn.hget(id, "busy")).unwrap();
        let work: std::collections::HashMap<String, String> = rt.block_on(conn.hgetall(format!("{id}:work"))).unwrap();
        if busy.as_deref() == Some("1") && work.len() == 1 {
            let w: serde_json::Value = serde_json::from_str(work.values().next().unwrap()).unwrap();
            assert_eq!(w["queue"], "default");
            assert!(w["payload"].as_str().unwrap().contains("\"class\":\"Echo\""));
            break;
        }
        assert!(Instant::now() < deadline, "no heartbeat: busy={busy:?} work={work:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let members: Vec<String> = rt.block_on(conn.smembers("processes")).unwrap();
    assert_eq!(members, vec![id.to_owned()]);
    let ttl: i64 = rt.block_on(conn.ttl(id)).unwrap();
    assert!(ttl > 50 && ttl <= 60);
    let _: () = rt.block_on(conn.lpush(format!("{id}-signals"), "TSTP")).unwrap();
    let sig = server.next_signal(Duration::from_secs(5));
    assert_eq!(sig, Some(_kiq::heartbeat::Signal::Quiet));
    assert_eq!(server.state(), _kiq::control::RunState::Quiet);
    server.complete(d);
    server.begin_stop();
    rt.block_on(server.finish_stop(Instant::now() + Duration::from_secs(2))).unwrap();
    let members: Vec<String> = rt.block_on(conn.smembers("processes")).unwrap();
    assert!(members.is_empty());
    let exists: bool = rt.block_on(conn.exists(id)).unwrap();
    assert!(!exists);
    let day7: Vec<String> = rt.block_on(conn.keys("j|*")).unwrap();
    assert_eq!(day7.len(), 3, "Sidekiq 7 minute hash and Sidekiq 8 minute and ten-minute hashes: {day7:?}");
}

#[test]
fn a_dead_swarm_child_is_recovered_at_once_and_its_timed_out_job_fails() {
    let redis = support::RedisServer::start();
    let rt = _kiq::runtime::get();
    let _g = rt.enter();
    let pool = Pool::new(RedisConfig::new(redis.url())).unwrap();
    let mut cfg = config(&[("elsewhere", 1)]);
    cfg.quiet = true;
    let server = Server::start(pool.clone(), Keys::default(), cfg).unwrap();
    let mut conn = pool.get();
    // A child killed while three jobs ran, one past its hard_timeout; its heartbeat still looks alive.
    let dead = "host:42:[odd]*";
    let wip = format!("kiq:wip|{dead}|default");
    let job = |jid: &str| format!(r#"{{"class":"Spin","args":[],"jid":"{jid}","retry":true,"queue":"default"}}"#);
    for jid in ["a1", "b2", "c3"] {
        let _: () = rt.block_on(conn.rpush(&wip, job(jid))).unwrap();
    }
    let _: () = rt.block_on(conn.hset(dead, "busy", 3)).unwrap();
    let _: () = rt.block_on(conn.sadd("processes", dead)).unwrap();
    let _: () = rt.block_on(conn.set("kiq:leader", dead)).unwrap();
    // A neighbour whose identity the dead one's glob would match if it were not escaped.
    let _: () = rt.block_on(conn.rpush("kiq:wip|host:42:xoddy|default", job("z9"))).unwrap();
    let timed_out = std::collections::HashMap::from([("b2".to_owned(), 5.0)]);
    let r = rt.block_on(server.recover_dead(dead, &timed_out)).unwrap();
    assert_eq!((r.requeued, r.poisoned, r.timed_out), (2, 0, 1), "{r:?}");
    let retry: Vec<String> = rt.block_on(conn.zrange("retry", 0, -1)).unwrap();
    let failed = Payload::parse(retry[0].clone()).unwrap();
    assert_eq!(failed.jid().as_deref(), Some("b2"));
    assert_eq!(failed.get("error_class"), Some("\"kiq.errors.JobTimeoutError\""));
    assert!(failed.get("error_message").unwrap().contains("hard_timeout of 5s"));
    let queued: Vec<String> = rt.block_on(conn.lrange("queue:default", 0, -1)).unwrap();
    assert_eq!(queued, vec![job("a1"), job("c3")], "the neighbours go back untouched, not as suspects");
    assert!(!rt.block_on(conn.exists::<_, bool>(&wip)).unwrap());
    assert!(!rt.block_on(conn.exists::<_, bool>(dead)).unwrap(), "off the Busy page");
    assert!(!rt.block_on(conn.sismember::<_, _, bool>("processes", dead)).unwrap());
    assert!(!rt.block_on(conn.exists::<_, bool>("kiq:leader")).unwrap(), "its leadership is given up");
    assert_eq!(rt.block_on(conn.get::<_, Option<i64>>("stat:failed")).unwrap(), Some(1));
    assert_eq!(rt.block_on(conn.llen::<_, i64>("kiq:wip|host:42:xoddy|default")).unwrap(), 1);
    // Asked again (the first reply was lost, say): nothing more happens.
    let again = rt.block_on(server.recover_dead(dead, &timed_out)).unwrap();
    assert_eq!((again.requeued, again.timed_out), (0, 0));
    assert_eq!(rt.block_on(conn.zcard::<_, i64>("retry")).unwrap(), 1);
    // Without a timeout, the usual poison-pill rule: two jobs in flight are suspects.
    let other = "host:43:abc";
    for jid in ["d4", "e5"] {
        let _: () = rt.block_on(conn.rpush(format!("kiq:wip|{other}|default"), job(jid))).unwrap();
    }
    let r = rt.block_on(server.recover_dead(other, &std::collections::HashMap::new())).unwrap();
    assert_eq!(r.requeued, 2);
    let queued: Vec<String> = rt.block_on(conn.lrange("queue:default", 2, -1)).unwrap();
    assert!(queued.iter().all(|q| q.contains("\"kiq_suspect\":true")), "{queued:?}");
    assert!(rt.block_on(server.recover_dead("test:1:abcdefabcdef", &std::collections::HashMap::new())).is_err());
    server.begin_stop();
    rt.block_on(server.finish_stop(Instant::now() + Duration::from_secs(2))).unwrap();
}

#[test]
fn listings_read_bounded_windows_filter_and_act_on_all() {
    use _kiq::admin::{self, Action, Bounds, Filter, Source};
    let redis = support::RedisServer::start();
    let rt = _kiq::runtime::get();
    let _g = rt.enter();
    let pool = Pool::new(RedisConfig::new(redis.url())).unwrap();
    let mut conn = pool.get();
    let members: Vec<(f64, String)> = (0..25)
        .map(|i| {
            let (class, error) = if i % 5 == 0 { ("Hard", "Timeout::Error") } else { ("Easy", "KeyError") };
            let job = format!(
                r#"{{"class":"{class}","args":[{i}],"queue":"default","jid":"j{i}","error_class":"{error}","error_message":"m{i}","retry_count":0}}"#
            );
            (1000.0 + f64::from(i), job)
        })
        .collect();
    let _: () = rt.block_on(conn.zadd_multiple("retry", &members)).unwrap();
    let retry = Source::Set { key: "retry".into(), newest_first: false };
    let small = Bounds { window: 4, max_scan: 100 };

    let page = rt.block_on(admin::list(&pool, &retry, &Filter::default(), 0, 3, small)).unwrap();
    assert_eq!(page.jobs.iter().map(|(_, s)| s.unwrap()).collect::<Vec<_>>(), vec![1000.0, 1001.0, 1002.0]);
    assert_eq!((page.size, page.next), (25, Some(3)));
    let hard = Filter { class: Some("Hard".into()), error: None };
    let page = rt.block_on(admin::list(&pool, &retry, &hard, 0, 100, small)).unwrap();
    assert_eq!(page.jobs.len(), 5);
    assert_eq!((page.scanned, page.next), (25, None));
    let timeouts = Filter { class: None, error: Some("timeout".into()) };
    assert_eq!(rt.block_on(admin::count(&pool, &retry, &timeouts, small)).unwrap(), (5, 25, 25));
    let capped = Bounds { window: 4, max_scan: 10 };
    let page = rt.block_on(admin::list(&pool, &retry, &hard, 0, 100, capped)).unwrap();
    assert_eq!((page.jobs.len(), page.scanned, page.next), (2, 10, Some(10)));
    let dead_first = Source::Set { key: "retry".into(), newest_first: true };
    let page = rt.block_on(admin::list(&pool, &dead_first, &Filter::default(), 0, 1, small)).unwrap();
    assert_eq!(page.jobs[0].1, Some(1024.0));

    let policy = RetryPolicy::default();
    let done = rt.block_on(admin::act_on_all(&pool, &Keys::default(), &policy, &retry, &hard, Action::Retry, small));
    assert_eq!(done.unwrap(), admin::Done { done: 5, gone: 0, scanned: 25 });
    let queued: Vec<String> = rt.block_on(conn.lrange("queue:default", 0, -1)).unwrap();
    assert_eq!(queued.len(), 5);
    assert!(queued.iter().all(|j| j.contains(r#""class":"Hard""#) && j.contains(r#""retry_count":-1"#)));
    let done = rt.block_on(admin::act_on_all(
        &pool,
        &Keys::default(),
        &policy,
        &retry,
        &Filter::default(),
        Action::Delete,
        small,
    ));
    assert_eq!(done.unwrap().done, 20);
    let left: i64 = rt.block_on(conn.zcard("retry")).unwrap();
    assert_eq!(left, 0);

    let queue = Source::Queue { key: "queue:default".into() };
    let page = rt.block_on(admin::list(&pool, &queue, &Filter::default(), 1, 2, small)).unwrap();
    let args: Vec<String> =
        page.jobs.iter().map(|(m, _)| Payload::parse(m.as_str()).unwrap().args().unwrap().to_owned()).collect();
    assert_eq!(args, vec!["[5]", "[10]"], "next to run first");
    let done = rt.block_on(admin::act_on_all(
        &pool,
        &Keys::default(),
        &policy,
        &queue,
        &Filter::default(),
        Action::Delete,
        small,
    ));
    assert_eq!(done.unwrap().done, 5);
}

#[test]
fn a_concurrent_limiter_counts_holders_and_a_release_wakes_a_waiter() {
    use _kiq::limiter::{Kind, Spec};
    use _kiq::limits::{Limiter, Limits};
    let redis = support::RedisServer::start();
    let rt = _kiq::runtime::get();
    let _g = rt.enter();
    let pool = Pool::new(RedisConfig::new(redis.url())).unwrap();
    let limits = Limits::new(pool.clone(), Keys::default());
    let now_only = Spec::new(Kind::Concurrent, "core", Some(2), None, 0.0, 30.0).unwrap();
    let lim = Arc::new(Limiter::new(now_only, Some(limits.clone())));
    let a = rt.block_on(lim.acquire(1)).unwrap();
    let _b = rt.block_on(lim.acquire(1)).unwrap();
    let err = rt.block_on(lim.acquire(1)).unwrap_err().to_string();
    assert!(err.contains("concurrent limiter \"core\" (2 at once) is over its limit"), "{err}");
    let waiting = Spec::new(Kind::Concurrent, "core", Some(2), None, 5.0, 30.0).unwrap();
    let waiter = Arc::new(Limiter::new(waiting, Some(limits.clone())));
    let started = Instant::now();
    let w = rt.spawn({
        let waiter = waiter.clone();
        async move { waiter.acquire(1).await }
    });
    std::thread::sleep(Duration::from_millis(200));
    rt.block_on(lim.release(&a)).unwrap();
    let got = rt.block_on(w).unwrap().unwrap();
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(200) && waited < Duration::from_secs(2), "{waited:?}");
    assert!(got.acquired_at > a.acquired_at);
    let usage = limits.usage();
    assert_eq!((usage[0].2.acquired, usage[0].2.over), (3, 1));
}

#[test]
fn a_throttled_job_over_its_limit_is_parked_and_comes_back_when_the_holder_ends() {
    use _kiq::throttle::Spec;
    use _kiq::worker::{WorkerOptions, Workers};
    let redis = support::RedisServer::start();
    let rt = _kiq::runtime::get();
    let _g = rt.enter();
    let pool = Pool::new(RedisConfig::new(redis.url())).unwrap();
    let mut cfg = config(&[("default", 3)]);
    cfg.scheduler = false;
    let echo =
        WorkerOptions { throttle: Some(Spec::new(Some(1), None, None, 60.0, false).unwrap()), ..Default::default() };
    cfg.workers = Workers::new([("Echo".to_owned(), echo)].into());
    let server = Server::start(pool.clone(), Keys::default(), cfg).unwrap();
    push_jobs(&rt, &pool, "default", 3);
    let first = take(&server, 0);
    assert!(first.held.is_some() && first.throttle_at.is_some());
    let mut conn = pool.get();
    let deadline = Instant::now() + Duration::from_secs(5);
    // The other two wait in the schedule set, not in a thread.
    while rt.block_on(conn.zcard::<_, i64>("schedule")).unwrap() != 2 {
        assert!(Instant::now() < deadline, "two jobs parked");
        std::thread::sleep(Duration::from_millis(20));
    }
    let parked: Vec<String> = rt.block_on(conn.zrange("schedule", 0, -1)).unwrap();
    assert!(parked.iter().all(|p| p.contains(r#""kiq_throttled":1"#)), "{parked:?}");
    server.complete(first);
    // Its end moves one parked job back (no scheduler runs here), which then runs.
    let second = take(&server, 0);
    assert!(second.held.is_some());
    assert_eq!(rt.block_on(conn.zcard::<_, i64>("schedule")).unwrap(), 1);
    server.complete(second);
    let third = take(&server, 0);
    server.complete(third);
    let deadline = Instant::now() + Duration::from_secs(5);
    while rt.block_on(conn.exists::<_, bool>("kiq:throttle|Echo|")).unwrap() {
        assert!(Instant::now() < deadline, "the last hold given back");
        std::thread::sleep(Duration::from_millis(20));
    }
    rt.block_on(server.finish_stop(Instant::now() + Duration::from_secs(2))).unwrap();
}

#[test]
fn a_process_never_recovers_itself_and_fetches_only_once_its_heartbeat_landed() {
    let redis = support::RedisServer::start();
    let rt = _kiq::runtime::get();
    let _g = rt.enter();
    let pool = Pool::new(RedisConfig::new(redis.url())).unwrap();
    let mut conn = pool.get();
    let me = "test:1:abcdefabcdef";
    // Its own in-progress list (say, fetched before a heartbeat that was lost) and a dead neighbour's.
    let job = |jid: &str| format!(r#"{{"class":"Echo","args":[],"jid":"{jid}","queue":"default"}}"#);
    let _: () = rt.block_on(conn.rpush(format!("kiq:wip|{me}|default"), job("mine"))).unwrap();
    let _: () = rt.block_on(conn.rpush("kiq:wip|host:9:dead|default", job("theirs"))).unwrap();
    let r = rt.block_on(_kiq::orphans::recover(&pool, &Keys::default(), &RetryPolicy::default(), 3, me)).unwrap();
    assert_eq!(r.requeued, 1, "only the dead neighbour's job");
    let queued: Vec<String> = rt.block_on(conn.lrange("queue:default", 0, -1)).unwrap();
    assert!(queued.len() == 1 && queued[0].contains(r#""jid":"theirs""#), "{queued:?}");
    assert_eq!(rt.block_on(conn.llen::<_, i64>(format!("kiq:wip|{me}|default"))).unwrap(), 1);
    let _: () = rt.block_on(conn.del("queue:default")).unwrap();
    let _: () = rt.block_on(conn.del(format!("kiq:wip|{me}|default"))).unwrap();
    // Started: nothing is fetched before the first beat, and the beat comes first.
    push_jobs(&rt, &pool, "default", 1);
    let server = Server::start(pool.clone(), Keys::default(), config(&[("default", 3)])).unwrap();
    let d = take(&server, 0);
    assert!(rt.block_on(conn.exists::<_, bool>(me)).unwrap(), "the heartbeat landed before the fetch");
    server.complete(d);
    server.begin_stop();
    rt.block_on(server.finish_stop(Instant::now() + Duration::from_secs(2))).unwrap();
}
