//! The dequeue loop: one task per capsule (`capsule.rs`: one queue, or
//! several sharing threads), fetching only for idle workers.
//!
//! Each round asks for `concurrency - out` jobs with `fetch.lua`, which moves
//! them from the capsule's queues (in the order of its mode) into this
//! process's in-progress list of each queue in one atomic step (and keeps the
//! batch under a token, so a lost reply is read back rather than stranding
//! jobs). When every queue is empty the task blocks in `BLMOVE` on each queue,
//! each on a connection of its own, so an idle queue costs one command per 2 s
//! (Sidekiq's fetch timeout) and a new job is picked up as soon as it is
//! pushed. When every worker is busy it sleeps until a job finishes. Payloads that cannot run
//! (not JSON, no class, args not an array) never reach a worker: they go to
//! the dead set or the retry path with an error saying what is wrong. Jobs of
//! throttled classes are checked here, the batch in one round trip, before
//! any takes a thread; refused ones are parked (`throttle.rs`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::mpsc;

use crate::ack::{Msg, Settle, Settlement};
use crate::activejob;
use crate::admit::Admitter;
use crate::args;
use crate::backlog::Backlog;
use crate::batches::watch::Watch;
use crate::batches::{BatchRef, Outcome as BatchOutcome, Settled};
use crate::capsule::Capsule;
use crate::control::{Control, RunState};
use crate::crypto::{self, Keyring};
use crate::job::{Payload, UniqueUntil, field};
use crate::keys::Keys;
use crate::lane::{Delivery, Lane};
use crate::pool::Pool;
use crate::retry::{self, Failure, RetryPolicy};
use crate::scripts;
use crate::throttle::Throttles;
use crate::timestamp;
use crate::wip::WipList;
use crate::worker::WorkerOptions;

/// Sidekiq's fetch timeout: how long one blocking wait lasts.
pub const BLOCK: Duration = Duration::from_secs(2);

/// How long a fetch's batch copy and token live: they are read back only
/// right after a failed fetch, and a dead process's stay behind otherwise.
const BATCH_TTL_MS: u64 = 24 * 3600 * 1000;

/// The error class recorded for payloads kiq cannot run.
pub const INVALID_JOB_ERROR: &str = "kiq.errors.InvalidJobError";

/// The settlement of a job that failed before it could run: the retry path.
pub(crate) fn failure_settlement(
    list: &Arc<WipList>,
    pos: u64,
    queue: &str,
    policy: &RetryPolicy,
    payload: Payload,
    failure: &Failure,
) -> Settlement {
    let raw = payload.source().as_bytes().to_vec();
    let batch_ref = BatchRef::of(&payload);
    let jid = payload.jid().unwrap_or_default();
    let (disposition, _) =
        retry::on_failure(payload, queue, failure, &WorkerOptions::default(), policy, timestamp::now(), rand::random());
    let batch = batch_ref.and_then(|b| Settled::new(&b, &jid, BatchOutcome::of(&disposition)));
    let (settle, _) = Settle::of_failure(disposition);
    Settlement {
        list: list.clone(),
        pos,
        raw: raw.into(),
        settle,
        processed: true,
        failed: true,
        unlock: None,
        held: None,
        batch,
    }
}

/// One queue of a capsule, as its fetcher sees it (its name and in-progress
/// list are [`Fetcher::queues`]`[index]`).
pub struct Source {
    /// The queue's number in the process (`Delivery::queue`).
    pub index: usize,
    pub queue_key: String,
}

pub struct Fetcher {
    pub lane_index: usize,
    pub lane: Arc<Lane>,
    pub capsule: Capsule,
    /// The capsule's queues, in its listed order.
    pub sources: Vec<Source>,
    /// Every queue of the process by its number: its name and in-progress list.
    pub queues: Arc<[(Arc<str>, Arc<WipList>)]>,
    /// Where fetch.lua keeps its last batch, and that batch's token.
    pub batch_key: String,
    pub token_key: String,
    pub pool: Arc<Pool>,
    pub keys: Keys,
    pub policy: RetryPolicy,
    pub acks: mpsc::UnboundedSender<Msg>,
    /// Results waiting to be written: no fetch while there are too many.
    pub backlog: Arc<Backlog>,
    pub control: Control,
    /// Keys for jobs whose last argument is encrypted (Sidekiq Enterprise's format).
    pub keyring: Option<Arc<Keyring>>,
    /// Batch checks shared by the process's fetchers (invalidation, Pro bids).
    pub watch: Arc<Watch>,
    /// The process's throttles, if any worker has one.
    pub throttles: Option<Arc<Throttles>>,
    /// True once the process's heartbeat reached Redis (at once without a
    /// heartbeat): nothing is fetched before, see `Heartbeat::registered`.
    pub registered: tokio::sync::watch::Receiver<bool>,
}

/// Jobs fetched, by the position of their queue in [`Fetcher::sources`].
type Fetched = Vec<(usize, Vec<Vec<u8>>)>;

/// One blocking wait of [`Fetcher::wait_for_push`].
type Wait = Pin<Box<dyn Future<Output = redis::RedisResult<Option<Vec<u8>>>> + Send>>;

/// The first of `waits` to finish (its position and result); `None` once all have.
async fn first_of(waits: &mut [Option<Wait>]) -> Option<(usize, redis::RedisResult<Option<Vec<u8>>>)> {
    std::future::poll_fn(|cx| {
        let mut any = false;
        for (i, slot) in waits.iter_mut().enumerate() {
            if let Some(w) = slot {
                any = true;
                if let Poll::Ready(r) = w.as_mut().poll(cx) {
                    *slot = None;
                    return Poll::Ready(Some((i, r)));
                }
            }
        }
        if any { Poll::Pending } else { Poll::Ready(None) }
    })
    .await
}

impl Fetcher {
    pub async fn run(self) {
        let (admitter, admitting) = match &self.throttles {
            Some(t) if t.any_at_fetch() => {
                let (tx, rx) = mpsc::unbounded_channel();
                let admit = Admitter {
                    throttles: t.clone(),
                    lane: self.lane.clone(),
                    queues: self.queues.clone(),
                    pool: self.pool.clone(),
                    keys: self.keys.clone(),
                    policy: self.policy.clone(),
                    acks: self.acks.clone(),
                    control: self.control.clone(),
                };
                (Some(tx), Some(tokio::spawn(admit.run(rx))))
            }
            _ => (None, None),
        };
        self.fetch_loop(admitter.as_ref()).await;
        // Batches still being checked are offered (or handed back) before the stop goes on.
        drop(admitter);
        if let Some(task) = admitting {
            let _ = task.await;
        }
    }

    async fn fetch_loop(&self, admitter: Option<&mpsc::UnboundedSender<Vec<Box<Delivery>>>>) {
        let mut registered = self.registered.clone();
        let mut stopping = self.control.subscribe();
        tokio::select! {
            r = registered.wait_for(|r| *r) => {
                if r.is_err() {
                    return;
                }
            }
            _ = stopping.wait_for(|s| *s == RunState::Stopping) => return,
        }
        let mut blocking: Vec<_> = self.sources.iter().map(|_| self.pool.blocking(BLOCK)).collect();
        let mut state = self.control.subscribe();
        let mut failing = false;
        let mut delay = Duration::from_millis(100);
        // The queue was found empty: wait for a push before asking again.
        let mut idle = false;
        let mut token: u64 = 0;
        // A fetch failed: find out whether it ran before fetching again.
        let mut unsure: Option<u64> = None;
        loop {
            let now = *state.borrow_and_update();
            match now {
                RunState::Stopping => break,
                RunState::Quiet if unsure.is_none() => {
                    if state.changed().await.is_err() {
                        break;
                    }
                    continue;
                }
                _ => {}
            }
            let held = self.lane.excess();
            if !held.is_empty() {
                self.hand_back(held).await;
                continue;
            }
            let result = if let Some(t) = unsure {
                let jobs = self.read_back(t).await;
                if jobs.is_ok() {
                    unsure = None;
                }
                jobs
            } else {
                let free = self.lane.free();
                let braked = self.backlog.full();
                if free == 0 || braked {
                    tokio::select! {
                        () = self.lane.demand.notified() => {}
                        () = self.lane.shed.notified() => {}
                        () = self.backlog.room(), if braked => {}
                        _ = state.changed() => {}
                    }
                    continue;
                }
                if idle {
                    match self.wait_for_push(&mut blocking).await {
                        Ok(pushed) => {
                            idle = !pushed;
                            continue;
                        }
                        Err(e) => Err(e),
                    }
                } else {
                    token += 1;
                    match self.fetch(free, token).await {
                        Ok(jobs) => {
                            idle = jobs.iter().all(|(_, j)| j.is_empty());
                            Ok(jobs)
                        }
                        Err(e) => {
                            unsure = Some(token);
                            Err(e)
                        }
                    }
                }
            };
            match result {
                Ok(jobs) => {
                    if failing {
                        log::warn!("fetching from {} works again", self.what());
                        failing = false;
                        delay = Duration::from_millis(100);
                    }
                    self.deliver(jobs, admitter).await;
                }
                Err(e) => {
                    self.pool.note_error(&e);
                    if !failing {
                        log::error!("cannot fetch from {}, pausing until Redis answers: {e}", self.what());
                        failing = true;
                    }
                    if !self.control.sleep(delay).await {
                        break;
                    }
                    delay = (delay * 3 / 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// Hands jobs the lane held beyond its capacity back to their queues
    /// ([`Lane::excess`]), retrying while Redis is away. A stop ends the
    /// retries: the jobs are still in the in-progress list, which the stop
    /// hands back. If a queue's keys hold the wrong type, the lane keeps its
    /// held jobs from then on ([`Lane::keep_held`]).
    async fn hand_back(&self, mut held: Vec<Box<Delivery>>) {
        while let Some(queue) = held.first().map(|d| d.queue) {
            let (jobs, rest): (Vec<Box<Delivery>>, Vec<Box<Delivery>>) =
                held.into_iter().partition(|d| d.queue == queue);
            held = rest;
            let (name, wip) = &self.queues[queue];
            let mut delay = Duration::from_millis(100);
            loop {
                match crate::unfetch::hand_back(&self.pool, &self.keys, name, &wip.key, &jobs).await {
                    Ok(moved) => {
                        // Out of the in-progress list now (those not found there were gone before).
                        wip.gone(jobs.iter().map(|d| d.pos));
                        log::debug!(
                            "{moved} jobs of queue {name:?} held for a prefetch went back to it: its jobs turned slow"
                        );
                        break;
                    }
                    Err(e) if e.code() == Some("WRONGTYPE") => {
                        log::error!(
                            "cannot hand {} held jobs back to queue {name:?}, so they and the jobs held later \
                             run here: {e}",
                            jobs.len()
                        );
                        self.lane.keep_held(jobs);
                        break;
                    }
                    Err(e) => {
                        self.pool.note_error(&e);
                        log::warn!("cannot hand {} held jobs back to queue {name:?} yet: {e}", jobs.len());
                        if !self.control.sleep(delay).await {
                            return;
                        }
                        delay = (delay * 3 / 2).min(Duration::from_secs(2));
                    }
                }
            }
        }
    }

    /// "queue \"x\"", or "queues \"x,y\"" for a capsule of several (messages).
    fn what(&self) -> String {
        let plural = if self.sources.len() > 1 { "s" } else { "" };
        format!("queue{plural} {:?}", self.lane.name)
    }

    async fn fetch(&self, n: usize, token: u64) -> redis::RedisResult<Fetched> {
        let mut inv = scripts::FETCH.key(&self.batch_key);
        inv.key(&self.token_key).arg(n).arg(token).arg(BATCH_TTL_MS);
        let mut add = |i: usize| {
            let s = &self.sources[i];
            inv.key(&s.queue_key).key(&*self.queues[s.index].1.key).arg(i);
        };
        if self.capsule.drawn() {
            self.capsule.order(&mut rand::rng()).into_iter().for_each(&mut add);
        } else {
            (0..self.sources.len()).for_each(&mut add);
        }
        let groups: Vec<Vec<Vec<u8>>> = inv.invoke_async(&mut self.pool.get()).await?;
        groups
            .into_iter()
            .filter(|g| !g.is_empty())
            .map(|mut g| {
                let tag = g.remove(0);
                Ok((self.tag(&tag)?, g))
            })
            .collect()
    }

    /// The source a tag of fetch.lua's names.
    fn tag(&self, tag: &[u8]) -> redis::RedisResult<usize> {
        std::str::from_utf8(tag)
            .ok()
            .and_then(|t| t.parse::<usize>().ok())
            .filter(|&i| i < self.sources.len())
            .ok_or_else(|| {
                redis::RedisError::from((redis::ErrorKind::Parse, "fetch.lua returned an unknown queue tag"))
            })
    }

    /// After a failed fetch: the batch it took, if it ran (it is in the
    /// in-progress lists, so it must be delivered), else nothing.
    async fn read_back(&self, token: u64) -> redis::RedisResult<Fetched> {
        let mut conn = self.pool.get();
        let stored: Option<u64> = redis::cmd("GET").arg(&self.token_key).query_async(&mut conn).await?;
        if stored != Some(token) {
            return Ok(Vec::new());
        }
        let flat: Vec<Vec<u8>> =
            redis::cmd("LRANGE").arg(&self.batch_key).arg(0).arg(-1).query_async(&mut conn).await?;
        // Per queue: its tag, the count, then the jobs.
        let mut out = Vec::new();
        let mut rest = flat.into_iter();
        while let Some(tag) = rest.next() {
            let source = self.tag(&tag)?;
            let count = rest.next().and_then(|c| String::from_utf8(c).ok()).and_then(|c| c.parse::<usize>().ok());
            let count =
                count.ok_or_else(|| redis::RedisError::from((redis::ErrorKind::Parse, "bad fetch batch count")))?;
            out.push((source, rest.by_ref().take(count).collect::<Vec<_>>()));
        }
        let n: usize = out.iter().map(|(_, j)| j.len()).sum();
        if n > 0 {
            log::warn!("a fetch from {} lost its reply; delivering its {n} jobs", self.what());
        }
        Ok(out)
    }

    /// Blocks until one of the queues has a job (or the block time ends).
    /// It waits with `BLMOVE queue queue RIGHT RIGHT` on each queue (each on
    /// its own connection), which moves the oldest job onto itself: the job
    /// never leaves the queue, so a lost reply strands nothing, and fetch.lua
    /// then takes jobs atomically. The first wait to end ends the others, as
    /// a quiet or stop does, with `CLIENT UNBLOCK`.
    async fn wait_for_push(&self, blocking: &mut [crate::pool::BlockingConn]) -> redis::RedisResult<bool> {
        let mut conns = Vec::with_capacity(blocking.len());
        for b in blocking.iter_mut() {
            match b.connected().await {
                Ok(c) => conns.push((c, b.client_id())),
                Err(e) => {
                    b.reset();
                    return Err(e);
                }
            }
        }
        let mut state = self.control.subscribe();
        if *state.borrow_and_update() != RunState::Running {
            return Ok(false);
        }
        let ids: Vec<Option<i64>> = conns.iter().map(|(_, id)| *id).collect();
        let mut waits: Vec<Option<Wait>> = conns
            .into_iter()
            .zip(&self.sources)
            .map(|((mut conn, _), s)| {
                let mut cmd = redis::cmd("BLMOVE");
                cmd.arg(&s.queue_key).arg(&s.queue_key).arg("RIGHT").arg("RIGHT").arg(BLOCK.as_secs_f64());
                Some(Box::pin(async move { cmd.query_async::<Option<Vec<u8>>>(&mut conn).await }) as Wait)
            })
            .collect();
        // Set once the waits must end (one ended, or a quiet or stop);
        // CLIENT UNBLOCK is sent to each until it finds the connection
        // blocked (it may be sent before BLMOVE reaches Redis, and then
        // unblocks nothing).
        let mut unblocking = false;
        let mut unblocked = vec![false; waits.len()];
        let mut pushed = false;
        let mut failed = None;
        loop {
            tokio::select! {
                next = first_of(&mut waits) => match next {
                    None => break,
                    Some((i, r)) => {
                        match r {
                            Ok(job) => pushed |= job.is_some(),
                            Err(e) => {
                                blocking[i].reset();
                                failed.get_or_insert(e);
                            }
                        }
                        unblocking = true;
                    }
                },
                changed = state.changed(), if !unblocking => {
                    if changed.is_err() || *state.borrow_and_update() != RunState::Running {
                        unblocking = true;
                    }
                }
                // Jobs held for the automatic prefetch turned slow: hand them back first.
                () = self.lane.shed.notified(), if !unblocking => unblocking = true,
                () = tokio::time::sleep(Duration::from_millis(20)), if unblocking => {}
            }
            if !unblocking {
                continue;
            }
            for (i, id) in ids.iter().enumerate() {
                let Some(id) = id.filter(|_| waits[i].is_some() && !unblocked[i]) else { continue };
                let r: redis::RedisResult<i64> =
                    redis::cmd("CLIENT").arg("UNBLOCK").arg(id).query_async(&mut self.pool.get()).await;
                match r {
                    Ok(0) => {}
                    Ok(_) => unblocked[i] = true,
                    Err(e) => {
                        log::debug!("CLIENT UNBLOCK {id} failed: {e}");
                        unblocked[i] = true;
                    }
                }
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(pushed),
        }
    }

    async fn deliver(&self, fetched: Fetched, admitter: Option<&mpsc::UnboundedSender<Vec<Box<Delivery>>>>) {
        let mut good = Vec::with_capacity(fetched.iter().map(|(_, j)| j.len()).sum());
        for (source, raws) in fetched {
            let source = &self.sources[source];
            // Positions in the in-progress list, in the order fetch.lua pushed them.
            let first = self.queues[source.index].1.fetched(raws.len());
            for (pos, raw) in (first..).zip(raws) {
                match self.decode(source, pos, raw) {
                    Ok(mut d) => {
                        if let Some(b) = d.batch.as_deref().filter(|b| b.callback.is_none()) {
                            d.batch_invalidated = self.watch.skip(&self.pool, &self.keys, &b.chain).await;
                        }
                        good.push(d);
                    }
                    Err(s) => {
                        let _ = self.acks.send(Msg::Settle(s));
                    }
                }
            }
        }
        if let (Some(t), Some(admitter)) = (&self.throttles, admitter)
            && good.iter().any(|d| t.at_fetch(&d.class))
        {
            // Checked beside this loop, which fetches on meanwhile: their slots are taken.
            self.lane.reserve(good.len());
            if let Err(back) = admitter.send(good) {
                self.lane.unreserve(back.0.len());
            }
            return;
        }
        // Jobs offered after a stop began stay in the in-progress list, which
        // the stop hands back to the queue.
        let _ = self.lane.offer(good);
    }

    /// A runnable job of this lane with these arguments, its expiry and
    /// unique lock read from the payload.
    fn delivery(
        &self,
        source: &Source,
        pos: u64,
        payload: Payload,
        class: String,
        args: Value,
        kwargs: Option<Value>,
    ) -> Box<Delivery> {
        let jid = payload.jid().unwrap_or_default();
        let expires_at = payload.time(field::EXPIRES_AT);
        let lock = payload.get(field::UNIQUE_TOKEN).and_then(|t| serde_json::from_str::<String>(t).ok()).map(|token| {
            let until = payload
                .get(field::UNIQUE_UNTIL)
                .and_then(|u| serde_json::from_str::<String>(u).ok())
                .and_then(|u| UniqueUntil::parse(&u))
                .unwrap_or_default();
            (self.keys.unique(&token), until)
        });
        let suspect = payload.get(field::SUSPECT) == Some("true");
        let batch = BatchRef::of(&payload).map(Box::new);
        if batch.is_none() && payload.contains(field::BID) {
            self.watch.note_foreign(&payload, &self.queues[source.index].0);
        }
        let wrapped = payload.string(field::WRAPPED);
        // Boxed once here: a thread moves a job many times on its way (lane,
        // start, the Python delivery, its result), each a copy of ~370 bytes
        // while it holds the GIL, and the result writer frees it.
        let mut d = Box::new(Delivery::new(self.lane_index, source.index, payload, class, jid, args));
        d.wrapped = wrapped.map(String::into_boxed_str);
        d.pos = pos;
        d.batch = batch;
        d.suspect = suspect;
        d.kwargs = kwargs;
        d.expires_at = expires_at;
        d.lock = lock;
        d
    }

    /// A runnable delivery, or the settlement for a payload that cannot run.
    #[allow(clippy::result_large_err)]
    fn decode(&self, source: &Source, pos: u64, raw: Vec<u8>) -> Result<Box<Delivery>, Settlement> {
        let (name, list) = &self.queues[source.index];
        let bury = |raw: Vec<u8>, why: &str| {
            log::error!("queue {name:?} held a job that is not a JSON object ({why}); moved to the dead set");
            Settlement {
                list: list.clone(),
                pos,
                raw: raw.clone().into(),
                settle: Settle::Dead { payload: raw },
                processed: false,
                failed: false,
                unlock: None,
                batch: None,
                held: None,
            }
        };
        let text = match String::from_utf8(raw) {
            Ok(t) => t,
            Err(e) => return Err(bury(e.into_bytes(), "not UTF-8")),
        };
        let payload = match Payload::try_parse(text) {
            Ok(p) => p,
            Err((e, text)) => return Err(bury(text.into_bytes(), &e.to_string())),
        };
        let mut error_class = INVALID_JOB_ERROR;
        let problem = match (payload.class(), payload.args()) {
            // Decrypted before anything else reads the arguments; the payload keeps the ciphertext.
            (Some(class), Some(args)) if !class.is_empty() && payload.encrypted() => {
                match crypto::open_last(self.keyring.as_deref(), args) {
                    Ok(bag) => match args::parse(args, "args") {
                        Ok(parsed) => {
                            let mut d = self.delivery(source, pos, payload, class, parsed, None);
                            d.bag = Some(Box::new(bag));
                            return Ok(d);
                        }
                        Err(e) => e.to_string(),
                    },
                    Err(e) => {
                        error_class = crypto::DECRYPTION_ERROR;
                        e.to_string()
                    }
                }
            }
            (Some(class), Some(args)) if activejob::is_wrapper(&class) => {
                match activejob::unwrap(args).and_then(|call| {
                    let args = Value::Array(call.args);
                    args::check(&args, "args")?;
                    let kwargs = call.kwargs.map(Value::Object);
                    if let Some(k) = &kwargs {
                        args::check(k, "kwargs")?;
                    }
                    Ok((call.class, args, kwargs))
                }) {
                    Ok((class, args, kwargs)) => return Ok(self.delivery(source, pos, payload, class, args, kwargs)),
                    Err(e) => e.to_string(),
                }
            }
            (Some(class), Some(args)) if !class.is_empty() => match args::parse(args, "args") {
                Ok(args) => return Ok(self.delivery(source, pos, payload, class, args, None)),
                Err(e) => e.to_string(),
            },
            (None, _) => "the job has no \"class\" string".into(),
            (Some(_), None) => "the job's \"args\" is missing or not an array".into(),
            (Some(_), Some(_)) => "the job's \"class\" is empty".into(),
        };
        log::error!("cannot run job {} from queue {name:?}: {problem}", payload.jid().unwrap_or_default());
        let failure = Failure { error_class: error_class.to_owned(), error_message: problem, ..Failure::default() };
        Err(failure_settlement(list, pos, name, &self.policy, payload, &failure))
    }
}
