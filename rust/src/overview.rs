//! What a dashboard's summary pages read: totals, queues, Redis, history,
//! processes with their running jobs, and execution metrics. Each read is a
//! fixed number of pipelined round trips, as Sidekiq's `Stats` makes them.

use std::collections::HashMap;

use crate::error::Result;
use crate::heartbeat::field as process_field;
use crate::job::{Payload, field};
use crate::jobview::JobView;
use crate::keys::Keys;
use crate::metrics;
use crate::pool::Pool;
use crate::timestamp::utc_date;

/// The `INFO` fields Sidekiq's dashboard shows.
const REDIS_FIELDS: [&str; 5] =
    ["redis_version", "uptime_in_days", "connected_clients", "used_memory_human", "used_memory_peak_human"];

#[derive(Debug, Clone, Default)]
pub struct QueueStat {
    pub name: String,
    pub size: u64,
    /// Seconds the next job to run has waited (0 when empty).
    pub latency: f64,
}

/// Sidekiq's `Stats`: the same numbers, read the same way.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub processed: u64,
    pub failed: u64,
    pub scheduled: u64,
    pub retries: u64,
    pub dead: u64,
    /// Members of `processes` (as Sidekiq counts them, stale ones included).
    pub processes: u64,
    /// Jobs running, summed over the processes' `busy`.
    pub busy: u64,
    /// Jobs waiting in every queue.
    pub enqueued: u64,
    /// Every known queue, by name.
    pub queues: Vec<QueueStat>,
    pub default_latency: f64,
}

/// Seconds since a job was enqueued (else created), Sidekiq 8's rule for either unit.
fn latency(oldest: Option<&str>, now: f64) -> f64 {
    let Some(job) = oldest.and_then(|o| Payload::parse(o).ok()) else { return 0.0 };
    job.time(field::ENQUEUED_AT).or_else(|| job.time(field::CREATED_AT)).map_or(0.0, |t| (now - t).max(0.0))
}

pub async fn summary(pool: &Pool, keys: &Keys, now: f64) -> Result<Summary> {
    let mut conn = pool.get();
    type Fast = (Option<u64>, Option<u64>, u64, u64, u64, u64, Vec<String>, Vec<String>, Option<String>);
    let (processed, failed, scheduled, retries, dead, processes, members, mut names, default_oldest): Fast =
        redis::pipe()
            .cmd("GET")
            .arg(keys.stat_processed())
            .cmd("GET")
            .arg(keys.stat_failed())
            .cmd("ZCARD")
            .arg(keys.schedule())
            .cmd("ZCARD")
            .arg(keys.retry())
            .cmd("ZCARD")
            .arg(keys.dead())
            .cmd("SCARD")
            .arg(keys.processes())
            .cmd("SMEMBERS")
            .arg(keys.processes())
            .cmd("SMEMBERS")
            .arg(keys.queues())
            .cmd("LINDEX")
            .arg(keys.queue("default"))
            .arg(-1)
            .query_async(&mut conn)
            .await?;
    names.sort();
    let mut pipe = redis::pipe();
    for id in &members {
        pipe.cmd("HGET").arg(keys.process(id)).arg(process_field::BUSY);
    }
    for q in &names {
        pipe.cmd("LLEN").arg(keys.queue(q));
        pipe.cmd("LINDEX").arg(keys.queue(q)).arg(-1);
    }
    let replies: Vec<redis::Value> =
        if members.is_empty() && names.is_empty() { Vec::new() } else { pipe.query_async(&mut conn).await? };
    let as_u64 = |v: &redis::Value| redis::from_redis_value_ref::<Option<u64>>(v).ok().flatten().unwrap_or(0);
    let busy = replies[..members.len()].iter().map(as_u64).sum();
    let queues: Vec<QueueStat> = names
        .into_iter()
        .zip(replies[members.len()..].chunks(2))
        .map(|(name, r)| {
            let oldest = redis::from_redis_value_ref::<Option<String>>(&r[1]).ok().flatten();
            QueueStat { name, size: as_u64(&r[0]), latency: latency(oldest.as_deref(), now) }
        })
        .collect();
    Ok(Summary {
        processed: processed.unwrap_or(0),
        failed: failed.unwrap_or(0),
        scheduled,
        retries,
        dead,
        processes,
        busy,
        enqueued: queues.iter().map(|q| q.size).sum(),
        queues,
        default_latency: latency(default_oldest.as_deref(), now),
    })
}

/// The Redis facts Sidekiq's dashboard shows, as `(name, value)`.
pub async fn redis_info(pool: &Pool) -> Result<Vec<(String, String)>> {
    let info: String = redis::cmd("INFO").query_async(&mut pool.get()).await?;
    let fields: HashMap<&str, &str> = info.lines().filter_map(|l| l.trim_end().split_once(':')).collect();
    Ok(REDIS_FIELDS.iter().map(|f| ((*f).to_owned(), fields.get(f).copied().unwrap_or("").to_owned())).collect())
}

/// Processed and failed per UTC day for the last `days` days, newest first.
pub async fn history(pool: &Pool, keys: &Keys, days: u32, now: f64) -> Result<Vec<(String, u64, u64)>> {
    let dates: Vec<String> = (0..days.max(1)).map(|d| utc_date(now - f64::from(d) * 86_400.0)).collect();
    let processed: Vec<String> = dates.iter().map(|d| keys.stat_processed_day(d)).collect();
    let failed: Vec<String> = dates.iter().map(|d| keys.stat_failed_day(d)).collect();
    let (p, f): (Vec<Option<u64>>, Vec<Option<u64>>) =
        redis::pipe().cmd("MGET").arg(&processed).cmd("MGET").arg(&failed).query_async(&mut pool.get()).await?;
    Ok(dates.into_iter().zip(p).zip(f).map(|((d, p), f)| (d, p.unwrap_or(0), f.unwrap_or(0))).collect())
}

/// Per-class execution metrics over a time range.
#[derive(Debug, Clone, Default)]
pub struct ClassMetrics {
    pub class: String,
    pub processed: u64,
    pub failed: u64,
    /// Milliseconds spent in successful runs.
    pub ms: u64,
    /// Executions per minute, oldest minute first.
    pub per_minute: Vec<u64>,
}

/// The metrics of the last `minutes` minutes (up to Sidekiq's 8 hours of
/// one-minute buckets), busiest class first. Sidekiq 7 and 8 write different
/// layouts and kiq writes both, so each minute takes, per class and counter,
/// the larger of the two: right for kiq with either Ruby version beside it.
pub async fn class_metrics(pool: &Pool, keys: &Keys, minutes: u32, now: f64) -> Result<Vec<ClassMetrics>> {
    let minutes = minutes.clamp(1, 480) as usize;
    let mut pipe = redis::pipe();
    for m in 0..minutes {
        let h = metrics::minute_hashes(keys, now - 60.0 * (minutes - 1 - m) as f64);
        pipe.cmd("HGETALL").arg(h.v7).cmd("HGETALL").arg(h.v8);
    }
    let hashes: Vec<HashMap<String, u64>> = pipe.query_async(&mut pool.get()).await?;
    let mut by_class: HashMap<String, ClassMetrics> = HashMap::new();
    for (m, pair) in hashes.chunks(2).enumerate() {
        let mut minute: HashMap<(&str, &str), u64> = HashMap::new();
        for hash in pair {
            for (name, &n) in hash {
                if let Some((class, counter)) = name.rsplit_once('|') {
                    let slot = minute.entry((class, counter)).or_default();
                    *slot = (*slot).max(n);
                }
            }
        }
        for ((class, counter), n) in minute {
            let c = by_class.entry(class.to_owned()).or_insert_with(|| ClassMetrics {
                class: class.to_owned(),
                per_minute: vec![0; minutes],
                ..ClassMetrics::default()
            });
            match counter {
                metrics::PROCESSED => {
                    c.processed += n;
                    c.per_minute[m] += n;
                }
                metrics::FAILED => c.failed += n,
                metrics::MILLIS => c.ms += n,
                _ => {}
            }
        }
    }
    let mut out: Vec<ClassMetrics> = by_class.into_values().collect();
    out.sort_by(|a, b| b.processed.cmp(&a.processed).then_with(|| a.class.cmp(&b.class)));
    Ok(out)
}

/// A live process, from its heartbeat, with the jobs it is running.
#[derive(Debug, Clone, Default)]
pub struct ProcessView {
    pub identity: String,
    /// The `info` JSON as the process wrote it.
    pub info: String,
    pub hostname: String,
    pub pid: i64,
    pub tag: String,
    pub labels: Vec<String>,
    pub queues: Vec<String>,
    pub concurrency: i64,
    pub version: String,
    pub started_at: f64,
    /// Embedded processes ignore signals (Sidekiq 7+), so the UI offers none.
    pub embedded: bool,
    pub busy: i64,
    pub beat: f64,
    pub quiet: bool,
    pub rss_kb: i64,
    pub rtt_us: i64,
    pub work: Vec<WorkView>,
}

/// A running job: the thread running it, its queue, when it started.
#[derive(Debug, Clone, Default)]
pub struct WorkView {
    pub tid: String,
    pub queue: String,
    pub run_at: i64,
    pub job: JobView,
}

/// The heartbeat's `info` JSON (the fields every version writes or reads).
#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct Info {
    hostname: String,
    pid: i64,
    tag: String,
    labels: Vec<String>,
    queues: Vec<String>,
    concurrency: i64,
    version: String,
    started_at: f64,
    embedded: bool,
}

#[derive(serde::Deserialize)]
struct WorkJson {
    #[serde(default)]
    queue: String,
    payload: serde_json::Value,
    #[serde(default)]
    run_at: i64,
}

/// Live processes (a member of `processes` whose heartbeat expired is skipped,
/// as Sidekiq skips it), by identity. Running jobs come from `<identity>:work`,
/// or `<identity>:workers` for Sidekiq 6.4.1 and older.
pub async fn processes(pool: &Pool, keys: &Keys) -> Result<Vec<ProcessView>> {
    let mut conn = pool.get();
    let mut ids: Vec<String> = redis::cmd("SMEMBERS").arg(keys.processes()).query_async(&mut conn).await?;
    ids.sort();
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    for id in &ids {
        pipe.cmd("HMGET").arg(keys.process(id)).arg(&[
            process_field::INFO,
            process_field::BUSY,
            process_field::BEAT,
            process_field::QUIET,
            process_field::RSS,
            process_field::RTT_US,
            process_field::CONCURRENCY,
        ]);
        pipe.cmd("HGETALL").arg(keys.work(id));
        pipe.cmd("HGETALL").arg(keys.workers(id));
    }
    type Reply = (Vec<Option<String>>, HashMap<String, String>, HashMap<String, String>);
    let replies: Vec<Reply> = {
        let flat: Vec<redis::Value> = pipe.query_async(&mut conn).await?;
        flat.chunks(3)
            .map(|c| {
                Ok((
                    redis::from_redis_value_ref(&c[0])?,
                    redis::from_redis_value_ref(&c[1])?,
                    redis::from_redis_value_ref(&c[2])?,
                ))
            })
            .collect::<std::result::Result<_, redis::ParsingError>>()
            .map_err(|e| crate::error::KiqError::codec(format!("unexpected reply reading processes: {e}")))?
    };
    let mut out = Vec::new();
    for (identity, (fields, work, workers)) in ids.into_iter().zip(replies) {
        let Some(Some(info_json)) = fields.first() else { continue };
        let info: Info = serde_json::from_str(info_json).unwrap_or_default();
        let num = |i: usize| fields.get(i).cloned().flatten().and_then(|v| v.parse::<f64>().ok());
        let running = if work.is_empty() { workers } else { work };
        let mut jobs: Vec<WorkView> = running.into_iter().filter_map(|(tid, v)| work_view(tid, &v)).collect();
        jobs.sort_by(|a, b| a.run_at.cmp(&b.run_at).then_with(|| a.tid.cmp(&b.tid)));
        out.push(ProcessView {
            identity,
            info: info_json.clone(),
            hostname: info.hostname,
            pid: info.pid,
            tag: info.tag,
            labels: info.labels,
            queues: info.queues,
            concurrency: num(6).map_or(info.concurrency, |c| c as i64),
            version: info.version,
            started_at: info.started_at,
            embedded: info.embedded,
            busy: num(1).unwrap_or(0.0) as i64,
            beat: num(2).unwrap_or(0.0),
            quiet: fields.get(3).cloned().flatten().as_deref() == Some("true"),
            rss_kb: num(4).unwrap_or(0.0) as i64,
            rtt_us: num(5).unwrap_or(0.0) as i64,
            work: jobs,
        });
    }
    Ok(out)
}

fn work_view(tid: String, value: &str) -> Option<WorkView> {
    let w: WorkJson = serde_json::from_str(value).ok()?;
    // Sidekiq writes the payload as a JSON string; some readers accept an object.
    let payload = match w.payload {
        serde_json::Value::String(s) => s,
        other => other.to_string(),
    };
    Some(WorkView { tid, queue: w.queue, run_at: w.run_at, job: JobView::new(payload, None) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_reads_either_unit() {
        assert_eq!(latency(None, 100.0), 0.0);
        assert_eq!(latency(Some(r#"{"enqueued_at":90.5}"#), 100.0), 9.5);
        assert_eq!(latency(Some(r#"{"created_at":90000}"#), 100.0), 10.0);
        assert_eq!(latency(Some("not json"), 100.0), 0.0);
    }

    #[test]
    fn work_payload_string_or_object() {
        let s = work_view(
            "t1".into(),
            r#"{"queue":"q","payload":"{\"class\":\"A\",\"args\":[1],\"jid\":\"j\"}","run_at":5}"#,
        );
        let s = s.unwrap();
        assert_eq!((s.queue.as_str(), s.run_at, s.job.class.as_str(), s.job.jid.as_str()), ("q", 5, "A", "j"));
        let o = work_view("t2".into(), r#"{"queue":"q","payload":{"class":"B","args":[],"jid":"k"},"run_at":6}"#);
        assert_eq!(o.unwrap().job.class, "B");
        assert!(work_view("t3".into(), "nope").is_none());
    }
}
