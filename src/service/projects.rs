//! Project rules (SPEC §10): names, versioned params, and what tasks inherit from them.

use serde_json::{Map, Value};

use super::{auth::require_admin, tasks::check_text, Service};
use crate::{
    domain::{BatchStatus, Caller, Project, Scope, TaskType, Timestamp},
    error::{Error, Result},
};

/// Fields a project's params never give a task: they name the task itself.
const NOT_INHERITED: [&str; 4] = ["unique_id", "project", "batch", "clear_unique_id_on_error"];

/// Where a new task goes: its project (named, or its batch's) and whether it came from the batch.
#[derive(Clone)]
pub(super) struct Placement {
    project: Option<Project>,
    project_from_batch: bool,
}

impl Placement {
    /// Fills in what the task does not set itself from its project's latest params (the
    /// instruction among them); returns that params version.
    pub(super) fn inherit(&self, fields: &mut Map<String, Value>) -> Option<i64> {
        let project = self.project.as_ref()?;
        if self.project_from_batch {
            fields.insert("project".to_owned(), Value::String(project.name.clone()));
        }
        let latest = project.latest_params()?;
        for (name, value) in &latest.params {
            if NOT_INHERITED.contains(&name.as_str()) {
                continue;
            }
            if matches!(fields.get(name), None | Some(Value::Null)) {
                fields.insert(name.clone(), value.clone());
            }
        }
        Some(latest.version)
    }
}

/// A project or batch a creation request names (its type is checked with the other fields).
fn named(fields: &Map<String, Value>, name: &str) -> Result<Option<String>> {
    let Some(text) = fields.get(name).and_then(Value::as_str) else {
        return Ok(None);
    };
    check_text(name, text)?;
    Ok((!text.is_empty()).then(|| text.to_owned()))
}

/// A name with a NUL names nothing (and PostgreSQL could not even compare it).
pub(super) fn lookup_name<'a>(kind: &str, name: &'a str) -> Result<&'a str> {
    if name.contains('\0') {
        return Err(Error::NotFound(format!(
            "No {kind} named '{}'.",
            name.replace('\0', "")
        )));
    }
    Ok(name)
}

pub(super) fn check_name(kind: &str, name: &str) -> Result<String> {
    let name = name.trim();
    if name.is_empty() {
        return Err(Error::invalid(format!(
            "Missing required parameter: 'name' of the {kind}."
        )));
    }
    check_text("name", name)?;
    if name.chars().count() > 255 {
        return Err(Error::invalid(format!(
            "The {kind} name must be at most 255 characters."
        )));
    }
    Ok(name.to_owned())
}

impl Service {
    /// The project and batch a creation request names, checked: both must exist, a batch
    /// must not be completed, a batch's project is the task's, and the project's type must be
    /// the task's type.
    pub(super) async fn placement(
        &self,
        scope: Scope,
        task_type: &str,
        fields: &Map<String, Value>,
    ) -> Result<Placement> {
        let mut project_name = named(fields, "project")?;
        let mut project_from_batch = false;
        if let Some(batch_name) = named(fields, "batch")? {
            let batch = self
                .store
                .get_batch(scope, &batch_name)
                .await?
                .ok_or_else(|| Error::invalid(format!("Batch '{batch_name}' does not exist.")))?;
            if batch.status == BatchStatus::Completed {
                return Err(Error::invalid(format!(
                    "Batch '{batch_name}' is completed: no more tasks can be added to it."
                )));
            }
            match &project_name {
                None => {
                    project_name = Some(batch.project.clone());
                    project_from_batch = true;
                }
                Some(project) if *project != batch.project => {
                    return Err(Error::invalid(format!(
                        "Batch '{batch_name}' belongs to project '{}', not '{project}'.",
                        batch.project
                    )))
                }
                Some(_) => {}
            }
        }
        let Some(project_name) = project_name else {
            return Ok(Placement {
                project: None,
                project_from_batch,
            });
        };
        let project = self
            .store
            .get_project(scope, &project_name)
            .await?
            .ok_or_else(|| Error::invalid(format!("Project '{project_name}' does not exist.")))?;
        // An unknown type is reported by the type check itself.
        if TaskType::parse(task_type).is_some_and(|parsed| parsed.name() != project.task_type) {
            return Err(Error::invalid(format!(
                "Project '{project_name}' takes {} tasks, not {task_type}.",
                project.task_type
            )));
        }
        Ok(Placement {
            project: Some(project),
            project_from_batch,
        })
    }

    /// Creates a project with its first params (version 0).
    pub async fn create_project(
        &self,
        caller: Caller,
        name: &str,
        task_type: &str,
        params: Map<String, Value>,
    ) -> Result<Project> {
        let scope = require_admin(caller)?;
        let name = check_name("project", name)?;
        let task_type = TaskType::parse(task_type).ok_or_else(|| {
            Error::invalid(format!(
                "Parameter 'type' is not a known task type: '{task_type}'."
            ))
        })?;
        let now = Timestamp::now();
        let mut project = Project {
            scope,
            name,
            task_type: task_type.name().to_owned(),
            param_history: Vec::new(),
            created_at: now,
        };
        project.push_params(params, false, now);
        self.store.insert_project(&project).await?;
        tracing::info!(project = %project.name, "project created");
        Ok(project)
    }

    pub async fn get_project(&self, caller: Caller, name: &str) -> Result<Project> {
        let name = lookup_name("project", name)?;
        self.store
            .get_project(caller.scope, name)
            .await?
            .ok_or_else(|| Error::NotFound(format!("No project named '{name}'.")))
    }

    pub async fn list_projects(&self, caller: Caller) -> Result<Vec<Project>> {
        self.store.list_projects(caller.scope).await
    }

    /// Appends the next params version: `params` alone, or merged over the latest (`patch`).
    pub async fn set_project_params(
        &self,
        caller: Caller,
        name: &str,
        params: Map<String, Value>,
        patch: bool,
    ) -> Result<Project> {
        let scope = require_admin(caller)?;
        let name = lookup_name("project", name)?;
        self.store
            .update_project(scope, name, |project| {
                project.push_params(params, patch, Timestamp::now());
                Ok(())
            })
            .await
    }
}
