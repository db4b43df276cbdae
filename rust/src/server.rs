//! The processing side of one Kiq instance: fetchers, the ack writer and the
//! scheduler poller, and the stop sequence that loses no job.
//!
//! Stopping (Sidekiq's TERM): [`Server::begin_stop`] stops fetching and
//! closes the lanes, so threads take no new job; the caller gives running jobs
//! their time; [`Server::finish_stop`] writes every pending result, then moves
//! whatever is left in the in-progress lists (jobs never started, and jobs
//! still running past the deadline) back to the right end of their queues,
//! where they are the next to run.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::ack::{self, Msg, Settle, Settlement};
use crate::control::{Control, RunState};
use crate::error::{KiqError, Result};
use crate::fetch::Fetcher;
use crate::job::check_queue_name;
use crate::keys::Keys;
use crate::lane::{Delivery, Lane, Take};
use crate::pool::Pool;
use crate::retry::{self, Disposition, Failure, RetryPolicy, WorkerOptions};
use crate::scheduled::{PollConfig, Poller};
use crate::scripts;
use crate::timestamp;

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// This process's identity, `hostname:pid:<12 hex>`.
    pub identity: String,
    /// Queue names with the most jobs each may run at once, in fetch order.
    pub queues: Vec<(String, usize)>,
    pub policy: RetryPolicy,
    pub poll: PollConfig,
    /// Run the scheduler poller (off lets another system move due jobs).
    pub scheduler: bool,
}

/// What a stop did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StopReport {
    /// Jobs moved back to their queues.
    pub requeued: usize,
    /// Results that could not be written (their jobs were requeued instead).
    pub unwritten: usize,
}

pub struct Server {
    pool: Arc<Pool>,
    keys: Keys,
    config: ServerConfig,
    lanes: Vec<Arc<Lane>>,
    wip_keys: Vec<Arc<str>>,
    blocked: Vec<Arc<AtomicI64>>,
    acks: mpsc::UnboundedSender<Msg>,
    control: Control,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    acker: Mutex<Option<JoinHandle<()>>>,
}

impl Server {
    /// Starts the background tasks on the current tokio runtime.
    pub fn start(pool: Arc<Pool>, keys: Keys, config: ServerConfig) -> Result<Arc<Self>> {
        if config.queues.is_empty() {
            return Err(KiqError::config("queues must name at least one queue"));
        }
        for (i, (name, limit)) in config.queues.iter().enumerate() {
            check_queue_name(name).map_err(|e| KiqError::config(e.to_string()))?;
            if *limit == 0 {
                return Err(KiqError::config(format!("queue {name:?} needs a concurrency of at least 1")));
            }
            if config.queues[..i].iter().any(|(n, _)| n == name) {
                return Err(KiqError::config(format!("queue {name:?} is listed twice")));
            }
        }
        let lanes: Vec<Arc<Lane>> = config.queues.iter().map(|(n, c)| Arc::new(Lane::new(n.clone(), *c))).collect();
        let wip_keys: Vec<Arc<str>> =
            config.queues.iter().map(|(n, _)| Arc::from(keys.in_progress(&config.identity, n))).collect();
        let blocked: Vec<Arc<AtomicI64>> = lanes.iter().map(|_| Arc::new(AtomicI64::new(0))).collect();
        let (tx, rx) = mpsc::unbounded_channel();
        let control = Control::default();
        let acker = tokio::spawn(ack::run(rx, pool.clone(), keys.clone(), config.policy.clone()));
        let mut tasks = Vec::new();
        for (i, lane) in lanes.iter().enumerate() {
            let fetcher = Fetcher {
                lane_index: i,
                lane: lane.clone(),
                queue_key: keys.queue(&lane.name),
                wip_key: wip_keys[i].clone(),
                pool: pool.clone(),
                keys: keys.clone(),
                policy: config.policy.clone(),
                acks: tx.clone(),
                control: control.clone(),
                blocked_id: blocked[i].clone(),
            };
            tasks.push(tokio::spawn(fetcher.run()));
        }
        if config.scheduler {
            let poller = Poller {
                pool: pool.clone(),
                keys: keys.clone(),
                policy: config.policy.clone(),
                config: config.poll.clone(),
                control: control.clone(),
            };
            tasks.push(tokio::spawn(poller.run()));
        }
        Ok(Arc::new(Self {
            pool,
            keys,
            config,
            lanes,
            wip_keys,
            blocked,
            acks: tx,
            control,
            tasks: Mutex::new(tasks),
            acker: Mutex::new(Some(acker)),
        }))
    }

    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    pub fn lanes(&self) -> &[Arc<Lane>] {
        &self.lanes
    }

    pub fn lane(&self, index: usize) -> Result<&Arc<Lane>> {
        self.lanes.get(index).ok_or_else(|| KiqError::config(format!("no queue with index {index}")))
    }

    pub fn state(&self) -> RunState {
        self.control.state()
    }

    /// Stops or resumes fetching (Sidekiq's quiet); running jobs carry on.
    pub fn set_quiet(&self, quiet: bool) {
        self.control.set(if quiet { RunState::Quiet } else { RunState::Running });
    }

    /// Records a job as done: it leaves the in-progress list on the next write.
    pub fn complete(&self, d: Delivery) {
        self.settle(d, Settle::Done, false);
    }

    /// Records a job as failed, sending it to the retry set, the dead set or
    /// nowhere, as its options say.
    pub fn fail(&self, d: Delivery, failure: &Failure, worker: &WorkerOptions) {
        let queue = self.lanes[d.lane].name.clone();
        let raw = d.payload.source().to_owned();
        let lane = d.lane;
        let disposition = retry::on_failure(
            d.payload,
            &queue,
            failure,
            worker,
            &self.config.policy,
            timestamp::now(),
            rand::random(),
        );
        let settle = match disposition {
            Disposition::Retry { at, payload } => Settle::Retry { at, payload },
            Disposition::Dead { payload } => Settle::Dead { payload: payload.into_bytes() },
            Disposition::Discard => Settle::Discard,
        };
        self.send(lane, raw.into_bytes(), settle, true);
    }

    /// Gives a job up without a result (stop deadline passed): it stays in
    /// the in-progress list and goes back to its queue.
    pub fn abandon(&self, d: &Delivery) {
        self.lanes[d.lane].finish();
    }

    fn settle(&self, d: Delivery, settle: Settle, failed: bool) {
        let lane = d.lane;
        self.send(lane, d.payload.into_source().into_bytes(), settle, failed);
    }

    fn send(&self, lane: usize, raw: Vec<u8>, settle: Settle, failed: bool) {
        let s = Settlement { wip_key: self.wip_keys[lane].clone(), raw, settle, processed: true, failed };
        // After the final write the channel is closed; the job was requeued.
        let _ = self.acks.send(Msg::Settle(s));
        self.lanes[lane].finish();
    }

    /// First half of a stop: no more fetches, and threads take no new job.
    /// Returns the number of fetched jobs that no thread had started.
    pub async fn begin_stop(&self) -> usize {
        self.control.set(RunState::Stopping);
        let untaken: usize = self.lanes.iter().map(|l| l.close().len()).sum();
        for id in &self.blocked {
            let id = id.load(Ordering::Acquire);
            if id > 0 {
                let r: redis::RedisResult<i64> = redis::cmd("CLIENT").arg("UNBLOCK").arg(id).query_async(&mut self.pool.get()).await;
                if let Err(e) = r {
                    log::debug!("CLIENT UNBLOCK {id} failed: {e}");
                }
            }
        }
        untaken
    }

    /// Second half of a stop: write pending results (until `deadline`), then
    /// return every job left in the in-progress lists to its queue.
    pub async fn finish_stop(&self, deadline: Instant) -> Result<StopReport> {
        self.control.set(RunState::Stopping);
        let tasks: Vec<JoinHandle<()>> = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(PoisonError::into_inner));
        for t in tasks {
            // A fetcher in BLMOVE that missed the unblock returns within its block time.
            let _ = tokio::time::timeout(crate::fetch::BLOCK + Duration::from_secs(1), t).await;
        }
        let mut report = StopReport::default();
        let acker = self.acker.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(acker) = acker {
            let (done, wait) = oneshot::channel();
            if self.acks.send(Msg::Close { deadline, done }).is_ok() {
                report.unwritten = wait.await.unwrap_or(0);
            }
            let _ = acker.await;
        }
        for (lane, wip) in self.lanes.iter().zip(&self.wip_keys) {
            let moved: usize = scripts::REQUEUE
                .key(&**wip)
                .key(self.keys.queue(&lane.name))
                .key(self.keys.queues())
                .arg(&lane.name)
                .invoke_async(&mut self.pool.get())
                .await?;
            report.requeued += moved;
        }
        Ok(report)
    }

    /// Waits for a job of lane `index`; see [`Lane::take`].
    pub fn take(&self, index: usize, timeout: Option<Duration>) -> Result<Take> {
        Ok(self.lane(index)?.take(timeout))
    }
}
