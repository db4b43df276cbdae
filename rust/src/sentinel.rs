//! Redis Sentinel: find the current master of a service.
//!
//! URL form: `redis+sentinel://[user:password@]host:port[,host:port...]/service[/db]`
//! (`rediss+sentinel://` for TLS to the master). The credentials, db and TLS
//! apply to the master; sentinels are asked with plain connections.

use std::time::Duration;

use crate::error::{KiqError, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentinelUrl {
    pub sentinels: Vec<(String, u16)>,
    pub service: String,
    pub tls: bool,
    /// `user:password` for the master, if any.
    pub userinfo: Option<String>,
    pub db: i64,
}

impl SentinelUrl {
    /// Parses a sentinel URL; `None` for any other URL.
    pub fn parse(url: &str) -> Option<Result<Self>> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("redis+sentinel://") {
            (false, r)
        } else if let Some(r) = url.strip_prefix("rediss+sentinel://") {
            (true, r)
        } else {
            return None;
        };
        Some(Self::parse_rest(tls, rest))
    }

    fn parse_rest(tls: bool, rest: &str) -> Result<Self> {
        let bad = |why: &str| {
            KiqError::config(format!(
                "invalid Sentinel URL: {why} (expected redis+sentinel://host:port[,host:port]/service[/db])"
            ))
        };
        let (userinfo, rest) = match rest.rsplit_once('@') {
            Some((u, r)) => (Some(u.to_owned()), r),
            None => (None, rest),
        };
        let (hosts, path) = rest.split_once('/').ok_or_else(|| bad("no service name"))?;
        let mut sentinels = Vec::new();
        for h in hosts.split(',').filter(|h| !h.is_empty()) {
            let (host, port) = h.rsplit_once(':').map_or((h, "26379"), |(a, b)| (a, b));
            let port = port.parse().map_err(|_| bad(&format!("bad port in {h:?}")))?;
            sentinels.push((host.trim_matches(['[', ']']).to_owned(), port));
        }
        if sentinels.is_empty() {
            return Err(bad("no sentinel address"));
        }
        let mut parts = path.split('/');
        let service = parts.next().filter(|s| !s.is_empty()).ok_or_else(|| bad("no service name"))?.to_owned();
        let db = match parts.next().filter(|s| !s.is_empty()) {
            Some(d) => d.parse().map_err(|_| bad(&format!("bad db {d:?}")))?,
            None => 0,
        };
        Ok(Self { sentinels, service, tls, userinfo, db })
    }

    /// The URL of the master at `host:port`.
    pub fn master_url(&self, host: &str, port: u16) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        let auth = self.userinfo.as_ref().map_or(String::new(), |u| format!("{u}@"));
        format!("{scheme}://{auth}{host}:{port}/{}", self.db)
    }

    /// Asks each sentinel in turn for the master's address.
    pub async fn resolve(&self, timeout: Duration) -> Result<(String, u16)> {
        let mut last = String::from("no sentinel answered");
        for (host, port) in &self.sentinels {
            let asked = async {
                let client = redis::Client::open(format!("redis://{host}:{port}/"))?;
                let cfg = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(timeout));
                let mut conn = client.get_multiplexed_async_connection_with_config(&cfg).await?;
                let addr: Option<(String, u16)> = redis::cmd("SENTINEL")
                    .arg("get-master-addr-by-name")
                    .arg(&self.service)
                    .query_async(&mut conn)
                    .await?;
                Ok::<_, redis::RedisError>(addr)
            };
            match asked.await {
                Ok(Some(addr)) => return Ok(addr),
                Ok(None) => last = format!("sentinel {host}:{port} knows no service {:?}", self.service),
                Err(e) => last = format!("sentinel {host}:{port}: {e}"),
            }
        }
        Err(KiqError::Redis(redis::RedisError::from((redis::ErrorKind::Io, "Sentinel", last))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sentinel_urls() {
        let u = SentinelUrl::parse("redis+sentinel://:pw@10.0.0.1:26379,10.0.0.2/mymaster/3").unwrap().unwrap();
        assert_eq!(u.sentinels, vec![("10.0.0.1".into(), 26379), ("10.0.0.2".into(), 26379)]);
        assert_eq!((u.service.as_str(), u.db, u.tls), ("mymaster", 3, false));
        assert_eq!(u.master_url("10.0.0.9", 6380), "redis://:pw@10.0.0.9:6380/3");
        assert!(SentinelUrl::parse("redis://localhost").is_none());
        assert!(SentinelUrl::parse("redis+sentinel://h:1").unwrap().is_err());
        assert!(SentinelUrl::parse("rediss+sentinel://h:x/m").unwrap().is_err());
    }
}
