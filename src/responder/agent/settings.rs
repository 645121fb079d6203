//! The agent backend's settings, and the Standard Webhooks signature every request to the agent carries.

use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ring::hmac;

use super::breaker::{BREAKER_COOLDOWN, BREAKER_THRESHOLD};
use crate::secret::Secret;

/// Where the agent is and how the gateway talks to it.
#[derive(Clone, Debug)]
pub struct AgentSettings {
    /// The URL every operation is posted to.
    pub url: String,
    pub(super) signer: Signer,
    /// How many of a thread's newest items a request carries, oldest first.
    pub history_items: usize,
    /// The longest wait for the first event (or the JSON answer), and between two events.
    pub timeout: Duration,
    /// Retries of a failure before the first event (connection, 5xx, 429, timeout).
    pub retries: u32,
    /// The pause before the first retry; it doubles for each further retry.
    pub retry_backoff: Duration,
    /// No retry starts once this much time has passed since the first attempt.
    pub retry_budget: Duration,
    /// The agent's label in logs and metrics (`default`, or its workflow's name).
    pub name: String,
    /// Failed calls in a row (down, 5xx, 429, timeout; after their retries) that open the circuit breaker.
    pub breaker_threshold: u32,
    /// How long an open breaker fails calls at once before it lets a trial call through.
    pub breaker_cooldown: Duration,
}

impl AgentSettings {
    /// Settings with the standard retry policy (two retries, all within 10 s) and circuit breaker.
    pub fn new(url: String, secret: &Secret, history_items: usize, timeout: Duration) -> Result<Self, String> {
        Ok(AgentSettings {
            url,
            signer: Signer::new(secret)?,
            history_items,
            timeout,
            retries: 2,
            retry_backoff: Duration::from_millis(250),
            retry_budget: Duration::from_secs(10),
            name: "default".into(),
            breaker_threshold: BREAKER_THRESHOLD,
            breaker_cooldown: BREAKER_COOLDOWN,
        })
    }
}

/// Signs request bodies with a `whsec_` secret, as Standard Webhooks specifies.
#[derive(Clone)]
pub(super) struct Signer {
    key: hmac::Key,
}

impl Signer {
    /// Reads a `whsec_<base64>` secret; the key is the base64-decoded part.
    pub(super) fn new(secret: &Secret) -> Result<Signer, String> {
        let encoded = secret.expose().strip_prefix("whsec_").ok_or_else(|| {
            "CHATKIT_AGENT_SECRET must be a Standard Webhooks secret: `whsec_` followed by base64".to_string()
        })?;
        let key = STANDARD
            .decode(encoded)
            .map_err(|_| "CHATKIT_AGENT_SECRET must be `whsec_` followed by valid base64".to_string())?;
        if key.is_empty() {
            return Err("CHATKIT_AGENT_SECRET holds an empty key".into());
        }
        Ok(Signer { key: hmac::Key::new(hmac::HMAC_SHA256, &key) })
    }

    /// The `webhook-signature` value: `v1,` and the base64 HMAC-SHA256 of `{id}.{timestamp}.{body}`.
    pub(super) fn sign(&self, id: &str, timestamp: u64, body: &[u8]) -> String {
        let mut context = hmac::Context::with_key(&self.key);
        context.update(format!("{id}.{timestamp}.").as_bytes());
        context.update(body);
        format!("v1,{}", STANDARD.encode(context.sign().as_ref()))
    }
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_as_standard_webhooks_does() {
        // The example of the Standard Webhooks specification. The expected value was computed
        // independently with: python3 -c "import hmac,hashlib,base64;
        // k=base64.b64decode('MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw');
        // m=b'msg_p5jXN8AQM9LWM0D4loKWxJek.1614265330.{\"test\": 2432232314}';
        // print(base64.b64encode(hmac.new(k,m,hashlib.sha256).digest()).decode())"
        let signer = Signer::new(&Secret::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")).unwrap();
        let signature = signer.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, br#"{"test": 2432232314}"#);
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        assert_eq!(format!("{signer:?}"), "***");
    }

    #[test]
    fn refuses_secrets_that_are_not_whsec() {
        assert!(Signer::new(&Secret::new("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")).unwrap_err().contains("whsec_"));
        assert!(Signer::new(&Secret::new("whsec_not base64!")).unwrap_err().contains("base64"));
        assert!(Signer::new(&Secret::new("whsec_")).is_err());
    }
}
