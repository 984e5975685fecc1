//! Projects and their versioned params.

use sea_orm::{
    ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    TransactionTrait,
};
use serde_json::{Map, Value};

use super::{
    entities::projects,
    is_unique_violation,
    tasks::{from_json_text, to_json_text},
    Store,
};
use crate::{
    domain::{ParamVersion, Project, Scope, Timestamp},
    error::{Error, Result},
};

#[derive(serde::Serialize, serde::Deserialize)]
struct StoredParams {
    version: i64,
    created_at: i64,
    params: Map<String, Value>,
}

fn duplicate(name: &str) -> Error {
    Error::Conflict(format!("A project named '{name}' already exists."))
}

pub(super) fn not_found(name: &str) -> Error {
    Error::NotFound(format!("No project named '{name}'."))
}

impl Store {
    pub async fn insert_project(&self, project: &Project) -> Result<()> {
        let row = projects::ActiveModel {
            account_id: Set(project.scope.account_id),
            is_test: Set(project.scope.is_test),
            name: Set(project.name.clone()),
            task_type: Set(project.task_type.clone()),
            param_history: Set(history_text(project)?),
            created_at: Set(project.created_at.millis()),
            updated_at: Set(project.created_at.millis()),
            ..Default::default()
        };
        match projects::Entity::insert(row)
            .exec_without_returning(&self.db)
            .await
        {
            Ok(_) => Ok(()),
            Err(err) if is_unique_violation(&err) => Err(duplicate(&project.name)),
            Err(err) => Err(err.into()),
        }
    }

    pub async fn get_project(&self, scope: Scope, name: &str) -> Result<Option<Project>> {
        projects::Entity::find()
            .filter(projects::Column::AccountId.eq(scope.account_id))
            .filter(projects::Column::IsTest.eq(scope.is_test))
            .filter(projects::Column::Name.eq(name))
            .one(&self.read)
            .await?
            .map(from_row)
            .transpose()
    }

    /// Every project of the scope, oldest first.
    pub async fn list_projects(&self, scope: Scope) -> Result<Vec<Project>> {
        projects::Entity::find()
            .filter(projects::Column::AccountId.eq(scope.account_id))
            .filter(projects::Column::IsTest.eq(scope.is_test))
            .order_by_asc(projects::Column::CreatedAt)
            .order_by_asc(projects::Column::Id)
            .all(&self.read)
            .await?
            .into_iter()
            .map(from_row)
            .collect()
    }

    /// Applies `change` to the project under its row lock and writes it back.
    pub async fn update_project<F>(&self, scope: Scope, name: &str, change: F) -> Result<Project>
    where
        F: FnOnce(&mut Project) -> Result<()>,
    {
        let txn = self.db.begin().await?;
        let row = projects::Entity::find()
            .filter(projects::Column::AccountId.eq(scope.account_id))
            .filter(projects::Column::IsTest.eq(scope.is_test))
            .filter(projects::Column::Name.eq(name))
            .lock_exclusive()
            .one(&txn)
            .await?
            .ok_or_else(|| not_found(name))?;
        let id = row.id;
        let mut project = from_row(row)?;
        change(&mut project)?;
        projects::Entity::update(projects::ActiveModel {
            id: Set(id),
            param_history: Set(history_text(&project)?),
            updated_at: Set(Timestamp::now().millis()),
            ..Default::default()
        })
        .exec(&txn)
        .await?;
        txn.commit().await?;
        Ok(project)
    }
}

fn history_text(project: &Project) -> Result<String> {
    let stored: Vec<StoredParams> = project
        .param_history
        .iter()
        .map(|entry| StoredParams {
            version: entry.version,
            created_at: entry.created_at.millis(),
            params: entry.params.clone(),
        })
        .collect();
    to_json_text(&stored)
}

fn from_row(row: projects::Model) -> Result<Project> {
    let history: Vec<StoredParams> = from_json_text(&row.param_history, "param_history")?;
    Ok(Project {
        scope: Scope {
            account_id: row.account_id,
            is_test: row.is_test,
        },
        name: row.name,
        task_type: row.task_type,
        param_history: history
            .into_iter()
            .map(|entry| ParamVersion {
                version: entry.version,
                created_at: Timestamp::from_millis(entry.created_at),
                params: entry.params,
            })
            .collect(),
        created_at: Timestamp::from_millis(row.created_at),
    })
}
