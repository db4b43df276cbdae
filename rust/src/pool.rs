//! Connections to Redis.
//!
//! Short commands share `pool_size` multiplexed connections (each a redis-rs
//! `ConnectionManager`, which reconnects in the background), picked round
//! robin. Blocking commands (`BLMOVE` in the fetch loop) never go on those: a
//! multiplexed connection blocked in a command stalls every caller behind it,
//! so each fetcher owns a dedicated [`BlockingConn`] whose response timeout
//! exceeds its block time (redis-rs's default 500 ms would cut a 2 s wait short).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Client};

use crate::error::{KiqError, Result};
use crate::sentinel::SentinelUrl;

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port/db` or `rediss://` for TLS.
    pub url: String,
    /// Number of shared connections for short commands (Kiq's default: 5).
    pub pool_size: usize,
    /// How long a short command may take before it fails.
    pub response_timeout: Duration,
    /// How long connecting may take.
    pub connect_timeout: Duration,
    /// For `rediss://`: PEM CA certificate(s) to trust instead of the system's.
    pub tls_ca: Option<Vec<u8>>,
    /// For `rediss://` with client certificates (mutual TLS): PEM cert and key.
    pub tls_client: Option<(Vec<u8>, Vec<u8>)>,
}

impl RedisConfig {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            pool_size: 5,
            response_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            tls_ca: None,
            tls_client: None,
        }
    }
}

/// One set of connections to one Redis address.
struct Generation {
    id: u64,
    client: Client,
    conns: Vec<ConnectionManager>,
    /// The master's address, when it came from Sentinel.
    addr: Option<(String, u16)>,
}

/// The longest a command on a thread's own connection blocks (`BLPOP`).
pub const MAX_THREAD_BLOCK: Duration = Duration::from_secs(2);

/// A thread's own connection to one pool's Redis (`Pool::on_thread`).
struct ThreadConn {
    pool: u64,
    generation: u64,
    /// A forked child's copy of its parent's thread (gunicorn's preload) must not share the socket.
    pid: u32,
    conn: redis::Connection,
}

thread_local! {
    static THREAD_CONNS: std::cell::RefCell<Vec<ThreadConn>> = const { std::cell::RefCell::new(Vec::new()) };
}

static NEXT_POOL_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// The shared connections of one Kiq instance.
pub struct Pool {
    /// Tells this pool's thread-local connections from other pools'.
    id: u64,
    current: RwLock<Arc<Generation>>,
    next: AtomicUsize,
    config: RedisConfig,
    sentinel: Option<SentinelUrl>,
    reconnected: Mutex<Option<std::time::Instant>>,
}

impl Pool {
    /// Builds the pool without connecting; connections open on first use, so
    /// a process can start while Redis is still coming up. Must run inside the
    /// core runtime. A Sentinel URL is resolved now (its sentinels must
    /// answer), then followed: when the master moves, new connections go to it.
    pub fn new(config: RedisConfig) -> Result<Arc<Self>> {
        if config.pool_size == 0 {
            return Err(KiqError::config("pool_size must be at least 1"));
        }
        // rustls needs a process-wide crypto provider for rediss:// URLs.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let sentinel = SentinelUrl::parse(&config.url).transpose()?;
        let (url, addr) = match &sentinel {
            Some(s) => {
                let addr = resolve_blocking(s, config.connect_timeout)?;
                (s.master_url(&addr.0, addr.1), Some(addr))
            }
            None => (config.url.clone(), None),
        };
        let generation = build(&config, &url, 0, addr)?;
        let pool = Arc::new(Self {
            id: NEXT_POOL_ID.fetch_add(1, Ordering::Relaxed),
            current: RwLock::new(Arc::new(generation)),
            next: AtomicUsize::new(0),
            config,
            sentinel,
            reconnected: Mutex::new(None),
        });
        if pool.sentinel.is_some() {
            tokio::spawn(follow_master(Arc::downgrade(&pool)));
        }
        Ok(pool)
    }

    /// The URL this pool was made for.
    pub fn url(&self) -> &str {
        &self.config.url
    }

    fn generation(&self) -> Arc<Generation> {
        self.current.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// A shared connection for short commands.
    pub fn get(&self) -> ConnectionManager {
        let generation = self.generation();
        let i = self.next.fetch_add(1, Ordering::Relaxed) % generation.conns.len();
        generation.conns[i].clone()
    }

    /// Looks at an error from a command: a `READONLY` reply means the server
    /// was demoted to a replica (a failover behind a DNS name or proxy), so
    /// the pool reconnects from scratch, as Sidekiq's client does.
    pub fn note_error(&self, e: &redis::RedisError) {
        if e.kind() != redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly) || self.sentinel.is_some() {
            return;
        }
        let current = self.generation();
        let mut last = self.reconnected.lock().unwrap_or_else(PoisonError::into_inner);
        if last.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
            return;
        }
        *last = Some(std::time::Instant::now());
        let url = self.config.url.clone();
        match build(&self.config, &url, current.id + 1, None) {
            Ok(next) => {
                log::warn!("Redis answered READONLY (a failover?); reconnecting");
                *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(next);
            }
            Err(err) => log::error!("cannot reconnect after READONLY: {err}"),
        }
    }

    /// Runs `f` on the calling thread's own connection to this pool's Redis,
    /// for callers that wait for Redis anyway (a sync limiter acquire, a
    /// throttle check at dispatch; call it without the GIL): the I/O runs on
    /// that thread, with no hand-off to the runtime's. The connection is made
    /// on first use (reads may block up to `MAX_THREAD_BLOCK`), remade when
    /// the master moved, and replaced after a dropped connection, `f` then
    /// running once more (it learns that it runs again: callers send only
    /// what is safe to repeat).
    pub fn on_thread<T>(
        &self,
        mut f: impl FnMut(&mut redis::Connection, bool) -> redis::RedisResult<T>,
    ) -> redis::RedisResult<T> {
        let current = self.generation();
        let mut tries = 0;
        loop {
            tries += 1;
            let r = THREAD_CONNS.with(|conns| {
                let mut conns = conns.borrow_mut();
                let pid = std::process::id();
                if conns.iter().any(|c| c.pid != pid) {
                    // Inherited across a fork: never used, never closed (the socket is the parent's).
                    let (mine, parents): (Vec<_>, Vec<_>) = conns.drain(..).partition(|c| c.pid == pid);
                    parents.into_iter().for_each(std::mem::forget);
                    *conns = mine;
                }
                conns.retain(|c| c.pool != self.id || c.generation == current.id);
                let i = if let Some(i) = conns.iter().position(|c| c.pool == self.id) {
                    i
                } else {
                    let conn = current.client.get_connection_with_timeout(self.config.connect_timeout)?;
                    conn.set_read_timeout(Some(MAX_THREAD_BLOCK + self.config.response_timeout))?;
                    conn.set_write_timeout(Some(self.config.response_timeout))?;
                    conns.push(ThreadConn { pool: self.id, generation: current.id, pid, conn });
                    conns.len() - 1
                };
                let r = f(&mut conns[i].conn, tries > 1);
                if r.as_ref().is_err_and(|e| e.is_io_error() || e.is_connection_dropped()) {
                    conns.swap_remove(i);
                }
                r
            });
            match r {
                Err(e) if tries == 1 && (e.is_io_error() || e.is_connection_dropped()) => {}
                Err(e) => {
                    self.note_error(&e);
                    return Err(e);
                }
                ok => return ok,
            }
        }
    }

    /// A new dedicated connection for commands that block up to `block`.
    pub fn blocking(self: &Arc<Self>, block: Duration) -> BlockingConn {
        BlockingConn {
            pool: self.clone(),
            conn: None,
            generation: 0,
            client_id: None,
            timeout: block + self.config.response_timeout,
        }
    }
}

fn build(config: &RedisConfig, url: &str, id: u64, addr: Option<(String, u16)>) -> Result<Generation> {
    let bad_url = |e: redis::RedisError| KiqError::config(format!("invalid Redis URL {:?}: {e}", redact(url)));
    let client = if config.tls_ca.is_some() || config.tls_client.is_some() {
        if !url.starts_with("rediss://") {
            return Err(KiqError::config("TLS certificates were given but the Redis URL is not rediss://"));
        }
        let certs = redis::TlsCertificates {
            client_tls: config
                .tls_client
                .clone()
                .map(|(client_cert, client_key)| redis::ClientTlsConfig { client_cert, client_key }),
            root_cert: config.tls_ca.clone(),
        };
        Client::build_with_tls(url, certs).map_err(bad_url)?
    } else {
        Client::open(url).map_err(bad_url)?
    };
    let manager_config = ConnectionManagerConfig::new()
        .set_response_timeout(Some(config.response_timeout))
        .set_connection_timeout(Some(config.connect_timeout))
        .set_max_delay(Duration::from_secs(2))
        .set_number_of_retries(3);
    let conns = (0..config.pool_size)
        .map(|_| ConnectionManager::new_lazy_with_config(client.clone(), manager_config.clone()))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(Generation { id, client, conns, addr })
}

fn resolve_blocking(sentinel: &SentinelUrl, timeout: Duration) -> Result<(String, u16)> {
    // Pool::new runs on a thread outside the runtime's workers; a small
    // runtime of its own answers this one question.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| KiqError::config(e.to_string()))?;
    std::thread::scope(|s| s.spawn(|| rt.block_on(sentinel.resolve(timeout))).join())
        .unwrap_or_else(|_| Err(KiqError::config("resolving the Sentinel master panicked")))
}

/// Asks the sentinels for the master every second and moves the pool to a
/// new master when Sentinel fails over (old connections then drain away).
async fn follow_master(pool: Weak<Pool>) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let Some(pool) = pool.upgrade() else { return };
        let Some(sentinel) = pool.sentinel.clone() else { return };
        let current = pool.generation();
        match sentinel.resolve(pool.config.connect_timeout).await {
            Ok(addr) if current.addr.as_ref() != Some(&addr) => {
                let url = sentinel.master_url(&addr.0, addr.1);
                match build(&pool.config, &url, current.id + 1, Some(addr.clone())) {
                    Ok(next) => {
                        log::warn!("Sentinel: the master of {:?} is now {}:{}", sentinel.service, addr.0, addr.1);
                        *pool.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(next);
                    }
                    Err(e) => log::error!("Sentinel: cannot use the new master {}:{}: {e}", addr.0, addr.1),
                }
            }
            Ok(_) => {}
            Err(e) => log::debug!("Sentinel: {e}"),
        }
    }
}

/// A connection of its own for blocking commands, reopened after errors.
pub struct BlockingConn {
    pool: Arc<Pool>,
    conn: Option<MultiplexedConnection>,
    /// The pool generation (Redis address) the connection was opened to.
    generation: u64,
    client_id: Option<i64>,
    timeout: Duration,
}

impl BlockingConn {
    /// Opens the connection unless it is open.
    pub async fn connect(&mut self) -> redis::RedisResult<()> {
        let current = self.pool.generation();
        if current.id != self.generation {
            // The master moved (Sentinel): reconnect to the new one.
            self.reset();
        }
        if self.conn.is_none() {
            let cfg = AsyncConnectionConfig::new()
                .set_response_timeout(Some(self.timeout))
                .set_connection_timeout(Some(Duration::from_secs(2)));
            let mut c = current.client.get_multiplexed_async_connection_with_config(&cfg).await?;
            self.generation = current.id;
            self.client_id = redis::cmd("CLIENT").arg("ID").query_async(&mut c).await.ok();
            self.conn = Some(c);
        }
        Ok(())
    }

    /// Runs one (blocking) command on this connection.
    pub async fn query<T: redis::FromRedisValue>(&mut self, cmd: &redis::Cmd) -> redis::RedisResult<T> {
        self.connect().await?;
        let conn = self.conn.as_mut().expect("connection was just opened");
        cmd.query_async(conn).await
    }

    /// The open connection (opened if need be), to send one command on from
    /// a future that owns it (waiting on several connections at once).
    pub async fn connected(&mut self) -> redis::RedisResult<MultiplexedConnection> {
        self.connect().await?;
        Ok(self.conn.clone().expect("connection was just opened"))
    }

    /// Sends `pipe` on this connection alone (no other task's commands come
    /// between its commands) and returns every reply, errors included as values.
    pub async fn query_pipeline(&mut self, pipe: &redis::Pipeline) -> redis::RedisResult<Vec<redis::Value>> {
        self.connect().await?;
        let conn = self.conn.as_mut().expect("connection was just opened");
        pipe.query_async(conn).await
    }

    /// Redis's id for this connection, used to `CLIENT UNBLOCK` it on stop.
    pub fn client_id(&self) -> Option<i64> {
        self.client_id
    }

    /// Forgets the connection after an error so the next call reconnects.
    pub fn reset(&mut self) {
        self.conn = None;
        self.client_id = None;
    }
}

/// The URL without its password, for error messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &creds[..c], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// The oldest Redis kiq's workers run on: they fetch with `RPOP key count`
/// and wait with `BLMOVE`, both new in Redis 6.2.
pub const MIN_REDIS: (u32, u32) = (6, 2);

/// Checks the `redis_version` line of `INFO server` against [`MIN_REDIS`].
pub fn check_version(info: &str, url: &str) -> Result<()> {
    let Some(version) = info.lines().find_map(|l| l.strip_prefix("redis_version:")).map(str::trim) else {
        return Ok(()); // a server that does not say (a proxy): let the commands speak
    };
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if (major, minor) < MIN_REDIS {
        return Err(KiqError::config(format!(
            "Redis {version} at {} is too old: kiq's workers need Redis {}.{} or newer (they use RPOP with a \
             count, LMOVE and BLMOVE); enqueueing works on older servers",
            redact(url),
            MIN_REDIS.0,
            MIN_REDIS.1
        )));
    }
    Ok(())
}

/// Asks the server its version and refuses one too old for workers; an
/// unreachable server is not an error here (a process may start before Redis).
pub async fn require_version(pool: &Pool) -> Result<()> {
    let mut conn = pool.get();
    let mut cmd = redis::cmd("INFO");
    cmd.arg("server");
    match tokio::time::timeout(Duration::from_secs(1), cmd.query_async::<String>(&mut conn)).await {
        Ok(Ok(info)) => check_version(&info, pool.url()),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_servers_are_refused_by_name() {
        let err = check_version("# Server\r\nredis_version:5.0.7\r\nredis_mode:standalone\r\n", "redis://u:pw@h:1/0")
            .unwrap_err()
            .to_string();
        assert!(err.contains("Redis 5.0.7 at redis://u:***@h:1/0 is too old") && err.contains("6.2"), "{err}");
        assert!(check_version("redis_version:6.0.16\n", "x").is_err());
        assert!(check_version("redis_version:6.2.0\n", "x").is_ok());
        assert!(check_version("redis_version:7.0.15\n", "x").is_ok());
        assert!(check_version("redis_version:10.0.0\n", "x").is_ok());
        assert!(check_version("# no version here\n", "x").is_ok());
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact("redis://u:secret@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(redact("redis://:secret@h"), "redis://:***@h");
        assert_eq!(redact("redis://h:6379"), "redis://h:6379");
    }
}
