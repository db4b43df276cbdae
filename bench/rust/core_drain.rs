//! The core alone: push N jobs, then drain them with plain Rust threads
//! (no Python), to see what the fetch/ack path can do by itself.
//!
//!     cargo run --release --example core_drain -- redis://127.0.0.1:6379/0 200000 25

use std::sync::Arc;
use std::time::Instant;

use _kiq::capsule::Capsule;
use _kiq::client::{self, Bulk};
use _kiq::heartbeat::{BeatConfig, ProcessInfo};
use _kiq::job::NewJob;
use _kiq::keys::Keys;
use _kiq::lane::Take;
use _kiq::pool::{Pool, RedisConfig};
use _kiq::retry::RetryPolicy;
use _kiq::scheduled::PollConfig;
use _kiq::server::{Server, ServerConfig};
use _kiq::timestamp::{self, TimestampUnit};

fn main() {
    let mut args = std::env::args().skip(1);
    let url = args.next().unwrap_or_else(|| "redis://127.0.0.1:6379/0".to_owned());
    let n: usize = args.next().map_or(200_000, |s| s.parse().unwrap());
    let concurrency: usize = args.next().map_or(25, |s| s.parse().unwrap());
    let rt = _kiq::runtime::get();
    let _g = rt.enter();
    let pool = Pool::new(RedisConfig::new(url)).unwrap();
    let bulk = Bulk::new(&NewJob::new("NoopJob", "[]"), None, timestamp::now(), TimestampUnit::Seconds);
    let t0 = Instant::now();
    for start in (0..n).step_by(10_000) {
        let items: Vec<_> = (start..(start + 10_000).min(n)).map(|i| bulk.item(&format!("[{i}]")).1).collect();
        rt.block_on(client::push(
            &pool,
            &Keys::default(),
            &items,
            std::time::Instant::now() + std::time::Duration::from_secs(5),
        ))
        .unwrap();
    }
    println!("push: {:.0} jobs/s", n as f64 / t0.elapsed().as_secs_f64());
    let config = ServerConfig {
        process: ProcessInfo {
            identity: format!("bench:{}:000000000000", std::process::id()),
            hostname: "bench".to_owned(),
            pid: std::process::id(),
            tag: String::new(),
            labels: Vec::new(),
            capsules: vec![Capsule::single("default", concurrency)],
            started_at: timestamp::now(),
            version: "kiq-bench".to_owned(),
        },
        policy: RetryPolicy::default(),
        poll: PollConfig::default(),
        scheduler: false,
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
        quiet: false,
        prefetch: _kiq::lane::Prefetch::Fixed(0),
        workers: _kiq::worker::Workers::default(),
        limits: None,
    };
    let server = Server::start(pool, Keys::default(), config).unwrap();
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let t1 = Instant::now();
    let threads: Vec<_> = (0..concurrency)
        .map(|_| {
            let server = server.clone();
            let done = done.clone();
            std::thread::spawn(move || {
                while let Take::Job(mut d) = server.take(0, None).unwrap() {
                    server.begin(&mut d);
                    server.complete(d);
                    if done.fetch_add(1, std::sync::atomic::Ordering::AcqRel) + 1 == n {
                        return true;
                    }
                }
                false
            })
        })
        .collect();
    while done.load(std::sync::atomic::Ordering::Acquire) < n {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    println!("drain: {:.0} jobs/s", n as f64 / t1.elapsed().as_secs_f64());
    server.begin_stop();
    rt.block_on(server.finish_stop(Instant::now() + std::time::Duration::from_secs(5))).unwrap();
    for t in threads {
        let _ = t.join();
    }
}
