//! Reading job sets and queues a window at a time, for a dashboard.
//!
//! A page is one `ZRANGE`/`LRANGE` with offsets, so its cost does not grow
//! with the size of the set. A filter cannot be answered by an index, so it
//! walks the set in windows of [`STEP`] entries and stops after a budget of
//! entries, handing back the offset to continue from: a request never reads
//! a whole 100,000-job set, and the page says how far the search got.

use crate::error::Result;
use crate::jobview::JobView;
use crate::pool::Pool;

/// Entries read per round trip while filtering.
pub const STEP: u64 = 1000;

/// Where jobs are read from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A sorted set (schedule, retry, dead); `newest_first` reads by descending score.
    Set { key: String, newest_first: bool },
    /// A queue list; `newest_first` starts at the last job pushed, else at the next to run.
    Queue { key: String, newest_first: bool },
}

/// Which jobs a filter keeps. Empty parts match everything.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Part of the shown class name (or of the `class` field), any case.
    pub class: Option<String>,
    /// The queue name, exactly.
    pub queue: Option<String>,
    /// Part of the error class or message, the jid or a shown argument, any case.
    pub text: Option<String>,
}

impl Filter {
    pub fn is_empty(&self) -> bool {
        self.class.is_none() && self.queue.is_none() && self.text.is_none()
    }

    pub fn matches(&self, job: &JobView) -> bool {
        let has = |hay: &str, needle: &str| hay.to_lowercase().contains(&needle.to_lowercase());
        if let Some(c) = &self.class
            && !(has(&job.class, c) || has(&job.raw_class, c))
        {
            return false;
        }
        if let Some(q) = &self.queue
            && job.queue != *q
        {
            return false;
        }
        if let Some(t) = &self.text {
            let shown_args = if job.encrypted { &job.args[..job.args.len() - 1] } else { &job.args[..] };
            let fields = [job.error_class.as_deref(), job.error_message.as_deref(), Some(job.jid.as_str())];
            return fields.into_iter().flatten().any(|f| has(f, t)) || shown_args.iter().any(|a| has(a, t));
        }
        true
    }
}

/// Jobs read from a source.
#[derive(Debug, Clone, Default)]
pub struct Page {
    /// Entries in the whole set or queue.
    pub total: u64,
    pub jobs: Vec<JobView>,
    /// For a filtered read: the offset to continue from, when the search stopped before the end.
    pub next: Option<u64>,
    /// For a filtered read: how many entries were examined.
    pub scanned: u64,
}

/// `count` entries from offset `start`, with the source's size.
pub async fn window(pool: &Pool, source: &Source, start: u64, count: u64) -> Result<Page> {
    let (total, raw) = read(pool, source, start, count, true).await?;
    Ok(Page { total, jobs: raw.into_iter().map(|(m, s)| JobView::new(m, s)).collect(), next: None, scanned: 0 })
}

/// Up to `want` jobs matching `filter`, searching from offset `start` and
/// examining at most `budget` entries.
pub async fn search(
    pool: &Pool,
    source: &Source,
    filter: &Filter,
    start: u64,
    want: usize,
    budget: u64,
) -> Result<Page> {
    let mut page = Page::default();
    let mut at = start;
    loop {
        let step = STEP.min(budget - page.scanned).max(1);
        let (total, raw) = read(pool, source, at, step, page.scanned == 0).await?;
        if page.scanned == 0 {
            page.total = total;
        }
        let got = raw.len() as u64;
        for (i, (member, score)) in raw.into_iter().enumerate() {
            let job = JobView::new(member, score);
            if filter.matches(&job) {
                page.jobs.push(job);
                if page.jobs.len() == want {
                    page.scanned += i as u64 + 1;
                    let next = at + i as u64 + 1;
                    page.next = (next < page.total).then_some(next);
                    return Ok(page);
                }
            }
        }
        page.scanned += got;
        at += got;
        if got < step {
            return Ok(page);
        }
        if page.scanned >= budget {
            page.next = Some(at);
            return Ok(page);
        }
    }
}

/// Raw entries (member, score) of one window, and the size when asked.
async fn read(
    pool: &Pool,
    source: &Source,
    start: u64,
    count: u64,
    with_size: bool,
) -> Result<(u64, Vec<(String, Option<f64>)>)> {
    if count == 0 {
        return Ok((0, Vec::new()));
    }
    let stop = start + count - 1;
    let mut pipe = redis::pipe();
    match source {
        Source::Set { key, newest_first } => {
            pipe.cmd("ZCARD").arg(key);
            // ZREVRANGE rather than ZRANGE ... REV, which needs Redis 6.2.
            pipe.cmd(if *newest_first { "ZREVRANGE" } else { "ZRANGE" })
                .arg(key)
                .arg(start)
                .arg(stop)
                .arg("WITHSCORES");
            let (size, entries): (u64, Vec<(String, f64)>) = pipe.query_async(&mut pool.get()).await?;
            Ok((if with_size { size } else { 0 }, entries.into_iter().map(|(m, s)| (m, Some(s))).collect()))
        }
        Source::Queue { key, newest_first } => {
            pipe.cmd("LLEN").arg(key);
            // LPUSH puts the newest on the left; the next job to run is on the right.
            if *newest_first {
                pipe.cmd("LRANGE").arg(key).arg(start).arg(stop);
            } else {
                pipe.cmd("LRANGE").arg(key).arg(-(stop as i64) - 1).arg(-(start as i64) - 1);
            }
            let (size, mut entries): (u64, Vec<String>) = pipe.query_async(&mut pool.get()).await?;
            if !*newest_first {
                entries.reverse();
            }
            Ok((if with_size { size } else { 0 }, entries.into_iter().map(|m| (m, None)).collect()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(src: &str) -> JobView {
        JobView::new(src.to_owned(), None)
    }

    #[test]
    fn filter_parts() {
        let j = job(
            r#"{"class":"Billing::Invoice","queue":"mail","args":[42,"bob"],"jid":"abc","error_class":"Timeout","error_message":"took too long"}"#,
        );
        let f = |c: Option<&str>, q: Option<&str>, t: Option<&str>| Filter {
            class: c.map(Into::into),
            queue: q.map(Into::into),
            text: t.map(Into::into),
        };
        assert!(f(None, None, None).is_empty() && f(None, None, None).matches(&j));
        assert!(f(Some("invoice"), Some("mail"), Some("TOO LONG")).matches(&j));
        assert!(f(None, None, Some("bob")).matches(&j) && f(None, None, Some("timeout")).matches(&j));
        assert!(!f(Some("Mailer"), None, None).matches(&j));
        assert!(!f(None, Some("mai"), None).matches(&j));
        assert!(!f(None, None, Some("nothing")).matches(&j));
        let secret = job(r#"{"class":"S","args":[1,"needle"],"jid":"x","encrypt":true}"#);
        assert!(!f(None, None, Some("needle")).matches(&secret), "ciphertext is not searched");
    }
}
