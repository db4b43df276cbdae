//! `push.lua` against a real redis-server: a batch of mixed targets and
//! numbering gaps (several runs) lands in order, and a replay that overlaps
//! what landed before pushes only the rest.

mod support;

use std::sync::Arc;
use std::time::Duration;

use _kiq::client::{PushItem, PushReply, push_numbered};
use _kiq::keys::Keys;
use _kiq::pool::{Pool, RedisConfig};
use _kiq::runtime;

fn item(queue: &str, payload: &str, at: Option<f64>) -> PushItem {
    PushItem { queue: Arc::from(queue), payload: payload.to_owned(), at }
}

#[test]
fn runs_of_mixed_targets_land_in_order_and_a_replay_pushes_only_the_rest() {
    let redis = support::RedisServer::start();
    let rt = runtime::get();
    let _guard = rt.enter();
    let pool = Pool::new(RedisConfig::new(redis.url())).unwrap();
    let keys = Keys::new(None);
    let later = 4_000_000_000.0;
    let jobs = [
        (1, item("a", "a1", None)),
        (2, item("a", "a2", None)),
        (3, item("a", "s3", Some(later))),
        (4, item("b", "b4", None)),
        (5, item("a", "a5", None)),
        // 6 was set aside: a gap in the numbers.
        (7, item("a", "a7", None)),
        (8, item("a", "s8", Some(later + 1.0))),
    ];
    let push = |batch: &[(u64, PushItem)]| {
        let numbered: Vec<(u64, &PushItem)> = batch.iter().map(|(s, i)| (*s, i)).collect();
        let mut conn = pool.get();
        rt.block_on(push_numbered(&mut conn, &keys, "p", Duration::from_secs(60), &numbered)).unwrap()
    };
    let read = |cmd: &str, key: String| -> Vec<String> {
        let mut conn = pool.get();
        let mut c = redis::cmd(cmd);
        c.arg(key).arg(0).arg(-1);
        rt.block_on(c.query_async(&mut conn)).unwrap()
    };
    let done = PushReply::Done { refused: Vec::new() };
    assert_eq!(push(&jobs), done);
    // LPUSH: the newest at the head.
    assert_eq!(read("LRANGE", keys.queue("a")), ["a7", "a5", "a2", "a1"]);
    assert_eq!(read("LRANGE", keys.queue("b")), ["b4"]);
    assert_eq!(read("ZRANGE", keys.schedule()), ["s3", "s8"]);
    // The same batch again (a lost reply): nothing twice.
    assert_eq!(push(&jobs), done);
    assert_eq!(read("LRANGE", keys.queue("a")).len(), 4);
    // A batch starting inside what landed: only 9 and 10 are new.
    let more = [
        (7, item("a", "a7", None)),
        (8, item("a", "s8", Some(later + 1.0))),
        (9, item("a", "a9", None)),
        (10, item("b", "b10", None)),
    ];
    assert_eq!(push(&more), done);
    assert_eq!(read("LRANGE", keys.queue("a")), ["a9", "a7", "a5", "a2", "a1"]);
    assert_eq!(read("LRANGE", keys.queue("b")), ["b10", "b4"]);
    assert_eq!(read("ZRANGE", keys.schedule()), ["s3", "s8"]);
    let queues: Vec<String> =
        rt.block_on(redis::cmd("SMEMBERS").arg(keys.queues()).query_async(&mut pool.get())).unwrap();
    assert_eq!(queues.len(), 2);
}

#[test]
fn a_refused_target_names_every_new_job_of_its_runs() {
    let redis = support::RedisServer::start();
    let rt = runtime::get();
    let _guard = rt.enter();
    let admin = Pool::new(RedisConfig::new(redis.url())).unwrap();
    // A user who may do everything but LPUSH: every queued job is refused, scheduled ones land.
    let setuser = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("nolpush")
        .arg("on")
        .arg("nopass")
        .arg("~*")
        .arg("+@all")
        .arg("-lpush")
        .clone();
    let _: () = rt.block_on(setuser.query_async(&mut admin.get())).unwrap();
    let url = redis.url().replace("redis://", "redis://nolpush:x@");
    let pool = Pool::new(RedisConfig::new(url)).unwrap();
    let keys = Keys::new(None);
    let jobs = [
        (1, item("a", "a1", None)),
        (2, item("a", "s2", Some(4_000_000_000.0))),
        (3, item("a", "a3", None)),
        (4, item("a", "a4", None)),
        (6, item("a", "a6", None)),
    ];
    let numbered: Vec<(u64, &PushItem)> = jobs.iter().map(|(s, i)| (*s, i)).collect();
    let reply = rt.block_on(push_numbered(&mut pool.get(), &keys, "p", Duration::from_secs(60), &numbered)).unwrap();
    let PushReply::Done { refused } = reply else { panic!("{reply:?}") };
    let seqs: Vec<u64> = refused.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, [1, 3, 4, 6]);
    assert!(refused.iter().all(|(_, why)| why.contains("can't run this command")), "{refused:?}");
    // A replay reports the same refusals and pushes nothing.
    let again = rt.block_on(push_numbered(&mut pool.get(), &keys, "p", Duration::from_secs(60), &numbered)).unwrap();
    assert_eq!(again, PushReply::Done { refused });
    let zcard: i64 = rt.block_on(redis::cmd("ZCARD").arg(keys.schedule()).query_async(&mut admin.get())).unwrap();
    assert_eq!(zcard, 1);
}
