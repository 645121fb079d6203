//! The cache of authenticated sessions: a cached secret stops working as soon
//! as its session is cancelled, on the replica that cancelled it and on the
//! others (through the session-ended notice, or the cleared cache when Redis
//! came back after a notice was missed); an expired session is refused though
//! cached; rate limits hold; the cache stays within its capacity.

use std::sync::Arc;

use crate::common::redis::RedisServer;
use crate::common::*;
use crate::sessions::{call_with, capture_logs, create, error_code, open_history, session_auth, session_for};
use chatkit_gateway::fanout::{Coordination, FanoutSettings, LocalFanout};
use chatkit_gateway::sessions::{AuthError, CacheSettings, Sessions};
use serde_json::{json, Value};

/// `GET /readyz`'s body.
async fn readiness(app: &TestApp) -> Value {
    app.client.get(app.url("/readyz")).send().await.expect("readyz answers").json().await.expect("JSON")
}

async fn cancel(app: &TestApp, session_id: &str) {
    let url = app.url(&format!("/v1/chatkit/sessions/{session_id}/cancel"));
    assert_eq!(app.client.post(url).send().await.unwrap().status().as_u16(), 200);
}

/// The status and error code of `threads.list` with `secret` (`ok` for 200).
async fn listing(app: &TestApp, secret: &str) -> (u16, String) {
    let (status, _, body) = call_with(app, secret, "threads.list", json!({})).await;
    let code = if status == 200 { "ok".to_string() } else { error_code(&body) };
    (status, code)
}

fn session_replicas(redis: &RedisServer) -> Vec<TestApp> {
    capture_logs();
    redis.replicas(2, || Spawn { configure: Box::new(session_auth), ..Default::default() })
}

#[tokio::test]
async fn a_cached_secret_is_refused_right_after_its_session_is_cancelled() {
    capture_logs();
    let app = spawn(Spawn { configure: Box::new(session_auth), ..Default::default() });
    let (id, secret) = session_for(&app, "alice").await;
    for _ in 0..3 {
        assert_eq!(listing(&app, &secret).await, (200, "ok".into()), "cached after the first");
    }
    cancel(&app, &id).await;
    assert_eq!(listing(&app, &secret).await, (401, "session_cancelled".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_on_one_replica_reaches_the_cache_of_another() {
    let redis = RedisServer::start();
    let replicas = session_replicas(&redis);
    let [a, b] = &replicas[..] else { unreachable!("two replicas") };
    for app in [a, b] {
        eventually("the replica is connected to Redis", || async { readiness(app).await["status"] == "ready" }).await;
    }
    let (id, secret) = session_for(a, "alice").await;
    let (_, other) = session_for(a, "alice").await;
    for secret in [&secret, &other] {
        assert_eq!(listing(b, secret).await, (200, "ok".into()));
        assert_eq!(listing(b, secret).await, (200, "ok".into()), "now from b's cache");
    }
    // A viewer stream on b ends when b has the notice; the cache applies it before its next lookup.
    let mut viewer = open_history(b, &secret).await;
    cancel(a, &id).await;
    viewer.until(|frame| frame.event.as_deref() == Some("session.ended")).await;
    assert_eq!(listing(b, &secret).await, (401, "session_cancelled".into()));
    assert_eq!(listing(b, &other).await, (200, "ok".into()), "another session of the same user stays");
}

/// A cancel while Redis is away publishes nothing: a replica's cache must not
/// trust what it cached before it lost Redis, neither meanwhile nor after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_missed_while_redis_was_away_is_not_served_from_the_cache() {
    let mut redis = RedisServer::start();
    let replicas = session_replicas(&redis);
    let [a, b] = &replicas[..] else { unreachable!("two replicas") };
    for app in [a, b] {
        eventually("the replica is connected to Redis", || async { readiness(app).await["status"] == "ready" }).await;
    }
    let (first, first_secret) = session_for(a, "alice").await;
    let (second, second_secret) = session_for(a, "bob").await;
    for secret in [&first_secret, &second_secret] {
        assert_eq!(listing(b, secret).await, (200, "ok".into()));
        assert_eq!(listing(b, secret).await, (200, "ok".into()), "now from b's cache");
    }

    redis.kill();
    for app in [a, b] {
        eventually("the replica saw Redis go", || async { readiness(app).await["fanout"]["state"] == "disconnected" })
            .await;
    }
    cancel(a, &first).await;
    assert_eq!(listing(b, &first_secret).await, (401, "session_cancelled".into()), "while Redis is away");
    assert_eq!(listing(b, &second_secret).await, (200, "ok".into()), "rate limited on b alone meanwhile");

    // Cancelled while b cannot hear of it, and not looked up on b before Redis is back.
    cancel(a, &second).await;
    redis.restart();
    for app in [a, b] {
        eventually("fan-out is connected again", || async { readiness(app).await["status"] == "ready" }).await;
    }
    assert_eq!(listing(b, &second_secret).await, (401, "session_cancelled".into()), "after Redis came back");
}

#[tokio::test]
async fn an_expired_session_is_refused_though_cached() {
    capture_logs();
    let app = spawn(Spawn { configure: Box::new(session_auth), ..Default::default() });
    let session = create(&app, json!({"user": "alice", "workflow": {"id": "w"}, "expires_after": 1})).await;
    let secret = session["client_secret"].as_str().unwrap();
    assert_eq!(listing(&app, secret).await, (200, "ok".into()));
    let expires_at = session["expires_at"].as_i64().unwrap();
    // Bounded wait for the wall clock to pass the expiry, which the app reads too.
    eventually("the session's expiry has passed", || async { chrono::Utc::now().timestamp() > expires_at }).await;
    assert_eq!(listing(&app, secret).await, (401, "session_expired".into()));
}

/// Also the window script by its hash (`EVALSHA`), sent whole only to a Redis that lacks it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_hold_with_the_cache_across_replicas() {
    let redis = RedisServer::start();
    let replicas = session_replicas(&redis);
    let [a, b] = &replicas[..] else { unreachable!("two replicas") };
    let session =
        create(a, json!({"user": "alice", "workflow": {"id": "w"}, "rate_limits": {"max_requests_per_1_minute": 5}}))
            .await;
    let secret = session["client_secret"].as_str().unwrap();
    let mut statuses = Vec::new();
    // Both replicas cache the session after its first request there; every request still counts.
    for n in 0..8 {
        if n == 3 {
            // The window script runs by its hash; a Redis that forgot it (restarted) is sent it again.
            redis.command(&["SCRIPT", "FLUSH"]);
        }
        statuses.push(listing(if n % 3 == 0 { a } else { b }, secret).await.0);
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429, 429]);
}

#[tokio::test]
async fn the_cache_stays_within_its_capacity_and_every_secret_still_works() {
    let store: Arc<dyn chatkit_gateway::store::Store> = Arc::new(chatkit_gateway::store::MemoryStore::new());
    let coordination: Arc<dyn Coordination> = Arc::new(LocalFanout::new(FanoutSettings::default()));
    let sessions = Sessions::new(store, coordination)
        .with_cache(CacheSettings { capacity: 3, max_age: std::time::Duration::from_secs(60) });
    let mut made = Vec::new();
    for n in 0..10 {
        let params = json!({"user": format!("user-{n}"), "workflow": {"id": "w"}});
        let created = sessions.create(serde_json::from_value(params).unwrap()).await.unwrap();
        made.push((created.id, created.client_secret));
    }
    for round in 0..3 {
        for (n, (id, secret)) in made.iter().enumerate() {
            let session = sessions.authenticate(secret).await.unwrap_or_else(|e| panic!("round {round}: {e}"));
            assert_eq!((&session.id, session.user.0.as_str()), (id, format!("user-{n}").as_str()));
            assert!(sessions.cached() <= 3, "{} cached", sessions.cached());
        }
    }
    assert!(sessions.cached() > 0, "the cache is used");
    let (id, secret) = &made[9];
    assert!(sessions.authenticate(secret).await.is_ok());
    sessions.cancel(id).await.unwrap();
    assert_eq!(sessions.authenticate(secret).await.unwrap_err(), AuthError::Cancelled);
    let unknown = format!("{}{}", chatkit_gateway::sessions::SECRET_PREFIX, "x".repeat(43));
    assert_eq!(sessions.authenticate(&unknown).await.unwrap_err(), AuthError::Unknown);
    assert!(sessions.cached() <= 3);
}
