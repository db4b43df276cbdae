//! Handing fetched jobs no thread started back to their queue while the
//! process runs on: the automatic prefetch held them, then the lane's jobs
//! turned slow ([`crate::lane::Lane::excess`]), and another process may
//! start them sooner. `unfetch.lua` moves each from the in-progress list to
//! the queue's right end, so they are the next jobs any process takes.

use crate::keys::Keys;
use crate::lane::Delivery;
use crate::pool::Pool;
use crate::scripts;

/// Moves `jobs` (of one queue, oldest first) from `wip` back to `queue`.
/// Returns how many were moved: fewer when some were recovered by another
/// process meanwhile. Safe to call again after an error, since a job no
/// longer in the in-progress list is not pushed again.
pub async fn hand_back(
    pool: &Pool,
    keys: &Keys,
    queue: &str,
    wip: &str,
    jobs: &[Box<Delivery>],
) -> redis::RedisResult<usize> {
    let mut inv = scripts::UNFETCH.key(wip);
    inv.key(keys.queue(queue)).key(keys.queues()).arg(queue);
    for d in jobs {
        inv.arg(d.payload.source().as_bytes());
    }
    inv.invoke_async(&mut pool.get()).await
}
