//! The processing side of one Kiq instance: fetchers, the ack writer and the
//! scheduler poller, and the stop sequence that loses no job.
//!
//! Stopping (Sidekiq's TERM): [`Server::begin_stop`] stops fetching and
//! closes the lanes, so threads take no new job; the caller gives running jobs
//! their time; [`Server::finish_stop`] writes every pending result, then moves
//! whatever is left in the in-progress lists (jobs never started, and jobs
//! still running past the deadline) back to the right end of their queues,
//! where they are the next to run.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, mpsc as sync_mpsc};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::ack::{self, Msg, Raw, Settle, Settlement};
use crate::backlog::Backlog;
use crate::batches::watch::Watch;
use crate::batches::{Outcome as BatchOutcome, Settled};
use crate::control::{Control, RunState};
use crate::error::{KiqError, Result};
use crate::fetch::{Fetcher, Source};
use crate::health::{self, Beats, Outcome, Probe, Tally};
use crate::heartbeat::{self, BeatConfig, Heartbeat, ProcessInfo, Signal};
use crate::isolation::{self, Admission, Gate};
use crate::job::{Backtrace, UniqueUntil, check_queue_name};
use crate::keys::Keys;
use crate::lane::{Delivery, Lane, Prefetch, Take};
use crate::leader::{Elector, Leadership};
use crate::limits::Limits;
use crate::metrics::{self, Metrics};
use crate::orphans::{Recoverer, Recovery, TimedOut};
use crate::periodic::{Clock, Entry, Periodic};
use crate::poison::{self, Verdict};
use crate::pool::Pool;
use crate::retry::{self, Failure, Fate, RetryPolicy};
use crate::runtime;
use crate::scheduled::{PollConfig, Poller};
use crate::scripts;
use crate::throttle::{self, Held, Throttles};
use crate::timestamp;
use crate::wip::WipList;
use crate::work::{self, Work, WorkSet};
use crate::worker::Workers;

/// How often a wait for a Web UI signal checks whether a stop began.
const SIGNAL_POLL: Duration = Duration::from_millis(50);

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Identity, hostname, queues (name and the most jobs each may run at
    /// once, in fetch order) and the rest of what the heartbeat shows.
    pub process: ProcessInfo,
    pub policy: RetryPolicy,
    pub poll: PollConfig,
    /// Run the scheduler poller (off lets another system move due jobs).
    pub scheduler: bool,
    /// Beat (and write metrics); `None` keeps the process out of `processes`.
    pub beat: Option<BeatConfig>,
    /// Take part in leader election, with this lease.
    pub leader_ttl: Option<Duration>,
    /// While leading, recover dead processes' jobs this often.
    pub orphan_check: Option<Duration>,
    /// Recoveries after which a job is a poison pill (Sidekiq Pro's 3).
    pub max_recoveries: u32,
    /// Cron entries the leader enqueues, and the clock they run by.
    pub periodics: Vec<Entry>,
    pub clock: Clock,
    /// Answer HTTP health checks on this address (see `health.rs`).
    pub health: Option<SocketAddr>,
    /// Recycle the process after this many finished jobs (Celery's max-tasks-per-child).
    pub max_jobs: Option<u64>,
    /// Recycle the process once its resident memory passes this (checked every
    /// `MEMORY_CHECK`); jobs still running at the stop's deadline are judged as
    /// those of a process that died (`poison.rs`).
    pub max_rss_kb: Option<u64>,
    /// `/ready` answers 503 while a job has run longer than this.
    pub stuck_after: Option<Duration>,
    /// Keys that decrypt encrypted jobs (Sidekiq Enterprise's format) at fetch.
    pub keyring: Option<Arc<crate::crypto::Keyring>>,
    /// Start quiet: fetch nothing until resumed (a swarm's child started
    /// while the swarm is quiet).
    pub quiet: bool,
    /// Jobs each queue fetches beyond its concurrency (see `lane.rs`).
    pub prefetch: Prefetch,
    /// The workers this process runs, by class: their options apply where a
    /// failing job's payload is silent, and their throttles are checked at fetch.
    pub workers: Workers,
    /// The rate limiters of this process's Redis, for `/metrics`.
    pub limits: Option<Arc<Limits>>,
}

/// How often resident memory is compared with `max_rss_kb`.
const MEMORY_CHECK: Duration = Duration::from_millis(200);
/// How long the mark of a job running alone lives (the blame window).
const ISOLATED_TTL_MS: u64 = 72 * 3600 * 1000;

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
    lists: Vec<Arc<WipList>>,
    acks: mpsc::UnboundedSender<Msg>,
    control: Control,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    acker: Mutex<Option<JoinHandle<()>>>,
    queue_names: Vec<Arc<str>>,
    work: Arc<WorkSet>,
    metrics: Arc<Metrics>,
    signals: Mutex<sync_mpsc::Receiver<Signal>>,
    halt: watch::Sender<bool>,
    heartbeat: Mutex<Option<JoinHandle<()>>>,
    leadership: Arc<Leadership>,
    /// Election and recovery tasks, ended with the heartbeat.
    background: Mutex<Vec<JoinHandle<()>>>,
    /// Where health checks are answered (the bound port when 0 was asked).
    health_addr: Option<SocketAddr>,
    /// Jobs finished by this process, by outcome.
    tally: Arc<Tally>,
    /// Tells Python to recycle (the Web UI's signals share the channel).
    recycle: sync_mpsc::Sender<Signal>,
    /// Suspect jobs run alone (`isolation.rs`).
    gate: Gate,
    /// The stop was caused by memory: jobs still running at its deadline are
    /// judged as a death's (lane, payload, ran alone).
    memory_stop: Arc<AtomicBool>,
    handed_back: Mutex<Vec<(usize, Vec<u8>, bool)>>,
    throttles: Option<Arc<Throttles>>,
    /// Results waiting to be written (fetching pauses while too many do).
    backlog: Arc<Backlog>,
}

/// The lock a finished unique job releases: (key, jid).
fn unlock_of(d: &Delivery) -> Option<(String, String)> {
    d.lock.as_ref().map(|(key, _)| (key.clone(), d.jid.clone()))
}

/// The batch bookkeeping of a finished job, if it is a batch job.
fn batch_of(d: &mut Delivery, outcome: BatchOutcome) -> Option<Settled> {
    let b = d.batch.take()?;
    Settled::from_ref(*b, std::mem::take(&mut d.jid), outcome)
}

impl Server {
    /// Starts the background tasks on the current tokio runtime.
    #[allow(clippy::too_many_lines)]
    pub fn start(pool: Arc<Pool>, keys: Keys, config: ServerConfig) -> Result<Arc<Self>> {
        let capsules = &config.process.capsules;
        if capsules.is_empty() {
            return Err(KiqError::config("queues must name at least one queue"));
        }
        let throttled = config.workers.throttles();
        if matches!(config.prefetch, Prefetch::Fixed(n) if n > 0) && !throttled.is_empty() {
            let mut names: Vec<&String> = throttled.keys().collect();
            names.sort();
            return Err(KiqError::config(format!(
                "prefetch cannot be used with throttled workers ({}): a fetched job takes its throttle's slot, and a \
                 prefetched one would hold it while it waits for a thread",
                names.iter().map(|n| n.as_str()).collect::<Vec<_>>().join(", ")
            )));
        }
        // A fetched job takes its throttle's slot: the automatic prefetch is off with throttles.
        let prefetch = if throttled.is_empty() { config.prefetch } else { Prefetch::Fixed(0) };
        let mut seen: Vec<&str> = Vec::new();
        for c in capsules {
            if c.queues.is_empty() {
                return Err(KiqError::config("a capsule must name at least one queue"));
            }
            if c.concurrency == 0 {
                let what = if c.queues.len() == 1 { "queue" } else { "queues" };
                return Err(KiqError::config(format!("{what} {:?} need a concurrency of at least 1", c.name())));
            }
            for (name, _) in &c.queues {
                check_queue_name(name).map_err(|e| KiqError::config(e.to_string()))?;
                if seen.contains(&name.as_str()) {
                    return Err(KiqError::config(format!("queue {name:?} is listed twice")));
                }
                seen.push(name);
            }
        }
        // Before any task starts, so a taken port leaves nothing running.
        let health = config.health.map(bind_health).transpose()?;
        let health_addr = health.as_ref().and_then(|l| l.local_addr().ok());
        let identity = &config.process.identity;
        let lanes: Vec<Arc<Lane>> = capsules
            .iter()
            .map(|c| Arc::new(Lane::new(c.name(), c.concurrency).prefetching(prefetch).sharing_gil(capsules.len() > 1)))
            .collect();
        let queue_names: Vec<Arc<str>> = config.process.queue_names().map(Arc::from).collect();
        let lists: Vec<Arc<WipList>> =
            queue_names.iter().map(|n| Arc::new(WipList::new(Arc::from(keys.in_progress(identity, n))))).collect();
        let by_number: Arc<[(Arc<str>, Arc<WipList>)]> =
            queue_names.iter().cloned().zip(lists.iter().cloned()).collect::<Vec<_>>().into();
        let (tx, rx) = mpsc::unbounded_channel();
        let control = Control::default();
        let watch = Arc::new(Watch::default());
        if config.quiet {
            // Before any fetcher starts, so none takes a job.
            control.set(RunState::Quiet);
        }
        let throttles = (!throttled.is_empty()).then(|| Arc::new(Throttles::new(throttled)));
        let backlog = Arc::new(Backlog::default());
        let acker = tokio::spawn(ack::run(
            rx,
            pool.clone(),
            keys.clone(),
            config.policy.clone(),
            identity.clone(),
            backlog.clone(),
        ));
        let mut tasks = Vec::new();
        let (registered, registered_rx) = tokio::sync::watch::channel(config.beat.is_none());
        let mut number = 0;
        for (i, (lane, capsule)) in lanes.iter().zip(capsules).enumerate() {
            let sources = capsule
                .queues
                .iter()
                .map(|(name, _)| {
                    number += 1;
                    Source { index: number - 1, queue_key: keys.queue(name) }
                })
                .collect();
            // Named after its first queue, which no other capsule of the process has.
            let first = &capsule.queues[0].0;
            let fetcher = Fetcher {
                lane_index: i,
                lane: lane.clone(),
                capsule: capsule.clone(),
                sources,
                queues: by_number.clone(),
                batch_key: keys.last_fetch(identity, first),
                token_key: keys.last_fetch_token(identity, first),
                pool: pool.clone(),
                keys: keys.clone(),
                policy: config.policy.clone(),
                acks: tx.clone(),
                backlog: backlog.clone(),
                control: control.clone(),
                keyring: config.keyring.clone(),
                watch: watch.clone(),
                throttles: throttles.clone(),
                registered: registered_rx.clone(),
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
        let work = Arc::new(WorkSet::default());
        let metrics = Arc::new(Metrics::default());
        let (signal_tx, signal_rx) = sync_mpsc::channel();
        let (halt, halted) = watch::channel(false);
        let beats = Arc::new(Beats::default());
        let heartbeat = config.beat.map(|beat| {
            let hb = Heartbeat {
                pool: pool.clone(),
                keys: keys.clone(),
                info: config.process.clone(),
                config: beat,
                work: work.clone(),
                metrics: metrics.clone(),
                control: control.clone(),
                signals: signal_tx.clone(),
                beats: beats.clone(),
                reported: std::sync::Mutex::default(),
                registered,
            };
            tokio::spawn(hb.run(halted.clone()))
        });
        let mut background = Vec::new();
        let leadership = Arc::new(Leadership::default());
        let tally = Arc::new(Tally::default());
        if let Some(listener) = health {
            let probe = Probe {
                identity: config.process.identity.clone(),
                control: control.clone(),
                work: work.clone(),
                beats,
                interval: config.beat.map(|b| b.interval),
                tally: tally.clone(),
                lanes: lanes.clone(),
                leadership: leadership.clone(),
                stuck_after: config.stuck_after,
                limits: config.limits.clone(),
                throttles: throttles.clone(),
            };
            background.push(tokio::spawn(health::serve(listener, probe, halted.clone())));
        }
        if let Some(ttl) = config.leader_ttl {
            let elector = Elector {
                pool: pool.clone(),
                keys: keys.clone(),
                identity: config.process.identity.clone(),
                ttl,
                leadership: leadership.clone(),
            };
            background.push(tokio::spawn(elector.run(halted.clone())));
        }
        if let Some(interval) = config.orphan_check {
            let recoverer = Recoverer {
                pool: pool.clone(),
                keys: keys.clone(),
                policy: config.policy.clone(),
                interval,
                max_recoveries: config.max_recoveries,
                leadership: leadership.clone(),
                identity: config.process.identity.clone(),
            };
            background.push(tokio::spawn(recoverer.run(halted.clone())));
        }
        if let Some(t) = &throttles
            && let Some(every) = t.refresh_every()
        {
            background.push(tokio::spawn(refresh_holds(t.clone(), pool.clone(), every, halted.clone())));
        }
        let memory_stop = Arc::new(AtomicBool::new(false));
        if let Some(max) = config.max_rss_kb {
            background.push(tokio::spawn(watch_memory(
                max,
                control.clone(),
                signal_tx.clone(),
                memory_stop.clone(),
                halted.clone(),
            )));
        }
        if !config.periodics.is_empty() {
            let periodic = Periodic {
                pool: pool.clone(),
                keys: keys.clone(),
                entries: config.periodics.clone(),
                leadership: leadership.clone(),
                clock: config.clock,
                unit: config.policy.unit,
            };
            background.push(tokio::spawn(periodic.run(halted)));
        }
        Ok(Arc::new(Self {
            pool,
            keys,
            config,
            lanes,
            lists,
            acks: tx,
            control,
            tasks: Mutex::new(tasks),
            acker: Mutex::new(Some(acker)),
            queue_names,
            work,
            metrics,
            signals: Mutex::new(signal_rx),
            halt,
            heartbeat: Mutex::new(heartbeat),
            leadership,
            background: Mutex::new(background),
            health_addr,
            tally,
            recycle: signal_tx,
            gate: Gate::default(),
            memory_stop,
            handed_back: Mutex::new(Vec::new()),
            throttles,
            backlog,
        }))
    }

    /// Results waiting to be written, and how long fetching has been paused
    /// for them without a break ([`Backlog::state`]).
    pub fn results_waiting(&self) -> (usize, Option<Duration>) {
        self.backlog.state()
    }

    /// Lets a fetched job start: a suspect waits to run alone (recorded in
    /// Redis first, so a death meanwhile blames it), others wait while one
    /// does. Blocks; call without the GIL. `Stopping`: hand the job back
    /// with [`Server::give_back`].
    pub fn admit(&self, d: &mut Delivery) -> Admission {
        let admission = if d.suspect { self.gate.enter_alone(isolation::MAX_WAIT) } else { self.gate.enter() };
        d.admitted = admission != Admission::Stopping;
        if !d.suspect {
            return admission;
        }
        match admission {
            Admission::Run { alone: true } => {
                d.alone = true;
                let key = poison::blame_key(&d.payload);
                let mark = self.keys.isolated(&self.config.process.identity);
                let pool = self.pool.clone();
                let written: redis::RedisResult<()> = runtime::get().block_on(async move {
                    redis::cmd("SET")
                        .arg(mark)
                        .arg(key)
                        .arg("PX")
                        .arg(ISOLATED_TTL_MS)
                        .query_async(&mut pool.get())
                        .await
                });
                if let Err(e) = written {
                    log::warn!("running suspect job {} alone without its mark in Redis: {e}", d.jid);
                }
            }
            Admission::Run { alone: false } => log::warn!(
                "suspect job {} waited {:?} to run alone and runs alongside the jobs still running",
                d.jid,
                isolation::MAX_WAIT
            ),
            Admission::Stopping => {}
        }
        admission
    }

    /// Whether jobs of this class are throttled by a key function, checked by
    /// [`Server::admit_keyed`] in the thread that takes them.
    pub fn keyed_throttle(&self, class: &str) -> bool {
        self.throttles.as_ref().is_some_and(|t| t.keyed(class))
    }

    /// The throttle check of a job whose key a function gave (`key`), on the
    /// calling thread's own connection, before the job starts (call it without
    /// the GIL). Returns the job to run; None when it was parked, failed (the
    /// key function raised) or a stop came while Redis did not answer (it stays
    /// in progress and goes back to its queue): its slot is then free.
    pub fn admit_keyed(&self, d: Box<Delivery>, key: std::result::Result<String, Failure>) -> Option<Box<Delivery>> {
        let Some(t) = self.throttles.as_ref().filter(|t| t.keyed(&d.class)) else { return Some(d) };
        let (lane, queue) = (d.lane, d.queue);
        let key = match key.and_then(throttle::check_key) {
            Ok(key) => key,
            Err(failure) => {
                log::error!(
                    "the throttle key of job {} jid={} could not be computed: {}: {}",
                    d.class,
                    d.jid,
                    failure.error_class,
                    failure.error_message
                );
                let s = crate::fetch::failure_settlement(
                    &self.lists[queue],
                    d.pos,
                    &self.queue_names[queue],
                    &self.config.policy,
                    d.payload,
                    &failure,
                );
                let _ = self.acks.send(Msg::Settle(s));
                self.lanes[lane].finish();
                return None;
            }
        };
        let candidate = [throttle::Candidate::of(&d, key)];
        let mut delay = Duration::from_millis(50);
        let verdict = loop {
            match t.check_blocking(&self.pool, &self.keys, &self.queue_names[queue], &candidate) {
                Ok(mut v) => break v.pop(),
                Err(e) => {
                    log::warn!("cannot check the throttle of job {} jid={} yet: {e}", d.class, d.jid);
                    if self.control.state() == RunState::Stopping {
                        self.lanes[lane].finish();
                        return None;
                    }
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        };
        let Some(verdict) = verdict else { return Some(d) };
        let run = crate::admit::apply(d, verdict, &self.lists[queue], &self.acks);
        if run.is_none() {
            self.lanes[lane].finish();
        }
        run
    }

    /// [`Server::admit`] without waiting: true when an ordinary job may start now.
    pub fn try_admit(&self, d: &mut Delivery) -> bool {
        d.admitted = !d.suspect && self.gate.try_enter();
        d.admitted
    }

    /// A fetched job that was not admitted (a stop): it stays in the
    /// in-progress list, which the stop hands back to its queue.
    pub fn give_back(&self, d: &mut Delivery) {
        self.release_held(d);
        self.lanes[d.lane].finish();
    }

    /// A job's throttle hold, no longer refreshed: it goes back with its result.
    fn take_held(&self, d: &mut Delivery) -> Option<Box<Held>> {
        let held = d.held.take()?;
        if let Some(t) = &self.throttles {
            t.forget(&held);
        }
        Some(held)
    }

    /// Gives a job's throttle hold back now (a job handed back without a result).
    fn release_held(&self, d: &mut Delivery) {
        if let Some(held) = self.take_held(d) {
            let _ = self.acks.send(Msg::Release(held));
        }
    }

    /// An admitted job ended.
    fn release(&self, d: &Delivery) {
        if !d.admitted {
            return;
        }
        if d.alone {
            self.gate.leave_alone(true);
        } else {
            self.gate.leave();
        }
    }

    /// Where health checks are answered, if anywhere.
    pub fn health_addr(&self) -> Option<SocketAddr> {
        self.health_addr
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

    /// Marks a job as started by the calling thread: it shows in the work
    /// hash until it finishes, and its run time is measured from here.
    pub fn begin(&self, d: &mut Delivery) {
        let started = Instant::now();
        d.started = Some(started);
        if let Some((key, UniqueUntil::Start)) = &d.lock {
            let _ = self.acks.send(Msg::Unlock(key.clone(), d.jid.clone()));
        }
        self.work.insert(
            d.id,
            Work {
                tid: work::current_tid(),
                queue: self.queue_names[d.queue].clone(),
                payload: Arc::from(d.payload.source()),
                run_at: self.work.epoch_secs(started),
                cancelled: false,
            },
        );
    }

    /// Counts a finished job; the `max_jobs`-th quiets the process and asks for a recycle.
    fn count_finished(&self, outcome: Outcome) {
        let n = self.tally.add(outcome);
        if self.config.max_jobs == Some(n) {
            log::info!("recycling this process: it finished {n} jobs (max_jobs)");
            self.control.set(RunState::Quiet);
            let _ = self.recycle.send(Signal::Recycle);
        }
    }

    /// Ends the bookkeeping of a started job and counts it for the metrics tab.
    fn end(&self, d: &Delivery, ok: bool, outcome: Outcome) {
        self.work.remove(d.id);
        self.release(d);
        self.count_finished(outcome);
        let took = d.took.or_else(|| d.started.map(|t| t.elapsed()));
        if let Some(took) = took {
            self.lanes[d.lane].ran(took);
        }
        if !self.config.beat.is_some_and(|b| b.metrics) {
            return;
        }
        let ms = took.map_or(0, |t| t.as_millis() as u64);
        // Sidekiq counts ActiveJob jobs under the class they wrap.
        self.metrics.record(d.wrapped.as_deref().unwrap_or(&d.class), ok, ms);
    }

    /// Records a job as done: it leaves the in-progress list on the next write
    /// (and a unique job's lock goes with it).
    pub fn complete(&self, mut d: Box<Delivery>) {
        self.end(&d, true, Outcome::Succeeded);
        let unlock = unlock_of(&d);
        let batch = batch_of(&mut d, BatchOutcome::Ok);
        let held = self.take_held(&mut d);
        let at = (d.lane, d.queue, d.pos);
        self.send(at, Raw::Ran(d), Settle::Done, false, unlock, batch, held);
    }

    /// The job's batch was invalidated: it is not run, counts as done for its
    /// batch, and is not counted as processed (a unique lock is released).
    pub fn skip(&self, d: Box<Delivery>) {
        self.drop_unrun(d, Outcome::Skipped, Settle::Done);
    }

    /// `OverLimit` escaped the job: it goes to the `schedule` set with its
    /// `overrated` count raised (`overlimit.rs`), counted as processed, not
    /// failed. Returns when it runs next (epoch seconds), or the delivery
    /// untouched once it was rescheduled `max` times (fail it then).
    #[allow(clippy::result_large_err)]
    pub fn reschedule(
        &self,
        mut d: Box<Delivery>,
        max: u32,
        delay: Option<f64>,
    ) -> std::result::Result<f64, Box<Delivery>> {
        if d.payload.overrated() >= u64::from(max) {
            return Err(d);
        }
        self.end(&d, true, Outcome::Rescheduled);
        let raw = d.payload.source().as_bytes().to_vec();
        let (at, unlock, held) = ((d.lane, d.queue, d.pos), None, self.take_held(&mut d));
        let Some(r) = crate::overlimit::reschedule(d.payload, max, delay, timestamp::now(), rand::random()) else {
            unreachable!("the count was checked above")
        };
        let settle = Settle::Schedule { at: r.at, payload: r.payload, parked: None };
        self.send(at, raw.into(), settle, false, unlock, None, held);
        Ok(r.at)
    }

    /// The job expired before it could start: it is dropped, not run, not
    /// retried, and counted (`kiq:stat:expired`); a unique lock is released.
    pub fn expire(&self, d: Box<Delivery>) {
        self.drop_unrun(d, Outcome::Expired, Settle::Expired);
    }

    /// Settles a job that will not run (skipped or expired): done for its
    /// batch, not counted as processed, its unique lock released.
    fn drop_unrun(&self, mut d: Box<Delivery>, outcome: Outcome, settle: Settle) {
        self.work.remove(d.id);
        self.release(&d);
        self.count_finished(outcome);
        let unlock = unlock_of(&d);
        let batch = batch_of(&mut d, BatchOutcome::Ok);
        let held = self.take_held(&mut d);
        let (lane, queue, pos) = (d.lane, d.queue, d.pos);
        let s = Settlement {
            list: self.lists[queue].clone(),
            pos,
            raw: Raw::Ran(d),
            settle,
            processed: false,
            failed: false,
            unlock,
            batch,
            held,
        };
        let _ = self.acks.send(Msg::Settle(s));
        self.lanes[lane].finish();
    }

    /// The job if it may still start; else it expired (`expires_at` passed):
    /// dropped here, before any thread runs Python for it, and logged.
    pub fn unexpired(&self, d: Box<Delivery>) -> Option<Box<Delivery>> {
        if !d.expires_at.is_some_and(|at| timestamp::now() > at) {
            return Some(d);
        }
        log::warn!("job_aborted {} jid={} queue={} reason=expired", d.class, d.jid, self.queue_names[d.queue]);
        self.expire(d);
        None
    }

    /// Whether a failure of this job keeps a backtrace (its own option, else
    /// its worker's): the caller formats one only then.
    pub fn wants_backtrace(&self, d: &Delivery) -> bool {
        d.payload.backtrace().unwrap_or(self.config.workers.of(&d.class).backtrace) != Backtrace::Off
    }

    /// Records a job as failed, sending it to the retry set, the dead set or
    /// nowhere, as its options (else its worker's) say; returns where it went.
    pub fn fail(&self, mut d: Box<Delivery>, failure: &Failure) -> Fate {
        let worker = self.config.workers.of(&d.class);
        self.end(&d, false, Outcome::Failed);
        let held = self.take_held(&mut d);
        let queue = self.queue_names[d.queue].clone();
        let raw = d.payload.source().to_owned();
        let at = (d.lane, d.queue, d.pos);
        let lock = unlock_of(&d);
        let batch = d.batch.take();
        let jid = std::mem::take(&mut d.jid);
        let (disposition, fate) = retry::on_failure(
            d.payload,
            &queue,
            failure,
            worker,
            &self.config.policy,
            timestamp::now(),
            rand::random(),
        );
        // A failing unique job keeps its lock while it retries; one that dies releases it.
        let outcome = BatchOutcome::of(&disposition);
        let (settle, gone) = Settle::of_failure(disposition);
        let unlock = lock.filter(|_| gone);
        let batch = batch.and_then(|b| Settled::from_ref(*b, jid, outcome));
        self.send(at, raw.into_bytes().into(), settle, true, unlock, batch, held);
        fate
    }

    /// Gives a job up without a result (stop deadline passed): it stays in
    /// the in-progress list and goes back to its queue.
    pub fn abandon(&self, d: &mut Delivery) {
        self.work.remove(d.id);
        self.release(d);
        self.release_held(d);
        if self.memory_stop.load(Ordering::Acquire) {
            let mut back = self.handed_back.lock().unwrap_or_else(PoisonError::into_inner);
            back.push((d.queue, d.payload.source().as_bytes().to_vec(), d.alone));
        }
        self.lanes[d.lane].finish();
    }

    /// Whether cancelling this running job was asked (seen by the heartbeat).
    pub fn is_cancelled(&self, d: &Delivery) -> bool {
        self.work.is_cancelled(d.id)
    }

    /// Jobs running now.
    pub fn busy(&self) -> usize {
        self.work.len()
    }

    /// The next signal from the Web UI (TSTP has already quieted the server);
    /// None after `timeout`, and soon after a stop begins, so the thread
    /// waiting here can be joined before the interpreter exits.
    pub fn next_signal(&self, timeout: Duration) -> Option<Signal> {
        let rx = self.signals.lock().unwrap_or_else(PoisonError::into_inner);
        let deadline = Instant::now() + timeout;
        while self.state() != RunState::Stopping {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left.min(SIGNAL_POLL)) {
                Ok(signal) => return Some(signal),
                Err(sync_mpsc::RecvTimeoutError::Timeout) if !left.is_zero() => {}
                Err(_) => return None,
            }
        }
        None
    }

    /// Sends a finished job's settlement; `at` is its (lane, queue).
    #[allow(clippy::too_many_arguments)]
    fn send(
        &self,
        (lane, queue, pos): (usize, usize, u64),
        raw: Raw,
        settle: Settle,
        failed: bool,
        unlock: Option<(String, String)>,
        batch: Option<Settled>,
        held: Option<Box<Held>>,
    ) {
        let s = Settlement {
            list: self.lists[queue].clone(),
            pos,
            raw,
            settle,
            processed: true,
            failed,
            unlock,
            batch,
            held,
        };
        // After the final write the channel is closed; the job was requeued.
        let _ = self.acks.send(Msg::Settle(s));
        self.lanes[lane].finish();
    }

    /// First half of a stop: no more fetches, and threads take no new job.
    /// Returns the number of fetched jobs that no thread had started.
    pub fn begin_stop(&self) -> usize {
        self.control.set(RunState::Stopping);
        self.gate.close();
        // Fetchers blocked in BLMOVE see the state change and unblock themselves.
        let mut untaken = 0;
        for lane in &self.lanes {
            for mut d in lane.close() {
                self.release_held(&mut d);
                untaken += 1;
            }
        }
        untaken
    }

    /// Second half of a stop: write pending results (until `deadline`), then
    /// return every job left in the in-progress lists to its queue.
    pub async fn finish_stop(&self, deadline: Instant) -> Result<StopReport> {
        self.control.set(RunState::Stopping);
        let tasks: Vec<JoinHandle<()>> =
            std::mem::take(&mut *self.tasks.lock().unwrap_or_else(PoisonError::into_inner));
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
        self.judge_handed_back().await;
        let requeued = self.requeue_all().await;
        self.retire().await;
        report.requeued = requeued?;
        Ok(report)
    }

    /// After a stop caused by memory: the jobs still running at the deadline
    /// are judged as a death's (`poison.rs`), so a job that blows the limit
    /// every time ends as a poison pill instead of recycling processes forever.
    async fn judge_handed_back(&self) {
        let back = std::mem::take(&mut *self.handed_back.lock().unwrap_or_else(PoisonError::into_inner));
        if back.is_empty() {
            return;
        }
        let alone = back.iter().any(|(_, _, a)| *a);
        for (queue, raw, was_alone) in &back {
            let verdict = if *was_alone || (!alone && back.len() == 1) {
                Verdict::Blame
            } else if alone {
                Verdict::Innocent
            } else {
                Verdict::Suspect
            };
            let (policy, identity) = (&self.config.policy, &self.config.process.identity);
            let list = &self.lists[*queue].key;
            let queue = &self.queue_names[*queue];
            let why = "was recycled for memory";
            let r = poison::hand_back(
                &self.pool,
                &self.keys,
                policy,
                self.config.max_recoveries,
                list,
                queue,
                raw,
                verdict,
                identity,
                why,
            )
            .await;
            if let Err(e) = r {
                log::error!("cannot judge a job handed back at a memory recycle (it is requeued as it is): {e}");
            }
        }
    }

    /// Moves every job left in this process's in-progress lists back to its queue.
    async fn requeue_all(&self) -> Result<usize> {
        let mut total = 0;
        for (queue, wip) in self.queue_names.iter().zip(self.lists.iter().map(|l| &l.key)) {
            let moved: usize = scripts::REQUEUE
                .key(&**wip)
                .key(self.keys.queue(queue))
                .key(self.keys.queues())
                .arg(&**queue)
                .invoke_async(&mut self.pool.get())
                .await?;
            total += moved;
        }
        let identity = &self.config.process.identity;
        for capsule in &self.config.process.capsules {
            let first = &capsule.queues[0].0;
            let _: () = redis::cmd("UNLINK")
                .arg(self.keys.last_fetch(identity, first))
                .arg(self.keys.last_fetch_token(identity, first))
                .query_async(&mut self.pool.get())
                .await?;
        }
        Ok(total)
    }

    /// Recovers the jobs of another process known to be dead (a swarm's
    /// child that exited), at once; see [`crate::orphans::recover_dead`].
    /// `timed_out`: jid → the `hard_timeout` its process was killed for.
    pub async fn recover_dead(&self, identity: &str, timed_out: &HashMap<String, f64>) -> Result<Recovery> {
        if identity == self.config.process.identity {
            return Err(KiqError::config("a process cannot recover itself"));
        }
        let (policy, max) = (&self.config.policy, self.config.max_recoveries);
        let timed_out = TimedOut { limits: timed_out.clone(), workers: self.config.workers.clone() };
        crate::orphans::recover_dead(&self.pool, &self.keys, policy, max, identity, &timed_out).await
    }

    /// Glob of this process's in-progress lists (for messages).
    pub fn in_progress_pattern(&self) -> String {
        self.keys.in_progress_pattern_of(&self.config.process.identity)
    }

    /// Whether this process is the kiq leader now.
    pub fn is_leader(&self) -> bool {
        self.leadership.is_leader()
    }

    /// Ends the heartbeat (and election, giving leadership up) and takes the
    /// process off the Web UI's Busy page.
    async fn retire(&self) {
        let _ = self.halt.send(true);
        let background = std::mem::take(&mut *self.background.lock().unwrap_or_else(PoisonError::into_inner));
        for task in background {
            let _ = task.await;
        }
        let beat = self.heartbeat.lock().unwrap_or_else(PoisonError::into_inner).take();
        let Some(beat) = beat else { return };
        let _ = beat.await;
        let stats = self.metrics.take();
        let mut pipe = redis::pipe();
        metrics::write(&mut pipe, &self.keys, &stats, timestamp::now());
        let written: redis::RedisResult<()> = if stats.is_empty() {
            Ok(())
        } else {
            match crate::exec::atomic(&mut pipe, &mut self.pool.get()).await {
                Ok(applied) if !applied.failed.is_empty() => {
                    log::warn!("the last execution metrics were partly not written: {}", applied.failed.join("; "));
                    Ok(())
                }
                other => other.map(|_| ()),
            }
        };
        if let Err(e) = written.and(heartbeat::clear(&self.pool, &self.keys, &self.config.process.identity).await) {
            log::warn!("could not remove this process from Redis at stop (it expires in 60 s): {e}");
        }
    }

    /// Waits for a job of lane `index` (see [`Lane::take`]), for a caller
    /// that holds no GIL: it runs the job at once ([`Lane::resumed`]).
    pub fn take(&self, index: usize, timeout: Option<Duration>) -> Result<Take> {
        let lane = self.lane(index)?;
        let taken = lane.take(timeout);
        if matches!(taken, Take::Job(_)) {
            lane.resumed();
        }
        Ok(taken)
    }
}

/// The health-check listener, bound now so a taken port fails the start.
fn bind_health(addr: SocketAddr) -> Result<tokio::net::TcpListener> {
    let fail = |e: std::io::Error| KiqError::config(format!("cannot answer health checks on {addr}: {e}"));
    let std_listener = std::net::TcpListener::bind(addr).map_err(fail)?;
    std_listener.set_nonblocking(true).map_err(fail)?;
    tokio::net::TcpListener::from_std(std_listener).map_err(fail)
}

/// Extends the throttle holds of the running jobs every `every` until halted.
async fn refresh_holds(throttles: Arc<Throttles>, pool: Arc<Pool>, every: Duration, mut halt: watch::Receiver<bool>) {
    let mut failing = false;
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            _ = halt.wait_for(|h| *h) => return,
        }
        match throttles.refresh(&pool).await {
            Ok(()) => failing = false,
            Err(e) if !failing => {
                log::warn!("cannot refresh the throttle holds of running jobs (they expire after lock_timeout): {e}");
                failing = true;
            }
            Err(_) => {}
        }
    }
}

/// Quiets the process and asks for a recycle once its resident memory passes
/// `max_kb`, checked every `MEMORY_CHECK` (often, so a growing job cannot
/// overshoot far between checks).
async fn watch_memory(
    max_kb: u64,
    control: Control,
    recycle: sync_mpsc::Sender<Signal>,
    memory_stop: Arc<AtomicBool>,
    mut halt: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(MEMORY_CHECK) => {}
            _ = halt.wait_for(|h| *h) => return,
        }
        let rss = heartbeat::rss_kb();
        if rss > max_kb && control.state() == RunState::Running {
            log::warn!("recycling this process: resident memory {rss} kB is above max_memory_bytes ({max_kb} kB)");
            memory_stop.store(true, Ordering::Release);
            control.set(RunState::Quiet);
            let _ = recycle.send(Signal::Recycle);
            return;
        }
    }
}
