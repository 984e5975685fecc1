//! Batch rules (SPEC §10): creation in a project, finalize, status counts, metadata, lists.

use serde_json::{Map, Value};

use super::{
    auth::require_admin,
    projects::{check_name, lookup_name},
    tasks::check_text,
    Service,
};
use crate::{
    domain::{Batch, BatchCounts, BatchFilter, BatchStatus, Caller, Timestamp},
    error::{Error, Result},
};

const DEFAULT_PAGE_SIZE: u64 = 100;
const MAX_PAGE_SIZE: u64 = 100;

/// One page of `GET /v1/batches`.
#[derive(Debug, Clone)]
pub struct BatchPage {
    pub docs: Vec<Batch>,
    pub total: u64,
    pub limit: u64,
    pub offset: u64,
    pub has_more: bool,
}

/// What a new batch is made of.
#[derive(Debug, Clone, Default)]
pub struct NewBatch {
    pub name: String,
    pub project: String,
    /// `""` or `None`: no callback.
    pub callback: Option<String>,
    pub metadata: Option<Value>,
    pub staging: bool,
}

impl Service {
    pub async fn create_batch(&self, caller: Caller, new: NewBatch) -> Result<Batch> {
        let scope = require_admin(caller)?;
        let name = check_name("batch", &new.name)?;
        if new.project.trim().is_empty() {
            return Err(Error::invalid("Missing required parameter: 'project'."));
        }
        check_text("project", &new.project)?;
        if self.store.get_project(scope, &new.project).await?.is_none() {
            return Err(Error::invalid(format!(
                "Project '{}' does not exist.",
                new.project
            )));
        }
        let callback = new
            .callback
            .filter(|url| !url.is_empty())
            .map(super::tasks::check_callback_url)
            .transpose()?;
        let metadata = match new.metadata {
            None | Some(Value::Null) => Map::new(),
            Some(value) => self.check_metadata(value)?,
        };
        let now = Timestamp::now();
        let batch = Batch {
            scope,
            name,
            project: new.project,
            status: if new.staging {
                BatchStatus::Staging
            } else {
                BatchStatus::InProgress
            },
            callback,
            metadata,
            created_at: now,
            updated_at: now,
            completed_at: None,
        };
        self.store.insert_batch(&batch).await?;
        tracing::info!(batch = %batch.name, project = %batch.project, "batch created");
        Ok(batch)
    }

    pub async fn get_batch(&self, caller: Caller, name: &str) -> Result<Batch> {
        let name = lookup_name("batch", name)?;
        self.store
            .get_batch(caller.scope, name)
            .await?
            .ok_or_else(|| Error::NotFound(format!("No batch named '{name}'.")))
    }

    pub async fn list_batches(
        &self,
        caller: Caller,
        filter: BatchFilter,
        limit: Option<i64>,
        offset: Option<i64>,
    ) -> Result<BatchPage> {
        let limit = match limit {
            None => DEFAULT_PAGE_SIZE,
            Some(limit) => u64::try_from(limit)
                .ok()
                .filter(|limit| (1..=MAX_PAGE_SIZE).contains(limit))
                .ok_or_else(|| {
                    Error::invalid(format!(
                        "Parameter 'limit' must be between 1 and {MAX_PAGE_SIZE}."
                    ))
                })?,
        };
        if let Some(project) = &filter.project {
            check_text("project", project)?;
        }
        let offset = u64::try_from(offset.unwrap_or(0))
            .map_err(|_| Error::invalid("Parameter 'offset' must be 0 or more."))?;
        let (docs, total) = self
            .store
            .list_batches(caller.scope, &filter, offset, limit)
            .await?;
        let has_more = offset.saturating_add(docs.len() as u64) < total;
        Ok(BatchPage {
            docs,
            total,
            limit,
            offset,
            has_more,
        })
    }

    /// staging → in_progress (its tasks may now be claimed); finalizing again changes
    /// nothing. A batch whose tasks are all done completes at once.
    pub async fn finalize_batch(&self, caller: Caller, name: &str) -> Result<Batch> {
        let scope = require_admin(caller)?;
        let name = lookup_name("batch", name)?;
        self.store
            .update_batch(
                scope,
                name,
                |batch| {
                    if batch.status == BatchStatus::Staging {
                        batch.status = BatchStatus::InProgress;
                    }
                    Ok(())
                },
                &|batch| self.batch_callback_due(batch),
            )
            .await
    }

    pub async fn batch_status(&self, caller: Caller, name: &str) -> Result<(Batch, BatchCounts)> {
        let batch = self.get_batch(caller, name).await?;
        let counts = self.store.batch_counts(caller.scope, name).await?;
        Ok((batch, counts))
    }

    /// Replaces the batch's metadata, which must be a JSON object.
    pub async fn set_batch_metadata(
        &self,
        caller: Caller,
        name: &str,
        metadata: Value,
    ) -> Result<Batch> {
        let scope = require_admin(caller)?;
        let name = lookup_name("batch", name)?;
        let metadata = self.check_metadata(metadata)?;
        self.store
            .update_batch(
                scope,
                name,
                |batch| {
                    batch.metadata = metadata;
                    Ok(())
                },
                &|batch| self.batch_callback_due(batch),
            )
            .await
    }
}
