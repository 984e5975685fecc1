//! sea-orm entities, one module per table (see `migrations/`).

pub mod accounts {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "accounts")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub name: String,
        pub created_at: i64,
        pub callback_auth_key: Option<String>,
        pub signing_secret: Option<String>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod api_keys {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "api_keys")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub account_id: i64,
        pub key_hash: String,
        pub is_test: bool,
        pub created_at: i64,
        pub scope: String,
        /// The key's first characters (`live_1a2b3c4`); unknown for keys made before it was kept.
        pub key_prefix: Option<String>,
        pub revoked_at: Option<i64>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod tasks {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "tasks")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub task_id: String,
        pub account_id: i64,
        pub is_test: bool,
        pub task_type: String,
        pub status: String,
        pub instruction: Option<String>,
        pub params: String,
        pub callback_url: Option<String>,
        pub metadata: String,
        pub unique_id: Option<String>,
        pub tags: Option<String>,
        pub project: Option<String>,
        pub batch: Option<String>,
        pub response: Option<String>,
        pub callback_succeeded: Option<bool>,
        pub audits: String,
        pub customer_review_status: Option<String>,
        pub clear_unique_id_on_error: bool,
        pub created_at: i64,
        pub updated_at: i64,
        pub completed_at: Option<i64>,
        pub lease_token_hash: Option<String>,
        pub lease_expires_at: Option<i64>,
        pub project_param_version: Option<i64>,
        /// `updated_at` in whole hours since the epoch, for the update-window index (it
        /// changes only when an update lands in another hour than the task's last).
        pub updated_hour: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod task_tags {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "task_tags")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub task_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub tag: String,
        pub account_id: i64,
        pub is_test: bool,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod task_hour_counts {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "task_hour_counts")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub account_id: i64,
        #[sea_orm(primary_key, auto_increment = false)]
        pub is_test: bool,
        #[sea_orm(primary_key, auto_increment = false)]
        pub created_hour: i64,
        #[sea_orm(primary_key, auto_increment = false)]
        pub project: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub batch: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub task_type: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub status: String,
        /// Writers spread over shards; a counter is the sum of its rows.
        #[sea_orm(primary_key, auto_increment = false)]
        pub shard: i32,
        pub total: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Counters by completion hour, and update-hour shifts against `task_hour_counts`
/// (migration 10 explains both).
pub mod task_event_hour_counts {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "task_event_hour_counts")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub account_id: i64,
        #[sea_orm(primary_key, auto_increment = false)]
        pub is_test: bool,
        /// `completed` or `updated`.
        #[sea_orm(primary_key, auto_increment = false)]
        pub event: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub hour: i64,
        #[sea_orm(primary_key, auto_increment = false)]
        pub project: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub batch: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub task_type: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub status: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub shard: i32,
        pub total: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod task_tag_counts {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "task_tag_counts")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub account_id: i64,
        #[sea_orm(primary_key, auto_increment = false)]
        pub is_test: bool,
        #[sea_orm(primary_key, auto_increment = false)]
        pub tag: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub status: String,
        /// Writers spread over shards; a counter is the sum of its rows.
        #[sea_orm(primary_key, auto_increment = false)]
        pub shard: i32,
        pub total: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod task_counts {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "task_counts")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub account_id: i64,
        #[sea_orm(primary_key, auto_increment = false)]
        pub is_test: bool,
        #[sea_orm(primary_key, auto_increment = false)]
        pub project: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub batch: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub task_type: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub status: String,
        /// Writers spread over shards; a counter is the sum of its rows.
        #[sea_orm(primary_key, auto_increment = false)]
        pub shard: i32,
        pub total: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod idempotency_keys {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "idempotency_keys")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub idempotency_key: String,
        pub account_id: i64,
        pub is_test: bool,
        pub fingerprint: String,
        /// JSON of the stored `Result<Task, Error>`.
        pub outcome: String,
        pub created_at: i64,
        pub expires_at: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod callback_deliveries {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "callback_deliveries")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub webhook_id: String,
        pub account_id: i64,
        pub is_test: bool,
        pub task_id: Option<String>,
        pub url: String,
        pub event: String,
        /// JSON of the task or batch as it was right after the change.
        pub payload: String,
        /// `pending`, `succeeded` or `failed`.
        pub state: String,
        pub attempts: i32,
        pub next_attempt_at: i64,
        /// Set while one worker holds the delivery for an attempt.
        pub locked_until: Option<i64>,
        pub last_error: Option<String>,
        pub created_at: i64,
        pub updated_at: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod projects {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "projects")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub account_id: i64,
        pub is_test: bool,
        pub name: String,
        pub task_type: String,
        /// JSON array of `{"version", "created_at", "params"}`.
        pub param_history: String,
        pub created_at: i64,
        pub updated_at: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod batches {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "batches")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub account_id: i64,
        pub is_test: bool,
        pub name: String,
        pub project: String,
        pub status: String,
        pub callback: Option<String>,
        pub metadata: String,
        pub created_at: i64,
        pub updated_at: i64,
        pub completed_at: Option<i64>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
