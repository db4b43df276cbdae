//! Connections to Redis.
//!
//! Short commands share `pool_size` multiplexed connections (each a redis-rs
//! `ConnectionManager`, which reconnects in the background), picked round
//! robin. Blocking commands (`BLMOVE` in the fetch loop) never go on those: a
//! multiplexed connection blocked in a command stalls every caller behind it,
//! so each fetcher owns a dedicated [`BlockingConn`] whose response timeout
//! exceeds its block time (redis-rs's default 500 ms would cut a 2 s wait short).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Client};

use crate::error::{KiqError, Result};

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

/// The shared connections of one Kiq instance.
pub struct Pool {
    client: Client,
    conns: Vec<ConnectionManager>,
    next: AtomicUsize,
    config: RedisConfig,
}

impl Pool {
    /// Builds the pool without connecting; connections open on first use, so
    /// a process can start while Redis is still coming up. Must run inside the
    /// core runtime.
    pub fn new(config: RedisConfig) -> Result<Arc<Self>> {
        if config.pool_size == 0 {
            return Err(KiqError::config("pool_size must be at least 1"));
        }
        // rustls needs a process-wide crypto provider for rediss:// URLs.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let bad_url =
            |e: redis::RedisError| KiqError::config(format!("invalid Redis URL {:?}: {e}", redact(&config.url)));
        let client = if config.tls_ca.is_some() || config.tls_client.is_some() {
            if !config.url.starts_with("rediss://") {
                return Err(KiqError::config("TLS certificates were given but the Redis URL is not rediss://"));
            }
            let certs = redis::TlsCertificates {
                client_tls: config
                    .tls_client
                    .clone()
                    .map(|(client_cert, client_key)| redis::ClientTlsConfig { client_cert, client_key }),
                root_cert: config.tls_ca.clone(),
            };
            Client::build_with_tls(config.url.as_str(), certs).map_err(bad_url)?
        } else {
            Client::open(config.url.as_str()).map_err(bad_url)?
        };
        let manager_config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(config.response_timeout))
            .set_connection_timeout(Some(config.connect_timeout))
            .set_max_delay(Duration::from_secs(2))
            .set_number_of_retries(3);
        let conns = (0..config.pool_size)
            .map(|_| ConnectionManager::new_lazy_with_config(client.clone(), manager_config.clone()))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(Arc::new(Self { client, conns, next: AtomicUsize::new(0), config }))
    }

    /// A shared connection for short commands.
    pub fn get(&self) -> ConnectionManager {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.conns.len();
        self.conns[i].clone()
    }

    /// A new dedicated connection for commands that block up to `block`.
    pub fn blocking(&self, block: Duration) -> BlockingConn {
        BlockingConn {
            client: self.client.clone(),
            conn: None,
            client_id: None,
            timeout: block + self.config.response_timeout,
        }
    }
}

/// A connection of its own for blocking commands, reopened after errors.
pub struct BlockingConn {
    client: Client,
    conn: Option<MultiplexedConnection>,
    client_id: Option<i64>,
    timeout: Duration,
}

impl BlockingConn {
    /// Opens the connection unless it is open.
    pub async fn connect(&mut self) -> redis::RedisResult<()> {
        if self.conn.is_none() {
            let cfg = AsyncConnectionConfig::new()
                .set_response_timeout(Some(self.timeout))
                .set_connection_timeout(Some(Duration::from_secs(2)));
            let mut c = self.client.get_multiplexed_async_connection_with_config(&cfg).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact("redis://u:secret@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(redact("redis://:secret@h"), "redis://:***@h");
        assert_eq!(redact("redis://h:6379"), "redis://h:6379");
    }
}
