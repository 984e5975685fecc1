//! What a task list asks for: filters, a page size and a position.

use super::{task::TaskStatus, time::Timestamp};

/// An inclusive time range; either end may be open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TimeRange {
    pub from: Option<Timestamp>,
    pub to: Option<Timestamp>,
}

impl TimeRange {
    pub fn is_open(&self) -> bool {
        self.from.is_none() && self.to.is_none()
    }
}

/// Filters of `GET /v1/tasks`, AND-combined.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskFilter {
    pub created: TimeRange,
    pub completed: TimeRange,
    pub updated: TimeRange,
    pub status: Option<TaskStatus>,
    pub task_type: Option<String>,
    pub project: Option<String>,
    pub batch: Option<String>,
    /// Any of these.
    pub unique_ids: Vec<String>,
    /// All of these.
    pub tags: Vec<String>,
    /// Any of these.
    pub customer_review_statuses: Vec<String>,
}

impl TaskFilter {
    /// The one tag whose per-status counters answer this filter's total: a filter on one
    /// tag and at most a status, nothing else.
    pub fn tag_counter(&self) -> Option<&str> {
        let [tag] = self.tags.as_slice() else {
            return None;
        };
        let only_tag_and_status = TaskFilter {
            status: None,
            tags: Vec::new(),
            ..self.clone()
        } == TaskFilter::default();
        only_tag_and_status.then_some(tag.as_str())
    }

    /// True when the filter only names dimensions the task counters are kept by,
    /// so `total` can be read from them instead of counting rows.
    pub fn is_answered_by_counters(&self) -> bool {
        self.created.is_open()
            && self.completed.is_open()
            && self.updated.is_open()
            && self.unique_ids.is_empty()
            && self.tags.is_empty()
            && self.customer_review_statuses.is_empty()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListQuery {
    pub filter: TaskFilter,
    /// `None` means the default page size.
    pub limit: Option<i64>,
    /// The `next_token` as sent; the service decodes it.
    pub next_token: Option<String>,
    /// Legacy paging: skip this many matching tasks (`None`: not asked for).
    pub offset: Option<u64>,
    pub limited_response: bool,
}
