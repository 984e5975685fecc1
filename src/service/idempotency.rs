//! Idempotency-Key rules (SPEC §7), shared by REST, gRPC and grpc-web.

use std::{
    collections::HashSet,
    sync::{Mutex, PoisonError},
};

use serde::{Serialize, Serializer};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::{tasks::Created, Service};
use crate::{
    domain::{NewDelivery, Scope, Task, Timestamp},
    error::{Error, Result},
    store::{IdempotencyClaim, NewTask, StoredOutcome},
};

/// How many expired keys one sweep statement deletes, so a sweep never holds long locks.
const SWEEP_BATCH: u64 = 1000;

/// The `operation` label of the idempotency counters.
pub(super) const CREATE_TASK: &str = "create_task";
pub(super) const IMPORT_TASKS: &str = "import_tasks";

/// A stored answer was replayed instead of doing the work again.
pub(super) fn count_replay(operation: &'static str) {
    metrics::counter!("annotask_idempotency_replays_total", "operation" => operation).increment(1);
}

/// Counts a key refused because it names another request, or one still running; other errors
/// are not about the key.
pub(super) fn count_refusal(operation: &'static str, err: &Error) {
    let reason = match err {
        Error::IdempotencyConflict(_) => "different_request",
        Error::IdempotencyInFlight => "in_flight",
        _ => return,
    };
    metrics::counter!(
        "annotask_idempotency_conflicts_total",
        "operation" => operation,
        "reason" => reason
    )
    .increment(1);
}

/// Keys whose first request is running in this process.
#[derive(Default)]
pub(super) struct InFlightKeys(Mutex<HashSet<String>>);

/// Releases its key when dropped: on completion, on error, and when the client goes away.
pub(super) struct InFlightGuard<'a> {
    keys: &'a InFlightKeys,
    key: String,
}

impl InFlightKeys {
    pub(super) fn claim(&self, key: &str) -> Result<InFlightGuard<'_>> {
        let mut keys = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if !keys.insert(key.to_owned()) {
            return Err(Error::IdempotencyInFlight);
        }
        Ok(InFlightGuard {
            keys: self,
            key: key.to_owned(),
        })
    }
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        self.keys
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.key);
    }
}

impl Service {
    /// Runs a creation under an `Idempotency-Key`: a repeat of the same request replays the
    /// first outcome (errors included) instead of creating anything. `prepare` validates the
    /// fields into the task, or into the error that becomes this key's stored answer.
    pub(super) async fn create_once(
        &self,
        scope: Scope,
        key: &str,
        task_type: &str,
        fields: Map<String, Value>,
        prepare: impl FnOnce(Map<String, Value>) -> Result<(Task, Option<NewDelivery>)>,
    ) -> Result<Created> {
        self.check_idempotency_key(key)?;
        let fingerprint = fingerprint(task_type, &fields);
        let _in_flight = self
            .in_flight
            .claim(key)
            .inspect_err(|err| count_refusal(CREATE_TASK, err))?;
        let now = Timestamp::now();
        let claim = IdempotencyClaim {
            key: key.to_owned(),
            scope,
            fingerprint,
            now,
            expires_at: self.idempotency_expiry(now),
        };
        let StoredOutcome { outcome, replayed } = self
            .group_commit
            .create(NewTask {
                prepared: prepare(fields),
                claim: Some(claim),
            })
            .await
            .inspect_err(|err| count_refusal(CREATE_TASK, err))?;
        if replayed {
            count_replay(CREATE_TASK);
        }
        if let (Ok(task), false) = (&outcome, replayed) {
            if task.callback_url.is_some() {
                self.deliveries_waiting.notify_one();
            }
        }
        Ok(Created { outcome, replayed })
    }

    pub(super) fn check_idempotency_key(&self, key: &str) -> Result<()> {
        if key.is_empty() || key.chars().count() > self.limits.max_unique_id_chars {
            return Err(Error::invalid(format!(
                "The Idempotency-Key header must be 1 to {} characters.",
                self.limits.max_unique_id_chars
            )));
        }
        Ok(())
    }

    /// When a key claimed at `now` may be reused for another request.
    pub(super) fn idempotency_expiry(&self, now: Timestamp) -> Timestamp {
        Timestamp::from_millis(
            now.millis().saturating_add(
                i64::try_from(self.idempotency_ttl.as_millis()).unwrap_or(i64::MAX),
            ),
        )
    }

    /// Deletes every expired idempotency key, a bounded batch per statement.
    pub async fn sweep_expired_idempotency_keys(&self) -> Result<u64> {
        let now = Timestamp::now();
        let mut total = 0;
        loop {
            let deleted = self
                .store
                .delete_expired_idempotency_keys(now, SWEEP_BATCH)
                .await?;
            total += deleted;
            if deleted < SWEEP_BATCH {
                return Ok(total);
            }
        }
    }
}

/// SHA-256 of the request's method, path and body with keys sorted, so key order and
/// whitespace do not matter and REST, form and gRPC forms of one request agree. The hashed
/// bytes are those of `["POST","/v1/task/TYPE",BODY]` in compact JSON, keys sorted (stored
/// fingerprints depend on them), written straight into the hash.
fn fingerprint(task_type: &str, fields: &Map<String, Value>) -> String {
    let mut hasher = Sha256::new();
    let request = (
        "POST",
        format!("/v1/task/{task_type}"),
        CanonicalMap(fields),
    );
    if let Err(err) = serde_json::to_writer(&mut hasher, &request) {
        // Writing into a hash cannot fail, nor can serialising JSON values.
        tracing::error!(error = %err, "fingerprinting a request failed");
    }
    hex::encode(hasher.finalize())
}

/// A JSON value serialized with every object's keys sorted, without copying it.
struct Canonical<'a>(&'a Value);

/// A JSON object serialized with its keys (and its values' keys) sorted.
pub(super) struct CanonicalMap<'a>(pub &'a Map<String, Value>);

impl Serialize for Canonical<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Value::Object(map) => CanonicalMap(map).serialize(serializer),
            Value::Array(items) => serializer.collect_seq(items.iter().map(Canonical)),
            other => other.serialize(serializer),
        }
    }
}

impl Serialize for CanonicalMap<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut entries: Vec<_> = self.0.iter().collect();
        entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
        serializer.collect_map(
            entries
                .into_iter()
                .map(|(key, value)| (key, Canonical(value))),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap_or_default()
    }

    /// The canonical form as first stored: a sorted copy, printed.
    fn sorted_copy(value: &Value) -> Value {
        match value {
            Value::Object(map) => {
                let mut entries: Vec<_> = map.iter().collect();
                entries.sort_by(|a, b| a.0.cmp(b.0));
                Value::Object(
                    entries
                        .into_iter()
                        .map(|(key, value)| (key.clone(), sorted_copy(value)))
                        .collect(),
                )
            }
            Value::Array(items) => Value::Array(items.iter().map(sorted_copy).collect()),
            other => other.clone(),
        }
    }

    #[test]
    fn fingerprints_hash_the_bytes_stored_keys_were_fingerprinted_with() {
        let body = fields(json!({
            "z": [{"b": 1, "a": [3, {"y": null, "x": "é\"\n"}]}], "a": 1.5, "m": -7,
            "big": 18446744073709551615u64, "t": true, "o": {}
        }));
        let stored = Value::Array(vec![
            Value::String("POST".to_owned()),
            Value::String("/v1/task/imageannotation".to_owned()),
            sorted_copy(&Value::Object(body.clone())),
        ])
        .to_string();
        assert_eq!(
            fingerprint("imageannotation", &body),
            hex::encode(Sha256::digest(stored.as_bytes()))
        );
        assert_eq!(
            serde_json::to_string(&Canonical(&Value::Object(body.clone()))).unwrap(),
            sorted_copy(&Value::Object(body.clone())).to_string()
        );
        // An import line's form.
        assert_eq!(
            serde_json::to_string(&("imageannotation", CanonicalMap(&body))).unwrap(),
            Value::Array(vec![
                Value::String("imageannotation".to_owned()),
                sorted_copy(&Value::Object(body)),
            ])
            .to_string()
        );
    }

    #[test]
    fn fingerprints_ignore_key_order_but_not_values_or_type() {
        let a = fingerprint(
            "imageannotation",
            &fields(json!({"a": 1, "b": {"x": 1, "y": 2}})),
        );
        let b = fingerprint(
            "imageannotation",
            &fields(json!({"b": {"y": 2, "x": 1}, "a": 1})),
        );
        assert_eq!(a, b);
        assert_ne!(
            a,
            fingerprint(
                "imageannotation",
                &fields(json!({"a": 2, "b": {"x": 1, "y": 2}}))
            )
        );
        assert_ne!(
            a,
            fingerprint(
                "categorization",
                &fields(json!({"a": 1, "b": {"x": 1, "y": 2}}))
            )
        );
    }

    #[test]
    fn a_key_cannot_be_claimed_twice_until_released() {
        let keys = InFlightKeys::default();
        let first = keys.claim("k").unwrap();
        assert_eq!(keys.claim("k").err(), Some(Error::IdempotencyInFlight));
        drop(first);
        assert!(keys.claim("k").is_ok());
    }
}
