//! Every Redis key kiq reads or writes, spelled once.
//!
//! The names are Sidekiq's (no prefix by default, as in Sidekiq 7+). Sidekiq 6
//! deployments that use `redis-namespace` set `namespace`, and every key below
//! gains `<namespace>:` in front, exactly as that gem does.

/// Builds key names for one Sidekiq keyspace.
#[derive(Debug, Clone, Default)]
pub struct Keys {
    prefix: String,
}

/// Daily stat keys live five years, as Sidekiq sets them.
pub const DAILY_STAT_TTL_SECS: i64 = 157_680_000;

impl Keys {
    pub fn new(namespace: Option<&str>) -> Self {
        let prefix = match namespace {
            Some(ns) if !ns.is_empty() => format!("{ns}:"),
            _ => String::new(),
        };
        Self { prefix }
    }

    /// The namespace prefix in front of every key (`"<namespace>:"`, or "").
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// SET of known queue names (bare, without `queue:`).
    pub fn queues(&self) -> String {
        self.key("queues")
    }

    /// LIST of job payloads: LPUSH on the left, consumers take from the right.
    pub fn queue(&self, name: &str) -> String {
        format!("{}queue:{name}", self.prefix)
    }

    /// ZSET of jobs to run later, score = run time in epoch seconds.
    pub fn schedule(&self) -> String {
        self.key("schedule")
    }

    /// ZSET of failed jobs waiting for their next attempt.
    pub fn retry(&self) -> String {
        self.key("retry")
    }

    /// ZSET of jobs that ran out of retries, score = time of death.
    pub fn dead(&self) -> String {
        self.key("dead")
    }

    /// A job set by its name: `schedule`, `retry` or `dead`.
    pub fn job_set(&self, name: &str) -> Option<String> {
        match name {
            "schedule" => Some(self.schedule()),
            "retry" => Some(self.retry()),
            "dead" => Some(self.dead()),
            _ => None,
        }
    }

    /// SET of live process identities (heartbeats).
    pub fn processes(&self) -> String {
        self.key("processes")
    }

    pub fn stat_processed(&self) -> String {
        self.key("stat:processed")
    }

    pub fn stat_failed(&self) -> String {
        self.key("stat:failed")
    }

    /// Per-day counter; `day` is UTC `YYYY-MM-DD`.
    pub fn stat_processed_day(&self, day: &str) -> String {
        format!("{}stat:processed:{day}", self.prefix)
    }

    pub fn stat_failed_day(&self, day: &str) -> String {
        format!("{}stat:failed:{day}", self.prefix)
    }

    /// HASH of a live process: `info`, `busy`, `beat`, `quiet`, `rss`, `rtt_us`, `concurrency`.
    pub fn process(&self, identity: &str) -> String {
        self.key(identity)
    }

    /// HASH of a process's running jobs, thread id → work JSON (Sidekiq 6.4.2+).
    pub fn work(&self, identity: &str) -> String {
        format!("{}{identity}:work", self.prefix)
    }

    /// The same hash under the name Sidekiq 6.4.1 and older read.
    pub fn workers(&self, identity: &str) -> String {
        format!("{}{identity}:workers", self.prefix)
    }

    /// LIST the Web UI pushes signals (TSTP, TERM, TTIN) to.
    pub fn signals(&self, identity: &str) -> String {
        format!("{}{identity}-signals", self.prefix)
    }

    /// Sidekiq 7's per-minute execution metrics hash, `day` = `YYYYMMDD`, `hm` = `H:M` unpadded.
    pub fn metrics7(&self, day: &str, hm: &str) -> String {
        format!("{}j|{day}|{hm}", self.prefix)
    }

    /// Sidekiq 8's metrics hashes: `bucket` = `YYMMDD|H:MM` (one minute) or that minus its last digit (ten).
    pub fn metrics8(&self, bucket: &str) -> String {
        format!("{}j|{bucket}", self.prefix)
    }

    /// Sidekiq 7's per-class, per-minute histogram (`window` = `DD-HH:M`).
    pub fn histogram7(&self, class: &str, window: &str) -> String {
        format!("{}{class}-{window}", self.prefix)
    }

    /// Sidekiq 8's histogram (`window` = `D-H:M`, unpadded).
    pub fn histogram8(&self, class: &str, window: &str) -> String {
        format!("{}h|{class}-{window}", self.prefix)
    }

    /// STRING naming the kiq leader (never Sidekiq Enterprise's `dear-leader`).
    pub fn leader(&self) -> String {
        self.key("kiq:leader")
    }

    /// HASH jid → times the job was recovered from a dead process (72 h TTL).
    pub fn recoveries(&self) -> String {
        self.key("kiq:recoveries")
    }

    /// STRING lock of a unique job: the jid holding it, with a TTL.
    pub fn unique(&self, token: &str) -> String {
        format!("{}kiq:unique:{token}", self.prefix)
    }

    /// HASH periodic entry id → last minute enqueued (epoch seconds).
    pub fn periodic(&self) -> String {
        self.key("kiq:periodic")
    }

    /// ZSET jid → when a running job's cancellation was asked (kept a day).
    pub fn cancelled(&self) -> String {
        self.key("kiq:cancelled")
    }

    /// HASH of a Sidekiq 7.3+ iterable job's state; its `cancelled` field cancels it.
    pub fn iteration(&self, jid: &str) -> String {
        format!("{}it-{jid}", self.prefix)
    }

    /// Counter of jobs that expired before they could start.
    pub fn stat_expired(&self) -> String {
        self.key("kiq:stat:expired")
    }

    /// HASH of a producer's pushes: the highest sequence number applied
    /// (`hw`) and the jobs of its last batch Redis refused (`rej`), so a
    /// replayed batch pushes nothing twice (see `scripts/push.lua`).
    pub fn pushed(&self, producer: &str) -> String {
        format!("{}kiq:pushed|{producer}", self.prefix)
    }

    /// HASH of a process's result writes: the highest settlement number
    /// applied (`hw`), so a replayed batch counts nothing twice (`scripts/settle.lua`).
    pub fn acked(&self, identity: &str) -> String {
        format!("{}kiq:acked|{identity}", self.prefix)
    }

    /// STRING naming the suspect job a process runs alone (its jid, or
    /// `sha256:<digest>` of a payload without one), so recovery blames it if
    /// the process dies meanwhile.
    pub fn isolated(&self, identity: &str) -> String {
        format!("{}kiq:isolated|{identity}", self.prefix)
    }

    /// HASH of a kiq batch: counters, flags, callback templates (see `batches`).
    pub fn batch(&self, bid: &str) -> String {
        format!("{}kiq:batch|{bid}", self.prefix)
    }

    /// SET of a batch's jids that succeeded, and `cb:<jid>` of its callback jobs that ran.
    pub fn batch_done(&self, bid: &str) -> String {
        format!("{}kiq:batch|{bid}|done", self.prefix)
    }

    /// HASH jid -> "retry" | "dead" of a batch's jobs that failed and have not succeeded since.
    pub fn batch_failed(&self, bid: &str) -> String {
        format!("{}kiq:batch|{bid}|failed", self.prefix)
    }

    /// ZSET bid -> created_at of kiq's batches, for listing.
    pub fn batches(&self) -> String {
        self.key("kiq:batches")
    }

    /// LIST of the jobs a batch builder set aside before its `jobs()` block ended.
    pub fn batch_staged(&self, builder: &str) -> String {
        format!("{}kiq:staged|{builder}", self.prefix)
    }

    /// A rate limiter's state (`limits.rs`): for `concurrent` a ZSET of
    /// holders (token → expiry ms), `window` a ZSET of acquisitions (member →
    /// time ms), `bucket`, `leaky` and `points` a HASH. kiq's own names:
    /// Sidekiq Enterprise's limiters (`lmtr-*`) are never read or written.
    pub fn limiter(&self, kind: &str, name: &str) -> String {
        format!("{}kiq:limiter|{kind}|{name}", self.prefix)
    }

    /// ZSET of the callers waiting for a limiter: token → deadline (ms).
    pub fn limiter_waiting(&self, kind: &str, name: &str) -> String {
        format!("{}kiq:limiter|{kind}|{name}|waiting", self.prefix)
    }

    /// LIST a concurrent limiter's releases push to, one entry per freed
    /// slot; waiters block on it (`BLPOP`) instead of polling.
    pub fn limiter_wake(&self, kind: &str, name: &str) -> String {
        format!("{}kiq:limiter|{kind}|{name}|wake", self.prefix)
    }

    /// ZSET of the limiters used lately, `kind|name|capacity|interval_ms` →
    /// last use (ms), for `kiq.api` and `/metrics`.
    pub fn limiters(&self) -> String {
        self.key("kiq:limiters")
    }

    /// ZSET of the jobs of a worker class running under one throttle key:
    /// hold token → expiry (ms), refreshed while they run (`throttle.rs`).
    pub fn throttle(&self, class: &str, key: &str) -> String {
        format!("{}kiq:throttle|{class}|{key}", self.prefix)
    }

    /// ZSET of a throttle key's recent starts (token → time ms), for `rate`.
    pub fn throttle_rate(&self, class: &str, key: &str) -> String {
        format!("{}kiq:throttle-rate|{class}|{key}", self.prefix)
    }

    /// ZSET of the jobs of one queue parked in `schedule` by a concurrency
    /// throttle (the member as stored in `schedule` → its score), so the
    /// end of a running job of that key moves the next one back at once.
    pub fn parked(&self, queue: &str, class: &str, key: &str) -> String {
        format!("{}kiq:parked|{queue}|{class}|{key}", self.prefix)
    }

    /// Glob matching every process's in-progress lists.
    pub fn in_progress_pattern(&self) -> String {
        format!("{}kiq:wip|*", self.prefix)
    }

    /// Glob matching one process's in-progress lists (glob characters in
    /// the identity are escaped).
    pub fn in_progress_pattern_of(&self, identity: &str) -> String {
        let mut escaped = String::with_capacity(identity.len());
        for c in identity.chars() {
            if matches!(c, '*' | '?' | '[' | ']' | '\\') {
                escaped.push('\\');
            }
            escaped.push(c);
        }
        format!("{}kiq:wip|{escaped}|*", self.prefix)
    }

    /// The (identity, queue) an in-progress list key names.
    pub fn parse_in_progress<'a>(&self, key: &'a str) -> Option<(&'a str, &'a str)> {
        key.strip_prefix(&self.prefix)?.strip_prefix("kiq:wip|")?.rsplit_once('|')
    }

    /// LIST, the last batch a fetcher took (to read back after a lost reply).
    pub fn last_fetch(&self, identity: &str, queue: &str) -> String {
        format!("{}kiq:fetched|{identity}|{queue}", self.prefix)
    }

    /// STRING, the token of the fetch that wrote [`Keys::last_fetch`].
    pub fn last_fetch_token(&self, identity: &str, queue: &str) -> String {
        format!("{}kiq:fetchid|{identity}|{queue}", self.prefix)
    }

    /// LIST of the jobs one process has taken from one queue and not yet
    /// acknowledged. Fetching moves a job here atomically; the ack removes
    /// it; a stop or orphan recovery moves what is left back to the queue.
    /// `|` separates the parts because neither identities nor Web-UI-safe
    /// queue names contain it.
    pub fn in_progress(&self, identity: &str, queue: &str) -> String {
        format!("{}kiq:wip|{identity}|{queue}", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_match_sidekiq() {
        let k = Keys::new(None);
        assert_eq!(k.queue("default"), "queue:default");
        assert_eq!(k.queues(), "queues");
        assert_eq!(k.schedule(), "schedule");
        assert_eq!(k.retry(), "retry");
        assert_eq!(k.dead(), "dead");
        assert_eq!(k.stat_processed_day("2026-12-01"), "stat:processed:2026-12-01");
        assert_eq!(k.in_progress("h:1:ab", "q"), "kiq:wip|h:1:ab|q");
        assert_eq!(k.parse_in_progress("kiq:wip|h:1:ab|q"), Some(("h:1:ab", "q")));
        assert_eq!(Keys::new(Some("ns")).parse_in_progress("ns:kiq:wip|h:1:ab|q.x"), Some(("h:1:ab", "q.x")));
        assert_eq!(k.parse_in_progress("queue:x"), None);
        assert_eq!(k.in_progress_pattern_of("h:1:ab"), "kiq:wip|h:1:ab|*");
        assert_eq!(k.in_progress_pattern_of("h[1]*?\\"), "kiq:wip|h\\[1\\]\\*\\?\\\\|*");
        assert_eq!(k.work("h:1:ab"), "h:1:ab:work");
        assert_eq!(k.workers("h:1:ab"), "h:1:ab:workers");
        assert_eq!(k.signals("h:1:ab"), "h:1:ab-signals");
        assert_eq!(k.metrics7("20250214", "8:5"), "j|20250214|8:5");
        assert_eq!(k.histogram8("HardJob", "14-8:5"), "h|HardJob-14-8:5");
        assert_eq!(k.batch("b1"), "kiq:batch|b1");
        assert_eq!(k.batch_failed("b1"), "kiq:batch|b1|failed");
        assert_eq!(Keys::new(Some("ns")).batch_done("b1"), "ns:kiq:batch|b1|done");
        assert_eq!(k.limiter("concurrent", "stripe-7"), "kiq:limiter|concurrent|stripe-7");
        assert_eq!(Keys::new(Some("ns")).throttle("Sync", "user-1"), "ns:kiq:throttle|Sync|user-1");
    }

    #[test]
    fn namespace_prefixes_every_key() {
        let k = Keys::new(Some("myapp"));
        assert_eq!(k.queue("default"), "myapp:queue:default");
        assert_eq!(k.stat_failed(), "myapp:stat:failed");
        assert_eq!(Keys::new(Some("")).dead(), "dead");
    }
}
