//! Projects: a task type and versioned default params that tasks created in them inherit.

use serde_json::{Map, Value};

use super::{task::Scope, time::Timestamp};

/// One version of a project's params (`instruction` among them).
#[derive(Debug, Clone, PartialEq)]
pub struct ParamVersion {
    pub version: i64,
    pub created_at: Timestamp,
    pub params: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Project {
    pub scope: Scope,
    pub name: String,
    pub task_type: String,
    /// Oldest first; never empty (creation writes version 0).
    pub param_history: Vec<ParamVersion>,
    pub created_at: Timestamp,
}

impl Project {
    pub fn latest_params(&self) -> Option<&ParamVersion> {
        self.param_history.last()
    }

    /// Appends the next version: `params` alone, or merged over the latest with `patch`.
    pub fn push_params(&mut self, params: Map<String, Value>, patch: bool, now: Timestamp) {
        let (version, mut merged) = match self.latest_params() {
            Some(latest) => (
                latest.version + 1,
                if patch {
                    latest.params.clone()
                } else {
                    Map::new()
                },
            ),
            None => (0, Map::new()),
        };
        merged.extend(params);
        self.param_history.push(ParamVersion {
            version,
            created_at: now,
            params: merged,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn versions_count_up_and_patch_merges_into_the_previous_params() {
        let mut project = Project {
            scope: Scope {
                account_id: 1,
                is_test: false,
            },
            name: "p".into(),
            task_type: "imageannotation".into(),
            param_history: Vec::new(),
            created_at: Timestamp::from_millis(0),
        };
        let now = Timestamp::from_millis(1);
        project.push_params(fields(json!({"instruction": "a", "x": 1})), false, now);
        project.push_params(fields(json!({"x": 2})), true, now);
        project.push_params(fields(json!({"y": 3})), false, now);
        let versions: Vec<_> = project.param_history.iter().map(|v| v.version).collect();
        assert_eq!(versions, [0, 1, 2]);
        assert_eq!(
            Value::Object(project.param_history[1].params.clone()),
            json!({"instruction": "a", "x": 2})
        );
        assert_eq!(
            Value::Object(project.param_history[2].params.clone()),
            json!({"y": 3})
        );
    }
}
