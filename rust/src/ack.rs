//! Settling finished jobs in Redis, in batches.
//!
//! A thread that finishes a job hands its settlement to this task and goes on
//! without waiting. The task writes everything that piled up meanwhile (under
//! load, at most one write per `WRITE_GAP`) in one round trip to
//! `settle.lua`: for each job, its retry or dead entry (if any)
//! and its removal from the in-progress list, plus Sidekiq's
//! processed/failed counters, and a batch job's bookkeeping (its batch, and
//! the callback jobs that fire). Most finished jobs are the oldest in their
//! list, and those leave it by count, their payloads not sent, the few jobs
//! still running among them put back (`wip.rs`).
//! Because the write is atomic, a job is never in neither place, and the counters never count a job still in progress; each
//! settlement is numbered and the script keeps the highest number applied, so
//! a batch written again after a lost reply counts nothing twice. A failed
//! write is retried with backoff; a settlement Redis refuses (a key of the
//! wrong type) is retried on its own while the others flow, and its job stays
//! in progress meanwhile. Nothing is dropped while the process lives, and
//! whatever a crash leaves in the in-progress list is re-run later. While
//! too many results wait to be written, the fetchers wait (`backlog.rs`).

use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::backlog::Backlog;
use crate::batches::{KEEP_SECS, Settled};
use crate::keys::{DAILY_STAT_TTL_SECS, Keys};
use crate::lane::Delivery;
use crate::pool::Pool;
use crate::retry::{Disposition, RetryPolicy};
use crate::scripts;
use crate::throttle::{self, Held};
use crate::timestamp::{self, float_json};
use crate::wip::WipList;

/// Settlements written per round trip at most.
pub const MAX_BATCH: usize = 2000;
/// Under load, the least time between two writes: results that finish back to
/// back then share one request instead of one each (a request costs Redis far
/// more than the results it carries), at the price of leaving a job in the
/// in-progress list that much longer. Writes after a quiet spell go at once.
const WRITE_GAP: Duration = Duration::from_millis(1);
/// How long Redis remembers this process's settlement numbers after a write.
const NUMBERS_TTL_MS: u64 = 24 * 3600 * 1000;
/// The longest pause before a refused settlement is tried again.
const MAX_REFUSED_PAUSE: Duration = Duration::from_secs(5);
/// How long a throttle key's list of parked jobs lives after a job is parked
/// (far beyond the longest pause; entries whose job left `schedule` are skipped).
const PARKED_TTL_MS: u64 = 24 * 3600 * 1000;

/// Where a finished job goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Settle {
    /// Done: just leave the in-progress list.
    Done,
    /// Into the `retry` set at `at` (epoch seconds).
    Retry { at: f64, payload: String },
    /// Into the `dead` set now, then trim it. Bytes, because an unreadable
    /// payload is buried exactly as it was found.
    Dead { payload: Vec<u8> },
    /// Dropped (`retry: false` or `dead: false`).
    Discard,
    /// Not run: it expired before it could start (counted in `kiq:stat:expired`).
    Expired,
    /// Into the `schedule` set at `at` (epoch seconds): rescheduled over a
    /// rate limit, or parked by a throttle (then also listed under `parked`,
    /// the throttle key's `kiq:parked` set, so a job ending frees it sooner).
    Schedule { at: f64, payload: String, parked: Option<String> },
}

impl Settle {
    /// The one place a failure decision becomes a settlement: where the job
    /// goes, and whether it leaves for good (then a unique lock goes with it;
    /// a retrying job keeps its lock).
    pub fn of_failure(disposition: Disposition) -> (Settle, bool) {
        match disposition {
            Disposition::Retry { at, payload } => (Settle::Retry { at, payload }, false),
            Disposition::Dead { payload } => (Settle::Dead { payload: payload.into_bytes() }, true),
            Disposition::Discard | Disposition::Dropped => (Settle::Discard, true),
        }
    }
}

#[derive(Debug)]
pub struct Settlement {
    /// The in-progress list that holds the job, and its position there.
    pub list: std::sync::Arc<WipList>,
    pub pos: u64,
    /// The job exactly as it is stored there.
    pub raw: Raw,
    pub settle: Settle,
    /// Counted in `stat:processed` (every job that ran, as Sidekiq counts).
    pub processed: bool,
    /// Counted in `stat:failed`.
    pub failed: bool,
    /// A unique job's lock to release with it: (key, jid).
    pub unlock: Option<(String, String)>,
    /// Its batch's bookkeeping (a batch member, or a callback that ran).
    pub batch: Option<Settled>,
    /// Its throttle hold, given back once this is written.
    pub held: Option<Box<Held>>,
}

/// A job's text as its in-progress list holds it.
#[derive(Debug)]
pub enum Raw {
    Bytes(Vec<u8>),
    /// A job that ran keeps its delivery (parsed payload, arguments) until
    /// it is written, so this task frees it, not the thread that ran the
    /// job: that thread holds the GIL, and freeing blocks the fetcher
    /// allocated (above glibc's lock-free sizes: the fields' list, an
    /// arguments array of 4 slots) waited for the fetcher's allocator lock
    /// ~1,000 times a second in a drain of no-op jobs.
    Ran(Box<Delivery>),
}

impl Raw {
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Self::Bytes(b) => b,
            Self::Ran(d) => d.payload.source().as_bytes(),
        }
    }
}

impl From<Vec<u8>> for Raw {
    fn from(bytes: Vec<u8>) -> Self {
        Self::Bytes(bytes)
    }
}

impl Settlement {
    /// Done and counted as processed, with nothing else to write (most jobs):
    /// `settle.lua` takes these in a shorter form.
    fn is_plain(&self) -> bool {
        matches!(self.settle, Settle::Done) && self.processed && !self.failed && self.batch.is_none()
    }
}

// Settlements are most messages; boxing them would allocate once per job.
#[allow(clippy::large_enum_variant)]
pub enum Msg {
    Settle(Settlement),
    /// Release a unique job's lock (key, jid): `unique_until: start`.
    Unlock(String, String),
    /// Give a throttle hold back (a job handed back without a result).
    Release(Box<Held>),
    /// Write what is pending (retrying until the deadline), then stop.
    Close {
        deadline: Instant,
        done: oneshot::Sender<usize>,
    },
}

/// Numbered settlements waiting to be written.
struct Pending {
    next: u64,
    batch: Vec<(u64, Settlement)>,
    /// Refused by Redis: tried again on their own, after `pause`.
    refused: Vec<Settlement>,
    retry_refused_at: Option<Instant>,
    pause: Duration,
    /// Reasons already logged.
    reported: std::collections::HashSet<String>,
}

impl Pending {
    fn add(&mut self, s: Settlement) {
        self.batch.push((self.next, s));
        self.next += 1;
    }

    /// Tells the fetchers how many results wait: refused ones too (a process
    /// whose results Redis refuses must not go on running jobs it cannot
    /// record), and those still in the channel.
    fn count(&self, rx: &mpsc::UnboundedReceiver<Msg>, backlog: &Backlog) {
        backlog.set(rx.len() + self.batch.len() + self.refused.len());
    }

    /// Refused settlements whose pause is over go back into the batch, renumbered.
    fn due(&mut self, now: Instant) {
        if self.retry_refused_at.is_some_and(|t| t <= now) {
            self.retry_refused_at = None;
            for s in std::mem::take(&mut self.refused) {
                self.add(s);
            }
        }
    }
}

/// Runs until told to close; the reply to `Close` is the number of
/// settlements that could not be written before the deadline.
pub async fn run(
    mut rx: mpsc::UnboundedReceiver<Msg>,
    pool: std::sync::Arc<Pool>,
    keys: Keys,
    policy: RetryPolicy,
    identity: String,
    backlog: std::sync::Arc<Backlog>,
) {
    let mut p = Pending {
        next: 1,
        batch: Vec::new(),
        refused: Vec::new(),
        retry_refused_at: None,
        pause: Duration::from_millis(100),
        reported: std::collections::HashSet::new(),
    };
    let mut unlocks: Vec<(String, String)> = Vec::new();
    let mut releases: Vec<Held> = Vec::new();
    let mut close: Option<(Instant, oneshot::Sender<usize>)> = None;
    let mut failing = false;
    let numbers = keys.acked(&identity);
    let mut last_write: Option<Instant> = None;
    loop {
        if p.batch.is_empty() && unlocks.is_empty() && releases.is_empty() && close.is_none() {
            let msg = match p.retry_refused_at {
                Some(t) => tokio::time::timeout_at(t.into(), rx.recv()).await.ok(),
                None => Some(rx.recv().await),
            };
            match msg {
                Some(Some(Msg::Settle(s))) => p.add(s),
                Some(Some(Msg::Unlock(k, j))) => unlocks.push((k, j)),
                Some(Some(Msg::Release(h))) => releases.push(*h),
                Some(Some(Msg::Close { deadline, done })) => close = Some((deadline, done)),
                Some(None) => return,
                None => {}
            }
        }
        if let Some(due) = last_write.map(|t| t + WRITE_GAP)
            && Instant::now() < due
            && close.is_none()
            && releases.is_empty()
            && !p.batch.iter().any(|(_, s)| s.held.is_some())
        {
            // A throttle slot given back late would slow its key down: those go at once.
            tokio::time::sleep_until(due.into()).await;
        }
        take_pending(&mut rx, &mut p, &mut unlocks, &mut releases, &mut close);
        p.count(&rx, &backlog);
        p.due(Instant::now());
        if close.is_some() {
            p.due(Instant::now() + MAX_REFUSED_PAUSE);
        }
        if !p.batch.is_empty() {
            last_write = Some(Instant::now());
        }
        let mut side = Side { backlog: &backlog, unlocks: &mut unlocks, releases: &mut releases, close: &mut close };
        write_pending(&pool, &keys, &policy, &numbers, &mut p, &mut rx, &mut side, &mut failing).await;
        p.count(&rx, &backlog);
        // Locks go after the results that free them; a failure keeps them for the next round.
        if !unlocks.is_empty() {
            if let Err(e) = unlock(&pool, &unlocks).await {
                log::warn!("cannot release {} unique-job locks yet: {e}", unlocks.len());
                if close.is_none() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            } else {
                unlocks.clear();
            }
        }
        // Throttle holds go after their results too; parked jobs of their keys move back.
        if !releases.is_empty() {
            match throttle::release(&pool, &keys, &releases).await {
                Ok(_) => releases.clear(),
                Err(e) => {
                    log::warn!("cannot give back {} throttle holds yet: {e}", releases.len());
                    if close.is_none() {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
        if let Some((deadline, done)) = close.take() {
            if !p.refused.is_empty() && Instant::now() < deadline {
                // Refused results get tries until the stop's deadline.
                tokio::time::sleep(p.pause.min(deadline - Instant::now())).await;
                p.retry_refused_at = Some(Instant::now());
                close = Some((deadline, done));
                continue;
            }
            let left = p.batch.len() + p.refused.len();
            if left > 0 {
                log::error!(
                    "{left} job results were not written before the stop deadline; those jobs stay in the in-progress list and will run again"
                );
            }
            let _ = done.send(left);
            let _: redis::RedisResult<i64> = redis::cmd("UNLINK").arg(&numbers).query_async(&mut pool.get()).await;
            return;
        }
    }
}

/// What the task does besides writing settlements: the count the fetchers
/// read, unique locks and throttle holds to release once their results are
/// written, and a stop.
struct Side<'a> {
    backlog: &'a Backlog,
    unlocks: &'a mut Vec<(String, String)>,
    releases: &'a mut Vec<Held>,
    close: &'a mut Option<(Instant, oneshot::Sender<usize>)>,
}

/// Writes the batch, retrying with backoff while Redis is away (until a stop's
/// deadline); refused settlements wait for their own retry.
#[allow(clippy::too_many_arguments)]
async fn write_pending(
    pool: &Pool,
    keys: &Keys,
    policy: &RetryPolicy,
    numbers: &str,
    p: &mut Pending,
    rx: &mut mpsc::UnboundedReceiver<Msg>,
    side: &mut Side<'_>,
    failing: &mut bool,
) {
    let mut delay = Duration::from_millis(20);
    // After a failed write, the next carries no cuts: the failed one may have
    // been applied, and a cut sent again would not find its jobs.
    let mut careful = false;
    while !p.batch.is_empty() {
        match write(pool, keys, policy, numbers, &p.batch, careful).await {
            Ok(Written { mismatched, .. }) if !mismatched.is_empty() => {
                // Nothing was written: the same results go again, the payload way.
                for list in mismatched {
                    if list.distrust() {
                        log::warn!(
                            "the in-progress list {} does not hold the jobs this process fetched into it, in \
                             their order (another process recovered it, or a fetch's lost reply left jobs \
                             there); its results are written the slower way from now on",
                            list.key
                        );
                    }
                }
            }
            Ok(Written { refused, fired, .. }) => {
                careful = false;
                if !fired.is_empty() {
                    // Written due now: the scheduler moves them if this does not.
                    if let Err(e) = crate::scheduled::release(pool, keys, policy.unit, fired).await {
                        log::warn!("batch callbacks wait for the scheduler's next poll: {e}");
                    }
                }
                if *failing {
                    log::warn!("writing job results to Redis works again");
                    *failing = false;
                }
                let refused: std::collections::HashMap<u64, String> = refused.into_iter().collect();
                let mut again = 0;
                gone(p.batch.iter().filter(|(seq, _)| !refused.contains_key(seq)).map(|(_, s)| s));
                for (seq, s) in p.batch.drain(..) {
                    if let Some(why) = refused.get(&seq) {
                        if p.reported.insert(why.clone()) {
                            log::error!(
                                "Redis refused the result of a job, which stays in progress until it is \
                                     written (retrying): {why}"
                            );
                        }
                        p.refused.push(s);
                        again += 1;
                    } else {
                        side.unlocks.extend(s.unlock);
                        side.releases.extend(s.held.map(|h| *h));
                    }
                }
                if again > 0 {
                    p.retry_refused_at = Some(Instant::now() + p.pause);
                    p.pause = (p.pause * 2).min(MAX_REFUSED_PAUSE);
                } else if p.refused.is_empty() {
                    p.pause = Duration::from_millis(100);
                }
            }
            Err(e) => {
                careful = true;
                pool.note_error(&e);
                if !*failing {
                    log::error!("cannot write {} job results to Redis, will retry: {e}", p.batch.len());
                    *failing = true;
                }
                // A stop may arrive while Redis is away: its deadline ends the retries.
                take_pending(rx, p, side.unlocks, side.releases, side.close);
                p.count(rx, side.backlog);
                if side.close.as_ref().is_some_and(|(deadline, _)| Instant::now() >= *deadline) {
                    break;
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 3 / 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// Takes written settlements' jobs out of their lists' models, one lock per list.
fn gone<'a>(written: impl Iterator<Item = &'a Settlement>) {
    let mut by_list: Vec<(&std::sync::Arc<WipList>, Vec<u64>)> = Vec::new();
    for s in written {
        match by_list.iter_mut().find(|(l, _)| std::sync::Arc::ptr_eq(l, &s.list)) {
            Some((_, ps)) => ps.push(s.pos),
            None => by_list.push((&s.list, vec![s.pos])),
        }
    }
    for (list, positions) in by_list {
        list.gone(positions);
    }
}

/// What a write did: the settlements Redis refused (with why), the batch
/// callback jobs it wrote to the schedule set (due now), and the lists whose
/// cut found other jobs than expected (then nothing was written).
struct Written<'a> {
    refused: Vec<(u64, String)>,
    fired: Vec<String>,
    mismatched: Vec<&'a WipList>,
}

/// Moves whatever is waiting in the channel into the batch (up to its cap).
fn take_pending(
    rx: &mut mpsc::UnboundedReceiver<Msg>,
    p: &mut Pending,
    unlocks: &mut Vec<(String, String)>,
    releases: &mut Vec<Held>,
    close: &mut Option<(Instant, oneshot::Sender<usize>)>,
) {
    while p.batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(Msg::Settle(s)) => p.add(s),
            Ok(Msg::Unlock(k, j)) => unlocks.push((k, j)),
            Ok(Msg::Release(h)) => releases.push(*h),
            Ok(Msg::Close { deadline, done }) => *close = Some((deadline, done)),
            Err(_) => break,
        }
    }
}

async fn unlock(pool: &Pool, locks: &[(String, String)]) -> redis::RedisResult<()> {
    let mut inv = scripts::UNLOCK.prepare_invoke();
    for (key, jid) in locks {
        inv.key(key).arg(jid);
    }
    inv.invoke_async::<i64>(&mut pool.get()).await.map(|_| ())
}

/// The keys a batch touches besides the fixed ones, each once.
struct Touched<'a> {
    /// In-progress lists and parked-job sets, in the order passed.
    extra: Vec<&'a str>,
    /// Every batch any result touches (its own, and its ancestors), numbered from 1.
    levels: Vec<&'a str>,
}

fn touched(batch: &[(u64, Settlement)]) -> Touched<'_> {
    let mut t = Touched { extra: Vec::new(), levels: Vec::new() };
    for (_, s) in batch {
        if !t.extra.contains(&&*s.list.key) {
            t.extra.push(&s.list.key);
        }
        if let Settle::Schedule { parked: Some(k), .. } = &s.settle
            && !t.extra.contains(&k.as_str())
        {
            t.extra.push(k);
        }
        for bid in s.batch.iter().flat_map(|b| &b.chain) {
            if !t.levels.contains(&bid.as_str()) {
                t.levels.push(bid);
            }
        }
    }
    t
}

/// Writes a batch. Plain results that are the jobs at the right end of their
/// list (by its model, unless `careful`) are cut off by count.
async fn write<'a>(
    pool: &Pool,
    keys: &Keys,
    policy: &RetryPolicy,
    numbers: &str,
    batch: &'a [(u64, Settlement)],
    careful: bool,
) -> redis::RedisResult<Written<'a>> {
    let now = timestamp::now();
    let day = timestamp::utc_date(now);
    let Touched { extra, levels } = touched(batch);
    let (plain, full): (Vec<_>, Vec<_>) = batch.iter().partition(|(_, s)| s.is_plain());
    let (cuts, plain) = if careful { (Vec::new(), plain) } else { cuts(plain) };
    // (A retry, dead or schedule entry carries the payload a second time, about as long.)
    let bytes: usize = full.iter().chain(&plain).map(|(_, s)| 2 * s.raw.as_bytes().len() + 64).sum::<usize>()
        + cuts.iter().map(|c| c.first.len() + c.last.len() + 40 + 4 * c.holes.len()).sum::<usize>();
    let nkeys = 9 + extra.len() + 3 * levels.len();
    let nargs = nkeys
        + 11
        + levels.len()
        + 10 * full.len()
        + 3 * plain.len()
        + cuts.iter().map(|c| 7 + c.holes.len()).sum::<usize>();
    let mut inv = scripts::evalsha(&scripts::SETTLE, nkeys, nargs, bytes + 448);
    inv.arg(numbers)
        .arg(keys.retry())
        .arg(keys.dead())
        .arg(keys.stat_processed())
        .arg(keys.stat_failed())
        .arg(keys.stat_processed_day(&day))
        .arg(keys.stat_failed_day(&day))
        .arg(keys.stat_expired())
        .arg(keys.schedule());
    for k in &extra {
        inv.arg(*k);
    }
    for bid in &levels {
        inv.arg(keys.batch(bid)).arg(keys.batch_done(bid)).arg(keys.batch_failed(bid));
    }
    inv.arg(NUMBERS_TTL_MS)
        .arg(DAILY_STAT_TTL_SECS)
        .arg(float_json(now))
        .arg(policy.dead_trim(now))
        .arg(full.len())
        .arg(policy.unit.encode(now))
        .arg(KEEP_SECS)
        .arg(PARKED_TTL_MS)
        .arg(levels.len());
    for bid in &levels {
        inv.arg(*bid);
    }
    let position = |key: &str| extra.iter().position(|k| *k == key).map_or(0, |i| i + 1);
    for (seq, s) in full {
        let wip = position(&s.list.key);
        let (kind, score, payload): (&str, String, &[u8]) = match &s.settle {
            Settle::Retry { at, payload } => ("retry", float_json(*at), payload.as_bytes()),
            Settle::Dead { payload } => ("dead", String::new(), payload),
            Settle::Expired => ("expired", String::new(), b""),
            Settle::Done | Settle::Discard => ("done", String::new(), b""),
            Settle::Schedule { at, payload, .. } => ("schedule", float_json(*at), payload.as_bytes()),
        };
        let parked = match &s.settle {
            Settle::Schedule { parked: Some(k), .. } => position(k),
            _ => 0,
        };
        let counted = match (s.processed, s.failed) {
            (true, true) => "pf",
            (true, false) => "p",
            _ => "",
        };
        let (spec, jid) = match &s.batch {
            Some(b) => {
                let at: Vec<usize> =
                    b.chain.iter().map(|bid| levels.iter().position(|l| *l == bid).unwrap_or(0) + 1).collect();
                (b.spec(&at), b.jid.as_str())
            }
            None => (String::new(), ""),
        };
        inv.arg(*seq)
            .arg(wip)
            .arg(kind)
            .arg(score)
            .arg(payload)
            .arg(s.raw.as_bytes())
            .arg(counted)
            .arg(spec)
            .arg(jid)
            .arg(parked);
    }
    plain_args(&mut inv, &plain, &cuts, position);
    let (refused, fired, mismatched): (Vec<String>, Vec<String>, Vec<usize>) =
        scripts::eval(&inv, &scripts::SETTLE, &mut pool.get()).await?;
    let refused =
        refused.chunks(2).filter_map(|c| Some((c[0].parse().ok()?, c.get(1).cloned().unwrap_or_default()))).collect();
    let mut lists_off: Vec<&WipList> =
        cuts.iter().filter(|c| mismatched.contains(&position(&c.list.key))).map(|c| c.list).collect();
    if lists_off.len() < mismatched.len() {
        // A number no cut was sent for: nothing was written all the same, so every cut's list goes.
        lists_off = cuts.iter().map(|c| c.list).collect();
    }
    Ok(Written { refused, fired, mismatched: lists_off })
}

/// The plain results with their payloads, then the cuts (`settle.lua`'s last arguments).
fn plain_args(inv: &mut redis::Cmd, plain: &[&(u64, Settlement)], cuts: &[Cut<'_>], position: impl Fn(&str) -> usize) {
    inv.arg(plain.len());
    for (seq, s) in plain {
        inv.arg(*seq).arg(position(&s.list.key)).arg(s.raw.as_bytes());
    }
    inv.arg(cuts.len());
    for c in cuts {
        inv.arg(position(&c.list.key)).arg(c.k).arg(c.top).arg(c.first_at).arg(c.first).arg(c.last);
        inv.arg(c.holes.len());
        for h in &c.holes {
            inv.arg(*h);
        }
    }
}

/// Plain results that are the jobs at a list's right end, but for a few
/// still running among them (`holes`, put back).
struct Cut<'a> {
    list: &'a WipList,
    /// How many jobs it takes off the right end, holes included.
    k: usize,
    /// The highest settlement number among them.
    top: u64,
    /// The offset from the right end of its first finished job, that job, and the K-th job from the end.
    first_at: usize,
    first: &'a [u8],
    last: &'a [u8],
    /// The offsets of the jobs still running (ascending).
    holes: Vec<usize>,
}

/// Splits plain results into cuts (per list, the results its model puts at
/// the right end) and the rest, written with their payloads.
fn cuts(mut plain: Vec<&(u64, Settlement)>) -> (Vec<Cut<'_>>, Vec<&(u64, Settlement)>) {
    let mut cuts = Vec::new();
    if plain.is_empty() {
        return (cuts, plain);
    }
    // By list, then position: each list's run is then one slice.
    plain.sort_unstable_by_key(|(_, s)| (std::sync::Arc::as_ptr(&s.list) as usize, s.pos));
    let mut rest = Vec::with_capacity(plain.len());
    for run in plain.chunk_by(|(_, a), (_, b)| std::sync::Arc::ptr_eq(&a.list, &b.list)) {
        let positions: Vec<u64> = run.iter().map(|(_, s)| s.pos).collect();
        let span = run[0].1.list.right_end(&positions);
        let n = span.covered;
        if n > 0 {
            cuts.push(Cut {
                list: &run[0].1.list,
                k: span.width,
                top: run[..n].iter().map(|(seq, _)| *seq).max().unwrap_or(0),
                first_at: span.first_at(),
                first: run[0].1.raw.as_bytes(),
                last: run[n - 1].1.raw.as_bytes(),
                holes: span.holes,
            });
        }
        rest.extend_from_slice(&run[n..]);
    }
    (cuts, rest)
}
