//! The Redis backend's coordination: thread leases with fencing tokens,
//! renewed while held; cancel requests and session ends on the control
//! channel; counters and sliding-window rate limits shared by every replica.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redis::{RedisError, Script};
use tokio::sync::{broadcast, Notify};

use super::{RedisFanout, CANCEL_REQUEST, CONTROL, LEASE_WANTED, SESSION_ENDED};
use crate::fanout::{Coordination, FanoutError, Lease, Topic};
use crate::telemetry::metrics::METRICS;

/// KEYS: lease, fence. ARGV: holder, ttl ms. Returns the fencing token, or 0
/// when another holder has the lease.
static ACQUIRE_SCRIPT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. string.format('%d', token), 'PX', ARGV[2])
return token
",
    )
});

/// KEYS: lease, fence. ARGV: value, ttl ms, token. 1 when still held and
/// extended. A lease Redis no longer has (it restarted empty, or the lease
/// expired unnoticed) that nobody took since is taken back, with the fence
/// raised to its token so that later grants still get higher ones; 0 only when
/// another holder has it.
static RENEW_SCRIPT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if holder then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if tonumber(redis.call('GET', KEYS[2]) or '0') < tonumber(ARGV[3]) then
  redis.call('SET', KEYS[2], ARGV[3])
end
return 1
",
    )
});

/// KEYS: lease. ARGV: value. Deletes the lease only if it is still ours.
static RELEASE_SCRIPT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
",
    )
});

/// KEYS: the window's sorted set (members: admitted events, scores: their
/// times in ms). ARGV: now ms, window ms, limit, a member unique to this event.
/// Forgets the events a whole window old, then admits and records this one if
/// fewer than the limit remain (0), else answers the milliseconds until the
/// oldest leaves the window (at least 1). The set lives one window past its
/// newest event.
static WINDOW_SCRIPT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%d', now - window))
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('ZADD', KEYS[1], ARGV[1], ARGV[4])
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 0
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return math.max(1, tonumber(oldest[2]) + window - now)
",
    )
});

/// The sorted set of a sliding window: `key` is its hash tag, so that every
/// key of one session (or user) would live on one Redis Cluster shard.
fn window_key(key: &str) -> String {
    format!("ck:window:{{{key}}}")
}

/// A thread's lease key and its fencing-token counter, beside the thread topic's keys.
fn lease_keys(thread_id: &str) -> [String; 2] {
    let channel = Topic::Thread(thread_id.to_string()).channel();
    [format!("{channel}:lease"), format!("{channel}:fence")]
}

#[async_trait]
impl Coordination for RedisFanout {
    async fn lease(&self, thread_id: &str) -> Result<Lease, FanoutError> {
        let [lease_key, fence_key] = lease_keys(thread_id);
        let ttl_ms = self.settings.lease_ttl.as_millis() as u64;
        let started = Instant::now();
        let deadline = started + self.settings.lease_wait;
        let mut pause = Duration::from_millis(2);
        let mut contended = false;
        let waited = || METRICS.lease_wait.with_label_values(&["redis"]).observe(started.elapsed().as_secs_f64());
        loop {
            let mut conn = match self.connection.get().await {
                Ok(conn) => conn,
                Err(error) => {
                    // The store is the source of truth and the local actor
                    // still serializes: run rather than refuse while Redis is away.
                    tracing::warn!(%error, thread_id, "running without a cross-replica lease");
                    return Ok(Lease::local());
                }
            };
            let granted: Result<u64, RedisError> = ACQUIRE_SCRIPT
                .key(&lease_key)
                .key(&fence_key)
                .arg(&self.replica)
                .arg(ttl_ms)
                .invoke_async(&mut conn)
                .await;
            match granted {
                Ok(0) if Instant::now() >= deadline => {
                    waited();
                    return Err(FanoutError::LeaseBusy);
                }
                Ok(0) => {
                    if !contended {
                        contended = true;
                        METRICS.lease_contended.inc();
                        // The holder may only be keeping it for a next message that went elsewhere.
                        let wanted = format!("{LEASE_WANTED}{thread_id}");
                        let asked: Result<(), RedisError> =
                            redis::cmd("PUBLISH").arg(CONTROL).arg(wanted).query_async(&mut conn).await;
                        if let Err(error) = asked {
                            self.connection.failed(&error).await;
                        }
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(25));
                }
                Ok(token) => {
                    waited();
                    let value = format!("{}:{token}", self.replica);
                    return Ok(self.held(lease_key, fence_key, value, token));
                }
                Err(error) => {
                    self.connection.failed(&error).await;
                    tracing::warn!(%error, thread_id, "running without a cross-replica lease");
                    return Ok(Lease::local());
                }
            }
        }
    }

    async fn still_held(&self, lease: &Lease) -> bool {
        let Some((key, value)) = lease.held.as_ref().filter(|_| lease.keepable()) else { return false };
        let Ok(mut conn) = self.connection.get().await else { return false };
        // One GET: the renewals keep the lease alive between jobs; this catches a lease lost
        // since the last renewal (taken over after a pause, or Redis restarted empty).
        let holder: Result<Option<String>, RedisError> = redis::cmd("GET").arg(key).query_async(&mut conn).await;
        match holder {
            Ok(holder) => holder.as_ref() == Some(value),
            Err(error) => {
                self.connection.failed(&error).await;
                false
            }
        }
    }

    async fn request_cancel(&self, thread_id: &str) -> bool {
        let Ok(mut conn) = self.connection.get().await else { return false };
        let [lease_key, _] = lease_keys(thread_id);
        let request = format!("{CANCEL_REQUEST}{thread_id}");
        let result: Result<((), Option<String>), RedisError> = if self.sharded {
            // A cluster pipeline must stay on one node: the publication goes on its own.
            match redis::cmd("PUBLISH").arg(CONTROL).arg(&request).query_async::<()>(&mut conn).await {
                Ok(()) => redis::cmd("GET").arg(&lease_key).query_async(&mut conn).await.map(|holder| ((), holder)),
                Err(error) => Err(error),
            }
        } else {
            redis::pipe()
                .cmd("PUBLISH")
                .arg(CONTROL)
                .arg(&request)
                .ignore()
                .get(&lease_key)
                .query_async(&mut conn)
                .await
                .map(|(holder,): (Option<String>,)| ((), holder))
        };
        match result {
            Ok(((), holder)) => holder.is_some_and(|holder| !holder.starts_with(&format!("{}:", self.replica))),
            Err(error) => {
                self.connection.failed(&error).await;
                false
            }
        }
    }

    fn lease_wanted(&self) -> broadcast::Receiver<String> {
        self.lease_wanted.subscribe()
    }

    fn cancel_requests(&self) -> broadcast::Receiver<String> {
        self.cancels.subscribe()
    }

    async fn incr(&self, key: &str, ttl: Duration) -> u64 {
        let counted = async {
            let mut conn = self.connection.get().await?;
            let key = format!("ck:count:{key}");
            let result: Result<(u64,), RedisError> = redis::pipe()
                .cmd("INCR")
                .arg(&key)
                .cmd("PEXPIRE")
                .arg(&key)
                .arg(ttl.as_millis() as u64)
                .arg("NX")
                .ignore()
                .query_async(&mut conn)
                .await;
            self.connection.checked(result).await.map(|(count,)| count)
        };
        match counted.await {
            Ok(count) => count,
            Err(error) => {
                tracing::warn!(%error, "counting on this replica alone while Redis is away");
                self.fallback_counters.incr(key, ttl)
            }
        }
    }

    async fn admit_window(&self, key: &str, limit: u32, window: Duration, now_ms: i64) -> Result<(), Duration> {
        let waited = async {
            let mut conn = self.connection.get().await?;
            // Unique per event, so that two events of the same millisecond both count.
            let member = format!("{now_ms}-{:016x}", rand::random::<u64>());
            let result: Result<u64, RedisError> = WINDOW_SCRIPT
                .key(window_key(key))
                .arg(now_ms)
                .arg(window.as_millis() as u64)
                .arg(limit)
                .arg(member)
                .invoke_async(&mut conn)
                .await;
            self.connection.checked(result).await
        };
        match waited.await {
            Ok(0) => Ok(()),
            Ok(wait_ms) => Err(Duration::from_millis(wait_ms)),
            Err(error) => {
                tracing::warn!(%error, "rate limiting on this replica alone while Redis is away");
                self.fallback_windows.admit(key, limit, window, now_ms)
            }
        }
    }

    async fn end_session(&self, session_id: &str) {
        // Local streams close at once, whatever Redis does.
        let _ = self.session_ends.send(session_id.to_string());
        let Ok(mut conn) = self.connection.get().await else { return };
        let published: Result<(), RedisError> =
            redis::cmd("PUBLISH").arg(CONTROL).arg(format!("{SESSION_ENDED}{session_id}")).query_async(&mut conn).await;
        if let Err(error) = published {
            self.connection.failed(&error).await;
        }
    }

    fn session_ends(&self) -> broadcast::Receiver<String> {
        self.session_ends.subscribe()
    }

    fn session_ends_epoch(&self) -> Option<u64> {
        // The losses counter is raised before the subscriber is marked up
        // again, so reading it on both sides of the flag catches a loss and
        // recovery in between.
        let before = self.status.notice_losses.load(Ordering::SeqCst);
        let subscribed = self.status.subscribed.load(Ordering::SeqCst);
        let after = self.status.notice_losses.load(Ordering::SeqCst);
        (subscribed && before == after).then_some(before)
    }
}

impl RedisFanout {
    /// A granted lease: renewed in the background until dropped, released on drop.
    fn held(&self, key: String, fence: String, value: String, token: u64) -> Lease {
        let lost = Arc::new(Notify::new());
        let lost_flag = Arc::new(AtomicBool::new(false));
        let ttl_ms = self.settings.lease_ttl.as_millis() as u64;
        let renew_every = self.settings.lease_ttl / 3;
        let renewer = tokio::spawn({
            let (connection, key, value, lost, lost_flag) =
                (self.connection.clone(), key.clone(), value.clone(), lost.clone(), lost_flag.clone());
            async move {
                loop {
                    tokio::time::sleep(renew_every).await;
                    let Ok(mut conn) = connection.get().await else { continue };
                    let renewed: Result<u64, RedisError> = RENEW_SCRIPT
                        .key(&key)
                        .key(&fence)
                        .arg(&value)
                        .arg(ttl_ms)
                        .arg(token)
                        .invoke_async(&mut conn)
                        .await;
                    match renewed {
                        Ok(1) => {}
                        Ok(_) => {
                            tracing::error!(lease = %key, "lost a thread lease while holding it; stopping the turn");
                            lost_flag.store(true, Ordering::SeqCst);
                            lost.notify_waiters();
                            return;
                        }
                        Err(error) => connection.failed(&error).await,
                    }
                }
            }
        });
        let connection = self.connection.clone();
        let held = Some((key.clone(), value.clone()));
        let release = Box::new(move || {
            renewer.abort();
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    let Ok(mut conn) = connection.get().await else { return };
                    let released: Result<u64, RedisError> =
                        RELEASE_SCRIPT.key(&key).arg(&value).invoke_async(&mut conn).await;
                    if let Err(error) = released {
                        connection.failed(&error).await;
                    }
                });
            }
        });
        Lease { token, lost, lost_flag, release: Some(release), held }
    }
}
