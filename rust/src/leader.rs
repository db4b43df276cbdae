//! Leader election among the kiq processes of one Redis.
//!
//! The leader holds `kiq:leader` (its identity) with a lease of `ttl`,
//! renewed every third of it; followers try `SET NX` every tenth of it, so a
//! dead leader is replaced within about `ttl` of its last renewal. A process
//! believes it leads only until `ttl - ttl/10` after it *sent* its last
//! successful claim or renewal, which ends before the key can expire, so two
//! processes never both believe they lead. A stop gives the lease up at once.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::keys::Keys;
use crate::pool::Pool;
use crate::scripts;

#[derive(Debug, Default)]
pub struct Leadership {
    until: Mutex<Option<Instant>>,
}

impl Leadership {
    /// Whether this process leads now (no Redis round trip).
    pub fn is_leader(&self) -> bool {
        self.until.lock().unwrap_or_else(PoisonError::into_inner).is_some_and(|t| Instant::now() < t)
    }

    fn set(&self, until: Option<Instant>) {
        *self.until.lock().unwrap_or_else(PoisonError::into_inner) = until;
    }
}

pub struct Elector {
    pub pool: Arc<Pool>,
    pub keys: Keys,
    pub identity: String,
    pub ttl: Duration,
    pub leadership: Arc<Leadership>,
}

impl Elector {
    /// Runs until `halt`, then resigns.
    pub async fn run(self, mut halt: watch::Receiver<bool>) {
        let ms = self.ttl.as_millis().max(1) as u64;
        loop {
            let sent = Instant::now();
            let held = if self.leadership.is_leader() { self.renew(ms).await } else { self.claim(ms).await };
            match held {
                Ok(true) => {
                    if !self.leadership.is_leader() {
                        log::info!("{} is now the kiq leader", self.identity);
                    }
                    self.leadership.set(Some(sent + self.ttl.mul_f64(0.9)));
                }
                Ok(false) => {
                    if self.leadership.is_leader() {
                        log::warn!("{} lost the kiq leadership", self.identity);
                    }
                    self.leadership.set(None);
                }
                // On errors the belief simply runs out at its deadline.
                Err(e) => log::debug!("leader election: {e}"),
            }
            let pause = if self.leadership.is_leader() { self.ttl / 3 } else { self.ttl / 10 };
            let jitter = pause.mul_f64(rand::random::<f64>() * 0.2);
            tokio::select! {
                () = tokio::time::sleep(pause.saturating_sub(jitter)) => {}
                _ = halt.wait_for(|h| *h) => break,
            }
        }
        let was = self.leadership.is_leader();
        self.leadership.set(None);
        if was {
            let r: redis::RedisResult<i64> =
                scripts::RESIGN.key(self.keys.leader()).arg(&self.identity).invoke_async(&mut self.pool.get()).await;
            if let Err(e) = r {
                log::warn!("could not give up the kiq leadership (it lapses in {:?}): {e}", self.ttl);
            }
        }
    }

    async fn claim(&self, ms: u64) -> redis::RedisResult<bool> {
        let r: Option<String> = redis::cmd("SET")
            .arg(self.keys.leader())
            .arg(&self.identity)
            .arg("NX")
            .arg("PX")
            .arg(ms)
            .query_async(&mut self.pool.get())
            .await?;
        Ok(r.is_some())
    }

    async fn renew(&self, ms: u64) -> redis::RedisResult<bool> {
        let r: i64 = scripts::REELECT
            .key(self.keys.leader())
            .arg(&self.identity)
            .arg(ms)
            .invoke_async(&mut self.pool.get())
            .await?;
        Ok(r == 1)
    }
}
