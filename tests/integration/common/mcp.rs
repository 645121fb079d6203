//! The test MCP server (`tests/mcp/server.py`, on the Python `mcp` SDK) as a process on a loopback port.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running test MCP server, killed when dropped.
pub struct McpServer {
    child: Child,
    pub port: u16,
}

impl McpServer {
    /// Starts the server on a free port and waits (bounded) until it accepts connections.
    pub fn start() -> McpServer {
        McpServer::start_on(super::free_port())
    }

    /// Starts the server on `port`, e.g. one a gateway already tried and found closed.
    pub fn start_on(port: u16) -> McpServer {
        let script = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/mcp/server.py");
        let child = Command::new(super::venv_python())
            .arg(&script)
            .arg("--port")
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the test MCP server starts");
        let server = McpServer { child, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the test MCP server did not listen on port {port} within 30 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }
}

/// The endpoint the test server has on `port`.
pub fn url_on(port: u16) -> String {
    format!("http://127.0.0.1:{port}/mcp")
}

impl Drop for McpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
