//! Who calls, what a key may do, work-queue leases and callback events.

use serde::{Deserialize, Serialize};

use super::{batch::Batch, task::Scope, time::Timestamp, Task};

/// What an API key may do (SPEC §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Everything.
    Admin,
    /// Read tasks and work the queue; nothing else.
    Worker,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Worker => "worker",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "admin" => Some(Role::Admin),
            "worker" => Some(Role::Worker),
            _ => None,
        }
    }
}

/// The authenticated caller of a request: whose data, and what it may do with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub scope: Scope,
    pub role: Role,
}

/// One API key as `api-keys list` shows it: never the key itself (only its hash is stored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyInfo {
    /// The row, so that exactly the chosen key is revoked.
    pub id: i64,
    /// The key's first characters (`live_1a2b3c4`); `None` for a key made before prefixes
    /// were kept that has not been used since.
    pub prefix: Option<String>,
    pub is_test: bool,
    pub role: Role,
    pub created_at: Timestamp,
    pub revoked_at: Option<Timestamp>,
}

/// A task's live claim. Only a hash of the token is kept: the token itself is a bearer secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskLease {
    pub token_hash: String,
    pub expires_at: Timestamp,
}

/// Which filters a claim matches (all optional, AND-combined).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClaimFilter {
    pub project: Option<String>,
    pub batch: Option<String>,
    pub task_type: Option<String>,
}

/// Why a callback is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CallbackEvent {
    Completed,
    Failed,
    Audited,
    BatchCompleted,
}

impl CallbackEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            CallbackEvent::Completed => "task.completed",
            CallbackEvent::Failed => "task.failed",
            CallbackEvent::Audited => "task.audited",
            CallbackEvent::BatchCompleted => "batch.completed",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [
            CallbackEvent::Completed,
            CallbackEvent::Failed,
            CallbackEvent::Audited,
            CallbackEvent::BatchCompleted,
        ]
        .into_iter()
        .find(|event| event.as_str() == text)
    }
}

/// What a callback is about, as it was right after the change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CallbackSubject {
    Task(Box<Task>),
    Batch(Box<Batch>),
}

impl CallbackSubject {
    pub fn scope(&self) -> Scope {
        match self {
            CallbackSubject::Task(task) => task.scope,
            CallbackSubject::Batch(batch) => batch.scope,
        }
    }
}

/// A callback to deliver, written in the same transaction as the change that caused it.
#[derive(Debug, Clone, PartialEq)]
pub struct NewDelivery {
    /// Stable across retries, so receivers can de-duplicate (`webhook-id`).
    pub webhook_id: String,
    pub url: String,
    pub event: CallbackEvent,
    /// The task or batch as it was right after the change.
    pub subject: CallbackSubject,
    /// When the first attempt is due.
    pub first_attempt_at: Timestamp,
}

/// A delivery the worker has claimed for one attempt.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub id: i64,
    pub webhook_id: String,
    pub scope: Scope,
    pub url: String,
    pub event: CallbackEvent,
    pub subject: CallbackSubject,
    /// Attempts made before this one.
    pub attempts: u32,
    /// This claim's mark: the attempt's outcome is only recorded while it still holds.
    pub locked_until: Timestamp,
}

/// An account's two callback secrets (SPEC §9). Never logged, never in an API response.
#[derive(Clone, PartialEq, Eq)]
pub struct CallbackSecrets {
    /// Sent as `scale-callback-auth`.
    pub auth_key: String,
    /// `whsec_<base64 of the key bytes>`, the Standard Webhooks signing key.
    pub signing_secret: String,
}

impl std::fmt::Debug for CallbackSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CallbackSecrets(<redacted>)")
    }
}
