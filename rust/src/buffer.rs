//! The reliable push buffer: `enqueue` returns once a job is here, and a
//! core task flushes it to Redis, in order, retrying with backoff while Redis
//! is away.
//!
//! Jobs wait in segments. The newest segment is kept as plain items; a
//! segment that grows past 64 KiB while no flusher runs or more than half of
//! `max_bytes` waits before it, and every segment once a flush has failed, is
//! LZ4-compressed (JSON payloads of one app compress several times over), so
//! a long outage holds many jobs in little memory, while jobs a healthy
//! flusher sends soon are not compressed only to be decompressed. Memory is bounded by
//! `max_bytes` (plain bytes of open segments, compressed bytes of the rest):
//! a push that does not fit waits up to `full_timeout` for room, then fails
//! with a clear error; nothing is dropped. With a spool (see `spool.rs`) each
//! push is written to disk before it returns and acked once in Redis.
//!
//! The flusher sends at most `MAX_BATCH` jobs per round trip (a batch's first
//! send as plain LPUSHes in a transaction, see `fresh.rs`; a resend to `push.lua`),
//! each job numbered (the buffer's producer id and a sequence number), so a
//! batch sent again after a lost reply pushes nothing twice. A batch whose
//! outcome is unknown is sent again exactly as it was. Jobs Redis refuses for
//! a reason retrying cannot fix (a key of the wrong type, an ACL, memory that
//! stays full past `refused_timeout`) are written to the dead-letter file,
//! reported once (log, `stats`, the next `flush`) and leave the batch, so the
//! jobs behind them keep flowing. After a success the next flush waits
//! `flush_interval` (batching), unless a full batch is waiting.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::batch;
use crate::client::{self, PushItem, PushReply, Trouble};
use crate::deadletter::DeadLetters;
use crate::error::{KiqError, Result};
use crate::fresh::{self, Fresh};
use crate::keys::Keys;
use crate::pool::Pool;
use crate::spool::{Fsync, Recovered, Spool};

const SEAL_BYTES: usize = 64 << 10;
const MAX_BATCH: usize = 10_000;
const MAX_BATCH_BYTES: usize = 8 << 20;

#[derive(Debug, Clone)]
pub struct BufferConfig {
    /// Memory the waiting jobs may take (Kiq: unbounded; here 64 MiB by default).
    pub max_bytes: usize,
    /// How long a push waits for room in a full buffer before it fails.
    pub full_timeout: Duration,
    /// Pause between flushes (Kiq's 10 ms).
    pub flush_interval: Duration,
    /// Backoff after failed flushes grows ×1.5 up to this (Kiq's 5 s).
    pub max_backoff: Duration,
    /// How long Redis may refuse a batch (out of memory, say) before its jobs
    /// go to the dead-letter file; an unreachable Redis is waited for forever.
    pub refused_timeout: Duration,
    /// How long Redis remembers this producer's sequence numbers after a push.
    pub producer_ttl: Duration,
}

impl Default for BufferConfig {
    fn default() -> Self {
        Self {
            max_bytes: 64 << 20,
            full_timeout: Duration::from_secs(10),
            flush_interval: Duration::from_millis(10),
            max_backoff: Duration::from_secs(5),
            refused_timeout: Duration::from_secs(60),
            producer_ttl: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

enum Segment {
    Open(Vec<PushItem>, usize),
    Sealed { data: Vec<u8>, count: usize },
}

impl Segment {
    fn len(&self) -> usize {
        match self {
            Self::Open(items, _) => items.len(),
            Self::Sealed { count, .. } => *count,
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Self::Open(_, bytes) => *bytes,
            Self::Sealed { data, .. } => data.len(),
        }
    }

    fn seal(&mut self) {
        if let Self::Open(items, _) = self {
            let data = batch::compress(items);
            *self = Self::Sealed { data, count: items.len() };
        }
    }

    fn into_items(self) -> Vec<PushItem> {
        match self {
            Self::Open(items, _) => items,
            // Sealed segments were made from valid items in this process.
            Self::Sealed { data, .. } => batch::decompress(&data).unwrap_or_default(),
        }
    }
}

#[derive(Default)]
struct State {
    /// (sequence number of the segment's first job, segment), oldest first.
    segments: VecDeque<(u64, Segment)>,
    /// Memory held by `segments` plus the batch in flight.
    bytes: usize,
    /// Jobs held, including the batch in flight.
    jobs: usize,
    /// Their size before compression.
    raw_bytes: usize,
    next_seq: u64,
    /// The batch being sent: (first sequence number, jobs, bytes, raw bytes).
    inflight: Option<(u64, usize, usize, usize)>,
    /// Its jobs (shared with the flusher), for [`Buffer::dump`].
    sending: Option<Arc<Vec<(u64, PushItem)>>>,
    failing: Option<String>,
    /// A flusher ([`run`]) takes the jobs; without one everything waits.
    flusher: bool,
    flushed: u64,
    /// Jobs moved to the dead-letter file, in all and since the last `flush`.
    undeliverable: u64,
    unreported: Vec<String>,
}

/// A snapshot for monitoring and the benchmark.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BufferStats {
    pub jobs: usize,
    /// Memory the jobs take now (compressed where sealed).
    pub bytes: usize,
    /// What they would take uncompressed.
    pub raw_bytes: usize,
    /// Jobs flushed to Redis since start.
    pub flushed: u64,
    /// The last flush error, while flushes fail.
    pub failing: Option<String>,
    pub spool_bytes: u64,
    /// Jobs Redis refused for good, kept in the dead-letter file.
    pub undeliverable: u64,
}

/// A batch taken for one round trip: the jobs with their sequence numbers.
pub struct Batch {
    items: Arc<Vec<(u64, PushItem)>>,
    /// When Redis first refused it (out of memory, say), if it did.
    refused_since: Option<Instant>,
    /// Never sent: it may go as plain LPUSHes (see `fresh.rs`); a batch sent
    /// before goes through `push.lua`, which pushes only what did not land.
    fresh: bool,
}

pub struct Buffer {
    config: BufferConfig,
    /// Names this buffer's sequence numbers in Redis (kept in the spool, so a
    /// restarted process replays its jobs under the same numbers).
    producer: String,
    dead_letters: Mutex<DeadLetters>,
    /// What opening the spool found: damage descriptions, and jobs carried over.
    pub spool_problems: Vec<String>,
    pub recovered: usize,
    state: Mutex<State>,
    changed: Condvar,
    wake: Notify,
    spool: Option<Mutex<Spool>>,
}

impl Buffer {
    /// A buffer, with jobs recovered from a spool if one is given; jobs
    /// Redis refuses for good go to `dead_letters`.
    pub fn new(config: BufferConfig, spool: Option<(Spool, Recovered)>, dead_letters: DeadLetters) -> Arc<Self> {
        let mut state = State { next_seq: 1, ..State::default() };
        let mut spool_problems = Vec::new();
        let mut count = 0;
        let mut producer = uuid::Uuid::new_v4().simple().to_string();
        let spool = spool.map(|(spool, recovered)| {
            producer.clone_from(&recovered.producer);
            spool_problems.clone_from(&recovered.problems);
            count = recovered.batches.iter().map(|(_, b)| b.len()).sum();
            for (first, items) in recovered.batches {
                let raw: usize = items.iter().map(batch::raw_size).sum();
                let mut seg = Segment::Open(items, 0);
                seg.seal();
                state.bytes += seg.bytes();
                state.jobs += seg.len();
                state.raw_bytes += raw;
                state.segments.push_back((first, seg));
            }
            state.next_seq = recovered.next_seq;
            Mutex::new(spool)
        });
        Arc::new(Self {
            config,
            producer,
            dead_letters: Mutex::new(dead_letters),
            spool_problems,
            recovered: count,
            state: Mutex::new(state),
            changed: Condvar::new(),
            wake: Notify::new(),
            spool,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds jobs; waits up to `full_timeout` for room. The jobs are on disk
    /// first when there is a spool.
    pub fn push(&self, items: Vec<PushItem>) -> Result<()> {
        if items.is_empty() {
            return Ok(());
        }
        let size: usize = items.iter().map(batch::raw_size).sum();
        // A batch bigger than the whole buffer can only wait for an empty one.
        let need = size.min(self.config.max_bytes);
        let deadline = Instant::now() + self.config.full_timeout;
        let mut state = self.lock();
        while state.bytes + need > self.config.max_bytes && state.bytes > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let why = state.failing.clone().unwrap_or_else(|| "Redis is slower than the enqueue rate".to_owned());
                return Err(KiqError::BufferFull(format!(
                    "the push buffer is full ({} jobs, {} bytes of {}) and stayed full for {:?}: {why}",
                    state.jobs, state.bytes, self.config.max_bytes, self.config.full_timeout
                )));
            }
            state = self.changed.wait_timeout(state, left).unwrap_or_else(PoisonError::into_inner).0;
        }
        let first = state.next_seq;
        if let Some(spool) = &self.spool {
            spool.lock().unwrap_or_else(PoisonError::into_inner).append(first, &items)?;
        }
        self.add(state, items, size);
        Ok(())
    }

    /// Adds jobs if that takes neither waiting for room nor writing a spool
    /// (so a caller may do it without giving up other locks, such as
    /// Python's GIL); else gives them back for [`Buffer::push`].
    pub fn try_push(&self, items: Vec<PushItem>) -> std::result::Result<(), Vec<PushItem>> {
        if self.spool.is_some() || items.is_empty() {
            return Err(items);
        }
        let size: usize = items.iter().map(batch::raw_size).sum();
        let state = self.lock();
        if state.bytes + size > self.config.max_bytes {
            return Err(items);
        }
        self.add(state, items, size);
        Ok(())
    }

    /// Appends jobs (numbered from `next_seq`, on disk already if spooled) and wakes the flusher.
    fn add(&self, mut state: MutexGuard<'_, State>, items: Vec<PushItem>, size: usize) {
        let first = state.next_seq;
        state.next_seq += items.len() as u64;
        state.jobs += items.len();
        state.bytes += size;
        state.raw_bytes += size;
        match state.segments.back_mut() {
            Some((_, Segment::Open(open, bytes))) if *bytes < SEAL_BYTES => {
                open.extend(items);
                *bytes += size;
            }
            _ => state.segments.push_back((first, Segment::Open(items, size))),
        }
        // Compressed only if it will wait long: with no flusher or a failing one, or behind half the
        // buffer's room. A healthy flusher takes a full batch every few milliseconds, and compressing
        // what it takes next costs the pushing thread more than the flusher's round trip.
        let in_flight_bytes = state.inflight.map_or(0, |(_, _, bytes, _)| bytes);
        let waits =
            !state.flusher || state.failing.is_some() || state.bytes - in_flight_bytes > self.config.max_bytes / 2;
        if let Some((_, seg @ Segment::Open(_, _))) = state.segments.back_mut()
            && waits
            && seg.bytes() >= SEAL_BYTES
        {
            let before = seg.bytes();
            seg.seal();
            let after = seg.bytes();
            state.bytes = state.bytes - before + after;
        }
        drop(state);
        self.wake.notify_one();
    }

    /// Waits until every job pushed so far is in Redis, up to `timeout`.
    pub fn flush(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let target = self.lock().next_seq;
        let mut state = self.lock();
        loop {
            let oldest = state.inflight.map(|(first, ..)| first).or_else(|| state.segments.front().map(|(s, _)| *s));
            if oldest.is_none_or(|s| s >= target) {
                return self.report(&mut state);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let why = state.failing.clone().map_or(String::new(), |e| format!(": {e}"));
                return Err(KiqError::Timeout(format!(
                    "{} buffered jobs were not all in Redis after {timeout:?}{why}",
                    state.jobs
                )));
            }
            self.wake.notify_one();
            state = self.changed.wait_timeout(state, left).unwrap_or_else(PoisonError::into_inner).0;
        }
    }

    /// Jobs moved to the dead-letter file since the last report, as an error naming them.
    fn report(&self, state: &mut State) -> Result<()> {
        if state.unreported.is_empty() {
            return Ok(());
        }
        let lines = std::mem::take(&mut state.unreported);
        let path = self.dead_letters.lock().unwrap_or_else(PoisonError::into_inner).path().display().to_string();
        let shown: Vec<&str> = lines.iter().take(10).map(String::as_str).collect();
        let more =
            if lines.len() > shown.len() { format!(" and {} more", lines.len() - shown.len()) } else { String::new() };
        Err(KiqError::Undeliverable(format!(
            "{} jobs were refused by Redis and kept in {path} (replay them with `kiq spool push {path}` once \
             fixed): {}{more}",
            lines.len(),
            shown.join("; ")
        )))
    }

    /// Where jobs Redis refused for good are kept.
    pub fn undeliverable_path(&self) -> std::path::PathBuf {
        self.dead_letters.lock().unwrap_or_else(PoisonError::into_inner).path().to_path_buf()
    }

    pub fn stats(&self) -> BufferStats {
        let state = self.lock();
        let spool_bytes = self.spool.as_ref().map_or(0, |s| s.lock().unwrap_or_else(PoisonError::into_inner).len());
        BufferStats {
            jobs: state.jobs,
            bytes: state.bytes,
            raw_bytes: state.raw_bytes,
            flushed: state.flushed,
            failing: state.failing.clone(),
            spool_bytes,
            undeliverable: state.undeliverable,
        }
    }

    /// Takes the oldest jobs for one round trip, numbered.
    fn take_batch(&self) -> Option<Batch> {
        let mut state = self.lock();
        let mut first = None;
        let mut items: Vec<(u64, PushItem)> = Vec::new();
        let mut bytes = 0;
        while let Some((seq, seg)) = state.segments.front() {
            if !items.is_empty() && (items.len() + seg.len() > MAX_BATCH || bytes + seg.bytes() > MAX_BATCH_BYTES) {
                break;
            }
            let seq = *seq;
            first.get_or_insert(seq);
            let (_, seg) = state.segments.pop_front().expect("front exists");
            bytes += seg.bytes();
            items.extend(seg.into_items().into_iter().enumerate().map(|(i, item)| (seq + i as u64, item)));
        }
        let first = first?;
        let raw = items.iter().map(|(_, i)| batch::raw_size(i)).sum();
        state.inflight = Some((first, items.len(), bytes, raw));
        let items = Arc::new(items);
        state.sending = Some(items.clone());
        Some(Batch { items, refused_since: None, fresh: true })
    }

    /// The jobs of a batch the flusher is done sending, to change or drop.
    fn release(&self, items: Arc<Vec<(u64, PushItem)>>) -> Vec<(u64, PushItem)> {
        self.lock().sending = None;
        Arc::try_unwrap(items).unwrap_or_else(|shared| (*shared).clone())
    }

    /// Writes every job not yet confirmed in Redis to a new spool in `dir`,
    /// under this buffer's producer id and sequence numbers: delivered later
    /// by a process with `buffer_path=dir` (or `kiq spool push dir`), where
    /// Redis skips any of them this process still managed to push. Returns
    /// how many were written.
    pub fn dump(&self, dir: &std::path::Path) -> Result<usize> {
        let state = self.lock();
        let mut jobs: Vec<(u64, PushItem)> = state.sending.as_deref().cloned().unwrap_or_default();
        for (first, seg) in &state.segments {
            let items = match seg {
                Segment::Open(items, _) => items.clone(),
                Segment::Sealed { data, .. } => batch::decompress(data)?,
            };
            jobs.extend(items.into_iter().enumerate().map(|(i, item)| (first + i as u64, item)));
        }
        drop(state);
        if jobs.is_empty() {
            return Ok(0);
        }
        let mut spool = Spool::create(dir, &self.producer)?;
        // One record per run of consecutive numbers (jobs set aside leave gaps).
        let mut start = 0;
        for i in 1..=jobs.len() {
            if i == jobs.len() || jobs[i].0 != jobs[i - 1].0 + 1 {
                let run: Vec<PushItem> = jobs[start..i].iter().map(|(_, item)| item.clone()).collect();
                spool.append(jobs[start].0, &run)?;
                start = i;
            }
        }
        spool.sync();
        Ok(jobs.len())
    }

    /// The batch in flight is settled: `pushed` of its jobs are in Redis and
    /// every job up to `last` is accounted for.
    fn confirm(&self, last: u64, pushed: usize) {
        let mut state = self.lock();
        state.sending = None;
        if let Some((_, jobs, bytes, raw)) = state.inflight.take() {
            state.jobs -= jobs;
            state.bytes -= bytes;
            state.raw_bytes -= raw;
        }
        state.flushed += pushed as u64;
        if state.failing.take().is_some() {
            log::warn!("the push buffer reaches Redis again");
        }
        drop(state);
        if let Some(spool) = &self.spool
            && let Err(e) = spool.lock().unwrap_or_else(PoisonError::into_inner).ack(last)
        {
            log::error!("{e} (the jobs are in Redis; a restart pushes them again, and Redis skips them)");
        }
        self.changed.notify_all();
    }

    /// Moves jobs Redis refused for good out of the batch in flight and into
    /// the dead-letter file, where the user can read and replay them.
    fn set_aside(&self, refused: Vec<(u64, PushItem)>, reason: &str) {
        if refused.is_empty() {
            return;
        }
        let raw: usize = refused.iter().map(|(_, i)| batch::raw_size(i)).sum();
        let mut letters = self.dead_letters.lock().unwrap_or_else(PoisonError::into_inner);
        let first_time = letters.note(reason);
        let written = letters.write(&refused, reason);
        let path = letters.path().display().to_string();
        drop(letters);
        match written {
            Ok(()) if first_time => log::error!(
                "Redis refused {} jobs, kept in {path} (replay with `kiq spool push {path}`): {reason}",
                refused.len()
            ),
            Ok(()) => {}
            Err(e) => {
                log::error!("{e}; the {} jobs Redis refused ({reason}) are held in memory meanwhile", refused.len());
            }
        }
        let mut state = self.lock();
        if let Some((_, jobs, bytes, raw_bytes)) = &mut state.inflight {
            *jobs -= refused.len();
            *raw_bytes -= raw;
            *bytes = bytes.saturating_sub(raw);
        }
        state.jobs -= refused.len();
        state.raw_bytes -= raw;
        state.bytes = state.bytes.saturating_sub(raw);
        state.undeliverable += refused.len() as u64;
        for (_, item) in &refused {
            let jid = crate::job::Payload::parse(item.payload.as_str()).ok().and_then(|p| p.jid()).unwrap_or_default();
            state.unreported.push(format!("jid {jid} for {:?}: {reason}", item.queue));
        }
        drop(state);
        self.changed.notify_all();
    }

    /// The batch could not be sent; it will be sent again as it is. Every
    /// waiting segment is compressed meanwhile.
    fn failed(&self, error: &str) {
        let mut state = self.lock();
        let mut delta: isize = 0;
        for (_, seg) in &mut state.segments {
            let before = seg.bytes();
            seg.seal();
            delta += seg.bytes() as isize - before as isize;
        }
        state.bytes = (state.bytes as isize + delta).max(0) as usize;
        if state.failing.is_none() {
            log::error!("cannot push {} buffered jobs to Redis, keeping them and retrying: {error}", state.jobs);
        }
        state.failing = Some(error.to_owned());
        drop(state);
        self.changed.notify_all();
    }

    fn sync_spool(&self) {
        if let Some(spool) = &self.spool {
            spool.lock().unwrap_or_else(PoisonError::into_inner).sync();
        }
    }
}

/// Opens a spool directory for a buffer.
pub fn open_spool(dir: &std::path::Path, fsync: Fsync) -> Result<(Spool, Recovered)> {
    Spool::open(dir, fsync)
}

/// Jobs grouped by why Redis refused them.
type Refusals = Vec<(String, Vec<(u64, PushItem)>)>;

fn group(refusals: &mut Refusals, why: String, job: (u64, PushItem)) {
    match refusals.iter_mut().find(|(w, _)| *w == why) {
        Some((_, jobs)) => jobs.push(job),
        None => refusals.push((why, vec![job])),
    }
}

impl Buffer {
    /// The batch reached Redis; the jobs it refused are set aside.
    fn landed(&self, batch: Batch, refused: &[(u64, String)]) {
        let n = batch.items.len();
        let last = batch.items.last().map_or(0, |(s, _)| *s);
        if !refused.is_empty() {
            let why: std::collections::HashMap<u64, &str> = refused.iter().map(|(s, w)| (*s, w.as_str())).collect();
            let mut aside = Refusals::new();
            for (seq, item) in self.release(batch.items) {
                if let Some(w) = why.get(&seq) {
                    group(&mut aside, (*w).to_owned(), (seq, item));
                }
            }
            for (w, jobs) in aside {
                self.set_aside(jobs, &w);
            }
        }
        self.confirm(last, n - refused.len());
    }

    /// Whether a full batch (by count or bytes) waits to be sent.
    fn full_batch_waits(&self) -> bool {
        let state = self.lock();
        state.jobs >= MAX_BATCH || state.bytes >= MAX_BATCH_BYTES
    }

    /// Nothing was written because keys hold the wrong kind of value: their
    /// jobs are set aside; the rest is returned, to go again at once.
    fn split_wrong_type(&self, batch: Batch, wrong: &[(String, String)], keys: &Keys) -> Option<Batch> {
        let last = batch.items.last().map_or(0, |(s, _)| *s);
        let mut aside = Refusals::new();
        let mut keep = Vec::with_capacity(batch.items.len());
        for (seq, item) in self.release(batch.items) {
            let targets =
                if item.at.is_some() { vec![keys.schedule()] } else { vec![keys.queue(&item.queue), keys.queues()] };
            let why: Vec<(String, String)> = wrong.iter().filter(|(k, _)| targets.contains(k)).cloned().collect();
            if why.is_empty() {
                keep.push((seq, item));
            } else {
                group(&mut aside, client::wrong_type_message(&why), (seq, item));
            }
        }
        for (w, jobs) in aside {
            self.set_aside(jobs, &w);
        }
        if keep.is_empty() {
            self.confirm(last, 0);
            return None;
        }
        let items = Arc::new(keep);
        self.lock().sending = Some(items.clone());
        Some(Batch { items, refused_since: batch.refused_since, fresh: false })
    }

    /// The batch failed: returned to be sent again as it is, unless the
    /// failure is one retrying cannot fix (then its jobs are set aside).
    fn not_sent(&self, mut batch: Batch, e: &KiqError) -> Option<Batch> {
        batch.fresh = false;
        let message = e.to_string();
        let give_up = match client::trouble(e) {
            Trouble::Permanent => true,
            Trouble::Refused => {
                batch.refused_since.get_or_insert_with(Instant::now).elapsed() >= self.config.refused_timeout
            }
            Trouble::Away => {
                batch.refused_since = None;
                false
            }
        };
        if give_up {
            let last = batch.items.last().map_or(0, |(s, _)| *s);
            self.set_aside(self.release(batch.items), &message);
            self.confirm(last, 0);
            return None;
        }
        self.failed(&message);
        Some(batch)
    }
}

/// Flushes `buffer` to Redis until the process ends (or the buffer is dropped elsewhere).
pub async fn run(buffer: Arc<Buffer>, pool: Arc<Pool>, keys: Keys) {
    buffer.lock().flusher = true;
    let mut backoff = buffer.config.flush_interval;
    // A batch whose outcome is not known yet: sent again exactly as it is.
    let mut pinned: Option<Batch> = None;
    // Whether a batch's first send may be plain LPUSHes (see `fresh.rs`): off
    // for good once Redis refuses the transaction itself (an ACL without
    // MULTI, EXEC or EVAL, a server that does not take them).
    let mut use_fresh = true;
    // The transaction's own connection: MULTI and the commands after it must not share one with other tasks.
    let mut dedicated = pool.blocking(Duration::ZERO);
    loop {
        let batch = if let Some(b) = pinned.take() {
            b
        } else if let Some(b) = buffer.take_batch() {
            b
        } else {
            buffer.sync_spool();
            // Nothing to send: wait for a push (no timer while idle).
            buffer.wake.notified().await;
            continue;
        };
        let numbered: Vec<client::Numbered<'_>> = batch.items.iter().map(|(s, i)| (*s, i)).collect();
        let (producer, ttl) = (&buffer.producer, buffer.config.producer_ttl);
        let sent = if use_fresh && batch.fresh && fresh::eligible(&batch.items) {
            match fresh::push_fresh(&mut dedicated, &keys, producer, ttl, &numbered).await {
                Ok(Fresh::Pushed) => Ok(PushReply::Done { refused: Vec::new() }),
                Ok(Fresh::WrongType(wrong)) => Ok(PushReply::WrongType(wrong)),
                Ok(Fresh::Replay) => {
                    // Jobs of it landed before (a spool replayed at start): push.lua skips them.
                    drop(numbered);
                    pinned = Some(Batch { fresh: false, ..batch });
                    continue;
                }
                // Redis answered and kept nothing (a refused transaction, or
                // push_mark.lua took the jobs out): push.lua at once, which
                // reports whatever is wrong as it always did.
                Err(e) if client::trouble(&e) != Trouble::Away => {
                    if client::trouble(&e) == Trouble::Permanent {
                        use_fresh = false;
                        log::warn!(
                            "Redis refuses the transaction kiq pushes batches with ({e}); pushing through push.lua \
                             from now on, which costs Redis about twice the CPU per job (an ACL user needs MULTI, \
                             EXEC and EVAL: see `kiq acl`)"
                        );
                    }
                    drop(numbered);
                    pinned = Some(Batch { fresh: false, ..batch });
                    continue;
                }
                Err(e) => Err(e),
            }
        } else {
            client::push_numbered(&mut pool.get(), &keys, producer, ttl, &numbered).await
        };
        match sent {
            Ok(PushReply::Done { refused }) => {
                backoff = buffer.config.flush_interval;
                buffer.landed(batch, &refused);
                // Jobs gather for flush_interval before the next round trip,
                // unless a full batch waits already (a batch ends at a
                // segment's edge, so its own size does not tell).
                if !buffer.full_batch_waits() {
                    buffer.sync_spool();
                    tokio::time::sleep(buffer.config.flush_interval).await;
                }
            }
            Ok(PushReply::WrongType(wrong)) => pinned = buffer.split_wrong_type(batch, &wrong, &keys),
            Err(e) => {
                if let KiqError::Redis(re) = &e {
                    pool.note_error(re);
                }
                pinned = buffer.not_sent(batch, &e);
                if pinned.is_some() {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff.mul_f64(1.5)).min(buffer.config.max_backoff);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(n: usize) -> Vec<PushItem> {
        (0..n)
            .map(|i| PushItem {
                queue: Arc::from("default"),
                payload: format!(r#"{{"class":"X","args":[{i}],"jid":"{i:024}"}}"#),
                at: None,
            })
            .collect()
    }

    fn letters() -> DeadLetters {
        DeadLetters::new(std::env::temp_dir().join(format!("kiq-test-{}.jsonl", uuid::Uuid::new_v4().simple())))
    }

    #[test]
    fn takes_in_order_numbered_and_compresses_the_rest_on_failure() {
        let b = Buffer::new(BufferConfig::default(), None, letters());
        b.push(items(3)).unwrap();
        b.push(items(2)).unwrap();
        let batch = b.take_batch().unwrap();
        let seqs: Vec<u64> = batch.items.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, vec![1, 2, 3, 4, 5]);
        assert_eq!(batch.items[3].1.payload, items(2)[0].payload);
        b.push(items(500)).unwrap();
        let raw = b.stats().bytes;
        b.failed("down");
        let s = b.stats();
        assert_eq!(s.jobs, 505);
        assert!(s.bytes < raw, "compressed after a failure: {} vs {raw}", s.bytes);
        assert_eq!(s.failing.as_deref(), Some("down"));
        b.confirm(5, 5);
        let next = b.take_batch().unwrap();
        assert_eq!(next.items[0].0, 6, "numbers go on after the pinned batch");
        b.confirm(505, 500);
        assert_eq!(b.stats(), BufferStats { flushed: 505, ..BufferStats::default() });
        b.flush(Duration::from_millis(1)).unwrap();
    }

    #[test]
    fn refused_jobs_are_set_aside_and_reported_once_by_flush() {
        let b = Buffer::new(BufferConfig::default(), None, letters());
        b.push(items(4)).unwrap();
        let batch = b.take_batch().unwrap();
        let mut items = b.release(batch.items);
        let aside: Vec<(u64, PushItem)> = items.drain(..2).collect();
        b.set_aside(aside, "WRONGTYPE: \"queue:default\" holds a string");
        assert_eq!(b.stats().jobs, 2, "two set aside, two still in flight");
        b.confirm(4, 2);
        let s = b.stats();
        assert_eq!((s.jobs, s.flushed, s.undeliverable), (0, 2, 2));
        let err = b.flush(Duration::from_millis(1)).unwrap_err().to_string();
        assert!(err.contains("2 jobs were refused") && err.contains("WRONGTYPE"), "{err}");
        assert!(err.contains("kiq spool push"), "{err}");
        b.flush(Duration::from_millis(1)).unwrap();
        let kept = crate::deadletter::read(&b.undeliverable_path()).unwrap();
        assert_eq!(kept.len(), 2);
        let _ = std::fs::remove_file(b.undeliverable_path());
    }

    #[test]
    fn a_full_buffer_waits_then_fails_clearly() {
        let cfg = BufferConfig { max_bytes: 1000, full_timeout: Duration::from_millis(50), ..BufferConfig::default() };
        let b = Buffer::new(cfg, None, letters());
        b.push(items(10)).unwrap();
        let t = Instant::now();
        let err = b.push(items(10)).unwrap_err();
        assert!(t.elapsed() >= Duration::from_millis(50));
        assert!(err.to_string().contains("push buffer is full"), "{err}");
        assert_eq!(b.stats().jobs, 10);
    }

    #[test]
    fn flush_times_out_while_jobs_wait() {
        let b = Buffer::new(BufferConfig::default(), None, letters());
        b.push(items(1)).unwrap();
        assert!(matches!(b.flush(Duration::from_millis(10)), Err(KiqError::Timeout(_))));
    }

    #[test]
    fn big_segments_are_sealed() {
        let b = Buffer::new(BufferConfig::default(), None, letters());
        b.push(items(2000)).unwrap();
        let s = b.stats();
        let raw: usize = items(2000).iter().map(batch::raw_size).sum();
        assert!(s.bytes * 3 < raw, "{} vs {raw}", s.bytes);
    }
}
