//! The process heartbeat: what makes a kiq process look like a Sidekiq process.
//!
//! Every beat (5 s, Sidekiq 6's pace; entries live 60 s) writes, from a core
//! thread so a Python job holding the GIL cannot delay it:
//! - the running jobs as `<identity>:work` (Sidekiq 6.4.2+) and
//!   `<identity>:workers` (6.4.1 and older), thread id → work JSON;
//! - `SADD processes <identity>` and the `<identity>` hash: `info` (the
//!   superset of fields the Busy pages of 6.4 through 8.1 read, including
//!   8.0.9's `capsules`), `concurrency` (8.1.2+), `busy`, `beat`, `rtt_us`,
//!   `quiet`, `rss` (kB);
//! - Sidekiq's execution metrics (see `metrics.rs`);
//!
//! and pops one Web UI signal from `<identity>-signals` (TSTP, TERM, TTIN).
//! A clean stop removes the process and its work hashes.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::capsule::Capsule;
use crate::control::{Control, RunState};
use crate::exec;
use crate::health::Beats;
use crate::job::json_string;
use crate::keys::Keys;
use crate::metrics::{self, Metrics};
use crate::pool::Pool;
use crate::timestamp::{self, float_json};
use crate::work::WorkSet;

/// The fields of a process's heartbeat hash (`keys.process(identity)`), Sidekiq's names.
pub mod field {
    pub const INFO: &str = "info";
    pub const BUSY: &str = "busy";
    pub const BEAT: &str = "beat";
    pub const QUIET: &str = "quiet";
    pub const RSS: &str = "rss";
    pub const RTT_US: &str = "rtt_us";
    pub const CONCURRENCY: &str = "concurrency";
}

/// Who this process is, for the `info` field.
#[derive(Debug, Clone)]
pub struct ProcessInfo {
    pub identity: String,
    pub hostname: String,
    pub pid: u32,
    pub tag: String,
    pub labels: Vec<String>,
    /// The capsules: queues sharing threads (one queue each, by default).
    pub capsules: Vec<Capsule>,
    pub started_at: f64,
    pub version: String,
}

impl ProcessInfo {
    pub fn concurrency(&self) -> usize {
        self.capsules.iter().map(|c| c.concurrency).sum()
    }

    /// Every queue, in the capsules' order.
    pub fn queue_names(&self) -> impl Iterator<Item = &str> {
        self.capsules.iter().flat_map(|c| c.queues.iter().map(|(q, _)| q.as_str()))
    }

    /// The `info` JSON. Each kiq capsule (by default one per queue, with its
    /// own limit) appears as a Sidekiq 7+ capsule, with its mode and weights.
    pub fn to_json(&self) -> String {
        let names: Vec<String> = self.queue_names().map(json_string).collect();
        let weights_of = |c: &Capsule| {
            let w: Vec<String> = c.queues.iter().map(|(q, w)| format!("{}:{w}", json_string(q))).collect();
            format!("{{{}}}", w.join(","))
        };
        let weights: Vec<String> = self.capsules.iter().map(weights_of).collect();
        let capsules: Vec<String> = self
            .capsules
            .iter()
            .map(|c| {
                format!(
                    "{}:{{\"concurrency\":{},\"mode\":\"{}\",\"weights\":{}}}",
                    json_string(&c.name()),
                    c.concurrency,
                    c.mode().as_str(),
                    weights_of(c)
                )
            })
            .collect();
        let labels: Vec<String> = self.labels.iter().map(|l| json_string(l)).collect();
        format!(
            concat!(
                "{{\"hostname\":{},\"started_at\":{},\"pid\":{},\"tag\":{},\"concurrency\":{},",
                "\"capsules\":{{{}}},\"queues\":[{}],\"weights\":[{}],\"labels\":[{}],",
                "\"identity\":{},\"version\":{},\"embedded\":false}}"
            ),
            json_string(&self.hostname),
            float_json(self.started_at),
            self.pid,
            json_string(&self.tag),
            self.concurrency(),
            capsules.join(","),
            names.join(","),
            weights.join(","),
            labels.join(","),
            json_string(&self.identity),
            json_string(&self.version),
        )
    }
}

/// A signal sent from Sidekiq's Web UI or API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// TSTP: stop fetching (already applied by the core when delivered).
    Quiet,
    /// TERM: stop gracefully.
    Stop,
    /// TTIN: log every thread's stack.
    DumpThreads,
    /// The process reached `max_jobs` or `max_memory_bytes`: stop gracefully,
    /// for the supervisor to start a fresh one (already quieted by the core).
    Recycle,
}

impl Signal {
    pub fn parse(name: &str) -> Option<Self> {
        match name.trim().trim_start_matches("SIG") {
            "TSTP" | "USR1" => Some(Self::Quiet),
            "TERM" | "INT" => Some(Self::Stop),
            "TTIN" | "INFO" => Some(Self::DumpThreads),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Quiet => "TSTP",
            Self::Stop => "TERM",
            Self::DumpThreads => "TTIN",
            Self::Recycle => "RECYCLE",
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct BeatConfig {
    pub interval: Duration,
    /// TTL of the process hash and work hashes (Sidekiq's 60 s).
    pub ttl: Duration,
    pub metrics: bool,
}

impl Default for BeatConfig {
    fn default() -> Self {
        Self { interval: Duration::from_secs(5), ttl: Duration::from_secs(60), metrics: true }
    }
}

pub struct Heartbeat {
    pub pool: Arc<Pool>,
    pub keys: Keys,
    pub info: ProcessInfo,
    pub config: BeatConfig,
    pub work: Arc<WorkSet>,
    pub metrics: Arc<Metrics>,
    pub control: Control,
    pub signals: mpsc::Sender<Signal>,
    /// Told of every beat that reached Redis (for the readiness probe).
    pub beats: Arc<Beats>,
    /// Failed commands already logged (each is reported once).
    pub reported: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Set once a beat reached Redis: the fetchers wait for it, so no
    /// in-progress list of this process exists without its heartbeat (a
    /// leader would take such a list for a dead process's and requeue jobs
    /// that are running).
    pub registered: watch::Sender<bool>,
}

impl Heartbeat {
    /// Logs commands of a beat that Redis refused (the rest was applied), once each.
    fn report(&self, failed: &[String]) {
        let mut reported = self.reported.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for f in failed {
            if reported.insert(f.clone()) {
                log::error!("the heartbeat could not write to Redis (the rest of the beat was written): {f}");
            }
        }
    }

    /// Beats until `halt` turns true (the end of a stop: beats go on while
    /// running jobs drain, saying the process is quiet).
    pub async fn run(self, mut halt: watch::Receiver<bool>) {
        let info = self.info.to_json();
        let mut failing = false;
        // Whether the work hashes may hold entries; an idle process skips
        // rewriting them (Redis drops them itself once their TTL ends).
        let mut had_work = true;
        loop {
            let beat = self.beat(&info, &mut had_work).await;
            if beat.is_ok() {
                self.beats.ok();
                self.registered.send_if_modified(|r| !std::mem::replace(r, true));
            }
            match beat {
                Ok(()) if failing => {
                    log::warn!("heartbeat reaches Redis again");
                    failing = false;
                }
                Ok(()) => {}
                Err(e) => {
                    if !failing {
                        log::error!("heartbeat failed, retrying: {e}");
                        failing = true;
                    }
                }
            }
            // Until the first beat lands nothing is fetched: try again soon.
            let mut wait = self.config.interval;
            if !*self.registered.borrow() {
                wait = wait.min(Duration::from_millis(100));
            }
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = halt.wait_for(|h| *h) => return,
            }
        }
    }

    async fn beat(&self, info: &str, had_work: &mut bool) -> redis::RedisResult<()> {
        let rss = rss_kb();
        let id = &self.info.identity;
        let ttl = self.config.ttl.as_secs().max(1) as i64;
        let running = self.work.snapshot();
        let mut conn = self.pool.get();

        let mut pipe = redis::pipe();
        if *had_work || !running.is_empty() {
            for key in [self.keys.work(id), self.keys.workers(id)] {
                pipe.cmd("UNLINK").arg(&key);
                if !running.is_empty() {
                    let mut hset = redis::cmd("HSET");
                    hset.arg(&key);
                    for (tid, json) in &running {
                        hset.arg(&**tid).arg(json);
                    }
                    pipe.add_command(hset);
                    pipe.cmd("EXPIRE").arg(&key).arg(ttl);
                }
            }
        }
        let stats = if self.config.metrics { self.metrics.take() } else { HashMap::default() };
        metrics::write(&mut pipe, &self.keys, &stats, timestamp::now());
        if pipe.cmd_iter().next().is_some() {
            match exec::atomic(&mut pipe, &mut conn).await {
                Ok(applied) => self.report(&applied.failed),
                Err(e) => {
                    // Counted again only when they surely were not written (no double counts).
                    if e.is_connection_refusal() {
                        self.metrics.restore(stats);
                    }
                    return Err(e);
                }
            }
        }
        *had_work = !running.is_empty();
        if !running.is_empty() {
            self.check_cancelled(&mut conn).await?;
        }

        let t = Instant::now();
        redis::cmd("PING").query_async::<()>(&mut conn).await?;
        let rtt_us = t.elapsed().as_micros() as u64;

        let quiet = self.control.state() != RunState::Running;
        let mut pipe = redis::pipe();
        pipe.cmd("SADD")
            .arg(self.keys.processes())
            .arg(id)
            .cmd("HSET")
            .arg(self.keys.process(id))
            .arg(field::INFO)
            .arg(info)
            .arg(field::CONCURRENCY)
            .arg(self.info.concurrency())
            .arg(field::BUSY)
            .arg(running.len())
            .arg(field::BEAT)
            .arg(float_json(timestamp::now()))
            .arg(field::RTT_US)
            .arg(rtt_us)
            .arg(field::QUIET)
            .arg(if quiet { "true" } else { "false" })
            .arg(field::RSS)
            .arg(rss)
            .cmd("EXPIRE")
            .arg(self.keys.process(id))
            .arg(ttl)
            .cmd("RPOP")
            .arg(self.keys.signals(id));
        let applied = exec::atomic(&mut pipe, &mut conn).await?;
        self.report(&applied.failed);
        let signal =
            applied.replies.last().and_then(|v| redis::from_redis_value::<Option<String>>(v.clone()).ok()).flatten();
        if let Some(name) = signal {
            match Signal::parse(&name) {
                Some(sig) => {
                    log::info!("got {} from Redis ({})", sig.name(), self.keys.signals(id));
                    if sig == Signal::Quiet {
                        self.control.set(RunState::Quiet);
                    }
                    let _ = self.signals.send(sig);
                }
                None => log::warn!("ignoring unknown signal {name:?} from {}", self.keys.signals(id)),
            }
        }
        Ok(())
    }
}

/// Removes a stopped process: its set entry, hash and work hashes.
impl Heartbeat {
    /// Marks the running jobs whose cancellation was asked (`kiq.api.Api.cancel`);
    /// they read the mark through `Delivery.cancelled`.
    async fn check_cancelled(&self, conn: &mut redis::aio::ConnectionManager) -> redis::RedisResult<()> {
        let jobs = self.work.uncancelled();
        if jobs.is_empty() {
            return Ok(());
        }
        // kiq's request, or Sidekiq 7.3+'s cancel of an iterable job (`it-<jid>`).
        let mut pipe = redis::pipe();
        for (_, jid) in &jobs {
            pipe.cmd("ZSCORE").arg(self.keys.cancelled()).arg(jid);
            pipe.cmd("HEXISTS").arg(self.keys.iteration(jid)).arg(crate::admin::ITERATION_CANCELLED);
        }
        let replies: Vec<(Option<f64>, bool)> = pipe.query_async(conn).await?;
        for ((id, jid), (score, iteration)) in jobs.iter().zip(replies) {
            if (score.is_some() || iteration) && self.work.cancel(*id) {
                log::info!("job {jid}: cancellation asked; the job sees it as cancelled");
            }
        }
        Ok(())
    }
}

pub async fn clear(pool: &Pool, keys: &Keys, identity: &str) -> redis::RedisResult<()> {
    redis::pipe()
        .cmd("SREM")
        .arg(keys.processes())
        .arg(identity)
        .ignore()
        .cmd("UNLINK")
        .arg(keys.work(identity))
        .arg(keys.workers(identity))
        .arg(keys.process(identity))
        .ignore()
        .query_async(&mut pool.get())
        .await
}

/// Resident memory in kB, as Sidekiq reports it (`VmRSS`), 0 where unknown.
pub fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> ProcessInfo {
        ProcessInfo {
            identity: "web.1:42:0123456789ab".into(),
            hostname: "web.1".into(),
            pid: 42,
            tag: "app".into(),
            labels: vec!["python".into()],
            capsules: vec![
                Capsule::single("default", 25),
                Capsule::single("events", 5),
                Capsule::new(vec![("a".into(), 3), ("b".into(), 1)], 8),
            ],
            started_at: 1_700_000_000.5,
            version: "kiq-0.1.0".into(),
        }
    }

    #[test]
    fn info_has_every_field_each_version_reads() {
        let json = info().to_json();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["concurrency"], 38);
        assert_eq!(v["queues"], serde_json::json!(["default", "events", "a", "b"]));
        assert_eq!(v["weights"], serde_json::json!([{"default": 0}, {"events": 0}, {"a": 3, "b": 1}]));
        assert_eq!(
            v["capsules"]["events"],
            serde_json::json!({"concurrency": 5, "mode": "strict", "weights": {"events": 0}})
        );
        assert_eq!(
            v["capsules"]["a,b"],
            serde_json::json!({"concurrency": 8, "mode": "weighted", "weights": {"a": 3, "b": 1}})
        );
        assert!(v["started_at"].is_f64());
        for key in ["hostname", "pid", "tag", "labels", "identity", "version", "embedded"] {
            assert!(v.get(key).is_some(), "{key}");
        }
    }

    #[test]
    fn signals_parse() {
        assert_eq!(Signal::parse("TSTP"), Some(Signal::Quiet));
        assert_eq!(Signal::parse("TERM"), Some(Signal::Stop));
        assert_eq!(Signal::parse("TTIN"), Some(Signal::DumpThreads));
        assert_eq!(Signal::parse("HUP"), None);
    }

    #[test]
    fn rss_is_read() {
        assert!(rss_kb() > 0);
    }
}
