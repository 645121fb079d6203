//! A first turn through the real server.

use crate::common::*;

#[tokio::test]
async fn a_turn_streams() {
    let app = spawn_app();
    let (thread_id, events) = app.create_thread("alice", "hi").await;
    assert!(thread_id.starts_with("thr_"));
    assert_eq!(assistant_text(&events), "echo: hi");
}

/// Sends one keep-alive request on a fresh connection and reads its answer.
fn request_on(stream: &mut std::net::TcpStream) -> String {
    use std::io::{Read, Write};
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    let mut answer = [0u8; 1024];
    let read = stream.read(&mut answer).expect("an answer");
    String::from_utf8_lossy(&answer[..read]).into_owned()
}

/// `CHATKIT_KEEP_ALIVE_SECS` decides how long an idle connection stays open:
/// the connection outlives a shorter wait and is closed after a longer one.
#[test]
fn idle_connections_live_as_long_as_the_keep_alive_says() {
    use std::io::Read;
    use std::time::{Duration, Instant};
    let app = spawn(Spawn { configure: Box::new(|config| config.server.keep_alive_secs = 1), ..Default::default() });
    let mut stream = std::net::TcpStream::connect(app.addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert!(request_on(&mut stream).starts_with("HTTP/1.1 200"));
    std::thread::sleep(Duration::from_millis(300));
    assert!(request_on(&mut stream).starts_with("HTTP/1.1 200"), "still open within the keep-alive");
    let idle_since = Instant::now();
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).expect("the server closes the idle connection");
    let idle = idle_since.elapsed();
    // Well short of actix's own default of 5 s, so the setting is what closed it. Actix reckons
    // the deadline from a clock it refreshes every 500 ms, so it may come up to 500 ms early:
    // how early depends on where that tick falls, which any other task on the runtime shifts.
    assert!(idle >= Duration::from_millis(480) && idle < Duration::from_millis(3500), "closed after {idle:?}");
}

/// Readiness follows what this replica can serve: its store answering. A store that goes away makes it unready
/// (503, naming the store); Redis loss does not (see `replicas`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_store() {
    use crate::common::postgres::{admin_connection, admin_url, TestDatabase};
    use chatkit_gateway::store::PostgresStore;
    use std::sync::Arc;

    let database = TestDatabase::create().await;
    let store = PostgresStore::open(&database.url).await.expect("the store opens");
    let app = spawn(Spawn { store: Some(Arc::new(store)), ..Spawn::default() });
    let readiness = || async {
        let response = app.client.get(app.url("/readyz")).send().await.expect("readyz answers");
        let status = response.status().as_u16();
        (status, response.json::<serde_json::Value>().await.expect("readyz answers JSON"))
    };
    let (status, body) = readiness().await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ready")), "{body}");

    let mut admin = admin_connection(&admin_url()).await;
    let drop = format!("DROP DATABASE {} WITH (FORCE)", database.name);
    sqlx::raw_sql(&drop).execute(&mut admin).await.expect("the database is dropped");
    let (status, body) = readiness().await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "unavailable", "{body}");
    assert_eq!(body["store"]["state"], "unreachable", "{body}");
}
