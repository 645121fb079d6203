//! A first turn through the real server.

use crate::common::*;

#[tokio::test]
async fn a_turn_streams() {
    let app = spawn_app();
    let (thread_id, events) = app.create_thread("alice", "hi").await;
    assert!(thread_id.starts_with("thr_"));
    assert_eq!(assistant_text(&events), "echo: hi");
}
