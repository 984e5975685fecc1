//! The work queue (SPEC §11): claims under leases, heartbeats, release, complete and fail.

use rand::RngCore;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::{tasks::check_text, Service};
use crate::{
    domain::{Caller, ClaimFilter, Task, TaskLease, TaskStatus, TaskType, Timestamp},
    error::{Error, Result},
};

const DEFAULT_CLAIM_LIMIT: i64 = 1;
const MAX_CLAIM_LIMIT: i64 = 100;
const DEFAULT_LEASE_SECONDS: i64 = 600;
const MAX_LEASE_SECONDS: i64 = 3600;

/// What a claim asks for; `None` means the default.
#[derive(Debug, Clone, Default)]
pub struct ClaimRequest {
    pub filter: ClaimFilter,
    pub limit: Option<i64>,
    pub lease_seconds: Option<i64>,
}

/// A task handed out under a lease; the token is shown to the claimer only.
#[derive(Debug, Clone)]
pub struct ClaimedTask {
    pub task: Task,
    pub lease_token: String,
    pub lease_expires_at: Timestamp,
}

/// 160 random bits: unguessable, so only the claimer can act on the task.
fn new_lease_token() -> String {
    let mut token = [0u8; 20];
    rand::rng().fill_bytes(&mut token);
    format!("lease_{}", hex::encode(token))
}

fn hash_lease_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn lease_seconds(requested: Option<i64>) -> Result<i64> {
    let seconds = requested.unwrap_or(DEFAULT_LEASE_SECONDS);
    if !(1..=MAX_LEASE_SECONDS).contains(&seconds) {
        return Err(Error::invalid(format!(
            "Parameter 'lease_seconds' must be between 1 and {MAX_LEASE_SECONDS}."
        )));
    }
    Ok(seconds)
}

fn expiry(now: Timestamp, seconds: i64) -> Timestamp {
    Timestamp::from_millis(now.millis().saturating_add(seconds.saturating_mul(1000)))
}

/// The task's live lease, if `token` is it; otherwise LEASE_LOST and nothing changes.
fn check_lease(task: &Task, token: &str, now: Timestamp) -> Result<()> {
    let holds = task.status == TaskStatus::Pending
        && task
            .live_lease(now)
            .is_some_and(|lease| lease.token_hash == hash_lease_token(token));
    if holds {
        Ok(())
    } else {
        Err(Error::lease_lost())
    }
}

fn require_token(token: &str) -> Result<&str> {
    if token.is_empty() {
        return Err(Error::invalid("Missing required parameter: 'lease_token'."));
    }
    Ok(token)
}

impl Service {
    /// Hands out the oldest available pending tasks matching the filters, each under its own
    /// lease. An empty list when nothing is available.
    pub async fn claim_tasks(
        &self,
        caller: Caller,
        request: ClaimRequest,
    ) -> Result<Vec<ClaimedTask>> {
        let limit = request.limit.unwrap_or(DEFAULT_CLAIM_LIMIT);
        if !(1..=MAX_CLAIM_LIMIT).contains(&limit) {
            return Err(Error::invalid(format!(
                "Parameter 'limit' must be between 1 and {MAX_CLAIM_LIMIT}."
            )));
        }
        let seconds = lease_seconds(request.lease_seconds)?;
        if let Some(task_type) = &request.filter.task_type {
            if TaskType::parse(task_type).is_none() {
                return Err(Error::invalid(format!(
                    "Parameter 'type' is not a known task type: '{task_type}'."
                )));
            }
        }
        for (name, value) in [
            ("project", &request.filter.project),
            ("batch", &request.filter.batch),
        ] {
            if let Some(text) = value {
                check_text(name, text)?;
            }
        }
        let now = Timestamp::now();
        let expires_at = expiry(now, seconds);
        let tokens: Vec<String> = (0..limit).map(|_| new_lease_token()).collect();
        let leases = tokens
            .iter()
            .map(|token| TaskLease {
                token_hash: hash_lease_token(token),
                expires_at,
            })
            .collect();
        let claimed = self
            .store
            .claim_tasks(caller.scope, &request.filter, now, leases)
            .await?;
        metrics::counter!("annotask_work_claimed_tasks_total").increment(claimed.len() as u64);
        Ok(claimed
            .into_iter()
            .zip(tokens)
            .map(|(task, lease_token)| ClaimedTask {
                task,
                lease_token,
                lease_expires_at: expires_at,
            })
            .collect())
    }

    /// Extends a live lease; returns its new expiry.
    pub async fn heartbeat_lease(
        &self,
        caller: Caller,
        task_id: &str,
        token: &str,
        requested_seconds: Option<i64>,
    ) -> Result<Timestamp> {
        let token = require_token(token)?;
        let seconds = lease_seconds(requested_seconds)?;
        let task = self
            .mutate_task(caller.scope, task_id, |task| {
                let now = Timestamp::now();
                check_lease(task, token, now)?;
                if let Some(lease) = task.lease.as_mut() {
                    lease.expires_at = expiry(now, seconds);
                }
                Ok(())
            })
            .await?;
        task.lease
            .map(|lease| lease.expires_at)
            .ok_or(Error::Internal)
    }

    /// Gives a leased task back to the queue.
    pub async fn release_lease(&self, caller: Caller, task_id: &str, token: &str) -> Result<Task> {
        let token = require_token(token)?;
        self.mutate_task(caller.scope, task_id, |task| {
            check_lease(task, token, Timestamp::now())?;
            task.lease = None;
            Ok(())
        })
        .await
    }

    /// Completes a leased task with its response (a JSON object); the callback fires.
    pub async fn complete_task(
        &self,
        caller: Caller,
        task_id: &str,
        token: &str,
        response: Value,
    ) -> Result<Task> {
        let token = require_token(token)?;
        if !response.is_object() {
            return Err(Error::invalid(
                "Parameter 'response' must be a JSON object.",
            ));
        }
        self.check_response_size(&response)?;
        let task = self
            .mutate_task(caller.scope, task_id, |task| {
                let now = Timestamp::now();
                check_lease(task, token, now)?;
                task.status = TaskStatus::Completed;
                task.response = Some(response);
                task.completed_at = Some(now);
                task.lease = None;
                Ok(())
            })
            .await?;
        tracing::info!(task_id = %task.id, "task completed");
        Ok(task)
    }

    /// Fails a leased task: `error`, with `response: {"error": …}`; frees its unique_id when it
    /// was created with `clear_unique_id_on_error`. The callback fires.
    pub async fn fail_task(
        &self,
        caller: Caller,
        task_id: &str,
        token: &str,
        error: String,
    ) -> Result<Task> {
        let token = require_token(token)?;
        if error.trim().is_empty() {
            return Err(Error::invalid("Missing required parameter: 'error'."));
        }
        self.check_response_size(&Value::String(error.clone()))?;
        let task = self
            .mutate_task(caller.scope, task_id, |task| {
                check_lease(task, token, Timestamp::now())?;
                task.status = TaskStatus::Error;
                task.response = Some(json!({ "error": error }));
                task.lease = None;
                if task.clear_unique_id_on_error {
                    task.unique_id = None;
                }
                Ok(())
            })
            .await?;
        tracing::info!(task_id = %task.id, "task failed");
        Ok(task)
    }

    /// A response is stored with the task: bound it as a request body is bounded.
    fn check_response_size(&self, response: &Value) -> Result<()> {
        let size = serde_json::to_string(response).map_or(usize::MAX, |text| text.len());
        if size > self.limits().max_body_bytes {
            return Err(Error::PayloadTooLarge(
                "The response is too large.".to_owned(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_tokens_are_unguessable_and_only_their_hash_is_kept() {
        let token = new_lease_token();
        assert!(token.starts_with("lease_") && token.len() == 46);
        assert_ne!(token, new_lease_token());
        assert_ne!(hash_lease_token(&token), token);
    }

    #[test]
    fn lease_seconds_are_bounded() {
        assert_eq!(lease_seconds(None).unwrap(), 600);
        assert!(lease_seconds(Some(0)).is_err());
        assert!(lease_seconds(Some(3601)).is_err());
        assert_eq!(lease_seconds(Some(3600)).unwrap(), 3600);
    }
}
