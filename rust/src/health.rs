//! Health checks over HTTP, for Kubernetes probes and load balancers.
//!
//! Served by a core task, so it answers while a Python job holds the GIL:
//! - `GET /live`: 200 until the process has stopped (quiet and Redis outages
//!   included: restarting a worker fixes neither);
//! - `GET /ready`: 200 while the process fetches jobs and its last heartbeat
//!   reached Redis within three beat intervals, else 503 with the reason.
//!
//! Both answer a small JSON object. Only a request line is read; this is a
//! probe endpoint, not a web server.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::control::{Control, RunState};
use crate::job::json_string;
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

/// What the probe reads.
#[derive(Clone)]
pub struct Probe {
    pub identity: String,
    pub control: Control,
    pub work: Arc<WorkSet>,
    pub beats: Arc<Beats>,
    /// The beat interval; None when this process does not beat.
    pub interval: Option<Duration>,
}

/// An HTTP status and JSON body.
#[derive(Debug, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

impl Probe {
    /// The answer for one request line's method and path.
    pub fn answer(&self, method: &str, path: &str) -> Answer {
        if method != "GET" && method != "HEAD" {
            return Answer { status: 405, body: r#"{"status":"error","reason":"only GET and HEAD"}"#.into() };
        }
        let path = path.split('?').next().unwrap_or("");
        let state = self.control.state();
        let age = self.beats.age();
        let problem = match path {
            "/live" | "/livez" => (state == RunState::Stopping).then(|| "stopping".to_owned()),
            "/ready" | "/readyz" => self.unready(state, age),
            _ => return Answer { status: 404, body: r#"{"status":"error","reason":"try /live or /ready"}"#.into() },
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
        Answer { status, body }
    }

    fn unready(&self, state: RunState, age: Option<f64>) -> Option<String> {
        match state {
            RunState::Quiet => return Some("quiet: fetching no new jobs".into()),
            RunState::Stopping => return Some("stopping".into()),
            RunState::Running => {}
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
    let answer = probe.answer(method, path);
    let reason = match answer.status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let mut out = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
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
        }
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
