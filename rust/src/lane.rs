//! The hand-off between one capsule's fetcher and the threads that run its jobs.
//!
//! A lane holds the jobs fetched for its queue that no thread has taken yet,
//! and counts the jobs it has out (fetched and not yet finished). The fetcher
//! only asks Redis for `concurrency + prefetch - out` jobs, so a process never
//! holds more jobs of a queue than it can run at once, plus a prefetch
//! waiting for a thread ([`Prefetch`]: a fixed number, or, by default, some
//! while the lane's jobs are short and none otherwise; jobs held when they
//! turn slow go to threads asleep, and those left once every thread is busy
//! are handed back, [`Lane::excess`]). Taking a ready job is a
//! mutex pop; only an empty lane makes a thread sleep (on a condvar, so it
//! costs nothing).
//!
//! Waking is a relay: new jobs wake one sleeping thread, and a thread woken
//! from sleep that leaves jobs behind wakes the next. Threads busy with short
//! jobs come back for more on their own, so a batch of quick jobs does not
//! wake (and make fight for the GIL) a thread per job, while a batch of slow
//! ones still reaches every idle thread, one wake-up apart.
//!
//! While the lane's recent jobs are short (see [`SHORT_JOB`]) and it got
//! jobs lately, one sleeping thread is on standby: it waits at most
//! [`STANDBY_POLL`] at a time. A woken thread then leaves the jobs behind it
//! to the threads coming back (no relay): a no-op job costs a quarter of the
//! Python CPU when it does not wake another thread for the GIL. Should those
//! threads not come back (a job that turned out slow), the standby takes the
//! next job within [`STANDBY_POLL`] and the relay resumes, so a ready job
//! never waits longer than that for a thread that is free. In a process with
//! several lanes, a thread woken for short jobs passes the wake-up on only
//! once it has the GIL ([`Lane::resumed`]), so one thread per lane at a time
//! queues for it.
//!
//! A lane never runs more than its concurrency at once: a thread takes a job
//! only while fewer than `concurrency` of the lane's jobs are taken and not
//! finished. A thread that runs its job holds one of those slots anyway; the
//! rule matters for async jobs, which a thread hands to the event loop and
//! then takes the next, so held (prefetched) jobs wait here for a slot
//! instead of running past the concurrency. Such a thread sleeps on its own
//! condvar (`slot`) and is woken as jobs finish: after a quarter of the
//! slots while jobs are short (one wake-up, and one GIL hand-off, starts
//! several; it also looks every [`STANDBY_POLL`], so one slot freed among
//! jobs that turned long is not left idle), else after each.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering, fence};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::Notify;

use crate::batches::BatchRef;
use crate::job::{Payload, UniqueUntil};
use crate::marshal;
use crate::throttle;

/// A job taken from Redis, waiting for or being run by a thread. It travels
/// boxed (`Box<Delivery>`), from the fetcher's decode to the result writer,
/// which frees it: moving it by value copied ~370 bytes a dozen times per
/// job, most of them on the thread holding the GIL.
#[derive(Debug)]
// Independent flags of independent concerns (isolation, the gate, batches).
#[allow(clippy::struct_excessive_bools)]
pub struct Delivery {
    /// Unique within the process.
    pub id: u64,
    /// Index of the lane (capsule) that runs it.
    pub lane: usize,
    /// Number of the queue it came from (a capsule may serve several).
    pub queue: usize,
    /// Its position in that queue's in-progress list ([`crate::wip::WipList`]).
    pub pos: u64,
    /// The payload, whose `source()` is the exact string in Redis.
    pub payload: Payload,
    pub class: String,
    /// The class an ActiveJob job wraps (its `wrapped`), under which
    /// Sidekiq's metrics count it; read at fetch, off the thread that runs it.
    pub wrapped: Option<Box<str>>,
    pub jid: String,
    /// When a thread started it (for an async job: when its coroutine started).
    pub started: Option<Instant>,
    /// How long an async job's coroutine ran, from its start to its return
    /// (it may be settled later, on the loop's next round); None for others.
    pub took: Option<Duration>,
    /// Epoch seconds after which it must not start (`expires_at`).
    pub expires_at: Option<f64>,
    /// A unique job's lock key and when it is released.
    pub lock: Option<(String, UniqueUntil)>,
    /// The arguments the worker gets (an array, checked against `args.rs`'s
    /// limits at fetch): the payload's `args`, or an ActiveJob job's decoded ones.
    pub args: Value,
    /// Keyword arguments (an ActiveJob job's Ruby keywords, an object), if any.
    pub kwargs: Option<Value>,
    /// Was in flight when a process died: runs alone (`isolation.rs`).
    pub suspect: bool,
    /// Admitted to run alone (the gate is held exclusively).
    pub alone: bool,
    /// Admitted through the gate (and so released by its end).
    pub admitted: bool,
    /// An encrypted job's last argument, decrypted at fetch (its place in
    /// `args` holds the ciphertext, which is all that is ever written back).
    pub bag: Option<Box<marshal::Value>>,
    /// Its kiq batch (a member, or a callback of one), read at fetch.
    pub batch: Option<Box<BatchRef>>,
    /// Its batch was invalidated: the job is skipped, not run.
    pub batch_invalidated: bool,
    /// Its hold on a concurrency throttle's key, given back when it ends.
    pub held: Option<Box<throttle::Held>>,
    /// When a throttle admitted it (epoch seconds, Redis's clock).
    pub throttle_at: Option<f64>,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl Delivery {
    pub fn new(lane: usize, queue: usize, payload: Payload, class: String, jid: String, args: Value) -> Self {
        Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            lane,
            queue,
            pos: 0,
            payload,
            class,
            wrapped: None,
            jid,
            started: None,
            took: None,
            expires_at: None,
            lock: None,
            args,
            kwargs: None,
            suspect: false,
            alone: false,
            admitted: false,
            bag: None,
            batch: None,
            batch_invalidated: false,
            held: None,
            throttle_at: None,
        }
    }
}

/// A lane's jobs turn "short" once they average under this (wall time from
/// start to end): a thread is back for the next one sooner than a woken
/// thread would get the GIL.
pub const SHORT_JOB: Duration = Duration::from_micros(100);
/// Short jobs turn "slow" again only once they average this much. Between the
/// two a lane stays what it was: one job that waited 5 ms for the GIL or a CPU
/// among short ones would otherwise turn it slow, handing its held jobs back
/// to be fetched again (several times per 100,000 no-op jobs). Held jobs of
/// such a lane wait a few milliseconds longer at most.
pub const SLOW_JOB: Duration = Duration::from_micros(400);
/// How long the standby thread sleeps at a time.
pub const STANDBY_POLL: Duration = Duration::from_millis(1);
/// A standby stays only this long after jobs were last offered (an idle lane polls nothing).
const STANDBY_FOR: Duration = Duration::from_millis(10);

#[derive(Default)]
struct Ready {
    jobs: VecDeque<Box<Delivery>>,
    closed: bool,
    /// Threads asleep in [`Lane::take`]: a notify with none costs a futex syscall for nothing.
    waiting: usize,
    /// A sleeping thread waits at most [`STANDBY_POLL`] at a time: a woken
    /// thread may leave jobs behind without waking another.
    standby: bool,
    /// When jobs were last offered.
    offered: Option<Instant>,
    /// Jobs taken so far: a standby that sees it move during its poll knows
    /// the busy threads are coming back for jobs.
    takes: u64,
    /// Threads that took a job from [`Lane::take`] and are not running it
    /// yet (waiting for the GIL, [`Lane::resumed`]); counted only in a lane
    /// that shares the GIL.
    pending: usize,
}

/// What waiting for a job gave.
#[derive(Debug)]
pub enum Take {
    Job(Box<Delivery>),
    /// The lane was closed (stop): no job will come.
    Closed,
    TimedOut,
}

/// How many jobs a lane fetches beyond its concurrency, to wait for a free
/// thread so threads need not wait for a fetch's round trip.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prefetch {
    /// Exactly this many (0: only jobs a thread can start now, as Sidekiq).
    Fixed(usize),
    /// [`AUTO_PREFETCH`] × concurrency, and at least [`AUTO_PREFETCH_MIN`]
    /// (fewer for big payloads: [`AUTO_PREFETCH_BYTES`]), while recent jobs
    /// are short (from under [`SHORT_JOB`] on average until [`SLOW_JOB`]); none otherwise. A fetch's
    /// fixed costs (a Redis round trip and script call, a hand-off) are most
    /// of a short job's cost, and jobs held for short jobs wait a few
    /// milliseconds at most, while a slow job's queue keeps Sidekiq's
    /// behaviour. Jobs held when the lane's jobs turn slow go to its threads
    /// asleep, and those no thread can start go back to their queue
    /// ([`Lane::excess`]), so another process can start them.
    Auto,
}

/// The automatic prefetch, in multiples of the lane's concurrency.
pub const AUTO_PREFETCH: usize = 4;
/// The automatic prefetch's floor: what a fetch carries decides its cost per
/// job more than the concurrency does (no-op jobs, 8 queues × c10 each:
/// 125k jobs/s with 40 held per queue, 205k with 118, 241k with 246, against
/// 169k for 1 queue × c80; 1 queue × c25, 5 interleaved rounds: 204k with
/// 256 held, 261k with 512, 270k with 1,024; later, two sets of 3 and 4
/// interleaved rounds of 200,000 jobs: c25 ~246k with 512, ~261k with 1,024,
/// c80 ~245k against ~260k, both faster in each round of the second set,
/// 8 × c10 even. The lane then runs dry less often while a fetch is on its
/// way: fewer, bigger fetches).
pub const AUTO_PREFETCH_MIN: usize = 1024;
/// What the floor may hold in payload bytes (at the lane's recent average
/// size), so a queue of big payloads is not held 1,024 at a time.
pub const AUTO_PREFETCH_BYTES: u64 = 8 << 20;

pub struct Lane {
    pub name: String,
    pub concurrency: usize,
    /// Jobs fetched beyond `concurrency`.
    prefetch: Prefetch,
    ready: Mutex<Ready>,
    cond: Condvar,
    /// Where threads wait for a free slot ([`Lane::wait_for_slot`]).
    slot: Condvar,
    /// Jobs taken and not finished: at most `concurrency`.
    running: AtomicUsize,
    /// Threads asleep on `slot`, read by [`Lane::finish`] without the lock.
    slot_waiters: AtomicUsize,
    /// How many jobs `ready` holds, as of its last change: a finishing job
    /// reads it without taking the lock the threads take jobs under.
    ready_len: AtomicUsize,
    out: AtomicUsize,
    /// Worker threads alive, as last reported; `usize::MAX` until the first report.
    threads: AtomicUsize,
    /// Worker threads the lane should have: its concurrency, or fewer when
    /// every job is handed off at once (an app of async workers only).
    threads_wanted: AtomicUsize,
    /// Woken whenever a job finishes, so the fetcher can fetch again.
    pub(crate) demand: Notify,
    /// Woken when the lane's jobs are slow while it holds jobs for the
    /// automatic prefetch and every thread is busy: the fetcher hands them
    /// back ([`Lane::excess`]).
    pub(crate) shed: Notify,
    /// Recent jobs' mean run time in nanoseconds (a moving average; starts
    /// "long", so the relay holds until a few dozen short jobs are seen).
    job_ns: AtomicU64,
    /// Whether recent jobs are short ([`SHORT_JOB`], [`SLOW_JOB`]).
    short: AtomicBool,
    /// Recent jobs' mean payload size in bytes (a moving average over fetches).
    job_bytes: AtomicU64,
    /// Redis refused a hand-back (a key of the wrong type): held jobs stay.
    keep_held: AtomicBool,
    /// Other lanes' threads run in this process too ([`Lane::resumed`]).
    shares_gil: bool,
}

impl Lane {
    pub fn new(name: impl Into<String>, concurrency: usize) -> Self {
        Self {
            name: name.into(),
            concurrency,
            prefetch: Prefetch::Fixed(0),
            ready: Mutex::new(Ready::default()),
            cond: Condvar::new(),
            slot: Condvar::new(),
            running: AtomicUsize::new(0),
            slot_waiters: AtomicUsize::new(0),
            ready_len: AtomicUsize::new(0),
            out: AtomicUsize::new(0),
            threads: AtomicUsize::new(usize::MAX),
            threads_wanted: AtomicUsize::new(concurrency),
            demand: Notify::new(),
            shed: Notify::new(),
            job_ns: AtomicU64::new(10 * SHORT_JOB.as_nanos() as u64),
            short: AtomicBool::new(false),
            job_bytes: AtomicU64::new(1024),
            keep_held: AtomicBool::new(false),
            shares_gil: false,
        }
    }

    /// The lane, its threads running in a process with other lanes' threads
    /// (sharing the GIL) when `shared`.
    #[must_use]
    pub fn sharing_gil(mut self, shared: bool) -> Self {
        self.shares_gil = shared;
        self
    }

    /// The lane, fetching jobs beyond its concurrency as `prefetch` says.
    #[must_use]
    pub fn prefetching(mut self, prefetch: Prefetch) -> Self {
        self.prefetch = prefetch;
        self
    }

    /// Jobs the lane may hold now: running, and waiting for a thread.
    pub fn capacity(&self) -> usize {
        match self.prefetch {
            Prefetch::Fixed(n) => self.concurrency + n,
            Prefetch::Auto if self.short_jobs() => {
                let bytes = self.job_bytes.load(Ordering::Relaxed).max(1);
                let floor = usize::try_from(AUTO_PREFETCH_BYTES / bytes).unwrap_or(usize::MAX).min(AUTO_PREFETCH_MIN);
                self.concurrency + (self.concurrency * AUTO_PREFETCH).max(floor)
            }
            Prefetch::Auto => self.concurrency,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Ready> {
        self.ready.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How many more jobs the fetcher may take for this lane.
    pub fn free(&self) -> usize {
        self.capacity().saturating_sub(self.out.load(Ordering::Acquire))
    }

    /// Records how many worker threads serve this lane now, and how many it should have.
    pub fn set_threads(&self, alive: usize, wanted: usize) {
        self.threads.store(alive, Ordering::Relaxed);
        self.threads_wanted.store(wanted, Ordering::Relaxed);
    }

    /// Worker threads this lane should have.
    pub fn threads_wanted(&self) -> usize {
        self.threads_wanted.load(Ordering::Relaxed)
    }

    /// Worker threads serving this lane, once reported.
    pub fn threads(&self) -> Option<usize> {
        Some(self.threads.load(Ordering::Relaxed)).filter(|&n| n != usize::MAX)
    }

    /// Jobs fetched and not yet finished.
    pub fn out(&self) -> usize {
        self.out.load(Ordering::Acquire)
    }

    /// Adds freshly fetched jobs. Returns them if the lane is closed (stop),
    /// since they then stay in the in-progress list for the requeue.
    pub fn offer(&self, jobs: Vec<Box<Delivery>>) -> Option<Vec<Box<Delivery>>> {
        self.reserve(jobs.len());
        self.offer_reserved(jobs)
    }

    /// Counts `n` fetched jobs as out before they are offered (a throttle
    /// checks them meanwhile), so the fetcher does not fetch for their slots.
    pub fn reserve(&self, n: usize) {
        self.out.fetch_add(n, Ordering::AcqRel);
    }

    /// Reserved jobs that will not be offered (parked or failed): their slots are free again.
    pub fn unreserve(&self, n: usize) {
        if n > 0 {
            let _ = self.out.fetch_update(Ordering::AcqRel, Ordering::Acquire, |o| Some(o.saturating_sub(n)));
            self.demand.notify_one();
        }
    }

    /// [`Lane::offer`] for reserved jobs.
    pub fn offer_reserved(&self, jobs: Vec<Box<Delivery>>) -> Option<Vec<Box<Delivery>>> {
        if jobs.is_empty() {
            return None;
        }
        let mut ready = self.lock();
        if ready.closed {
            drop(ready);
            self.unreserve(jobs.len());
            return Some(jobs);
        }
        let bytes: usize = jobs.iter().map(|d| d.payload.source().len()).sum();
        let mean = (bytes / jobs.len()) as u64;
        let avg = self.job_bytes.load(Ordering::Relaxed);
        self.job_bytes.store(avg - avg / 4 + mean / 4, Ordering::Relaxed);
        ready.jobs.extend(jobs);
        self.ready_len.store(ready.jobs.len(), Ordering::Release);
        ready.offered = Some(Instant::now());
        let waiting = ready.waiting;
        // With short jobs and a standby, a thread still out running one comes
        // back for these (a woken thread would take one and then wait for
        // the GIL the busy thread holds); only a lane whose threads all
        // sleep needs a wake-up.
        let busy = self.threads().is_some_and(|t| waiting < t);
        let leave = ready.standby && busy && self.short_jobs();
        drop(ready);
        if waiting > 0 && !leave {
            self.cond.notify_one();
        }
        None
    }

    /// A ready job, without waiting (none while `concurrency` jobs run).
    pub fn try_take(&self) -> Option<Box<Delivery>> {
        let mut ready = self.lock();
        let job = self.pop(&mut ready);
        if job.is_some() {
            self.drained(&ready);
        }
        job
    }

    /// The next ready job, if one may start now (a slot is free): counted as running.
    fn pop(&self, ready: &mut Ready) -> Option<Box<Delivery>> {
        // Taken only under the lock, so `running` cannot pass the concurrency
        // between this check and the increment (finishes only lower it).
        if self.running.load(Ordering::Acquire) >= self.concurrency {
            return None;
        }
        let job = ready.jobs.pop_front()?;
        self.running.fetch_add(1, Ordering::AcqRel);
        self.ready_len.store(ready.jobs.len(), Ordering::Release);
        ready.takes += 1;
        Some(job)
    }

    /// How many slots must be free before a thread waiting for one is woken:
    /// a quarter of them while jobs are short, so one wake-up starts several.
    fn slot_batch(&self) -> usize {
        if self.short_jobs() { (self.concurrency / 4).max(1) } else { 1 }
    }

    /// After a job is taken: once none is ready, the fetcher must not wait for more slots.
    fn drained(&self, ready: &Ready) {
        // Pairs with the fence in [`Lane::finish`]: the count stored, then `out` read.
        fence(Ordering::SeqCst);
        if ready.jobs.is_empty() && self.free() > 0 {
            self.demand.notify_one();
        }
    }

    /// Slow (so no automatic prefetch now), and holding more jobs than its threads run.
    fn holds_extra(&self) -> bool {
        self.prefetch == Prefetch::Auto && !self.short_jobs() && self.out() > self.capacity()
    }

    /// Waits for a job until `timeout` (forever when `None`) or until the lane closes.
    pub fn take(&self, timeout: Option<Duration>) -> Take {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut ready = self.lock();
        let mut slept = false;
        // A standby whose poll saw jobs taken: the busy threads come back, so it sleeps on.
        let mut leave = false;
        loop {
            if let Some(job) = if leave { None } else { self.pop(&mut ready) } {
                if self.shares_gil {
                    ready.pending += 1;
                }
                // Short jobs with a standby need no relay; in a lane that shares the
                // GIL they get it once this thread has the GIL ([`Lane::resumed`]).
                let later = self.short_jobs() && (ready.standby || self.shares_gil);
                if slept && !ready.jobs.is_empty() && ready.waiting > 0 && !later {
                    // Pass the wake-up on: more jobs wait than this thread can take.
                    self.cond.notify_one();
                }
                self.drained(&ready);
                return Take::Job(job);
            }
            if ready.closed {
                return Take::Closed;
            }
            slept = true;
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left.is_some_and(|l| l.is_zero()) {
                return Take::TimedOut;
            }
            if !leave && !ready.jobs.is_empty() {
                ready = self.wait_for_slot(ready, left);
                continue;
            }
            ready.waiting += 1;
            let standby =
                !ready.standby && self.short_jobs() && ready.offered.is_some_and(|t| t.elapsed() < STANDBY_FOR);
            ready.standby |= standby;
            let left = if standby { Some(left.map_or(STANDBY_POLL, |l| l.min(STANDBY_POLL))) } else { left };
            let takes = ready.takes;
            let timed_out;
            (ready, timed_out) = match left {
                None => (self.cond.wait(ready).unwrap_or_else(PoisonError::into_inner), false),
                Some(left) => {
                    let (r, t) = self.cond.wait_timeout(ready, left).unwrap_or_else(PoisonError::into_inner);
                    (r, t.timed_out())
                }
            };
            if standby {
                ready.standby = false;
            }
            ready.waiting -= 1;
            // Taking a job now would mean waiting for the GIL a busy thread
            // holds, while that thread runs the jobs behind this one.
            leave = standby && timed_out && ready.takes != takes;
        }
    }

    /// Jobs are ready but `concurrency` of the lane's jobs run: sleeps until
    /// [`Lane::finish`] frees slots (or `left` passes, or the lane closes).
    /// While jobs are short it wakes every [`STANDBY_POLL`] as well: `finish`
    /// waits for a quarter of the slots then, and a slot freed among jobs
    /// that turned long must not stay idle until the next one ends.
    fn wait_for_slot<'a>(&'a self, ready: MutexGuard<'a, Ready>, left: Option<Duration>) -> MutexGuard<'a, Ready> {
        // Counted before `running` is read again, and `finish` lowers `running`
        // before it reads the count: one of the two sees the other's change.
        self.slot_waiters.fetch_add(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        let left = if self.slot_batch() > 1 { Some(left.map_or(STANDBY_POLL, |l| l.min(STANDBY_POLL))) } else { left };
        let ready = if self.running.load(Ordering::SeqCst) < self.concurrency || ready.closed {
            ready
        } else {
            match left {
                None => self.slot.wait(ready).unwrap_or_else(PoisonError::into_inner),
                Some(left) => self.slot.wait_timeout(ready, left).unwrap_or_else(PoisonError::into_inner).0,
            }
        };
        self.slot_waiters.fetch_sub(1, Ordering::SeqCst);
        ready
    }

    /// The thread that got a job from [`Lane::take`] runs Python again (it
    /// holds the GIL): it is no longer waiting to start it. In a lane that
    /// shares the GIL with other lanes' threads, this is where short jobs
    /// pass the wake-up on when jobs are left and no standby watches them:
    /// passed on at the take, every sleeping thread of the lane would wake
    /// at once and queue for the GIL behind the other lanes' (8 queues × 10
    /// threads: each waited ~20 ms, 0.015 wake-ups per job), while the one
    /// that has it takes the jobs behind its own unless its job turns out
    /// slow. (A lone lane keeps passing it on at the take: a thread is then
    /// ready the moment the one running its jobs sleeps; passing it on here
    /// made 1 × c80 slower in 14 of 16 interleaved rounds.)
    pub fn resumed(&self) {
        if !self.shares_gil {
            return;
        }
        let mut ready = self.lock();
        ready.pending = ready.pending.saturating_sub(1);
        if ready.pending == 0 && self.short_jobs() && !ready.jobs.is_empty() && ready.waiting > 0 && !ready.standby {
            self.cond.notify_one();
        }
    }

    /// Jobs given up by [`Lane::excess`] could not be handed back (Redis
    /// refused): they are offered again and, from now on, held jobs stay
    /// here to run, as with a fixed prefetch (else they would go round).
    pub fn keep_held(&self, jobs: Vec<Box<Delivery>>) {
        self.keep_held.store(true, Ordering::Relaxed);
        let _ = self.offer(jobs);
    }

    /// Records how long a job ran (from its start to its end).
    pub fn ran(&self, took: Duration) {
        // Capped (an hour) so the sum cannot overflow.
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX).min(3_600_000_000_000);
        // A moving average over about 16 jobs; racing updates only blur it.
        let avg = self.job_ns.load(Ordering::Relaxed);
        let now = avg - avg / 16 + ns / 16;
        self.job_ns.store(now, Ordering::Relaxed);
        if !self.short_jobs() {
            if now < SHORT_JOB.as_nanos() as u64 {
                self.short.store(true, Ordering::Relaxed);
                return;
            }
        } else if now >= SLOW_JOB.as_nanos() as u64 {
            self.short.store(false, Ordering::Relaxed);
        } else {
            return;
        }
        // Slow, and holding jobs beyond the threads: a thread asleep is woken
        // for them (the relay wakes the others), and once every thread is
        // busy the fetcher hands the rest back. Short jobs leave threads
        // asleep while one runs them, and a job that waited for the GIL can
        // turn the lane slow for a moment: those threads take the held jobs.
        // (Not also told at the take that makes every thread busy: with 8
        // queues × 10 threads, each queue's threads wait long for the GIL, so
        // a queue turns slow with every thread holding a job; that handed
        // 500–1,500 jobs per 100,000 back to be fetched again, and was
        // slower in 2 of 3 interleaved rounds.)
        if self.holds_extra() {
            let ready = self.lock();
            if ready.waiting == 0 {
                self.shed.notify_one();
            } else if !ready.jobs.is_empty() {
                self.cond.notify_one();
            }
        }
    }

    /// The jobs the lane holds beyond its capacity, which no thread can start
    /// now (its jobs turned slow, so the automatic prefetch is off, and no
    /// thread waits for a job): the newest ready ones, taken out (oldest
    /// first) and no longer counted as out, for the fetcher to hand back to
    /// their queue. A fixed prefetch keeps what it was told to hold.
    pub fn excess(&self) -> Vec<Box<Delivery>> {
        if self.prefetch != Prefetch::Auto || self.keep_held.load(Ordering::Relaxed) {
            return Vec::new();
        }
        let mut ready = self.lock();
        let over = self.out().saturating_sub(self.capacity()).min(ready.jobs.len());
        // A thread waiting for jobs takes them here and now ([`Lane::ran`] asks again once none waits).
        if over == 0 || ready.waiting > 0 {
            return Vec::new();
        }
        let keep = ready.jobs.len() - over;
        let jobs: Vec<Box<Delivery>> = ready.jobs.drain(keep..).collect();
        self.ready_len.store(ready.jobs.len(), Ordering::Release);
        drop(ready);
        let _ = self.out.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| Some(n.saturating_sub(jobs.len())));
        jobs
    }

    /// Whether recent jobs were short: threads come back for the next one soon.
    fn short_jobs(&self) -> bool {
        self.short.load(Ordering::Relaxed)
    }

    /// Records that a job taken from this lane is finished (or given up).
    /// Wakes the fetcher only when a quarter of the lane's slots is free or no
    /// job is ready for the threads (else [`Lane::drained`] wakes it when the
    /// last ready job is taken): a wake-up per job costs the core a thread
    /// hand-off and Redis a fetch for one or two jobs.
    pub fn finish(&self) {
        let _ = self.out.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        let was = self.running.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1)).unwrap_or(0);
        // `out` drops before the count is read, and a thread emptying the
        // ready jobs stores the count before it reads `out` ([`Lane::drained`]),
        // each with a fence between: one of the two sees the other's change
        // and wakes the fetcher. The same for `running` and a thread about
        // to wait for a slot ([`Lane::wait_for_slot`]).
        fence(Ordering::SeqCst);
        if self.slot_waiters.load(Ordering::SeqCst) > 0 && self.concurrency + 1 - was.max(1) >= self.slot_batch() {
            // Through the lock: a thread between its check and its sleep holds it.
            drop(self.lock());
            self.slot.notify_one();
        }
        if self.free() >= self.capacity().div_ceil(4) || self.ready_len.load(Ordering::Relaxed) == 0 {
            self.demand.notify_one();
        }
    }

    /// Closes the lane: waiting threads get `Closed`, and the jobs no thread
    /// took are returned (they are still in the in-progress list).
    pub fn close(&self) -> Vec<Box<Delivery>> {
        let mut ready = self.lock();
        ready.closed = true;
        let left: Vec<Box<Delivery>> = ready.jobs.drain(..).collect();
        self.ready_len.store(0, Ordering::Release);
        drop(ready);
        let _ = self.out.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| Some(n.saturating_sub(left.len())));
        self.cond.notify_all();
        self.slot.notify_all();
        self.demand.notify_one();
        left
    }

    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// The lane sees 64 jobs of this length (its moving average settles there).
    fn ran_many(lane: &Lane, took: Duration) {
        for _ in 0..64 {
            lane.ran(took);
        }
    }

    fn job(n: u32) -> Box<Delivery> {
        let payload = Payload::parse(format!(r#"{{"class":"X","args":[{n}],"jid":"j{n}"}}"#)).unwrap();
        Box::new(Delivery::new(0, 0, payload, "X".into(), format!("j{n}"), serde_json::json!([n])))
    }

    #[test]
    fn counts_out_jobs_and_frees_on_finish() {
        assert_eq!(Lane::new("q", 3).prefetching(Prefetch::Fixed(2)).free(), 5);
        let lane = Lane::new("q", 3);
        assert_eq!(lane.free(), 3);
        assert!(lane.offer(vec![job(1), job(2)]).is_none());
        assert_eq!(lane.free(), 1);
        let Take::Job(j) = lane.take(Some(Duration::from_millis(1))) else { panic!() };
        assert_eq!(j.args.to_string(), "[1]");
        lane.finish();
        assert_eq!(lane.free(), 2);
        assert!(matches!(lane.take(Some(Duration::ZERO)), Take::Job(_)));
        assert!(matches!(lane.take(Some(Duration::from_millis(5))), Take::TimedOut));
    }

    #[test]
    fn auto_prefetch_holds_more_only_while_jobs_are_short() {
        let lane = Lane::new("q", 3).prefetching(Prefetch::Auto);
        // No job seen yet: counted as long, so only what the threads can start.
        assert_eq!(lane.free(), 3);
        ran_many(&lane, Duration::from_micros(10));
        assert_eq!(lane.free(), 3 + AUTO_PREFETCH_MIN, "the floor, above 4 x 3");
        assert_eq!(Lane::new("q", 100).prefetching(Prefetch::Auto).capacity(), 100, "long until seen");
        assert!(lane.offer((0..10).map(job).collect()).is_none());
        assert_eq!(lane.free(), 3 + AUTO_PREFETCH_MIN - 10);
        // Jobs turn slow: nothing more is fetched until the lane is back under its concurrency.
        ran_many(&lane, Duration::from_millis(5));
        assert_eq!(lane.free(), 0);
        for _ in 0..8 {
            assert!(matches!(lane.take(Some(Duration::ZERO)), Take::Job(_)));
            lane.finish();
        }
        assert_eq!(lane.free(), 1);
    }

    #[test]
    fn short_jobs_turn_slow_only_well_above_the_short_mark() {
        let lane = Lane::new("q", 2).prefetching(Prefetch::Auto);
        // Jobs around the mark from the start: never short (the lane starts slow).
        ran_many(&lane, Duration::from_micros(150));
        assert_eq!(lane.capacity(), 2);
        ran_many(&lane, Duration::from_micros(20));
        assert!(lane.short_jobs());
        lane.offer((0..100).map(job).collect());
        // One job that waited 5 ms (for the GIL, say) among short ones: still short, nothing handed back.
        lane.ran(Duration::from_millis(5));
        assert!(lane.short_jobs() && !shed(&lane) && lane.excess().is_empty());
        // Jobs that hover around the mark keep it short.
        ran_many(&lane, Duration::from_micros(150));
        assert!(lane.short_jobs() && !shed(&lane));
        // Slow ones turn it slow at once, and the fetcher is told.
        lane.ran(Duration::from_millis(100));
        assert!(!lane.short_jobs() && shed(&lane));
        assert_eq!(lane.capacity(), 2);
        assert_eq!(lane.excess().len(), 98);
    }

    #[test]
    fn a_big_lane_holds_four_times_its_concurrency() {
        let lane = Lane::new("q", 400).prefetching(Prefetch::Auto);
        ran_many(&lane, Duration::from_micros(10));
        assert_eq!(lane.free(), 400 * (1 + AUTO_PREFETCH), "above the floor");
    }

    /// Whether the fetcher was told to hand held jobs back (a stored permit), consuming it.
    fn shed(lane: &Lane) -> bool {
        permit(&lane.shed)
    }

    #[test]
    fn jobs_held_when_jobs_turn_slow_are_given_up_newest_first() {
        let lane = Lane::new("q", 3).prefetching(Prefetch::Auto);
        ran_many(&lane, Duration::from_micros(10));
        lane.offer((0..20).map(job).collect());
        // Two threads take a job each; the first slow job to end turns the lane slow.
        let Take::Job(a) = lane.take(Some(Duration::ZERO)) else { panic!() };
        let Take::Job(_b) = lane.take(Some(Duration::ZERO)) else { panic!() };
        assert!(lane.excess().is_empty(), "still short: all 20 may be held");
        assert!(!shed(&lane));
        lane.ran(Duration::from_secs(1));
        drop(a);
        lane.finish();
        assert!(shed(&lane), "the fetcher is told once");
        // 19 out (1 running, 18 ready) and room for 3: the 16 newest go back, oldest first.
        let back: Vec<String> = lane.excess().into_iter().map(|d| d.jid).collect();
        assert_eq!(back, (4..20).map(|n| format!("j{n}")).collect::<Vec<_>>());
        assert_eq!(lane.out(), 3);
        assert!(lane.excess().is_empty());
        assert!(matches!(lane.take(Some(Duration::ZERO)), Take::Job(d) if d.jid == "j2"));
        // Turning slow again with nothing held beyond the threads tells the fetcher nothing.
        ran_many(&lane, Duration::from_micros(10));
        lane.ran(Duration::from_secs(1));
        assert!(!shed(&lane));
    }

    #[test]
    fn jobs_held_when_jobs_turn_slow_go_to_a_thread_asleep_before_any_is_handed_back() {
        let lane = Arc::new(Lane::new("q", 2).prefetching(Prefetch::Auto));
        ran_many(&lane, Duration::from_micros(10));
        lane.offer((0..20).map(job).collect());
        // One thread runs the short jobs while the other sleeps (as behind a standby that saw jobs taken).
        let Take::Job(a) = lane.take(Some(Duration::ZERO)) else { panic!() };
        let sleeper = {
            let lane = lane.clone();
            std::thread::spawn(move || {
                let mut ready = lane.lock();
                ready.waiting += 1;
                ready = lane.cond.wait(ready).unwrap_or_else(PoisonError::into_inner);
                ready.waiting -= 1;
                ready.jobs.pop_front().map(|j| j.jid)
            })
        };
        while lane.lock().waiting < 1 {
            std::thread::sleep(Duration::from_millis(1));
        }
        // Its job was slow: with a thread asleep nothing is handed back, and that thread is woken.
        lane.ran(Duration::from_secs(1));
        assert!(!shed(&lane) && lane.excess().is_empty());
        assert_eq!(sleeper.join().unwrap().as_deref(), Some("j1"));
        let Take::Job(_b) = lane.take(Some(Duration::ZERO)) else { panic!() };
        // Every thread busy: the next slow job's end tells the fetcher, which hands back all but the 2 running.
        lane.ran(Duration::from_secs(1));
        drop(a);
        lane.finish();
        assert!(shed(&lane));
        assert_eq!(lane.excess().len(), 19 - 2);
        assert_eq!(lane.out(), 2);
    }

    #[test]
    fn a_fixed_prefetch_keeps_what_it_holds() {
        let lane = Lane::new("q", 2).prefetching(Prefetch::Fixed(6));
        lane.offer((0..8).map(job).collect());
        lane.ran(Duration::from_secs(1));
        assert!(lane.excess().is_empty());
        assert!(!shed(&lane));
        assert_eq!(lane.out(), 8);
    }

    #[test]
    fn big_payloads_lower_the_floor() {
        let lane = Lane::new("q", 3).prefetching(Prefetch::Auto);
        ran_many(&lane, Duration::from_micros(10));
        let big = |n: u32| {
            let pad = "x".repeat(100_000);
            let payload = Payload::parse(format!(r#"{{"class":"X","args":["{pad}"],"jid":"j{n}"}}"#)).unwrap();
            Box::new(Delivery::new(0, 0, payload, "X".into(), format!("j{n}"), serde_json::json!([])))
        };
        for n in 0..40 {
            lane.offer(vec![big(n)]);
            assert!(matches!(lane.take(Some(Duration::ZERO)), Take::Job(_)));
            lane.finish();
        }
        // About 8 MiB of 100 kB payloads: 83 jobs held beyond the threads, not 1,024.
        assert_eq!(lane.free(), 3 + 83);
    }

    /// Whether `n` holds a stored permit, consuming it.
    fn permit(n: &Notify) -> bool {
        let notified = n.notified();
        let mut notified = std::pin::pin!(notified);
        let waker = std::task::Waker::noop();
        notified.as_mut().poll(&mut std::task::Context::from_waker(waker)).is_ready()
    }

    /// Whether the fetcher was woken (a stored permit), consuming it.
    fn woken(lane: &Lane) -> bool {
        permit(&lane.demand)
    }

    #[test]
    fn the_fetcher_is_woken_for_a_quarter_of_the_slots_or_when_no_job_is_ready() {
        let lane = Lane::new("q", 8);
        lane.offer((0..8).map(job).collect());
        for _ in 0..3 {
            assert!(matches!(lane.take(Some(Duration::ZERO)), Take::Job(_)));
        }
        assert!(!woken(&lane));
        // One slot free and five jobs ready for the threads: no wake-up yet.
        lane.finish();
        assert!(!woken(&lane));
        lane.finish();
        assert!(woken(&lane), "two of eight slots free");
        // Taking the last ready job with a slot free wakes it, however few slots are free.
        let lane = Lane::new("q", 8);
        lane.offer((0..8).map(job).collect());
        for _ in 0..7 {
            assert!(matches!(lane.take(Some(Duration::ZERO)), Take::Job(_)));
        }
        lane.finish();
        assert!(!woken(&lane));
        assert!(lane.try_take().is_some());
        assert!(woken(&lane), "no job ready and a slot free");
        // A finish with no job ready wakes it too, with fewer than a quarter of the slots free.
        let lane = Lane::new("q", 8);
        lane.offer((0..8).map(job).collect());
        for _ in 0..8 {
            assert!(matches!(lane.take(Some(Duration::ZERO)), Take::Job(_)));
        }
        assert!(!woken(&lane), "no slot free yet");
        lane.finish();
        assert!(woken(&lane), "one slot free and no job ready");
    }

    #[test]
    fn close_wakes_waiters_and_returns_untaken_jobs() {
        let lane = Arc::new(Lane::new("q", 5));
        let waiter = {
            let lane = lane.clone();
            std::thread::spawn(move || matches!(lane.take(None), Take::Closed))
        };
        std::thread::sleep(Duration::from_millis(20));
        let left = lane.close();
        assert!(left.is_empty());
        assert!(waiter.join().unwrap());
        let back = lane.offer(vec![job(3)]).unwrap();
        assert_eq!(back.len(), 1);
        assert_eq!(lane.out(), 0);
    }

    /// `n` threads that each take one job and keep it (so none takes a
    /// second), then `jobs` offered; the jids they got, sorted.
    fn each_takes_one(lane: &Arc<Lane>, n: u32, settle: Duration) -> Vec<String> {
        let waiters: Vec<_> = (0..n)
            .map(|_| {
                let lane = lane.clone();
                std::thread::spawn(move || match lane.take(Some(Duration::from_secs(5))) {
                    Take::Job(j) => {
                        lane.resumed();
                        j.jid
                    }
                    other => panic!("{other:?}"),
                })
            })
            .collect();
        std::thread::sleep(settle);
        lane.offer((0..n).map(job).collect());
        let mut got: Vec<String> = waiters.into_iter().map(|w| w.join().unwrap()).collect();
        got.sort();
        got
    }

    #[test]
    fn a_batch_reaches_every_sleeping_thread() {
        let lane = Arc::new(Lane::new("q", 8));
        assert_eq!(each_takes_one(&lane, 4, Duration::from_millis(50)), vec!["j0", "j1", "j2", "j3"]);
    }

    #[test]
    fn with_short_jobs_a_job_left_behind_still_reaches_a_free_thread() {
        let lane = Arc::new(Lane::new("q", 8));
        assert!(!lane.short_jobs(), "jobs count as long until seen");
        ran_many(&lane, Duration::from_micros(5));
        assert!(lane.short_jobs());
        lane.offer(vec![job(100)]);
        assert!(matches!(lane.take(Some(Duration::ZERO)), Take::Job(_)));
        lane.resumed();
        // Threads that each keep the job they take (it "turned out slow"): a
        // thread woken for the batch passes no wake-up on (jobs were offered
        // just now, so one sleeper is on standby), and the other jobs reach
        // the others through the standby, within its poll.
        let t0 = Instant::now();
        assert_eq!(each_takes_one(&lane, 3, Duration::from_millis(2)), vec!["j0", "j1", "j2"]);
        assert!(t0.elapsed() < Duration::from_secs(1), "took {:?}", t0.elapsed());
    }

    /// 3 threads sleeping in a short lane with no standby (no job offered
    /// lately) are offered 3 jobs; each that gets one "waits for the GIL"
    /// until `go`. Returns (threads still asleep, jobs not taken) 30 ms after
    /// the offer, and the jids the threads got once they ran.
    fn offered_to_sleepers(lane: &Arc<Lane>) -> ((usize, usize), Vec<String>) {
        ran_many(lane, Duration::from_micros(5));
        let go = Arc::new(AtomicBool::new(false));
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let (lane, go) = (lane.clone(), go.clone());
                std::thread::spawn(move || {
                    let Take::Job(j) = lane.take(Some(Duration::from_secs(5))) else { panic!() };
                    while !go.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    lane.resumed();
                    j.jid
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(30));
        lane.offer((0..3).map(job).collect());
        std::thread::sleep(Duration::from_millis(30));
        let seen = {
            let ready = lane.lock();
            (ready.waiting, ready.jobs.len())
        };
        go.store(true, Ordering::Relaxed);
        let mut got: Vec<String> = waiters.into_iter().map(|w| w.join().unwrap()).collect();
        got.sort();
        (seen, got)
    }

    #[test]
    fn with_short_jobs_a_lane_sharing_the_gil_queues_one_thread_at_a_time() {
        let lane = Arc::new(Lane::new("q", 8).sharing_gil(true));
        let (seen, got) = offered_to_sleepers(&lane);
        // One woke and took a job; the others sleep until it runs.
        assert_eq!(seen, (2, 2));
        // Once it runs, it passes the wake-up on (its job might be slow): every job reaches a thread.
        assert_eq!(got, vec!["j0", "j1", "j2"]);
        // A lane alone in its process passes it on at the take: all three are ready for the GIL.
        let lane = Arc::new(Lane::new("q", 8));
        let (seen, got) = offered_to_sleepers(&lane);
        assert_eq!(seen, (0, 0));
        assert_eq!(got, vec!["j0", "j1", "j2"]);
    }

    #[test]
    fn no_more_jobs_start_than_the_concurrency() {
        // A thread that hands its jobs off (async) takes until 3 run, then waits for a slot.
        let lane = Arc::new(Lane::new("q", 3).prefetching(Prefetch::Fixed(7)));
        lane.offer((0..10).map(job).collect());
        for _ in 0..3 {
            assert!(lane.try_take().is_some());
        }
        assert!(lane.try_take().is_none(), "3 run: the held jobs wait");
        assert!(matches!(lane.take(Some(Duration::from_millis(5))), Take::TimedOut));
        let waiter = {
            let lane = lane.clone();
            std::thread::spawn(move || match lane.take(Some(Duration::from_secs(5))) {
                Take::Job(j) => j.jid,
                other => panic!("{other:?}"),
            })
        };
        while lane.slot_waiters.load(Ordering::SeqCst) == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        lane.finish();
        assert_eq!(waiter.join().unwrap(), "j3", "a finished job frees its slot for the next");
        assert!(lane.try_take().is_none());
        assert_eq!(lane.out(), 9);
    }

    #[test]
    fn with_short_jobs_one_free_slot_is_taken_within_the_poll() {
        let lane = Arc::new(Lane::new("q", 8).prefetching(Prefetch::Fixed(100)));
        ran_many(&lane, Duration::from_micros(5));
        lane.offer((0..20).map(job).collect());
        for _ in 0..8 {
            assert!(lane.try_take().is_some());
        }
        let waiter = {
            let lane = lane.clone();
            std::thread::spawn(move || matches!(lane.take(Some(Duration::from_secs(5))), Take::Job(_)))
        };
        while lane.slot_waiters.load(Ordering::SeqCst) == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        // One job ends; the other seven run on (long): no wake-up, yet the slot is taken.
        let t0 = Instant::now();
        lane.finish();
        assert!(waiter.join().unwrap());
        assert!(t0.elapsed() < Duration::from_secs(1), "took {:?}", t0.elapsed());
    }

    #[test]
    fn close_wakes_a_thread_waiting_for_a_slot() {
        let lane = Arc::new(Lane::new("q", 1).prefetching(Prefetch::Fixed(5)));
        lane.offer((0..3).map(job).collect());
        assert!(lane.try_take().is_some());
        let waiter = {
            let lane = lane.clone();
            std::thread::spawn(move || matches!(lane.take(None), Take::Closed))
        };
        while lane.slot_waiters.load(Ordering::SeqCst) == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(lane.close().len(), 2, "the two held jobs stay in the in-progress list");
        assert!(waiter.join().unwrap());
    }

    #[test]
    fn a_waiting_thread_gets_a_new_job() {
        let lane = Arc::new(Lane::new("q", 5));
        let waiter = {
            let lane = lane.clone();
            std::thread::spawn(move || match lane.take(Some(Duration::from_secs(5))) {
                Take::Job(j) => j.jid,
                other => panic!("{other:?}"),
            })
        };
        std::thread::sleep(Duration::from_millis(20));
        lane.offer(vec![job(7)]);
        assert_eq!(waiter.join().unwrap(), "j7");
    }
}
