//! Callback rules (SPEC §9): when one is due, how it is signed, when it is retried, and the
//! accounts' two callback secrets. Sending is the callback job's business (`jobs/callbacks`).

use std::time::Duration;

use base64::{engine::general_purpose::STANDARD, Engine};
use hmac::{Hmac, Mac};
use rand::{Rng, RngCore};
use sha2::Sha256;

use super::Service;
use crate::{
    config::CallbackSettings,
    domain::{
        Batch, CallbackEvent, CallbackSecrets, CallbackSubject, Delivery, NewDelivery, Task,
        TaskStatus, Timestamp,
    },
    error::{Error, Result},
    store::AttemptRecord,
};

const SIGNING_SECRET_PREFIX: &str = "whsec_";
/// The longest `Retry-After` honoured, so a receiver cannot park a delivery for ever.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 60 * 60);
/// Kept on a claimed delivery beyond the attempt's own timeout, so a slow send is never
/// taken over (and sent again) by another worker while it is still running.
const CLAIM_MARGIN: Duration = Duration::from_secs(30);

/// What one attempt came to, as the sender saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// The receiver answered 2xx.
    Delivered,
    /// Any other answer, a timeout or a network error; `retry_after` from the receiver.
    Failed {
        error: String,
        retry_after: Option<Duration>,
    },
    /// The target may not be called (a private address, an unusable URL): no retry helps.
    Refused { error: String },
}

/// `v1,<base64 HMAC-SHA256 over "{id}.{timestamp}.{body}">`, keyed with the bytes behind a
/// `whsec_` secret (the Standard Webhooks scheme).
pub fn sign_webhook(
    signing_secret: &str,
    webhook_id: &str,
    timestamp: i64,
    body: &[u8],
) -> Result<String> {
    let encoded = signing_secret
        .strip_prefix(SIGNING_SECRET_PREFIX)
        .unwrap_or(signing_secret);
    let key = STANDARD.decode(encoded).map_err(|_| {
        tracing::error!("stored signing secret is not base64");
        Error::Internal
    })?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).map_err(|_| Error::Internal)?;
    mac.update(format!("{webhook_id}.{timestamp}.").as_bytes());
    mac.update(body);
    Ok(format!(
        "v1,{}",
        STANDARD.encode(mac.finalize().into_bytes())
    ))
}

fn generate_callback_secrets() -> CallbackSecrets {
    let mut auth_key = [0u8; 24];
    let mut signing_key = [0u8; 32];
    rand::rng().fill_bytes(&mut auth_key);
    rand::rng().fill_bytes(&mut signing_key);
    CallbackSecrets {
        auth_key: hex::encode(auth_key),
        signing_secret: format!("{SIGNING_SECRET_PREFIX}{}", STANDARD.encode(signing_key)),
    }
}

fn new_webhook_id() -> String {
    let mut id = [0u8; 16];
    rand::rng().fill_bytes(&mut id);
    format!("msg_{}", hex::encode(id))
}

/// `delay` ± 20%, so receivers that failed together are not retried together.
fn with_jitter(delay: Duration) -> Duration {
    if delay.is_zero() {
        return delay;
    }
    delay.mul_f64(rand::rng().random_range(0.8..1.2))
}

fn after(now: Timestamp, delay: Duration) -> Timestamp {
    let millis = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
    Timestamp::from_millis(now.millis().saturating_add(millis))
}

impl Service {
    /// The callback a change makes due, if the task has a `callback_url`: on reaching
    /// `completed` or `error`, and on every audit. `before` is `None` for a new task.
    pub(super) fn callback_due(
        &self,
        before: Option<&Task>,
        after_change: &Task,
    ) -> Option<NewDelivery> {
        let url = after_change.callback_url.as_ref()?;
        let reached = |status: TaskStatus| {
            after_change.status == status && before.is_none_or(|before| before.status != status)
        };
        let audited = before.is_some_and(|before| after_change.audits.len() > before.audits.len());
        let event = if audited {
            CallbackEvent::Audited
        } else if reached(TaskStatus::Completed) {
            CallbackEvent::Completed
        } else if reached(TaskStatus::Error) {
            CallbackEvent::Failed
        } else {
            return None;
        };
        Some(self.new_delivery(
            url,
            event,
            CallbackSubject::Task(Box::new(after_change.clone())),
        ))
    }

    /// The callback a batch's completion makes due, if it has one.
    pub(super) fn batch_callback_due(&self, batch: &Batch) -> Option<NewDelivery> {
        batch_delivery(&self.callbacks, batch)
    }

    /// A delivery with a fresh `webhook-id`, its first attempt due after the schedule's first
    /// delay.
    fn new_delivery(
        &self,
        url: &str,
        event: CallbackEvent,
        subject: CallbackSubject,
    ) -> NewDelivery {
        new_delivery(&self.callbacks, url, event, subject)
    }

    /// Resolves when a change in this process has written a delivery (or at once if one did
    /// since the last call); other replicas' deliveries are found by polling.
    pub async fn deliveries_waiting(&self) {
        self.deliveries_waiting.notified().await;
    }

    /// Takes up to `limit` due deliveries for one attempt each.
    pub async fn claim_due_deliveries(&self, limit: usize) -> Result<Vec<Delivery>> {
        let now = Timestamp::now();
        let locked_until = after(now, self.callbacks.attempt_timeout + CLAIM_MARGIN);
        self.store
            .claim_due_deliveries(now, locked_until, limit as u64)
            .await
    }

    /// Records an attempt and schedules the next one: the schedule's next delay with jitter,
    /// or longer if the receiver asked (`Retry-After`); none after the last entry.
    pub async fn record_attempt(&self, delivery: &Delivery, outcome: AttemptOutcome) -> Result<()> {
        let attempts_made = delivery.attempts as usize + 1;
        let record = match outcome {
            AttemptOutcome::Delivered => AttemptRecord::Succeeded,
            AttemptOutcome::Refused { error } => AttemptRecord::GaveUp { error },
            AttemptOutcome::Failed { error, retry_after } => {
                match self.callbacks.schedule.get(attempts_made) {
                    None => AttemptRecord::GaveUp { error },
                    Some(delay) => {
                        let asked = retry_after.unwrap_or_default().min(MAX_RETRY_AFTER);
                        AttemptRecord::Retry {
                            at: after(Timestamp::now(), with_jitter(*delay).max(asked)),
                            error,
                        }
                    }
                }
            }
        };
        let outcome = match &record {
            AttemptRecord::Succeeded => "succeeded",
            AttemptRecord::Retry { .. } => "retry",
            AttemptRecord::GaveUp { .. } => "failed",
        };
        if self.store.record_attempt(delivery, record).await? {
            metrics::counter!("annotask_callback_attempts_total", "outcome" => outcome)
                .increment(1);
            tracing::info!(
                webhook_id = %delivery.webhook_id,
                event = delivery.event.as_str(),
                attempt = attempts_made,
                outcome,
                "callback attempt recorded"
            );
        } else {
            tracing::warn!(webhook_id = %delivery.webhook_id, "callback claim lost before its outcome was recorded");
        }
        Ok(())
    }

    /// The account's callback secrets, made on first use.
    pub async fn callback_secrets(&self, account_id: i64) -> Result<CallbackSecrets> {
        self.store
            .callback_secrets(account_id, generate_callback_secrets)
            .await
    }

    /// For `annotask callbacks show`: the named account's secrets, replaced first if `rotate`.
    pub async fn show_callback_secrets(
        &self,
        account: &str,
        rotate: bool,
    ) -> Result<CallbackSecrets> {
        let account_id = self
            .store
            .find_account_id(account.trim())
            .await?
            .ok_or_else(|| Error::NotFound(format!("No account named '{}'.", account.trim())))?;
        if rotate {
            let fresh = generate_callback_secrets();
            self.store
                .replace_callback_secrets(account_id, &fresh)
                .await?;
            return Ok(fresh);
        }
        self.callback_secrets(account_id).await
    }

    /// Refreshes the queue and outbox gauges on `/metrics`.
    pub async fn refresh_gauges(&self) -> Result<()> {
        let (available, leased) = self.store.queue_gauges(Timestamp::now()).await?;
        let outbox = self.store.count_pending_deliveries().await?;
        metrics::gauge!("annotask_work_queue_depth").set(available as f64);
        metrics::gauge!("annotask_work_leases_live").set(leased as f64);
        metrics::gauge!("annotask_callback_deliveries_pending").set(outbox as f64);
        Ok(())
    }
}

/// The delivery a batch's completion is due, if the batch has a callback.
pub(super) fn batch_delivery(settings: &CallbackSettings, batch: &Batch) -> Option<NewDelivery> {
    let url = batch.callback.as_ref()?;
    Some(new_delivery(
        settings,
        url,
        CallbackEvent::BatchCompleted,
        CallbackSubject::Batch(Box::new(batch.clone())),
    ))
}

fn new_delivery(
    settings: &CallbackSettings,
    url: &str,
    event: CallbackEvent,
    subject: CallbackSubject,
) -> NewDelivery {
    let first_delay = settings.schedule.first().copied().unwrap_or_default();
    NewDelivery {
        webhook_id: new_webhook_id(),
        url: url.to_owned(),
        event,
        subject,
        first_attempt_at: after(Timestamp::now(), first_delay),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test vector published with the Standard Webhooks specification (and svix).
    #[test]
    fn signatures_match_the_standard_webhooks_test_vector() {
        let signature = sign_webhook(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        )
        .unwrap();
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn secrets_are_distinct_and_shaped_as_documented() {
        let secrets = generate_callback_secrets();
        assert!(secrets.signing_secret.starts_with("whsec_"));
        assert_ne!(secrets.auth_key, secrets.signing_secret);
        assert_eq!(format!("{secrets:?}"), "CallbackSecrets(<redacted>)");
    }

    #[test]
    fn jitter_stays_within_a_fifth() {
        for _ in 0..100 {
            let delay = with_jitter(Duration::from_secs(10));
            assert!(delay >= Duration::from_secs(8) && delay <= Duration::from_secs(12));
        }
        assert_eq!(with_jitter(Duration::ZERO), Duration::ZERO);
    }
}
