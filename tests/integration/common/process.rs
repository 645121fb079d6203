//! The gateway binary as a real process on a free loopback port, for tests that signal it
//! (SIGTERM to drain, SIGSTOP and SIGCONT to pause it past its lease).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A running gateway process, killed when dropped.
pub struct GatewayProcess {
    child: Child,
    /// The thread that reads its stdout to the end; it answers every line.
    stdout: Option<std::thread::JoinHandle<Vec<String>>>,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    /// Its data directory (and, when a test puts it there, its SQLite file).
    pub dir: tempfile::TempDir,
}

impl GatewayProcess {
    /// Starts the test build of the binary with a clean environment plus `env`, and waits (bounded) for the address
    /// it logs. `env` may use `{dir}` for the process's own directory.
    pub fn start(env: &[(&str, String)]) -> GatewayProcess {
        let dir = tempfile::tempdir().unwrap();
        let own_dir = dir.path().display().to_string();
        let mut command = Command::new(env!("CARGO_BIN_EXE_chatkit-gateway"));
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("CHATKIT_BIND", "127.0.0.1:0")
            .env("CHATKIT_DATA_DIR", dir.path().join("data"))
            .env("CHATKIT_LOG", "info")
            .env("NO_COLOR", "1");
        for (name, value) in env {
            command.env(name, value.replace("{dir}", &own_dir));
        }
        let mut child =
            command.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("the gateway binary starts");
        // The start-up log names the address it bound.
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut lines = Vec::new();
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = logged_addr(&line) {
                    let _ = tx.send(addr);
                }
                lines.push(line);
            }
            lines
        });
        let addr = rx.recv_timeout(Duration::from_secs(20)).expect("the gateway logs its address");
        GatewayProcess { child, stdout: Some(reader), base: format!("http://{addr}"), dir }
    }

    /// Posts a ChatKit request to the process as `alice` with `headers` besides; the response, its body unread
    /// (a stream may run on, so the caller bounds its reads).
    pub async fn post_chatkit(
        &self,
        op: &str,
        params: serde_json::Value,
        headers: &[(&str, String)],
    ) -> reqwest::Response {
        let mut post = reqwest::Client::new()
            .post(format!("{}/chatkit", self.base))
            .header("x-user-id", "alice")
            .header("content-type", "application/json")
            .body(crate::common::request(op, params).to_string());
        for (name, value) in headers {
            post = post.header(*name, value);
        }
        post.send().await.expect("the gateway answers")
    }

    /// Every line the process wrote to stdout; call it after [`Self::wait_exit`], when the output has ended.
    pub fn stdout_lines(&mut self) -> Vec<String> {
        self.stdout.take().expect("stdout read once").join().expect("the stdout reader ends")
    }

    /// Sends `signal` (`TERM`, `STOP`, `CONT`, …) to the process.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill").arg(format!("-{signal}")).arg(self.child.id().to_string()).status().unwrap();
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Waits (bounded) for the process to exit; its exit status.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the gateway did not exit within {limit:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The address in the start-up line, `addr=<ip:port>` as text logs write it or `"addr":"<ip:port>"` as JSON logs do.
fn logged_addr(line: &str) -> Option<String> {
    let (at, skip) = match line.find("addr=") {
        Some(at) => (at, "addr=".len()),
        None => (line.find("\"addr\":")?, "\"addr\":".len()),
    };
    let addr: String = line[at + skip..]
        .trim_start_matches('"')
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
        .collect();
    (!addr.is_empty()).then_some(addr)
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        // SIGKILL ends a stopped process too.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
