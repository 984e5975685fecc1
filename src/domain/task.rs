//! The task and its status.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{json_object::JsonObject, task_id::TaskId, time::Timestamp, work::TaskLease};

/// Whose data a request sees: one account, and within it the live or the test world.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Scope {
    pub account_id: i64,
    pub is_test: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    Pending,
    Completed,
    Canceled,
    Error,
}

impl TaskStatus {
    pub const ALL: [TaskStatus; 4] = [
        TaskStatus::Pending,
        TaskStatus::Completed,
        TaskStatus::Canceled,
        TaskStatus::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Pending => "pending",
            TaskStatus::Completed => "completed",
            TaskStatus::Canceled => "canceled",
            TaskStatus::Error => "error",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        TaskStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == text)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Audit {
    pub accepted: bool,
    pub comments: Option<String>,
    pub created_at: Timestamp,
}

/// Serializable so an idempotent creation can store the exact task it answered with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub id: TaskId,
    pub scope: Scope,
    pub task_type: String,
    pub status: TaskStatus,
    pub instruction: Option<String>,
    /// Every type-specific creation field (attachment, geometries, ...).
    pub params: JsonObject,
    pub callback_url: Option<String>,
    pub metadata: JsonObject,
    pub unique_id: Option<String>,
    /// `None` until tags are first set, so the wire can leave the key out as Scale does.
    pub tags: Option<Vec<String>>,
    pub project: Option<String>,
    /// The project params version the task was created with.
    #[serde(default)]
    pub project_param_version: Option<i64>,
    pub batch: Option<String>,
    pub response: Option<Value>,
    pub callback_succeeded: Option<bool>,
    pub audits: Vec<Audit>,
    pub customer_review_status: Option<String>,
    pub clear_unique_id_on_error: bool,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub completed_at: Option<Timestamp>,
    /// The work queue's live claim, if any; never part of a stored or sent task.
    #[serde(skip)]
    pub lease: Option<TaskLease>,
}

impl Task {
    /// The lease, if it is still live at `now`.
    pub fn live_lease(&self, now: Timestamp) -> Option<&TaskLease> {
        self.lease.as_ref().filter(|lease| lease.expires_at > now)
    }
}
