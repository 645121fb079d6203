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
