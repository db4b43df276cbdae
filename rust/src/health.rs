//! Health checks over HTTP, for Kubernetes probes and load balancers.
//!
//! Served by a core task, so it answers while a Python job holds the GIL:
//! - `GET /live`: 200 until the process has stopped (quiet and Redis outages
//!   included: restarting a worker fixes neither);
//! - `GET /ready`: 200 while the process fetches jobs and its last heartbeat
//!   reached Redis within three beat intervals, else 503 with the reason;
//! - `GET /metrics`: this process's counters in Prometheus' text format.
//!
//! The first two answer a small JSON object. Only a request line is read; this is a
//! probe endpoint, not a web server.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::control::{Control, RunState};
use crate::job::json_string;
use crate::lane::Lane;
use crate::leader::Leadership;
use crate::limiter_state;
use crate::limits::Limits;
use crate::limits::Usage;
use crate::throttle;
use crate::throttle::Throttles;
use crate::timestamp;
use crate::work::WorkSet;

/// The last heartbeat that reached Redis, shared by the heartbeat and the probe.
#[derive(Debug, Default)]
pub struct Beats {
    /// Epoch milliseconds of the last good beat; 0 before the first.
    last_ok_ms: AtomicU64,
}

impl Beats {
    pub fn ok(&self) {
        self.last_ok_ms.store((timestamp::now() * 1000.0) as u64, Ordering::Relaxed);
    }

    /// Seconds since the last good beat, None before the first.
    pub fn age(&self) -> Option<f64> {
        match self.last_ok_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some((timestamp::now() - ms as f64 / 1000.0).max(0.0)),
        }
    }
}

/// How a job ended, for the counters.
#[derive(Debug, Clone, Copy)]
pub enum Outcome {
    Succeeded,
    Failed,
    Expired,
    /// Not run: its batch was invalidated.
    Skipped,
    /// Rescheduled over a rate limit (`overlimit.rs`).
    Rescheduled,
}

/// Jobs this process finished, by outcome.
#[derive(Debug, Default)]
pub struct Tally {
    succeeded: AtomicU64,
    failed: AtomicU64,
    expired: AtomicU64,
    skipped: AtomicU64,
    rescheduled: AtomicU64,
    total: AtomicU64,
}

impl Tally {
    /// Counts one job; returns the new total.
    pub fn add(&self, outcome: Outcome) -> u64 {
        let counter = match outcome {
            Outcome::Succeeded => &self.succeeded,
            Outcome::Failed => &self.failed,
            Outcome::Expired => &self.expired,
            Outcome::Skipped => &self.skipped,
            Outcome::Rescheduled => &self.rescheduled,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.total.fetch_add(1, Ordering::Relaxed) + 1
    }
}

/// What the probe reads.
#[derive(Clone)]
pub struct Probe {
    pub identity: String,
    pub control: Control,
    pub work: Arc<WorkSet>,
    pub beats: Arc<Beats>,
    /// The beat interval; None when this process does not beat.
    pub interval: Option<Duration>,
    pub tally: Arc<Tally>,
    pub lanes: Vec<Arc<Lane>>,
    pub leadership: Arc<Leadership>,
    /// `/ready` fails while a job has run longer than this (`stuck_after`):
    /// a job stuck in C code holding the GIL looks alive otherwise.
    pub stuck_after: Option<Duration>,
    /// This process's rate limiters (their Redis, for the cluster-wide state).
    pub limits: Option<Arc<Limits>>,
    pub throttles: Option<Arc<Throttles>>,
}

/// An HTTP status and body (JSON unless `text`).
#[derive(Debug, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub body: String,
    pub text: bool,
}

impl Answer {
    fn json(status: u16, body: impl Into<String>) -> Self {
        Self { status, body: body.into(), text: false }
    }
}

impl Probe {
    /// The answer for one request line's method and path.
    pub fn answer(&self, method: &str, path: &str) -> Answer {
        if method != "GET" && method != "HEAD" {
            return Answer::json(405, r#"{"status":"error","reason":"only GET and HEAD"}"#);
        }
        let path = path.split('?').next().unwrap_or("");
        let state = self.control.state();
        let age = self.beats.age();
        let problem = match path {
            "/live" | "/livez" => (state == RunState::Stopping).then(|| "stopping".to_owned()),
            "/ready" | "/readyz" => self.unready(state, age),
            "/metrics" => return Answer { status: 200, body: self.metrics(state, age), text: true },
            _ => return Answer::json(404, r#"{"status":"error","reason":"try /live, /ready or /metrics"}"#),
        };
        let state_name = match state {
            RunState::Running => "running",
            RunState::Quiet => "quiet",
            RunState::Stopping => "stopping",
        };
        let age_json = age.map_or_else(|| "null".to_owned(), |a| format!("{a:.3}"));
        let (status, head) = match &problem {
            None => (200, r#""status":"ok""#.to_owned()),
            Some(why) => (503, format!(r#""status":"unavailable","reason":{}"#, json_string(why))),
        };
        let body = format!(
            r#"{{{head},"identity":{},"state":"{state_name}","busy":{},"last_beat_age":{age_json}}}"#,
            json_string(&self.identity),
            self.work.len(),
        );
        Answer::json(status, body)
    }

    /// Prometheus' text exposition format (version 0.0.4).
    fn metrics(&self, state: RunState, age: Option<f64>) -> String {
        use std::fmt::Write;
        let mut out = String::with_capacity(1024);
        let mut family = |name: &str, kind: &str, help: &str, samples: &[(String, String)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed).to_string();
        let t = &self.tally;
        family(
            "kiq_jobs_finished_total",
            "counter",
            "Jobs this process finished, by outcome.",
            &[
                (r#"{outcome="success"}"#.into(), n(&t.succeeded)),
                (r#"{outcome="failure"}"#.into(), n(&t.failed)),
                (r#"{outcome="expired"}"#.into(), n(&t.expired)),
                (r#"{outcome="skipped"}"#.into(), n(&t.skipped)),
                (r#"{outcome="rescheduled"}"#.into(), n(&t.rescheduled)),
            ],
        );
        let per_queue = |f: &dyn Fn(&Lane) -> usize| -> Vec<(String, String)> {
            self.lanes.iter().map(|l| (format!("{{queue={}}}", json_string(&l.name)), f(l).to_string())).collect()
        };
        family("kiq_jobs_in_process", "gauge", "Jobs fetched and not finished, per queue.", &per_queue(&|l| l.out()));
        family(
            "kiq_queue_concurrency",
            "gauge",
            "The most jobs of a queue run at once.",
            &per_queue(&|l| l.concurrency),
        );
        family(
            "kiq_worker_threads",
            "gauge",
            "Worker threads alive, per queue.",
            &per_queue(&|l| l.threads().unwrap_or(l.concurrency)),
        );
        family("kiq_jobs_running", "gauge", "Jobs running now.", &[(String::new(), self.work.len().to_string())]);
        let longest = self.work.oldest(timestamp::now()).map_or(0.0, |(age, _)| age);
        family(
            "kiq_job_running_seconds",
            "gauge",
            "How long the longest-running job has run (0 when none runs).",
            &[(String::new(), format!("{longest:.0}"))],
        );
        let quiet = u8::from(state != RunState::Running);
        family("kiq_quiet", "gauge", "1 when the process fetches no new jobs.", &[(String::new(), quiet.to_string())]);
        let leader = u8::from(self.leadership.is_leader());
        family(
            "kiq_leader",
            "gauge",
            "1 while this process is the kiq leader.",
            &[(String::new(), leader.to_string())],
        );
        if let Some(a) = age {
            let help = "Seconds since a heartbeat last reached Redis.";
            family("kiq_heartbeat_age_seconds", "gauge", help, &[(String::new(), format!("{a:.3}"))]);
        }
        if let Some(t) = &self.throttles {
            let counts = t.counts();
            let by_class = |f: &dyn Fn(&throttle::ClassCounts) -> u64| -> Vec<(String, String)> {
                counts.iter().map(|(c, n)| (format!("{{class={}}}", json_string(c)), f(n).to_string())).collect()
            };
            let help = "Jobs a throttle admitted at fetch in this process, per worker class.";
            family("kiq_throttle_admitted_total", "counter", help, &by_class(&|n| n.admitted));
            let help = "Jobs a throttle parked (sent back to wait) in this process, per worker class.";
            family("kiq_throttle_parked_total", "counter", help, &by_class(&|n| n.parked));
        }
        if let Some(limits) = &self.limits {
            let usage = limits.usage();
            let per = |f: &dyn Fn(&Usage) -> String| -> Vec<(String, String)> {
                usage.iter().map(|(k, name, u)| (limiter_labels(k.as_str(), name), f(u))).collect()
            };
            let help = "Rate limiter acquires that got room, in this process.";
            family("kiq_limiter_acquired_total", "counter", help, &per(&|u| u.acquired.to_string()));
            let help = "Rate limiter acquires that ended in OverLimit, in this process.";
            family("kiq_limiter_over_total", "counter", help, &per(&|u| u.over.to_string()));
            let help = "Seconds this process waited for rate limiter room.";
            family("kiq_limiter_wait_seconds_total", "counter", help, &per(&|u| format!("{:.3}", u.waited)));
        }
        out
    }

    /// The cluster-wide state of the limiters used lately (read from Redis;
    /// empty when Redis does not answer within a second).
    async fn limiter_metrics(&self) -> String {
        use std::fmt::Write;
        let Some(limits) = &self.limits else { return String::new() };
        let read = limiter_state::read(limits.pool(), limits.keys(), METRICS_LIMITERS);
        let states = match tokio::time::timeout(Duration::from_secs(1), read).await {
            Ok(Ok(states)) if !states.is_empty() => states,
            _ => return String::new(),
        };
        let mut out = String::new();
        type Gauge = fn(&limiter_state::LimiterState) -> String;
        let families: [(&str, &str, Gauge); 3] = [
            (
                "kiq_limiter_in_use",
                "Room in use now, cluster-wide (holders, uses this period or window, level).",
                |s| format!("{}", (s.in_use * 1000.0).round() / 1000.0),
            ),
            ("kiq_limiter_capacity", "A limiter's size, count or points.", |s| s.capacity.to_string()),
            ("kiq_limiter_waiting", "Callers waiting for room now, cluster-wide.", |s| s.waiting.to_string()),
        ];
        for (name, help, value) in families {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for st in &states {
                let _ = writeln!(out, "{name}{} {}", limiter_labels(st.kind.as_str(), &st.name), value(st));
            }
        }
        out
    }

    fn unready(&self, state: RunState, age: Option<f64>) -> Option<String> {
        match state {
            RunState::Quiet => return Some("quiet: fetching no new jobs".into()),
            RunState::Stopping => return Some("stopping".into()),
            RunState::Running => {}
        }
        if let Some(limit) = self.stuck_after
            && let Some((age, job)) = self.work.oldest(timestamp::now())
            && age > limit.as_secs_f64()
        {
            return Some(format!(
                "job {job} has run {age:.0}s, longer than stuck_after ({}s): stuck? (a job holding the GIL in C \
                 code cannot be stopped; restart the process)",
                limit.as_secs_f64()
            ));
        }
        for lane in &self.lanes {
            if let Some(n) = lane.threads()
                && n < lane.threads_wanted()
            {
                return Some(format!(
                    "queue {:?} has {n} of its {} worker threads running",
                    lane.name,
                    lane.threads_wanted()
                ));
            }
        }
        let interval = self.interval?.as_secs_f64();
        match age {
            None => Some("no heartbeat has reached Redis yet".into()),
            Some(a) if a > 3.0 * interval => {
                Some(format!("Redis unreachable: the last heartbeat got through {a:.0}s ago"))
            }
            Some(_) => None,
        }
    }
}

/// Limiters listed in `/metrics` at most (the most recently used).
const METRICS_LIMITERS: usize = 1000;

fn limiter_labels(kind: &str, name: &str) -> String {
    format!("{{kind={},name={}}}", json_string(kind), json_string(name))
}

/// Answers probes on `listener` until `halt`.
pub async fn serve(listener: TcpListener, probe: Probe, mut halt: watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = halt.wait_for(|h| *h) => return,
        };
        match accepted {
            Ok((stream, _)) => {
                tokio::spawn(respond(stream, probe.clone()));
            }
            Err(e) => {
                log::warn!("health check listener: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn respond(mut stream: TcpStream, probe: Probe) {
    let mut buf = [0u8; 2048];
    let mut len = 0;
    // The request line is all we need; a slow or silent client gets 2 s.
    let read = tokio::time::timeout(Duration::from_secs(2), async {
        while len < buf.len() {
            match stream.read(&mut buf[len..]).await {
                Ok(0) | Err(_) => break,
                Ok(n) => len += n,
            }
            if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
    })
    .await;
    if read.is_err() || len == 0 {
        return;
    }
    let head = String::from_utf8_lossy(&buf[..len]);
    let mut parts = head.lines().next().unwrap_or("").split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let mut answer = probe.answer(method, path);
    if answer.status == 200 && answer.text {
        answer.body.push_str(&probe.limiter_metrics().await);
    }
    let content_type = if answer.text { "text/plain; version=0.0.4" } else { "application/json" };
    let reason = match answer.status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let mut out = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        answer.status,
        answer.body.len()
    );
    if method != "HEAD" {
        out.push_str(&answer.body);
    }
    let _ = stream.write_all(out.as_bytes()).await;
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(interval: Option<f64>) -> Probe {
        Probe {
            identity: "host:1:abc".into(),
            control: Control::default(),
            work: Arc::new(WorkSet::default()),
            beats: Arc::new(Beats::default()),
            interval: interval.map(Duration::from_secs_f64),
            tally: Arc::new(Tally::default()),
            lanes: vec![Arc::new(Lane::new("default", 25)), Arc::new(Lane::new("a\"b", 2))],
            leadership: Arc::new(Leadership::default()),
            stuck_after: Some(Duration::from_secs(60)),
            limits: None,
            throttles: None,
        }
    }

    #[test]
    fn a_job_running_past_stuck_after_makes_the_process_unready() {
        let p = probe(None);
        assert_eq!(p.answer("GET", "/ready").status, 200);
        let old = timestamp::now() as i64 - 120;
        p.work.insert(
            1,
            crate::work::Work {
                tid: Arc::from("t1"),
                queue: Arc::from("default"),
                payload: Arc::from(r#"{"class":"Spin","args":[],"jid":"abc"}"#),
                run_at: old,
                cancelled: false,
            },
        );
        let a = p.answer("GET", "/ready");
        assert_eq!(a.status, 503);
        assert!(
            a.body.contains("job Spin jid=abc has run 12") && a.body.contains("longer than stuck_after (60s)"),
            "{}",
            a.body
        );
        assert!(p.answer("GET", "/metrics").body.contains("kiq_job_running_seconds 12"));
        assert_eq!(p.answer("GET", "/live").status, 200, "live: restarting is the user's call");
    }

    #[test]
    fn metrics_in_prometheus_text() {
        let p = probe(Some(5.0));
        p.tally.add(Outcome::Succeeded);
        p.tally.add(Outcome::Succeeded);
        assert_eq!(p.tally.add(Outcome::Failed), 3);
        let a = p.answer("GET", "/metrics");
        assert!(a.status == 200 && a.text);
        for line in [
            "# TYPE kiq_jobs_finished_total counter",
            r#"kiq_jobs_finished_total{outcome="success"} 2"#,
            r#"kiq_jobs_finished_total{outcome="failure"} 1"#,
            r#"kiq_queue_concurrency{queue="default"} 25"#,
            r#"kiq_queue_concurrency{queue="a\"b"} 2"#,
            "kiq_jobs_running 0",
            "kiq_leader 0",
        ] {
            assert!(a.body.lines().any(|l| l == line), "{line} in\n{}", a.body);
        }
        assert!(!a.body.contains("kiq_heartbeat_age_seconds"), "no beat yet");
    }

    #[test]
    fn ready_needs_a_recent_heartbeat() {
        let p = probe(Some(5.0));
        assert_eq!(p.answer("GET", "/live").status, 200);
        let a = p.answer("GET", "/ready");
        assert_eq!(a.status, 503);
        assert!(a.body.contains("no heartbeat has reached Redis yet"), "{}", a.body);
        p.beats.ok();
        let a = p.answer("GET", "/ready?verbose=1");
        assert_eq!(a.status, 200, "{}", a.body);
        assert!(
            a.body.starts_with(r#"{"status":"ok","identity":"host:1:abc","state":"running","busy":0"#),
            "{}",
            a.body
        );
        p.beats.last_ok_ms.store(((timestamp::now() - 16.0) * 1000.0) as u64, Ordering::Relaxed);
        let a = p.answer("GET", "/ready");
        assert_eq!(a.status, 503);
        assert!(a.body.contains("Redis unreachable: the last heartbeat got through 16s ago"), "{}", a.body);
        assert_eq!(p.answer("GET", "/live").status, 200, "an outage is no reason to restart");
    }

    #[test]
    fn quiet_is_unready_and_stopping_is_dead() {
        let p = probe(None);
        assert_eq!(p.answer("GET", "/ready").status, 200, "no heartbeat configured: state alone");
        p.control.set(RunState::Quiet);
        let a = p.answer("GET", "/ready");
        assert!(a.status == 503 && a.body.contains(r#""state":"quiet""#), "{}", a.body);
        assert_eq!(p.answer("GET", "/live").status, 200);
        p.control.set(RunState::Stopping);
        assert_eq!(p.answer("GET", "/live").status, 503);
    }

    #[test]
    fn other_requests() {
        let p = probe(None);
        assert_eq!(p.answer("GET", "/").status, 404);
        assert_eq!(p.answer("POST", "/live").status, 405);
        assert_eq!(p.answer("HEAD", "/livez").status, 200);
    }
}
