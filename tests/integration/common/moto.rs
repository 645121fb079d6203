//! A private S3-compatible server per test: moto's server mode (`moto[server]`,
//! pinned in `scripts/provision.sh`, in the test venv), on a free loopback port,
//! with one bucket made for the test. Killed when dropped.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chatkit_gateway::blobs::S3Options;
use chatkit_gateway::config::Config;
use chatkit_gateway::secret::Secret;

/// How long moto may take to accept connections after it is launched (it imports a lot).
const STARTUP: Duration = Duration::from_secs(30);

/// The credentials moto accepts (it checks none).
const ACCESS_KEY: &str = "testing";
const SECRET_KEY: &str = "testing";

pub struct MotoServer {
    port: u16,
    child: Child,
    pub bucket: String,
}

impl MotoServer {
    /// Starts moto on a free port, waits (bounded) until it answers, and creates a bucket.
    pub async fn start() -> MotoServer {
        let mut failures = Vec::new();
        for _ in 0..5 {
            let port = crate::common::free_port();
            let child = Command::new(crate::common::venv_python())
                .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("cannot run the test venv's python for moto (install moto[server]: scripts/provision.sh)");
            let mut server = MotoServer { port, child, bucket: format!("chatkit-{:08x}", rand::random::<u32>()) };
            let deadline = Instant::now() + STARTUP;
            let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            while Instant::now() < deadline {
                if let Ok(Some(status)) = server.child.try_wait() {
                    failures.push(format!("port {port}: moto exited with {status}"));
                    break;
                }
                if TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok() {
                    server.create_bucket().await;
                    return server;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            failures.push(format!("port {port}: moto did not answer"));
        }
        panic!("could not start moto: {failures:#?}");
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Path-style `PUT /<bucket>`: moto checks no signature.
    async fn create_bucket(&self) {
        let url = format!("{}/{}", self.endpoint(), self.bucket);
        let response = reqwest::Client::new().put(&url).send().await.expect("moto answers");
        assert!(response.status().is_success(), "creating bucket answered {}", response.status());
    }

    /// The options that point the S3 backend at this server.
    pub fn options(&self) -> S3Options {
        S3Options {
            region: Some("us-east-1".into()),
            endpoint: Some(self.endpoint()),
            allow_http: true,
            access_key_id: Some(Secret::new(ACCESS_KEY)),
            secret_access_key: Some(Secret::new(SECRET_KEY)),
        }
    }

    /// Points a gateway's blob storage at this server's bucket, under `prefix`.
    pub fn configure(&self, config: &mut Config, prefix: &str) {
        let options = self.options();
        config.storage.blob_url = Some(format!("s3://{}/{prefix}", self.bucket));
        config.storage.s3_region = options.region;
        config.storage.s3_endpoint = options.endpoint;
        config.storage.s3_allow_http = true;
        config.storage.s3_access_key_id = options.access_key_id;
        config.storage.s3_secret_access_key = options.secret_access_key;
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
