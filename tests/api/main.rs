//! One integration-test binary (one link on a 2-core machine); every module runs against
//! SQLite and PostgreSQL through `backend_tests!`.

mod helpers;

mod admin;
mod authz_matrix;
mod bulk;
mod callbacks;
mod console;
mod crash_cycles;
mod db_faults;
mod grpc;
mod grpc_malformed;
mod grpc_web;
mod hostile;
mod idempotency;
mod limits;
mod openapi;
mod process;
mod projects_batches;
mod replicas;
mod rest_list;
mod rest_tasks;
mod scale_client;
mod smoke;
mod startup;
mod watch;
mod work;
