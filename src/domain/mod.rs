//! Plain domain types: they can only hold valid values and know nothing of wires or storage.

pub mod batch;
pub mod json_object;
pub mod page_token;
pub mod project;
pub mod query;
pub mod task;
pub mod task_id;
pub mod task_type;
pub mod time;
pub mod work;

pub use batch::{Batch, BatchCounts, BatchFilter, BatchStatus};
pub use json_object::JsonObject;
pub use page_token::PageToken;
pub use project::{ParamVersion, Project};
pub use query::{ListQuery, TaskFilter, TimeRange};
pub use task::{Audit, Scope, Task, TaskStatus};
pub use task_id::TaskId;
pub use task_type::TaskType;
pub use time::Timestamp;
pub use work::{
    ApiKeyInfo, CallbackEvent, CallbackSecrets, CallbackSubject, Caller, ClaimFilter, Delivery,
    NewDelivery, Role, TaskLease,
};

/// Booleans as Scale's clients send them in query strings: `true/false/True/False/1/0`.
pub fn parse_bool(text: &str) -> Option<bool> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "1" => Some(true),
        "false" | "0" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::parse_bool;

    #[test]
    fn booleans_are_case_insensitive() {
        assert_eq!(parse_bool("True"), Some(true));
        assert_eq!(parse_bool("FALSE"), Some(false));
        assert_eq!(parse_bool("1"), Some(true));
        assert_eq!(parse_bool("0"), Some(false));
        assert_eq!(parse_bool("maybe"), None);
    }
}
