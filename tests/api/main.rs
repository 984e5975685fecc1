//! One integration-test binary (one link on a 2-core machine); every module runs against
//! SQLite and PostgreSQL through `backend_tests!`.

mod helpers;

mod smoke;
