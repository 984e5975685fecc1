//! Batches: tasks submitted, tracked and finished together.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{query::TimeRange, task::Scope, time::Timestamp};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BatchStatus {
    /// Being filled: its tasks are not handed out until it is finalized.
    Staging,
    InProgress,
    /// Every task in it is completed, failed or canceled.
    Completed,
}

impl BatchStatus {
    pub const ALL: [BatchStatus; 3] = [
        BatchStatus::Staging,
        BatchStatus::InProgress,
        BatchStatus::Completed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BatchStatus::Staging => "staging",
            BatchStatus::InProgress => "in_progress",
            BatchStatus::Completed => "completed",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        BatchStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == text)
    }
}

/// How many of a batch's tasks are in each status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchCounts {
    pub pending: u64,
    pub completed: u64,
    pub error: u64,
    pub canceled: u64,
}

impl BatchCounts {
    pub fn total(&self) -> u64 {
        self.pending + self.completed + self.error + self.canceled
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    pub scope: Scope,
    pub name: String,
    pub project: String,
    pub status: BatchStatus,
    pub callback: Option<String>,
    pub metadata: Map<String, Value>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub completed_at: Option<Timestamp>,
}

impl Batch {
    /// The status its task counts call for: an in-progress batch with tasks, none of them
    /// pending, is completed; a completed one with a pending task again (rework, or a task
    /// added in a race with its completion) is back in progress. Staging waits for finalize.
    pub fn status_for(&self, counts: &BatchCounts) -> BatchStatus {
        match self.status {
            BatchStatus::InProgress if counts.total() > 0 && counts.pending == 0 => {
                BatchStatus::Completed
            }
            BatchStatus::Completed if counts.pending > 0 => BatchStatus::InProgress,
            status => status,
        }
    }
}

/// Filters of `GET /v1/batches`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchFilter {
    pub project: Option<String>,
    pub status: Option<BatchStatus>,
    pub created: TimeRange,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(status: BatchStatus) -> Batch {
        Batch {
            scope: Scope {
                account_id: 1,
                is_test: false,
            },
            name: "b".into(),
            project: "p".into(),
            status,
            callback: None,
            metadata: Map::new(),
            created_at: Timestamp::from_millis(0),
            updated_at: Timestamp::from_millis(0),
            completed_at: None,
        }
    }

    #[test]
    fn a_batch_completes_when_no_task_is_pending_and_reopens_when_one_is() {
        let done = BatchCounts {
            completed: 2,
            canceled: 1,
            ..Default::default()
        };
        let busy = BatchCounts { pending: 1, ..done };
        assert_eq!(
            batch(BatchStatus::InProgress).status_for(&done),
            BatchStatus::Completed
        );
        assert_eq!(
            batch(BatchStatus::InProgress).status_for(&busy),
            BatchStatus::InProgress
        );
        assert_eq!(
            batch(BatchStatus::InProgress).status_for(&BatchCounts::default()),
            BatchStatus::InProgress,
            "an empty batch is not complete"
        );
        assert_eq!(
            batch(BatchStatus::Staging).status_for(&done),
            BatchStatus::Staging
        );
        assert_eq!(
            batch(BatchStatus::Completed).status_for(&busy),
            BatchStatus::InProgress
        );
    }
}
