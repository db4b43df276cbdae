//! A throwaway redis-server on a free loopback port, stopped on drop.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    child: Child,
    pub port: u16,
}

impl RedisServer {
    pub fn start() -> Self {
        // Tests run in parallel: another test's server may take the port between
        // the probe and the spawn (this server then fails to bind). Only a server
        // that answers with this child's pid is ours.
        loop {
            let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let bin = std::env::var("KIQ_REDIS_SERVER").unwrap_or_else(|_| "redis-server".to_owned());
            let mut child = Command::new(bin)
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server must be installed (or set KIQ_REDIS_SERVER)");
            let start = Instant::now();
            loop {
                if child.try_wait().ok().flatten().is_some() {
                    break; // exited: the port was taken; try another
                }
                if server_pid(port) == Some(child.id()) {
                    return Self { child, port };
                }
                assert!(start.elapsed() < Duration::from_secs(10), "redis-server did not start");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

/// The `process_id` a Redis server on `port` reports, if one answers.
fn server_pid(port: u16) -> Option<u32> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream.write_all(b"INFO server\r\n").ok()?;
    let mut text = String::new();
    let mut buf = [0u8; 4096];
    while !text.contains("process_id:") || !text[text.find("process_id:")?..].contains('\n') {
        let n = stream.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    let line = &text[text.find("process_id:")? + "process_id:".len()..];
    line.split_whitespace().next()?.parse().ok()
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
