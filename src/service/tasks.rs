//! Task rules: creation and validation, the status machine, unique_id, metadata, tags, lists.

use serde_json::{Map, Value};

use super::{auth::require_admin, Service};
use crate::{
    domain::{
        parse_bool, Audit, Caller, ListQuery, PageToken, Scope, Task, TaskId, TaskStatus, TaskType,
        Timestamp,
    },
    error::{Error, Result},
    store::{NewTask, StoredOutcome},
};

const DEFAULT_PAGE_SIZE: i64 = 100;
const MAX_PAGE_SIZE: i64 = 100;

/// What a tag request does with its list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TagEdit {
    Add,
    Replace,
    Remove,
}

/// The answer to a creation request, and whether it is a replay of an earlier one.
pub struct Created {
    pub outcome: Result<Task>,
    pub replayed: bool,
}

/// One page of a task list.
#[derive(Debug, Clone)]
pub struct TaskPage {
    pub docs: Vec<Task>,
    pub total: u64,
    pub limit: i64,
    /// The legacy offset the page was asked for (0 when paging by token).
    pub offset: u64,
    pub has_more: bool,
    pub next_token: Option<String>,
    pub limited_response: bool,
}

impl Service {
    /// Creates a task. With an `Idempotency-Key`, the first outcome for the key is stored and a
    /// repeat of the same request replays it instead of creating anything.
    pub async fn create_task(
        &self,
        caller: Caller,
        idempotency_key: Option<&str>,
        task_type: &str,
        fields: Map<String, Value>,
    ) -> Result<Created> {
        let scope = require_admin(caller)?;
        // Looked up before the idempotency claim; a refusal (unknown project, completed batch)
        // is an outcome like any validation error, and stored as one.
        let placement = self.placement(scope, task_type, &fields).await;
        // A test-world task completes at once, so its callback is due at creation.
        let prepare = |mut fields: Map<String, Value>| {
            let placement = placement?;
            let version = placement.inherit(&mut fields);
            self.prepare_task(scope, task_type, fields).map(|mut task| {
                task.project_param_version = version;
                let callback = self.callback_due(None, &task);
                (task, callback)
            })
        };
        let created = match idempotency_key {
            None => {
                let (task, callback) = prepare(fields)?;
                let has_callback = callback.is_some();
                let StoredOutcome { outcome, replayed } = self
                    .group_commit
                    .create(NewTask {
                        prepared: Ok((task, callback)),
                        claim: None,
                    })
                    .await?;
                if has_callback {
                    self.deliveries_waiting.notify_one();
                }
                Created { outcome, replayed }
            }
            Some(key) => {
                self.create_once(scope, key, task_type, fields, prepare)
                    .await?
            }
        };
        if let (Ok(task), false) = (&created.outcome, created.replayed) {
            tracing::info!(task_id = %task.id, task_type = %task.task_type, "task created");
        }
        Ok(created)
    }

    /// Validates a creation request (the REST body, or the gRPC request rebuilt into the same
    /// shape) into a new task: pending, or completed at once in the test world. Fields that are
    /// not common to every type become `params`.
    pub(super) fn prepare_task(
        &self,
        scope: Scope,
        task_type: &str,
        mut fields: Map<String, Value>,
    ) -> Result<Task> {
        let task_type = TaskType::parse(task_type).ok_or_else(|| {
            Error::invalid(format!(
                "Unknown task type '{task_type}'. Valid types: {}.",
                TaskType::all_names().collect::<Vec<_>>().join(", ")
            ))
        })?;
        let instruction = take_string(&mut fields, "instruction")?;
        let callback_url = take_string(&mut fields, "callback_url")?
            .filter(|url| !url.is_empty())
            .map(check_callback_url)
            .transpose()?;
        let metadata = match fields.remove("metadata") {
            None | Some(Value::Null) => Map::new(),
            Some(value) => self.check_metadata(value)?,
        };
        let unique_id = take_string(&mut fields, "unique_id")?
            .map(|unique_id| self.check_unique_id(unique_id))
            .transpose()?;
        let tags = match fields.remove("tags") {
            None | Some(Value::Null) => None,
            Some(value) => Some(self.check_tags(tags_from_json(value)?)?),
        };
        let project = take_string(&mut fields, "project")?.filter(|name| !name.is_empty());
        let batch = take_string(&mut fields, "batch")?.filter(|name| !name.is_empty());
        let clear_unique_id_on_error = match fields.remove("clear_unique_id_on_error") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(flag)) => flag,
            Some(Value::String(text)) => parse_bool(&text).ok_or_else(|| {
                Error::invalid("Parameter 'clear_unique_id_on_error' must be a boolean.")
            })?,
            Some(_) => {
                return Err(Error::invalid(
                    "Parameter 'clear_unique_id_on_error' must be a boolean.",
                ))
            }
        };
        let has_instruction = instruction
            .as_deref()
            .is_some_and(|text| !text.trim().is_empty());
        // A project can supply the instruction, so only project-less tasks must carry one.
        if task_type.needs_instruction() && !has_instruction && project.is_none() {
            return Err(Error::invalid(format!(
                "Missing required parameter for {} tasks: 'instruction'.",
                task_type.name()
            )));
        }
        task_type
            .check_params(&fields)
            .map_err(Error::InvalidArgument)?;

        let now = Timestamp::now();
        // The test world answers at once, so integrations can be tested end to end.
        let (status, response, completed_at) = if scope.is_test {
            (
                TaskStatus::Completed,
                Some(task_type.synthetic_response(&fields)),
                Some(now),
            )
        } else {
            (TaskStatus::Pending, None, None)
        };
        let task = Task {
            id: TaskId::generate(now),
            scope,
            task_type: task_type.name().to_owned(),
            status,
            instruction,
            params: fields.into(),
            callback_url,
            metadata: metadata.into(),
            unique_id,
            tags,
            project,
            project_param_version: None,
            batch,
            response,
            callback_succeeded: None,
            audits: Vec::new(),
            customer_review_status: None,
            clear_unique_id_on_error,
            created_at: now,
            updated_at: now,
            completed_at,
            lease: None,
        };
        Ok(task)
    }

    pub async fn get_task(&self, caller: Caller, task_id: &str) -> Result<Task> {
        let id = parse_task_id(task_id)?;
        self.store
            .get_task(caller.scope, &id)
            .await?
            .ok_or_else(Error::task_not_found)
    }

    pub async fn list_tasks(&self, caller: Caller, query: ListQuery) -> Result<TaskPage> {
        let scope = caller.scope;
        let limit = query.limit.unwrap_or(DEFAULT_PAGE_SIZE);
        if !(1..=MAX_PAGE_SIZE).contains(&limit) {
            return Err(Error::invalid(format!(
                "Parameter 'limit' must be between 1 and {MAX_PAGE_SIZE}."
            )));
        }
        check_filter(&query.filter, self.limits.max_filter_values)?;
        let after = query
            .next_token
            .as_deref()
            .map(|token| {
                PageToken::decode(token).ok_or_else(|| {
                    Error::invalid("Parameter 'next_token' is not a valid page token.")
                })
            })
            .transpose()?;
        if query.offset.is_some() && after.is_some() {
            return Err(Error::invalid(
                "Parameters 'offset' and 'next_token' cannot be used together: page with one of them.",
            ));
        }
        let offset = query.offset.unwrap_or(0);
        // SQL binds OFFSET as a signed 64-bit integer.
        if i64::try_from(offset).is_err() {
            return Err(Error::invalid(format!(
                "Parameter 'offset' must be between 0 and {}.",
                i64::MAX
            )));
        }
        let page_size = limit.unsigned_abs();
        let (mut docs, total) = self
            .store
            .list_page(scope, &query.filter, after.as_ref(), offset, page_size + 1)
            .await?;
        let has_more = docs.len() as u64 > page_size;
        docs.truncate(page_size as usize);
        let next_token = if has_more {
            docs.last().map(|last| {
                PageToken {
                    created_at: last.created_at,
                    task_id: last.id.clone(),
                }
                .encode()
            })
        } else {
            None
        };
        Ok(TaskPage {
            docs,
            total,
            limit,
            offset,
            has_more,
            next_token,
            limited_response: query.limited_response,
        })
    }

    /// pending → canceled (ending any lease); canceled stays canceled; completed or error
    /// cannot be canceled.
    pub async fn cancel_task(
        &self,
        caller: Caller,
        task_id: &str,
        clear_unique_id: bool,
    ) -> Result<Task> {
        self.mutate_task(require_admin(caller)?, task_id, |task| {
            match task.status {
                TaskStatus::Pending => {
                    task.status = TaskStatus::Canceled;
                    task.lease = None;
                }
                TaskStatus::Canceled => {}
                TaskStatus::Completed | TaskStatus::Error => {
                    return Err(Error::FailedPrecondition(
                        "The task was already completed and cannot be canceled.".to_owned(),
                    ))
                }
            }
            if clear_unique_id {
                task.unique_id = None;
            }
            Ok(())
        })
        .await
    }

    /// Replaces the task's metadata with `metadata`, which must be a JSON object.
    pub async fn set_task_metadata(
        &self,
        caller: Caller,
        task_id: &str,
        metadata: Value,
    ) -> Result<Task> {
        let metadata = self.check_metadata(metadata)?;
        self.mutate_task(require_admin(caller)?, task_id, |task| {
            task.metadata = metadata.into();
            Ok(())
        })
        .await
    }

    pub async fn update_task_unique_id(
        &self,
        caller: Caller,
        task_id: &str,
        unique_id: String,
    ) -> Result<Task> {
        let unique_id = self.check_unique_id(unique_id)?;
        self.mutate_task(require_admin(caller)?, task_id, |task| {
            task.unique_id = Some(unique_id);
            Ok(())
        })
        .await
    }

    pub async fn delete_task_unique_id(&self, caller: Caller, task_id: &str) -> Result<Task> {
        self.mutate_task(require_admin(caller)?, task_id, |task| {
            task.unique_id = None;
            Ok(())
        })
        .await
    }

    /// Adds (duplicates ignored, order kept), replaces or removes tags. A list with an invalid
    /// tag changes nothing.
    pub async fn edit_task_tags(
        &self,
        caller: Caller,
        task_id: &str,
        edit: TagEdit,
        tags: Vec<String>,
    ) -> Result<Task> {
        let tags = self.check_tags(tags)?;
        let max_tags = self.limits.max_tags;
        self.mutate_task(require_admin(caller)?, task_id, |task| {
            match edit {
                TagEdit::Add => {
                    let current = task.tags.get_or_insert_with(Vec::new);
                    for tag in tags {
                        if !current.contains(&tag) {
                            current.push(tag);
                        }
                    }
                    if current.len() > max_tags {
                        return Err(too_many_tags(max_tags));
                    }
                }
                TagEdit::Replace => task.tags = Some(tags),
                TagEdit::Remove => {
                    if let Some(current) = task.tags.as_mut() {
                        current.retain(|tag| !tags.contains(tag));
                    }
                }
            }
            Ok(())
        })
        .await
    }

    /// Records a customer audit of a completed task. A rejection with `rework` sends a live
    /// task back to `pending` for another round, keeping its audits and previous response.
    pub async fn audit_task(
        &self,
        caller: Caller,
        task_id: &str,
        accepted: bool,
        comments: Option<String>,
        rework: bool,
    ) -> Result<Task> {
        if rework && accepted {
            return Err(Error::invalid(
                "Parameter 'rework' needs 'accepted': false: only a rejected task goes back for rework.",
            ));
        }
        self.mutate_task(require_admin(caller)?, task_id, |task| {
            if task.status != TaskStatus::Completed {
                return Err(Error::invalid("Only completed tasks can be audited."));
            }
            if rework {
                if task.scope.is_test {
                    return Err(Error::invalid(
                        "Test tasks complete at once and cannot be sent back for rework.",
                    ));
                }
                task.status = TaskStatus::Pending;
                task.completed_at = None;
            }
            task.audits.push(Audit {
                accepted,
                comments: comments.filter(|text| !text.is_empty()),
                created_at: Timestamp::now(),
            });
            task.customer_review_status =
                Some(if accepted { "accepted" } else { "rejected" }.to_owned());
            Ok(())
        })
        .await
    }

    /// Applies `change` atomically under the task's row lock; bumps `updated_at` when it
    /// changed anything a client can see (a lease is not), and writes the callback the change
    /// makes due in the same transaction.
    pub(super) async fn mutate_task<F>(
        &self,
        scope: Scope,
        task_id: &str,
        change: F,
    ) -> Result<Task>
    where
        F: FnOnce(&mut Task) -> Result<()>,
    {
        let id = parse_task_id(task_id)?;
        let mut callback_written = false;
        let on_batch_completed = |batch: &crate::domain::Batch| self.batch_callback_due(batch);
        let task = self
            .store
            .update_task(
                scope,
                &id,
                |task| {
                    let before = task.clone();
                    change(task)?;
                    let visible_change = {
                        let mut unleased = task.clone();
                        unleased.lease.clone_from(&before.lease);
                        unleased != before
                    };
                    if visible_change {
                        task.updated_at = Timestamp::now().max(before.updated_at);
                    }
                    let callback = self.callback_due(Some(&before), task);
                    callback_written = callback.is_some();
                    Ok(callback)
                },
                &on_batch_completed,
            )
            .await?;
        if callback_written {
            self.deliveries_waiting.notify_one();
        }
        Ok(task)
    }

    pub(super) fn check_metadata(&self, value: Value) -> Result<Map<String, Value>> {
        let Value::Object(metadata) = value else {
            return Err(Error::invalid(
                "Parameter 'metadata' must be a JSON object.",
            ));
        };
        let size = serde_json::to_string(&metadata).map_or(usize::MAX, |text| text.len());
        if size > self.limits.max_metadata_bytes {
            return Err(Error::invalid(format!(
                "Parameter 'metadata' is too large: at most {} bytes of JSON.",
                self.limits.max_metadata_bytes
            )));
        }
        Ok(metadata)
    }

    fn check_unique_id(&self, unique_id: String) -> Result<String> {
        check_text("unique_id", &unique_id)?;
        if unique_id.trim().is_empty() {
            return Err(Error::invalid("Parameter 'unique_id' must not be empty."));
        }
        if unique_id.chars().count() > self.limits.max_unique_id_chars {
            return Err(Error::invalid(format!(
                "Parameter 'unique_id' must be at most {} characters.",
                self.limits.max_unique_id_chars
            )));
        }
        Ok(unique_id)
    }

    /// Every tag non-empty and short enough; duplicates dropped, first occurrence kept.
    fn check_tags(&self, tags: Vec<String>) -> Result<Vec<String>> {
        let mut unique: Vec<String> = Vec::with_capacity(tags.len());
        for tag in tags {
            if tag.trim().is_empty() {
                return Err(Error::invalid("Tags must be non-empty strings."));
            }
            check_text("tags", &tag)?;
            if tag.chars().count() > self.limits.max_tag_chars {
                return Err(Error::invalid(format!(
                    "Each tag must be at most {} characters.",
                    self.limits.max_tag_chars
                )));
            }
            if !unique.contains(&tag) {
                unique.push(tag);
            }
        }
        if unique.len() > self.limits.max_tags {
            return Err(too_many_tags(self.limits.max_tags));
        }
        Ok(unique)
    }
}

/// Tags as a JSON array of strings; `null` or any non-string is rejected.
pub fn tags_from_json(value: Value) -> Result<Vec<String>> {
    let Value::Array(items) = value else {
        return Err(Error::invalid("Tags must be a JSON array of strings."));
    };
    items
        .into_iter()
        .map(|item| match item {
            Value::String(tag) => Ok(tag),
            _ => Err(Error::invalid("Tags must be non-empty strings.")),
        })
        .collect()
}

fn too_many_tags(max_tags: usize) -> Error {
    Error::invalid(format!("A task can have at most {max_tags} tags."))
}

/// A malformed id can never name a task: 404, as on Scale.
fn parse_task_id(task_id: &str) -> Result<TaskId> {
    TaskId::parse(task_id).ok_or_else(Error::task_not_found)
}

/// Text stored in its own column must hold no NUL: PostgreSQL cannot store one, and no
/// legitimate name, id or instruction needs it. (JSON fields keep NULs, escaped.)
pub(super) fn check_text<'a>(name: &str, text: &'a str) -> Result<&'a str> {
    if text.contains('\0') {
        return Err(Error::invalid(format!(
            "Parameter '{name}' must not contain NUL characters."
        )));
    }
    Ok(text)
}

fn take_string(fields: &mut Map<String, Value>, name: &str) -> Result<Option<String>> {
    match fields.remove(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => {
            check_text(name, &text)?;
            Ok(Some(text))
        }
        Some(_) => Err(Error::invalid(format!(
            "Parameter '{name}' must be a string."
        ))),
    }
}

pub(super) fn check_callback_url(text: String) -> Result<String> {
    match url::Url::parse(&text) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => Ok(text),
        _ => Err(Error::invalid(
            "Parameter 'callback_url' must be an http or https URL.",
        )),
    }
}

/// The list's filters, checked (shared by lists and exports). Repeated filters are capped:
/// each value is one more condition in the query the database has to plan and run.
pub(super) fn check_filter(filter: &crate::domain::TaskFilter, max_values: usize) -> Result<()> {
    for (name, values) in [
        ("unique_id", &filter.unique_ids),
        ("tags", &filter.tags),
        ("customer_review_status", &filter.customer_review_statuses),
    ] {
        if values.len() > max_values {
            return Err(Error::invalid(format!(
                "Parameter '{name}' has {} values; at most {max_values} are allowed.",
                values.len()
            )));
        }
    }
    for (name, values) in [
        ("type", filter.task_type.as_slice()),
        ("project", filter.project.as_slice()),
        ("batch", filter.batch.as_slice()),
        ("unique_id", filter.unique_ids.as_slice()),
        ("tags", filter.tags.as_slice()),
        (
            "customer_review_status",
            filter.customer_review_statuses.as_slice(),
        ),
    ] {
        for value in values {
            check_text(name, value)?;
        }
    }
    if let Some(task_type) = &filter.task_type {
        if TaskType::parse(task_type).is_none() {
            return Err(Error::invalid(format!(
                "Parameter 'type' is not a known task type: '{task_type}'."
            )));
        }
    }
    Ok(())
}
