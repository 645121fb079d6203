//! The `/v1` API's thread actions: thread status changes and cancellation through the thread's actor.

use crate::common::gated::*;
use crate::common::*;
use serde_json::{json, Value};

#[tokio::test]
async fn a_lock_waits_for_the_running_turn_then_refuses_what_queued_behind_it() {
    let (app, gate) = spawn_gated(|_| {});
    let (tid, _) = app.create_thread("alice", "hello").await;
    let running = start_slow(&app, &tid).await;

    let lock = {
        let (app, tid) = (&app, tid.clone());
        async move { app.set_status(&tid, json!({"type": "locked", "reason": "Under review"})).await }
    };
    let behind = async {
        eventually("the lock is queued", || async { app.threads.queued() == 1 }).await;
        let events = app.say("alice", &tid, "queued behind the lock").await;
        events
    };
    let release = async {
        eventually("the message is queued behind the lock", || async { app.threads.queued() == 2 }).await;
        gate.add_permits(1);
        rest_of(running).await
    };
    let (locked, behind, rest) = tokio::join!(lock, behind, release);

    assert!(rest.contains("partial rest"), "the running turn completed: {rest}");
    assert_eq!(locked["status"], json!({"type": "locked", "reason": "Under review"}));
    assert!(refused_with(&behind, "Under review"), "{behind:?}");
    assert!(refused_with(&app.say("alice", &tid, "later").await, "Under review"));
    let texts: Vec<Value> = app.items("alice", &tid).await.iter().map(|i| i["content"][0]["text"].clone()).collect();
    assert_eq!(texts, ["hello", "echo: hello", "slow", "partial rest"], "nothing after the lock was stored");

    let reopened = app.set_status(&tid, json!({"type": "active"})).await;
    assert_eq!(reopened["status"], json!({"type": "active"}));
    assert_eq!(assistant_text(&app.say("alice", &tid, "again").await), "echo: again");
}

#[tokio::test]
async fn a_full_queue_answers_changes_with_429_while_reads_go_through() {
    let (app, gate) = spawn_gated(|config| config.threads.thread_queue_bound = 1);
    let (tid, _) = app.create_thread("alice", "hello").await;
    let running = start_slow(&app, &tid).await;
    let queued = async { app.say("alice", &tid, "waiting").await };
    let checks = async {
        eventually("one message waits", || async { app.threads.queued() == 1 }).await;
        app.check_error("alice", "threads.update", json!({"thread_id": tid, "title": "x"}), 429, "busy").await;
        // Reads do not queue behind the running turn.
        let thread = app.call("alice", "threads.get_by_id", json!({"thread_id": tid})).await;
        assert_eq!(thread["id"], tid.as_str());
        gate.add_permits(1);
        rest_of(running).await
    };
    let (queued, rest) = tokio::join!(queued, checks);
    assert!(rest.contains("partial rest"));
    assert_eq!(assistant_text(&queued), "echo: waiting");
    let thread = app.call("alice", "threads.get_by_id", json!({"thread_id": tid})).await;
    assert!(thread.get("title").is_none(), "the refused rename changed nothing: {thread}");
}

#[tokio::test]
async fn a_status_set_by_the_responder_applies_to_the_next_queued_message() {
    let (app, gate) = spawn_gated(|_| {});
    let (tid, _) = app.create_thread("alice", "hello").await;
    let running = start_slow(&app, &tid).await;
    let lock_turn = async { app.say("alice", &tid, "lock me").await };
    let behind = async {
        eventually("the locking message is queued", || async { app.threads.queued() == 1 }).await;
        let behind = app.say("alice", &tid, "queued after it");
        let release = async {
            eventually("the next message is queued", || async { app.threads.queued() == 2 }).await;
            gate.add_permits(1);
            rest_of(running).await
        };
        tokio::join!(behind, release).0
    };
    let (locking, behind) = tokio::join!(lock_turn, behind);
    let updated = locking.iter().find(|e| e["type"] == "thread.updated").expect("the change is announced");
    assert_eq!(updated["thread"]["status"], json!({"type": "locked", "reason": "Locked by the assistant"}));
    assert!(refused_with(&behind, "Locked by the assistant"), "{behind:?}");
}

#[tokio::test]
async fn a_status_change_is_announced_as_thread_updated() {
    let (app, _gate) = spawn_gated(|_| {});
    let (tid, _) = app.create_thread("alice", "hello").await;
    let mut viewer = app.view_thread("alice", &tid).await;
    let mut history = app.view_history("alice").await;
    app.set_status(&tid, json!({"type": "locked", "reason": "Paused"})).await;
    for announced in [viewer.next().await, history.next().await] {
        assert_eq!(announced.kind(), "thread.updated", "{announced:?}");
        let thread = &announced.data["thread"];
        assert_eq!(thread["status"], json!({"type": "locked", "reason": "Paused"}));
        assert_eq!(thread["id"], json!(tid));
    }
}

#[tokio::test]
async fn cancel_running_stops_the_turn_before_the_status_applies() {
    let (app, _gate) = spawn_gated(|_| {});
    let (tid, _) = app.create_thread("alice", "hello").await;
    let running = start_slow(&app, &tid).await;
    let closed = app.set_status(&tid, json!({"type": "closed", "reason": "Done here", "cancel_running": true})).await;
    assert_eq!(closed["status"], json!({"type": "closed", "reason": "Done here"}));
    let rest = rest_of(running).await;
    assert!(!rest.contains("rest"), "the turn stopped where it was: {rest}");
    let items = app.items("alice", &tid).await;
    assert_eq!(items.last().unwrap()["content"][0]["text"], "partial ", "partial output kept");
    assert!(refused_with(&app.say("alice", &tid, "more").await, "Done here"));
}

#[tokio::test]
async fn cancel_stops_a_turn_from_outside_its_stream() {
    let (app, _gate) = spawn_gated(|_| {});
    let (tid, _) = app.create_thread("alice", "hello").await;
    let (code, idle) = app.admin(&format!("/v1/chatkit/threads/{tid}/cancel"), json!({}), None).await;
    assert_eq!((code, idle), (200, json!({"id": tid, "cancelled": false})));

    let running = start_slow(&app, &tid).await;
    let (code, answer) = app.admin(&format!("/v1/chatkit/threads/{tid}/cancel"), json!({}), None).await;
    assert_eq!((code, answer["cancelled"].clone()), (200, json!(true)));
    let rest = rest_of(running).await;
    assert!(!rest.contains("rest"), "{rest}");
    let hidden = app
        .store
        .list_items(
            &chatkit_gateway::ids::UserId("alice".into()),
            &tid,
            &chatkit_gateway::store::ListQuery::first(100, chatkit_gateway::protocol::Order::Asc),
        )
        .await;
    let hidden = hidden.unwrap();
    assert!(hidden.data.iter().any(|item| item.kind() == "sdk_hidden_context"), "the cancellation is noted");
    assert_eq!(assistant_text(&app.say("alice", &tid, "next").await), "echo: next", "the actor moved on");

    let (code, _) = app.admin("/v1/chatkit/threads/thr_nope/cancel", json!({}), None).await;
    assert_eq!(code, 404);
}

#[tokio::test]
async fn status_changes_need_a_valid_body_and_a_known_thread() {
    let (app, _gate) = spawn_gated(|_| {});
    let (tid, _) = app.create_thread("alice", "hello").await;
    let (code, body) = app.admin(&format!("/v1/chatkit/threads/{tid}/status"), json!({"type": "frozen"}), None).await;
    assert_eq!(code, 400, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("status change"), "{body}");
    let (code, _) = app.admin("/v1/chatkit/threads/thr_nope/status", json!({"type": "locked"}), None).await;
    assert_eq!(code, 404);
}

#[tokio::test]
async fn admin_keys_guard_the_admin_api() {
    let (app, _gate) = spawn_gated(|config| {
        config.access.admin_keys = vec!["k-123".parse().unwrap()];
        config.server.max_body_bytes = 4096;
    });
    let (tid, _) = app.create_thread("alice", "hello").await;
    let path = format!("/v1/chatkit/threads/{tid}/status");
    assert_eq!(app.admin(&path, json!({"type": "locked"}), None).await.0, 401);
    assert_eq!(app.admin(&path, json!({"type": "locked"}), Some("wrong")).await.0, 401);
    // The key is checked before the body is read: a body over the limit is refused for its key first.
    let oversized = json!({"type": "locked", "reason": "x".repeat(8192)});
    assert_eq!(app.admin(&path, oversized.clone(), None).await.0, 401);
    assert_eq!(app.admin(&path, oversized, Some("k-123")).await.0, 413);
    assert_eq!(app.admin(&path, json!({"type": "locked"}), Some("k-123")).await.0, 200);
}

#[tokio::test]
async fn without_keys_the_admin_api_is_refused_off_loopback() {
    let (app, _gate) = spawn_gated(|config| {
        config.server.bind = "0.0.0.0:0".parse().unwrap();
        // Off loopback the default is session auth; this test is about the admin keys.
        config.access.auth = Some(chatkit_gateway::http::AuthMode::Header);
    });
    let (tid, _) = app.create_thread("alice", "hello").await;
    let (code, body) = app.admin(&format!("/v1/chatkit/threads/{tid}/status"), json!({"type": "locked"}), None).await;
    assert_eq!(code, 403, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("CHATKIT_ADMIN_KEYS"));
}
