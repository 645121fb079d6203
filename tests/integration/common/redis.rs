//! A private `redis-server` per test, on a free loopback port, that a test can kill and restart.
//!
//! The machine's own Redis (port 6379) is never used. The server keeps nothing
//! on disk (`--save "" --appendonly no`), so a restart comes back empty, as a
//! crashed cache would.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chatkit_gateway::secret::Secret;
use chatkit_gateway::store::{MemoryStore, Store};

use crate::common::{Spawn, TestApp};

/// How long a server may take to accept connections after it is launched.
const STARTUP: Duration = Duration::from_secs(10);

/// A running `redis-server`, killed when dropped.
pub struct RedisServer {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// Arguments beyond the defaults (cluster mode, for `RedisCluster`).
    extra: Vec<String>,
}

impl RedisServer {
    /// Starts a server on a free port and waits (bounded) until it answers.
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    /// Starts a server with extra arguments on a free port and waits (bounded) until it answers.
    pub fn start_with(extra: &[&str]) -> RedisServer {
        let extra: Vec<String> = extra.iter().map(|arg| arg.to_string()).collect();
        let mut failures = Vec::new();
        for _ in 0..10 {
            let port = crate::common::free_port();
            let dir = tempfile::tempdir().expect("temp dir for redis-server");
            let mut server = RedisServer { port, dir, child: None, extra: extra.clone() };
            match server.launch() {
                Ok(()) => return server,
                // Another test may have taken the port between the check and the launch.
                Err(error) => failures.push(format!("port {port}: {error}")),
            }
        }
        panic!("could not start redis-server: {failures:#?}");
    }

    /// `count` replicas of one gateway on loopback: apps sharing one in-memory
    /// store and this server for fan-out, each spawned as `spawn` describes.
    pub fn replicas(&self, count: usize, spawn: impl Fn() -> Spawn) -> Vec<TestApp> {
        replicas_on(&self.url(), count, spawn)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's URL, `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Sends one command and returns the first line of its reply (`:1`, `+OK`,
    /// `-ERR ...`), which is all simple checks such as `EXISTS` need.
    pub fn command(&self, args: &[&str]) -> String {
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(1)).expect("Redis accepts");
        stream.set_read_timeout(Some(Duration::from_secs(2))).expect("read timeout");
        stream.write_all(request.as_bytes()).expect("command sent");
        let mut reply = Vec::new();
        let mut byte = [0u8; 1];
        while !reply.ends_with(b"\r\n") {
            let read = stream.read(&mut byte).expect("Redis answers");
            assert!(read == 1, "Redis closed the connection mid-reply");
            reply.push(byte[0]);
        }
        String::from_utf8_lossy(&reply[..reply.len() - 2]).into_owned()
    }

    /// Whether `key` exists.
    pub fn exists(&self, key: &str) -> bool {
        self.command(&["EXISTS", key]) == ":1"
    }

    /// Kills the server with SIGKILL, as a crash would, and waits until it is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port (killing it first if it runs)
    /// and waits (bounded) until it answers.
    pub fn restart(&mut self) {
        self.kill();
        if let Err(error) = self.launch() {
            panic!("redis-server did not come back on port {}: {error}", self.port);
        }
    }

    /// Launches the process and waits until this very process answers on the port.
    fn launch(&mut self) -> Result<(), String> {
        let log_path = self.dir.path().join("redis.log");
        let log = OpenOptions::new().create(true).append(true).open(&log_path).map_err(|e| e.to_string())?;
        let errors = log.try_clone().map_err(|e| e.to_string())?;
        let binary = std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".to_string());
        let port = self.port.to_string();
        let child = Command::new(&binary)
            .args(["--port", &port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(errors))
            .spawn()
            .map_err(|e| format!("cannot run `{binary}` (install redis-server or set REDIS_SERVER): {e}"))?;
        let pid = child.id();
        let child = self.child.insert(child);
        let deadline = Instant::now() + STARTUP;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Err(format!("redis-server exited with {status}; its log:\n{}", read_log(&log_path)));
            }
            // Another server may listen on the port: only an answer from this process counts.
            if answering_pid(self.port) == Some(pid) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(format!("no answer within {STARTUP:?}; its log:\n{}", read_log(&log_path)));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `count` replicas of one gateway on loopback: apps sharing one in-memory
/// store and the Redis at `url` for fan-out, each spawned as `spawn` describes.
pub fn replicas_on(url: &str, count: usize, spawn: impl Fn() -> Spawn) -> Vec<TestApp> {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    (0..count)
        .map(|_| {
            let mut replica = spawn();
            let (configure, url) = (replica.configure, url.to_string());
            replica.configure = Box::new(move |config| {
                configure(config);
                config.fanout.redis_url = Some(Secret::new(url));
            });
            replica.store = Some(store.clone());
            crate::common::spawn(replica)
        })
        .collect()
}

/// The process id of the Redis server answering on `port`, if one answers.
fn answering_pid(port: u16) -> Option<u32> {
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_millis(200)).ok()?;
    stream.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
    stream.set_write_timeout(Some(Duration::from_millis(500))).ok()?;
    stream.write_all(b"INFO server\r\n").ok()?;
    let mut reply = Vec::new();
    let mut chunk = [0u8; 4096];
    // The reply is one bulk string; the `process_id` line is all this needs of it.
    while reply.len() < 1 << 16 {
        let read = stream.read(&mut chunk).ok()?;
        if read == 0 {
            break;
        }
        reply.extend_from_slice(&chunk[..read]);
        let text = String::from_utf8_lossy(&reply);
        if let Some(start) = text.find("process_id:") {
            let rest = &text[start + "process_id:".len()..];
            if let Some(end) = rest.find("\r\n") {
                return rest[..end].trim().parse().ok();
            }
        }
    }
    None
}

fn read_log(path: &std::path::Path) -> String {
    let mut text = String::new();
    if let Ok(mut file) = File::open(path) {
        let _ = file.read_to_string(&mut text);
    }
    text
}
