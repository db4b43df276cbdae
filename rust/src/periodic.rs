//! Periodic (cron) jobs: the leader enqueues each entry's job once per
//! matching minute.
//!
//! Each entry's last enqueued minute lives in Redis (`kiq:periodic`), and
//! `periodic.lua` enqueues a minute only if it is later than that, in the same
//! atomic step that records it. So however many processes run and however
//! leadership moves, every due minute is enqueued exactly once: a new leader
//! catches up the minutes a gap in leadership missed (up to `CATCH_UP`), and
//! a minute is never enqueued twice. Entries seen for the first time start at
//! the current minute (no backfill of history).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::client;
use crate::crontab::Crontab;
use crate::error::{KiqError, Result};
use crate::job::{NewJob, canonical_sha256, field, json_string};
use crate::keys::Keys;
use crate::leader::Leadership;
use crate::pool::Pool;
use crate::scripts;
use crate::timestamp::{self, TimestampUnit, float_json};

/// Missed minutes older than this are not enqueued after an outage.
pub const CATCH_UP_SECS: i64 = 3600;

#[derive(Debug, Clone)]
pub struct Entry {
    /// Stable id: the same crontab, class and options give the same id.
    pub id: String,
    pub crontab: Crontab,
    pub job: NewJob,
}

impl Entry {
    /// An entry with its id: the same schedule, class and options give the
    /// same id in every process.
    pub fn new(crontab: Crontab, job: NewJob) -> Result<Self> {
        let options: Vec<String> = job.options.iter().map(|(k, v)| format!("[{},{v}]", json_string(k))).collect();
        // An encrypted entry's secret is not part of its id (a hash of it in
        // Redis would leak it), so entries differing only by it are refused (see [`entries`]).
        let identity = format!(
            "[{},{},{},{},{},[{}]{}]",
            json_string(&crontab.to_string()),
            json_string(&job.class),
            json_string(&job.queue),
            job.args,
            job.retry.to_json(),
            options.join(","),
            if job.encrypt.is_some() { ",\"encrypt\"" } else { "" }
        );
        let id = canonical_sha256(&identity)?[..32].to_owned();
        Ok(Self { id, crontab, job })
    }
}

/// The entries of an app, refusing encrypted ones that only their secret tells apart.
pub fn entries(specs: impl IntoIterator<Item = (Crontab, NewJob)>) -> Result<Vec<Entry>> {
    let mut out: Vec<Entry> = Vec::new();
    for (crontab, job) in specs {
        let entry = Entry::new(crontab, job)?;
        if entry.job.encrypt.is_some() && out.iter().any(|e| e.id == entry.id) {
            return Err(KiqError::config(format!(
                "two periodic entries for {} differ only in their encrypted last argument; give them different \
                 arguments, queues or schedules",
                entry.job.class
            )));
        }
        out.push(entry);
    }
    Ok(out)
}

/// The scheduler's notion of now: the wall clock, or a fast-forwarded one for tests.
#[derive(Debug, Clone, Copy)]
pub enum Clock {
    Real,
    /// `start + (wall - wall_start) × speed`: the same simulated time in every
    /// process given the same three numbers.
    Simulated {
        start: f64,
        wall_start: f64,
        speed: f64,
    },
}

impl Clock {
    pub fn now(self) -> f64 {
        match self {
            Self::Real => timestamp::now(),
            Self::Simulated { start, wall_start, speed } => start + (timestamp::now() - wall_start) * speed,
        }
    }

    /// How often to look: once a (simulated) second.
    fn tick(self) -> Duration {
        match self {
            Self::Real => Duration::from_secs(1),
            Self::Simulated { speed, .. } => Duration::from_secs_f64((1.0 / speed.max(1e-3)).clamp(0.005, 1.0)),
        }
    }
}

pub struct Periodic {
    pub pool: Arc<Pool>,
    pub keys: Keys,
    pub entries: Vec<Entry>,
    pub leadership: Arc<Leadership>,
    pub clock: Clock,
    pub unit: TimestampUnit,
}

impl Periodic {
    pub async fn run(self, mut halt: watch::Receiver<bool>) {
        let mut failing = false;
        loop {
            tokio::select! {
                () = tokio::time::sleep(self.clock.tick()) => {}
                _ = halt.wait_for(|h| *h) => return,
            }
            if !self.leadership.is_leader() {
                continue;
            }
            match self.enqueue_due().await {
                Ok(_) if failing => {
                    log::warn!("periodic jobs reach Redis again");
                    failing = false;
                }
                Ok(_) => {}
                Err(e) => {
                    if !failing {
                        log::error!("cannot enqueue periodic jobs, will retry: {e}");
                        failing = true;
                    }
                }
            }
        }
    }

    /// Enqueues every entry's due minutes up to now. Returns how many jobs went in.
    pub async fn enqueue_due(&self) -> Result<usize> {
        let now = self.clock.now();
        let now_minute = (now.floor() as i64).div_euclid(60) * 60;
        let mut conn = self.pool.get();
        let last: Vec<Option<i64>> = if self.entries.is_empty() {
            Vec::new()
        } else {
            let mut cmd = redis::cmd("HMGET");
            cmd.arg(self.keys.periodic());
            for e in &self.entries {
                cmd.arg(&e.id);
            }
            cmd.query_async(&mut conn).await?
        };
        let mut enqueued = 0;
        for (entry, last) in self.entries.iter().zip(last) {
            // The first minute to consider: after the last one done, at most
            // CATCH_UP back; the current minute for a new entry.
            let from = match last {
                Some(t) => t.max(now_minute - CATCH_UP_SECS),
                None => now_minute - 60,
            };
            let mut minute = entry.crontab.next_after(from);
            while let Some(m) = minute.filter(|m| *m <= now_minute) {
                if self.enqueue(entry, m, now).await? {
                    enqueued += 1;
                    log::info!("periodic: enqueued {} for {}", entry.job.class, m);
                }
                minute = entry.crontab.next_after(m);
            }
        }
        Ok(enqueued)
    }

    async fn enqueue(&self, entry: &Entry, minute: i64, now: f64) -> Result<bool> {
        let mut job = entry.job.clone();
        job.options.push((field::PERIODIC_AT.to_owned(), float_json(minute as f64)));
        let (_, item, _) = client::prepare_full(&job, None, now, self.unit, &self.keys)?;
        let moved: i64 = scripts::PERIODIC
            .key(self.keys.periodic())
            .key(self.keys.queue(&item.queue))
            .key(self.keys.queues())
            .arg(&entry.id)
            .arg(minute)
            .arg(&item.payload)
            .arg(&*item.queue)
            .invoke_async(&mut self.pool.get())
            .await?;
        Ok(moved == 1)
    }
}
