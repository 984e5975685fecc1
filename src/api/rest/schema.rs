//! The JSON shapes of `/v1` as OpenAPI schemas. Handlers write Scale's JSON by hand (json.rs, for
//! speed and key order), so these types only describe it: they are never built. A field that
//! the server leaves out when unset is `#[serde(default)]` (optional, never `null`); the
//! `openapi` integration test and the schemathesis run check the server against them.
#![allow(dead_code, clippy::large_enum_variant)]

use serde::Deserialize;
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};

/// Every error: `{"status_code": N, "error": "…"}`, N being the HTTP status.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    #[schema(example = 404)]
    status_code: u16,
    #[schema(example = "No task found with that task_id.")]
    error: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    Pending,
    Completed,
    Canceled,
    Error,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Audit {
    accepted: bool,
    #[serde(default)]
    comments: String,
    #[schema(format = DateTime)]
    created_at: String,
}

/// A task as Scale shows it (SPEC §4). Keys that are unset are absent, never `null`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Task {
    /// 24 lowercase hex digits.
    #[schema(pattern = "^[0-9a-f]{24}$", example = "60d2f1a5e1b2c3d4e5f60718")]
    task_id: String,
    /// The task type, e.g. `imageannotation`.
    #[serde(rename = "type")]
    task_type: String,
    status: TaskStatus,
    #[serde(default)]
    instruction: String,
    /// Every type-specific creation field (`attachment`, `geometries`, …).
    params: Map<String, Value>,
    /// `""` when no callback is set.
    callback_url: String,
    metadata: Map<String, Value>,
    #[serde(default)]
    unique_id: String,
    /// Absent until tags are first set.
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    project: String,
    #[serde(default)]
    project_param_version: i64,
    #[serde(default)]
    batch: String,
    /// Completed or failed tasks: the answer (`{"error": "…"}` for a failed one).
    #[serde(default)]
    response: Value,
    #[serde(default)]
    callback_succeeded: bool,
    audits: Vec<Audit>,
    #[serde(default)]
    customer_review_status: String,
    is_test: bool,
    #[schema(format = DateTime)]
    created_at: String,
    #[schema(format = DateTime)]
    updated_at: String,
    #[serde(default)]
    #[schema(format = DateTime)]
    completed_at: String,
}

/// A task on a `limited_response=true` page.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitedTask {
    task_id: String,
    status: TaskStatus,
    metadata: Map<String, Value>,
    #[serde(default)]
    project: String,
}

/// One entry of a task page: the full task, or its `limited_response` form.
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
pub enum PageTask {
    Full(Task),
    Limited(LimitedTask),
}

/// `GET /v1/tasks` (SPEC §6).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskPage {
    docs: Vec<PageTask>,
    /// All tasks matching the filters, the same on every page.
    total: u64,
    limit: u64,
    /// The request's `offset` (0 by default).
    offset: u64,
    has_more: bool,
    /// Present only when `has_more`.
    #[serde(default)]
    next_token: String,
}

/// `GET /v1/tasks` query parameters. Unknown parameters are ignored; an empty value is "not
/// given"; list parameters come as repeated keys (or `key[]`).
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListTasksQuery {
    /// 1–100 (default 100).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
    /// Legacy paging: skip this many matching tasks (not with `next_token`).
    #[param(minimum = 0)]
    offset: Option<i64>,
    /// The previous page's `next_token`.
    next_token: Option<String>,
    /// Created at or after: ISO 8601, e.g. `2021-04-25` or `2021-04-25T03:14:15-07:00`.
    start_time: Option<String>,
    /// Created at or before.
    end_time: Option<String>,
    /// Alias of `start_time`.
    created_after: Option<String>,
    /// Alias of `end_time`.
    created_before: Option<String>,
    completed_after: Option<String>,
    completed_before: Option<String>,
    updated_after: Option<String>,
    updated_before: Option<String>,
    status: Option<TaskStatus>,
    #[serde(rename = "type")]
    #[param(rename = "type")]
    task_type: Option<String>,
    project: Option<String>,
    batch: Option<String>,
    /// Any of these.
    unique_id: Option<Vec<String>>,
    /// All of these.
    tags: Option<Vec<String>>,
    /// Comma separated; any of these.
    customer_review_status: Option<String>,
    /// Docs keep only `task_id`, `status`, `metadata`, `project`.
    limited_response: Option<bool>,
    /// Accepted for Scale's client; no effect.
    include_attachment_url: Option<bool>,
}

/// `POST /v1/task/{type}`: Scale's common fields plus the type's own (`attachment`, …).
#[derive(Deserialize, ToSchema)]
pub struct CreateTask {
    instruction: Option<String>,
    callback_url: Option<String>,
    metadata: Option<Map<String, Value>>,
    unique_id: Option<String>,
    tags: Option<Vec<String>>,
    project: Option<String>,
    batch: Option<String>,
    clear_unique_id_on_error: Option<bool>,
}

#[derive(Deserialize, ToSchema)]
pub struct UniqueIdBody {
    unique_id: String,
}

#[derive(Deserialize, ToSchema)]
pub struct AuditBody {
    accepted: bool,
    comments: Option<String>,
    /// With `accepted: false`, send the task back to `pending`.
    rework: Option<bool>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CancelQuery {
    /// Also free the task's `unique_id`.
    clear_unique_id: Option<bool>,
}

/// A project's params at one version, with `version` and `created_at` beside them.
#[derive(Deserialize, ToSchema)]
pub struct ParamVersion {
    version: i64,
    #[schema(format = DateTime)]
    created_at: String,
    #[serde(default)]
    instruction: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Project {
    name: String,
    #[serde(rename = "type")]
    task_type: String,
    #[schema(format = DateTime)]
    created_at: String,
    param_history: Vec<ParamVersion>,
}

/// `POST /v1/projects`. Scale's client also sends `rapid`, `studio` and `datasetId`: ignored.
#[derive(Deserialize, ToSchema)]
pub struct CreateProject {
    #[serde(rename = "type")]
    task_type: String,
    name: Option<String>,
    params: Option<Map<String, Value>>,
}

/// `POST /v1/projects/{name}/setParams`: the body's fields are the new params.
#[derive(Deserialize, ToSchema)]
pub struct SetParams {
    /// Merge over the previous version instead of replacing it.
    patch: Option<bool>,
    /// More params, read as if they were top-level fields.
    params: Option<Map<String, Value>>,
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BatchStatus {
    Staging,
    InProgress,
    Completed,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Batch {
    name: String,
    project: String,
    status: BatchStatus,
    /// `""` when none.
    callback: String,
    metadata: Map<String, Value>,
    #[schema(format = DateTime)]
    created_at: String,
    #[schema(format = DateTime)]
    updated_at: String,
    #[serde(default)]
    #[schema(format = DateTime)]
    completed_at: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchPage {
    docs: Vec<Batch>,
    #[serde(rename = "totalDocs")]
    total_docs: u64,
    total: u64,
    limit: u64,
    offset: u64,
    has_more: bool,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListBatchesQuery {
    project: Option<String>,
    status: Option<BatchStatus>,
    /// Created at or after (ISO 8601).
    start_time: Option<String>,
    /// Created at or before (ISO 8601).
    end_time: Option<String>,
    limit: Option<i64>,
    offset: Option<i64>,
}

#[derive(Deserialize, ToSchema)]
pub struct CreateBatch {
    name: String,
    project: String,
    /// `""` means none.
    callback: Option<String>,
    metadata: Option<Map<String, Value>>,
    /// Hold its tasks back from the work queue until finalized.
    staging: Option<bool>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchCounts {
    status: BatchStatus,
    pending: u64,
    completed: u64,
    error: u64,
    canceled: u64,
}

/// `POST /v1/work/claim` (SPEC §11).
#[derive(Deserialize, ToSchema)]
pub struct ClaimRequest {
    project: Option<String>,
    batch: Option<String>,
    #[serde(rename = "type")]
    task_type: Option<String>,
    /// 1–100 (default 1).
    limit: Option<i64>,
    /// 1–3600 (default 600).
    lease_seconds: Option<i64>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Lease {
    task: Task,
    lease_token: String,
    #[schema(format = DateTime)]
    lease_expires_at: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Leases {
    /// Empty when nothing is available.
    leases: Vec<Lease>,
}

#[derive(Deserialize, ToSchema)]
pub struct HeartbeatBody {
    lease_token: String,
    lease_seconds: Option<i64>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LeaseExpiry {
    #[schema(format = DateTime)]
    lease_expires_at: String,
}

#[derive(Deserialize, ToSchema)]
pub struct ReleaseBody {
    lease_token: String,
}

#[derive(Deserialize, ToSchema)]
pub struct CompleteBody {
    lease_token: String,
    /// The task's answer.
    response: Value,
}

#[derive(Deserialize, ToSchema)]
pub struct FailBody {
    lease_token: String,
    error: String,
}

/// One line of a bulk import: the body of `POST /v1/task/{type}` plus its `type`.
#[derive(Deserialize, ToSchema)]
pub struct ImportTask {
    #[serde(rename = "type")]
    task_type: String,
    #[serde(flatten)]
    fields: CreateTask,
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ImportResult {
    Created,
    Duplicate,
    Error,
}

/// One answer line per input line, then a `{"summary": …}` line (SPEC §12).
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
pub enum ImportAnswerLine {
    Line(ImportLine),
    Summary(ImportSummaryLine),
    /// The import stopped (e.g. the upload broke off).
    Failure(ErrorBody),
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportLine {
    /// Counts from 1.
    line: u64,
    result: ImportResult,
    #[serde(default)]
    task_id: String,
    #[serde(default)]
    status_code: u16,
    #[serde(default)]
    error: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportSummaryLine {
    summary: ImportSummary,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportSummary {
    lines: u64,
    created: u64,
    duplicate: u64,
    error: u64,
}
