//! A batch's first send as plain LPUSHes in a transaction (`fresh.rs`,
//! `push_mark.lua`) against a real redis-server: it lands in order, and it
//! is all in or all out: a key of the wrong type, or jobs of the batch that
//! landed before (a transaction reaching Redis after its batch was replayed
//! through `push.lua`), leave every list as it was.

mod support;

use std::sync::Arc;
use std::time::Duration;

use _kiq::client::{PushItem, PushReply, Trouble, push_numbered, trouble};
use _kiq::fresh::{Fresh, push_fresh};
use _kiq::keys::Keys;
use _kiq::pool::{Pool, RedisConfig};
use _kiq::runtime;

fn item(queue: &str, payload: &str) -> PushItem {
    PushItem { queue: Arc::from(queue), payload: payload.to_owned(), at: None }
}

const TTL: Duration = Duration::from_secs(60);

struct Fixture {
    redis: support::RedisServer,
    pool: std::sync::Arc<Pool>,
    keys: Keys,
}

impl Fixture {
    fn new() -> Self {
        let redis = support::RedisServer::start();
        let pool = Pool::new(RedisConfig::new(redis.url())).unwrap();
        Self { redis, pool, keys: Keys::new(None) }
    }

    fn fresh(&self, batch: &[(u64, PushItem)]) -> Fresh {
        let numbered: Vec<(u64, &PushItem)> = batch.iter().map(|(s, i)| (*s, i)).collect();
        runtime::get()
            .block_on(push_fresh(&mut self.pool.blocking(Duration::ZERO), &self.keys, "p", TTL, &numbered))
            .unwrap()
    }

    fn numbered(&self, batch: &[(u64, PushItem)]) -> PushReply {
        let numbered: Vec<(u64, &PushItem)> = batch.iter().map(|(s, i)| (*s, i)).collect();
        runtime::get().block_on(push_numbered(&mut self.pool.get(), &self.keys, "p", TTL, &numbered)).unwrap()
    }

    fn cmd<T: redis::FromRedisValue>(&self, args: &[&str]) -> T {
        let mut c = redis::cmd(args[0]);
        for a in &args[1..] {
            c.arg(*a);
        }
        runtime::get().block_on(c.query_async(&mut self.pool.get())).unwrap()
    }

    fn list(&self, queue: &str) -> Vec<String> {
        self.cmd(&["LRANGE", &self.keys.queue(queue), "0", "-1"])
    }
}

#[test]
fn a_fresh_batch_lands_in_order_and_a_late_copy_pushes_nothing() {
    let _guard = runtime::get().enter();
    let f = Fixture::new();
    let batch = [(1, item("a", "a1")), (2, item("b", "b2")), (3, item("a", "a3")), (5, item("a", "a5"))];
    assert_eq!(f.fresh(&batch), Fresh::Pushed);
    // LPUSH: the newest at the head, as push.lua leaves them.
    assert_eq!(f.list("a"), ["a5", "a3", "a1"]);
    assert_eq!(f.list("b"), ["b2"]);
    let queues: Vec<String> = f.cmd(&["SMEMBERS", &f.keys.queues()]);
    assert_eq!(queues.len(), 2);
    let hw: String = f.cmd(&["HGET", &f.keys.pushed("p"), "hw"]);
    assert_eq!(hw, "5");
    // The same transaction again (it reached Redis late, or a spool replays it): nothing twice.
    assert_eq!(f.fresh(&batch), Fresh::Replay);
    assert_eq!(f.list("a"), ["a5", "a3", "a1"]);
    assert_eq!(f.list("b"), ["b2"]);
    // And push.lua's replay of it skips it too.
    assert_eq!(f.numbered(&batch), PushReply::Done { refused: Vec::new() });
    assert_eq!(f.list("a").len(), 3);
}

#[test]
fn a_transaction_after_its_replay_through_push_lua_takes_its_jobs_out_again() {
    let _guard = runtime::get().enter();
    let f = Fixture::new();
    // Jobs already waiting in the queue stay where they are.
    let _: i64 = f.cmd(&["RPUSH", &f.keys.queue("a"), "old1", "old2"]);
    let batch = [(1, item("a", "a1")), (2, item("a", "a2"))];
    assert_eq!(f.numbered(&batch), PushReply::Done { refused: Vec::new() });
    // A later batch starting inside what landed also counts as landed before.
    let overlapping = [(2, item("a", "a2")), (3, item("a", "a3"))];
    assert_eq!(f.fresh(&batch), Fresh::Replay);
    assert_eq!(f.fresh(&overlapping), Fresh::Replay);
    assert_eq!(f.list("a"), ["a2", "a1", "old1", "old2"]);
    assert_eq!(f.numbered(&overlapping), PushReply::Done { refused: Vec::new() });
    assert_eq!(f.list("a"), ["a3", "a2", "a1", "old1", "old2"]);
}

#[test]
fn a_key_of_the_wrong_type_leaves_every_list_as_it_was() {
    let _guard = runtime::get().enter();
    let f = Fixture::new();
    let _: () = f.cmd(&["SET", &f.keys.queue("b"), "not a list"]);
    let _: i64 = f.cmd(&["RPUSH", &f.keys.queue("a"), "old"]);
    let batch = [(1, item("a", "a1")), (2, item("b", "b2")), (3, item("a", "a3"))];
    assert_eq!(f.fresh(&batch), Fresh::WrongType(vec![(f.keys.queue("b"), "string".to_owned())]));
    assert_eq!(f.list("a"), ["old"], "queue a's push was taken out again");
    let hw: Option<String> = f.cmd(&["HGET", &f.keys.pushed("p"), "hw"]);
    assert_eq!(hw, None, "no mark: the batch is not in");
    // The queues set of the wrong type, too.
    let _: i64 = f.cmd(&["DEL", &f.keys.queue("b")]);
    let _: i64 = f.cmd(&["DEL", &f.keys.queues()]);
    let _: i64 = f.cmd(&["HSET", &f.keys.queues(), "x", "y"]);
    assert_eq!(f.fresh(&batch), Fresh::WrongType(vec![(f.keys.queues(), "hash".to_owned())]));
    assert_eq!(f.list("a"), ["old"]);
    assert!(f.list("b").is_empty());
    // Fixed: the same batch lands whole.
    let _: i64 = f.cmd(&["DEL", &f.keys.queues()]);
    assert_eq!(f.fresh(&batch), Fresh::Pushed);
    assert_eq!(f.list("a"), ["a3", "a1", "old"]);
    assert_eq!(f.list("b"), ["b2"]);
}

#[test]
fn a_producer_hash_of_the_wrong_type_is_an_error_and_the_jobs_are_taken_out() {
    let _guard = runtime::get().enter();
    let f = Fixture::new();
    let _: () = f.cmd(&["SET", &f.keys.pushed("p"), "not a hash"]);
    let batch = [(1, item("a", "a1")), (2, item("b", "b2"))];
    let numbered: Vec<(u64, &PushItem)> = batch.iter().map(|(s, i)| (*s, i)).collect();
    let sent = runtime::get().block_on(push_fresh(&mut f.pool.blocking(Duration::ZERO), &f.keys, "p", TTL, &numbered));
    let e = sent.unwrap_err();
    let err = e.to_string();
    assert!(err.contains("nothing of the batch was kept") && err.contains("holds a string"), "{err}");
    // Redis answered: the buffer sends the batch through push.lua at once, with no back-off.
    assert_eq!(trouble(&e), Trouble::Refused, "{err}");
    assert!(f.list("a").is_empty() && f.list("b").is_empty());
}

#[test]
fn a_command_redis_refuses_writes_nothing_whichever_it_is() {
    let _guard = runtime::get().enter();
    let f = Fixture::new();
    // MULTI refused is the dangerous one: the LPUSHes after it would run on their own.
    for denied in ["lpush", "multi", "exec", "eval", "sadd"] {
        let user = format!("no{denied}");
        let rule = format!("-{denied}");
        let _: () = f.cmd(&["ACL", "SETUSER", &user, "on", "nopass", "~*", "+@all", &rule]);
        let url = f.redis.url().replace("redis://", &format!("redis://{user}:x@"));
        let pool = Pool::new(RedisConfig::new(url)).unwrap();
        let batch = [(1, item("a", "a1"))];
        let numbered: Vec<(u64, &PushItem)> = batch.iter().map(|(s, i)| (*s, i)).collect();
        let mut conn = pool.blocking(Duration::ZERO);
        let sent = runtime::get().block_on(push_fresh(&mut conn, &f.keys, "p", TTL, &numbered));
        // Refused for good: the buffer stops using the transaction and sends through push.lua.
        let e = sent.unwrap_err();
        assert_eq!(trouble(&e), Trouble::Permanent, "{denied}: {e}");
        assert!(f.list("a").is_empty(), "{denied}: nothing pushed");
        let hw: Option<String> = f.cmd(&["HGET", &f.keys.pushed("p"), "hw"]);
        assert_eq!(hw, None, "{denied}");
        // The connection is usable afterwards, outside any transaction.
        let pong: String = runtime::get().block_on(conn.query(&redis::cmd("PING"))).unwrap();
        assert_eq!(pong, "PONG", "{denied}");
    }
}
