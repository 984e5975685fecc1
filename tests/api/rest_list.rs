//! `GET /v1/tasks` (SPEC §6): the envelope, keyset paging, every filter and exact totals.

use std::{collections::HashSet, time::Duration};

use futures::future::join_all;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use annotask::{
    config::DatabasePool,
    domain::{Batch, NewDelivery, Scope, TaskFilter, TaskId, TaskStatus, TimeRange, Timestamp},
    store::Store,
};

use crate::{backend_tests, helpers::TestApp};

#[track_caller]
fn ok((status, body): (StatusCode, Value)) -> Value {
    assert_eq!(status, StatusCode::OK, "expected 200, got {status}: {body}");
    body
}

/// A 400 with Scale's error shape whose message names `parameter`.
#[track_caller]
fn bad_request_naming((status, body): (StatusCode, Value), parameter: &str) {
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let fields = body.as_object().expect("error body is an object");
    assert_eq!(fields.len(), 2, "{body}");
    assert_eq!(fields["status_code"], 400, "{body}");
    let message = fields["error"].as_str().expect("error is a string");
    assert!(
        message.contains(parameter),
        "message does not name '{parameter}': {message}"
    );
}

fn query(pairs: &[(&str, &str)]) -> String {
    let mut serializer = form_urlencoded::Serializer::new(String::new());
    for (key, value) in pairs {
        serializer.append_pair(key, value);
    }
    format!("/v1/tasks?{}", serializer.finish())
}

async fn list(app: &TestApp, pairs: &[(&str, &str)]) -> Value {
    let page = ok(app.get(&query(pairs)).await);
    check_envelope(&page);
    page
}

/// The envelope Scale's client reads, on every page.
#[track_caller]
fn check_envelope(page: &Value) {
    let docs = page["docs"]
        .as_array()
        .unwrap_or_else(|| panic!("no docs: {page}"));
    assert!(page["total"].as_u64().is_some(), "{page}");
    assert!(page["limit"].as_u64().is_some(), "{page}");
    assert_eq!(page["offset"], 0, "{page}");
    let has_more = page["has_more"]
        .as_bool()
        .unwrap_or_else(|| panic!("no has_more: {page}"));
    assert_eq!(page.get("next_token").is_some(), has_more, "{page}");
    if has_more {
        assert!(
            page["next_token"]
                .as_str()
                .is_some_and(|token| !token.is_empty()),
            "{page}"
        );
    }
    assert!(
        docs.len() as u64 <= page["limit"].as_u64().unwrap(),
        "{page}"
    );
}

async fn total(app: &TestApp, pairs: &[(&str, &str)]) -> u64 {
    list(app, pairs).await["total"].as_u64().unwrap()
}

fn ids(page: &Value) -> Vec<String> {
    page["docs"]
        .as_array()
        .unwrap()
        .iter()
        .map(task_id)
        .collect()
}

fn task_id(task: &Value) -> String {
    task["task_id"].as_str().expect("task_id").to_owned()
}

fn sorted(mut values: Vec<String>) -> Vec<String> {
    values.sort();
    values
}

async fn create(app: &TestApp, extra: Value) -> Value {
    ok(app.create_image_task(extra).await)
}

async fn create_many(app: &TestApp, count: usize) -> Vec<Value> {
    let mut tasks = Vec::with_capacity(count);
    for _ in 0..count {
        tasks.push(create(app, json!({})).await);
    }
    tasks
}

/// Follows `next_token` from the first page to the last, checking each envelope.
async fn all_pages(app: &TestApp, pairs: &[(&str, &str)]) -> Vec<Value> {
    let mut pages = vec![list(app, pairs).await];
    while let Some(token) = pages.last().unwrap()["next_token"]
        .as_str()
        .map(str::to_owned)
    {
        let mut next: Vec<(&str, &str)> = pairs.to_vec();
        next.push(("next_token", &token));
        pages.push(list(app, &next).await);
        assert!(pages.len() < 1000, "paging never ends");
    }
    pages
}

async fn an_empty_account_lists_an_empty_page(app: TestApp) {
    let page = list(&app, &[]).await;
    assert_eq!(page["docs"], json!([]));
    assert_eq!(page["total"], 0);
    assert_eq!(page["limit"], 100);
    assert_eq!(page["has_more"], false);
    assert!(page.get("next_token").is_none(), "{page}");
}

async fn the_default_page_holds_100_tasks(app: TestApp) {
    create_many(&app, 101).await;
    let first = list(&app, &[]).await;
    assert_eq!(first["limit"], 100);
    assert_eq!(first["docs"].as_array().unwrap().len(), 100);
    assert_eq!(first["total"], 101);
    assert_eq!(first["has_more"], true);
    let token = first["next_token"].as_str().unwrap();
    let second = list(&app, &[("next_token", token)]).await;
    assert_eq!(second["docs"].as_array().unwrap().len(), 1);
    assert_eq!(second["total"], 101);
    assert_eq!(second["has_more"], false);
    let mut seen: HashSet<String> = ids(&first).into_iter().collect();
    assert!(
        seen.insert(ids(&second)[0].clone()),
        "a task repeated across pages"
    );
}

async fn limit_must_be_between_1_and_100(app: TestApp) {
    create_many(&app, 3).await;
    for bad in ["0", "101", "abc", "-1", "1.5", "1000000000000000000000"] {
        bad_request_naming(app.get(&format!("/v1/tasks?limit={bad}")).await, "limit");
    }
    let one = list(&app, &[("limit", "1")]).await;
    assert_eq!(one["limit"], 1);
    assert_eq!(one["docs"].as_array().unwrap().len(), 1);
    assert_eq!(one["has_more"], true);
    let hundred = list(&app, &[("limit", "100")]).await;
    assert_eq!(hundred["limit"], 100);
    assert_eq!(hundred["docs"].as_array().unwrap().len(), 3);
    assert_eq!(hundred["has_more"], false);
}

async fn paging_by_next_token_yields_every_task_once_in_order(app: TestApp) {
    // Created concurrently, so that some share a created_at and the task_id tie-break matters.
    let created: Vec<Value> = join_all((0..25).map(|_| app.create_image_task(json!({}))))
        .await
        .into_iter()
        .map(ok)
        .collect();
    let pages = all_pages(&app, &[("limit", "7")]).await;
    let sizes: Vec<usize> = pages
        .iter()
        .map(|page| page["docs"].as_array().unwrap().len())
        .collect();
    assert_eq!(sizes, [7, 7, 7, 4]);
    for page in &pages {
        assert_eq!(page["total"], 25, "{page}");
        assert_eq!(page["limit"], 7, "{page}");
        assert_eq!(page["offset"], 0, "{page}");
    }
    let last = pages.last().unwrap();
    assert_eq!(last["has_more"], false);
    assert!(last.get("next_token").is_none(), "{last}");

    let docs: Vec<&Value> = pages
        .iter()
        .flat_map(|page| page["docs"].as_array().unwrap())
        .collect();
    let listed: Vec<String> = docs.iter().map(|doc| task_id(doc)).collect();
    let unique: HashSet<&String> = listed.iter().collect();
    assert_eq!(unique.len(), 25, "duplicates: {listed:?}");
    assert_eq!(
        sorted(listed.clone()),
        sorted(created.iter().map(task_id).collect())
    );
    let mut expected: Vec<(String, String)> = created
        .iter()
        .map(|task| {
            (
                task["created_at"].as_str().unwrap().to_owned(),
                task_id(task),
            )
        })
        .collect();
    expected.sort_by(|a, b| b.cmp(a));
    let expected: Vec<String> = expected.into_iter().map(|(_, id)| id).collect();
    assert_eq!(listed, expected);
}

async fn a_task_created_while_paging_causes_no_duplicate_or_skip(app: TestApp) {
    let older = create_many(&app, 10).await;
    let first = list(&app, &[("limit", "4")]).await;
    let token = first["next_token"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(3)).await;
    let newcomer = create(&app, json!({})).await;
    let mut listed = ids(&first);
    let mut token = Some(token);
    while let Some(current) = token {
        let page = list(&app, &[("limit", "4"), ("next_token", &current)]).await;
        listed.extend(ids(&page));
        token = page["next_token"].as_str().map(str::to_owned);
    }
    assert_eq!(listed.len(), 10, "{listed:?}");
    assert_eq!(sorted(listed), sorted(older.iter().map(task_id).collect()));
    // A fresh walk sees the newcomer first.
    let fresh = list(&app, &[("limit", "4")]).await;
    assert_eq!(ids(&fresh)[0], task_id(&newcomer));
    assert_eq!(fresh["total"], 11);
}

async fn a_malformed_next_token_is_a_400(app: TestApp) {
    create_many(&app, 3).await;
    for bad in [
        "garbage!!",
        "bm90IGpzb24",
        "eyJ0YXNrX2lkIjoiMSJ9",
        "e30",
        "eyJ0YXNrX2lkIjoienp6IiwiY3JlYXRlZF9hdCI6InllcyJ9",
    ] {
        bad_request_naming(app.get(&query(&[("next_token", bad)])).await, "next_token");
    }
}

async fn next_token_pages_keep_the_filters(app: TestApp) {
    let tasks = create_many(&app, 6).await;
    for task in tasks.iter().step_by(2) {
        ok(app
            .post(&format!("/v1/task/{}/cancel", task_id(task)), &json!({}))
            .await);
    }
    let pages = all_pages(&app, &[("status", "canceled"), ("limit", "2")]).await;
    assert_eq!(pages.len(), 2);
    let listed: Vec<String> = pages.iter().flat_map(ids).collect();
    let expected: Vec<String> = tasks.iter().step_by(2).map(task_id).collect();
    assert_eq!(sorted(listed), sorted(expected));
    for page in &pages {
        assert_eq!(page["total"], 3);
        for doc in page["docs"].as_array().unwrap() {
            assert_eq!(doc["status"], "canceled");
        }
    }
}

async fn status_filter_totals_follow_cancellations(app: TestApp) {
    let tasks = create_many(&app, 5).await;
    assert_eq!(total(&app, &[("status", "pending")]).await, 5);
    assert_eq!(total(&app, &[("status", "canceled")]).await, 0);
    for task in &tasks[..2] {
        ok(app
            .post(&format!("/v1/task/{}/cancel", task_id(task)), &json!({}))
            .await);
    }
    // A second cancel changes nothing, so it must not move the counts either.
    ok(app
        .post(
            &format!("/v1/task/{}/cancel", task_id(&tasks[0])),
            &json!({}),
        )
        .await);
    let pending = list(&app, &[("status", "pending")]).await;
    assert_eq!(pending["total"], 3);
    assert_eq!(
        sorted(ids(&pending)),
        sorted(tasks[2..].iter().map(task_id).collect())
    );
    let canceled = list(&app, &[("status", "canceled")]).await;
    assert_eq!(canceled["total"], 2);
    assert_eq!(
        sorted(ids(&canceled)),
        sorted(tasks[..2].iter().map(task_id).collect())
    );
    assert_eq!(total(&app, &[("status", "completed")]).await, 0);
    assert_eq!(total(&app, &[("status", "error")]).await, 0);
    assert_eq!(total(&app, &[]).await, 5);
    for bad in ["nope", "PENDING_", "cancelled"] {
        bad_request_naming(app.get(&query(&[("status", bad)])).await, "status");
    }
}

async fn type_project_and_batch_filters_match_exactly(app: TestApp) {
    app.create_project("my project", "imageannotation").await;
    app.create_project("other", "imageannotation").await;
    app.create_project("other-text", "categorization").await;
    app.create_batch("batch/1", "my project", json!({})).await;
    let plain = create(&app, json!({})).await;
    let in_project = create(&app, json!({"project": "my project"})).await;
    let in_batch = create(&app, json!({"project": "my project", "batch": "batch/1"})).await;
    let other_project = create(&app, json!({"project": "other"})).await;
    let categorization = ok(app
        .post(
            "/v1/task/categorization",
            &json!({
                "instruction": "Public or private?",
                "attachment": "https://www.google.com/",
                "attachment_type": "website",
                "categories": ["public", "private"],
                "project": "other-text",
            }),
        )
        .await);

    let by = |pairs: &'static [(&'static str, &'static str)]| {
        let app = &app;
        async move { sorted(ids(&list(app, pairs).await)) }
    };
    assert_eq!(
        by(&[("type", "categorization")]).await,
        [task_id(&categorization)]
    );
    assert_eq!(
        by(&[("type", "imageannotation")]).await,
        sorted(
            [&plain, &in_project, &in_batch, &other_project]
                .map(task_id)
                .to_vec()
        )
    );
    assert_eq!(
        by(&[("project", "my project")]).await,
        sorted(vec![task_id(&in_project), task_id(&in_batch)])
    );
    assert_eq!(by(&[("batch", "batch/1")]).await, [task_id(&in_batch)]);
    assert_eq!(
        by(&[("project", "other"), ("type", "imageannotation")]).await,
        [task_id(&other_project)]
    );
    assert_eq!(by(&[("project", "nobody")]).await, Vec::<String>::new());
    assert_eq!(total(&app, &[("project", "other")]).await, 1);
    assert_eq!(
        total(&app, &[("project", "other"), ("type", "categorization")]).await,
        0
    );
    assert_eq!(
        total(
            &app,
            &[("project", "other-text"), ("type", "categorization")]
        )
        .await,
        1
    );
    assert_eq!(
        total(&app, &[("batch", "batch/1"), ("project", "other")]).await,
        0
    );

    ok(app
        .post(
            &format!("/v1/task/{}/cancel", task_id(&in_batch)),
            &json!({}),
        )
        .await);
    assert_eq!(
        total(&app, &[("project", "my project"), ("status", "pending")]).await,
        1
    );
    assert_eq!(
        total(&app, &[("batch", "batch/1"), ("status", "canceled")]).await,
        1
    );
    assert_eq!(
        total(&app, &[("type", "imageannotation"), ("status", "pending")]).await,
        3
    );
}

async fn unique_id_filter_matches_any_of_the_given_values(app: TestApp) {
    let a = create(&app, json!({"unique_id": "a"})).await;
    let b = create(&app, json!({"unique_id": "b"})).await;
    create(&app, json!({"unique_id": "c"})).await;
    create(&app, json!({})).await;
    let one = list(&app, &[("unique_id", "a")]).await;
    assert_eq!(ids(&one), [task_id(&a)]);
    assert_eq!(one["total"], 1);
    let two = list(
        &app,
        &[("unique_id", "a"), ("unique_id", "b"), ("unique_id", "zzz")],
    )
    .await;
    assert_eq!(two["total"], 2);
    assert_eq!(sorted(ids(&two)), sorted(vec![task_id(&a), task_id(&b)]));
    assert_eq!(total(&app, &[("unique_id", "zzz")]).await, 0);
}

async fn tags_filter_requires_every_given_tag(app: TestApp) {
    let both = create(&app, json!({"tags": ["x", "y"]})).await;
    let only_x = create(&app, json!({"tags": ["x"]})).await;
    let only_y = create(&app, json!({"tags": ["y", "z"]})).await;
    create(&app, json!({})).await;
    let x = list(&app, &[("tags", "x")]).await;
    assert_eq!(x["total"], 2);
    assert_eq!(
        sorted(ids(&x)),
        sorted(vec![task_id(&both), task_id(&only_x)])
    );
    let xy = list(&app, &[("tags", "x"), ("tags", "y")]).await;
    assert_eq!(xy["total"], 1);
    assert_eq!(ids(&xy), [task_id(&both)]);
    assert_eq!(total(&app, &[("tags", "x"), ("tags", "z")]).await, 0);
    assert_eq!(total(&app, &[("tags", "nope")]).await, 0);
    // Tag changes are seen by the filter.
    ok(app
        .send(
            app.request(Method::PUT, &format!("/v1/task/{}/tags", task_id(&only_y)))
                .json(&json!(["x"])),
        )
        .await);
    assert_eq!(total(&app, &[("tags", "x"), ("tags", "y")]).await, 2);
    ok(app
        .send(
            app.request(Method::DELETE, &format!("/v1/task/{}/tags", task_id(&both)))
                .json(&json!(["x"])),
        )
        .await);
    let xy = list(&app, &[("tags", "x"), ("tags", "y")]).await;
    assert_eq!(ids(&xy), [task_id(&only_y)]);
}

async fn customer_review_status_is_comma_separated_and_matches_nothing_yet(app: TestApp) {
    create_many(&app, 2).await;
    for value in ["accepted", "accepted,fixed", "accepted, rejected ,fixed"] {
        let page = list(&app, &[("customer_review_status", value)]).await;
        assert_eq!(page["total"], 0, "{value}: {page}");
        assert_eq!(page["docs"], json!([]), "{value}");
    }
}

async fn created_time_filters_are_inclusive_and_take_every_documented_format(app: TestApp) {
    let first = create(&app, json!({})).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let second = create(&app, json!({})).await;
    let first_at = first["created_at"].as_str().unwrap();
    let second_at = second["created_at"].as_str().unwrap();
    assert!(first_at < second_at);

    for (from, to) in [
        ("start_time", "end_time"),
        ("created_after", "created_before"),
    ] {
        assert_eq!(
            sorted(ids(&list(&app, &[(from, first_at)]).await)),
            sorted(vec![task_id(&first), task_id(&second)])
        );
        assert_eq!(
            ids(&list(&app, &[(from, second_at)]).await),
            [task_id(&second)]
        );
        assert_eq!(ids(&list(&app, &[(to, first_at)]).await), [task_id(&first)]);
        assert_eq!(
            ids(&list(&app, &[(from, first_at), (to, first_at)]).await),
            [task_id(&first)]
        );
        assert_eq!(total(&app, &[(from, second_at), (to, second_at)]).await, 1);
    }

    let past = [
        "2021-04-25",
        "2021-04-25Z",
        "2021-04-25T03:14:15-07:00",
        "2021-04-25T03:14:15+02:00",
        "2021-04-25 03:14:15.123456",
        "2021-04-25 03:14:15.123456Z",
        "2021-04-25T03:14:15Z",
        "2021-04-25T03:14:15.123Z",
        "2021-04-25T03:14:15",
    ];
    let future = [
        "2999-01-01",
        "2999-01-01T00:00:00-07:00",
        "2999-01-01 00:00:00.000001",
        "2999-01-01T00:00:00Z",
    ];
    for name in ["start_time", "created_after"] {
        for at in past {
            assert_eq!(total(&app, &[(name, at)]).await, 2, "{name}={at}");
        }
        for at in future {
            assert_eq!(total(&app, &[(name, at)]).await, 0, "{name}={at}");
        }
    }
    for name in ["end_time", "created_before"] {
        for at in past {
            assert_eq!(total(&app, &[(name, at)]).await, 0, "{name}={at}");
        }
        for at in future {
            assert_eq!(total(&app, &[(name, at)]).await, 2, "{name}={at}");
        }
    }
}

/// Window totals come from hourly counters plus row counts of the partial hours at the edges:
/// every combination must equal what the rows say, and follow status changes.
async fn creation_window_totals_match_the_rows_whatever_the_edges(app: TestApp) {
    let tasks = create_many(&app, 12).await;
    for task in tasks.iter().take(4) {
        let id = task_id(task);
        let (status, _) = app.post(&format!("/v1/task/{id}/cancel"), &json!({})).await;
        assert_eq!(status, StatusCode::OK);
    }
    let first_created = tasks
        .iter()
        .map(|task| task["created_at"].as_str().unwrap().to_owned())
        .min()
        .unwrap();
    let windows: [(&str, &str); 6] = [
        // Whole hours only, edges empty.
        ("2020-01-01T00:30:00Z", "2999-12-31T23:10:00Z"),
        // Hour-aligned bounds.
        ("2020-01-01T00:00:00Z", "2999-12-31T23:59:59.999Z"),
        // The lower edge cuts this hour: counted row by row.
        (&first_created, "2999-12-31T23:10:00Z"),
        // Within one hour.
        (&first_created, &first_created),
        // Before everything.
        ("2020-01-01T00:30:00Z", "2020-01-02T00:00:00Z"),
        // Empty (from after to).
        ("2999-01-01T00:00:00Z", "2020-01-01T00:00:00Z"),
    ];
    for (from, to) in windows {
        for status in [None, Some("pending"), Some("canceled")] {
            let mut pairs = vec![("start_time", from), ("end_time", to)];
            if let Some(status) = status {
                pairs.push(("status", status));
            }
            let rows: u64 = all_pages(&app, &pairs)
                .await
                .iter()
                .map(|page| ids(page).len() as u64)
                .sum();
            assert_eq!(
                total(&app, &pairs).await,
                rows,
                "window {from} .. {to}, status {status:?}"
            );
        }
    }
    assert_eq!(
        total(
            &app,
            &[
                ("start_time", "2020-01-01T00:30:00Z"),
                ("status", "canceled")
            ]
        )
        .await,
        4
    );
    assert_eq!(
        total(
            &app,
            &[("end_time", "2999-12-31T23:10:00Z"), ("status", "pending")]
        )
        .await,
        8
    );
}

/// Completion and update windows are summed from hourly counters too (update hours being
/// creation hours plus shifts). Tasks moved through the store to other hours (some twice, some
/// back to their creation hour, some completed) must count exactly as their rows do, in the
/// store and over REST, for windows with partial edges, whole hours, one hour, open ends.
async fn completion_and_update_window_totals_match_the_rows_across_hours(app: TestApp) {
    const MINUTE: i64 = 60_000;
    const HOUR: i64 = 60 * MINUTE;
    let tasks = create_many(&app, 12).await;
    let store = Store::connect(&app.database_url, &DatabasePool::default())
        .await
        .unwrap();
    let account_id = store.find_account_id(&app.account).await.unwrap().unwrap();
    let scope = Scope {
        account_id,
        is_test: false,
    };
    let no_batch = |_: &Batch| -> Option<NewDelivery> { None };
    let at = Timestamp::from_millis;
    // An hour in 2030, well after the tasks were created.
    let base = 1_900_000_000_000 - 1_900_000_000_000 % HOUR;
    for (k, task) in (0_i64..).zip(&tasks) {
        let id = TaskId::parse(&task_id(task)).unwrap();
        let created_at = Timestamp::parse_filter(task["created_at"].as_str().unwrap()).unwrap();
        let mut moves = vec![base + k * 37 * MINUTE];
        if k % 4 == 1 {
            moves.push(base + k * 37 * MINUTE + 5 * HOUR + 3 * MINUTE);
        }
        if k % 5 == 2 {
            // Back in its creation hour: its shift rows cancel out.
            moves.push(created_at.millis() + 1);
        }
        for (step, updated_at) in moves.into_iter().enumerate() {
            let complete = step == 0 && k % 3 == 0;
            store
                .update_task(
                    scope,
                    &id,
                    |task| {
                        task.updated_at = at(updated_at);
                        if complete {
                            task.status = TaskStatus::Completed;
                            task.completed_at = Some(at(updated_at));
                            task.response = Some(json!({"ok": true}));
                        }
                        Ok(None)
                    },
                    &no_batch,
                )
                .await
                .unwrap();
        }
    }
    let windows: Vec<(Option<i64>, Option<i64>)> = vec![
        // Partial hours at both edges, whole hours between.
        (
            Some(base - 10 * HOUR + 13 * MINUTE),
            Some(base + 9 * HOUR + 20 * MINUTE),
        ),
        // Whole hours only.
        (Some(base + HOUR), Some(base + 3 * HOUR - 1)),
        // Within one hour.
        (Some(base + 50 * MINUTE), Some(base + 55 * MINUTE)),
        // Open at one end.
        (Some(base + 2 * HOUR + 7 * MINUTE), None),
        (None, Some(base + 4 * HOUR + MINUTE)),
        // From before the tasks were created: the ones back in their creation hour too.
        (
            Some(1_600_000_000_000 + 30 * MINUTE),
            Some(base + 30 * MINUTE),
        ),
        (Some(1_600_000_000_000 + 30 * MINUTE), None),
        // Empty.
        (Some(base + 3 * HOUR), Some(base + HOUR)),
    ];
    let checked = window_totals_match_the_rows(&app, &store, scope, &windows).await;
    // The windows are not all empty: most of them hold tasks.
    assert!(checked > 30, "{checked}");
    let completed_since = |from: i64| TaskFilter {
        completed: window_range((Some(from), None)),
        ..TaskFilter::default()
    };
    let total_of = |filter: TaskFilter| {
        let store = &store;
        async move { store.list_page(scope, &filter, None, 0, 1).await.unwrap().1 }
    };
    assert_eq!(total_of(completed_since(base)).await, 4);

    // Migration 10 fills its counters from the tasks as they stand: undone and run again, the
    // totals still match the rows.
    let db = sea_orm::Database::connect(&app.database_url).await.unwrap();
    for undo in [
        "DROP TABLE task_event_hour_counts",
        "DROP INDEX ix_tasks_updated",
        "DROP INDEX ix_tasks_completed",
        "ALTER TABLE tasks DROP COLUMN updated_hour",
        "DELETE FROM seaql_migrations WHERE version = 'm20261201_000010_task_event_hour_counts'",
    ] {
        sea_orm::ConnectionTrait::execute_unprepared(&db, undo)
            .await
            .unwrap();
    }
    db.close().await.unwrap();
    store.migrate().await.unwrap();
    assert_eq!(
        window_totals_match_the_rows(&app, &store, scope, &windows).await,
        checked
    );
    assert_eq!(total_of(completed_since(base)).await, 4);
    store.close().await;
}

fn window_range((from, to): (Option<i64>, Option<i64>)) -> TimeRange {
    TimeRange {
        from: from.map(Timestamp::from_millis),
        to: to.map(Timestamp::from_millis),
    }
}

/// Checks every window on the update and completion clocks (and both at once), with and
/// without a status: the store's total against its rows, and over REST; returns how many
/// checks found tasks.
async fn window_totals_match_the_rows(
    app: &TestApp,
    store: &Store,
    scope: Scope,
    windows: &[(Option<i64>, Option<i64>)],
) -> u64 {
    let mut checked = 0;
    for window in windows {
        for status in [None, Some(TaskStatus::Pending), Some(TaskStatus::Completed)] {
            for clock in ["updated", "completed", "both"] {
                let mut filter = TaskFilter {
                    status,
                    ..TaskFilter::default()
                };
                if clock != "completed" {
                    filter.updated = window_range(*window);
                }
                if clock != "updated" {
                    filter.completed = window_range(*window);
                }
                let (docs, total) = store
                    .list_page(scope, &filter, None, 0, 1_000)
                    .await
                    .unwrap();
                assert_eq!(
                    total,
                    docs.len() as u64,
                    "{clock} window {window:?}, status {status:?}"
                );
                checked += u64::from(total > 0);
            }
        }
        for clock in ["updated", "completed"] {
            let (after, before) = (format!("{clock}_after"), format!("{clock}_before"));
            let iso = |at: Option<i64>| at.map(|at| Timestamp::from_millis(at).to_iso());
            let (from, to) = (iso(window.0), iso(window.1));
            let mut pairs = Vec::new();
            if let Some(from) = &from {
                pairs.push((after.as_str(), from.as_str()));
            }
            if let Some(to) = &to {
                pairs.push((before.as_str(), to.as_str()));
            }
            let rows: u64 = all_pages(app, &pairs)
                .await
                .iter()
                .map(|page| ids(page).len() as u64)
                .sum();
            assert_eq!(total(app, &pairs).await, rows, "REST {pairs:?}");
        }
    }
    checked
}

/// A page and its total come from one snapshot: while tasks are being created, a last page
/// (no `has_more`) always holds exactly `total` tasks.
async fn a_page_and_its_total_agree_under_concurrent_creates(app: TestApp) {
    let writer = {
        let app_url = app.base_url.clone();
        let key = app.api_key.clone();
        let http = app.http.clone();
        tokio::spawn(async move {
            for round in 0..12 {
                let creates = (0..8).map(|n| {
                    http.post(format!("{app_url}/v1/task/imageannotation"))
                        .basic_auth(&key, Some(""))
                        .json(&json!({
                            "instruction": "Box", "attachment": format!("https://e.com/{round}-{n}.png"),
                            "geometries": {"box": {"objects_to_annotate": ["car"]}},
                        }))
                        .send()
                });
                for answer in futures::future::join_all(creates).await {
                    assert!(answer.expect("create sent").status().is_success());
                }
            }
        })
    };
    let mut checked = 0;
    while !writer.is_finished() {
        let page = list(&app, &[("limit", "100")]).await;
        if page["has_more"] == json!(false) {
            assert_eq!(
                ids(&page).len() as u64,
                page["total"].as_u64().unwrap(),
                "{page}"
            );
            checked += 1;
        }
    }
    writer.await.expect("writer");
    assert!(checked > 5, "only {checked} pages checked");
}

/// Rare tags (up to 5,000 tasks) are looked up through their tag rows, common ones by walking
/// the list; both must give the same pages and totals.
async fn rare_and_common_tags_page_and_count_alike(app: TestApp) {
    const COMMON: usize = 5_100;
    let body: String = (0..COMMON)
        .map(|n| {
            let mut tags = vec!["common".to_owned()];
            if n % 170 == 0 {
                tags.push("rare".to_owned());
            }
            json!({"type": "imageannotation", "instruction": "Box",
                   "attachment": format!("https://e.com/{n}.png"),
                   "geometries": {"box": {"objects_to_annotate": ["car"]}},
                   "tags": tags})
            .to_string()
                + "\n"
        })
        .collect();
    let response = app
        .request(reqwest::Method::POST, "/v1/tasks/import")
        .body(body)
        .send()
        .await
        .expect("import");
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.text().await.unwrap().contains(r#""created":5100"#));
    let first = ok(app.get("/v1/tasks?tags=rare&limit=1").await);
    let rare_id = ids(&first)[0].clone();
    let (status, _) = app
        .post(&format!("/v1/task/{rare_id}/cancel"), &json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);

    for (pairs, expected) in [
        (vec![("tags", "common")], COMMON),
        (vec![("tags", "rare")], 30),
        (vec![("tags", "common"), ("tags", "rare")], 30),
        (vec![("tags", "rare"), ("status", "pending")], 29),
        (vec![("tags", "common"), ("status", "canceled")], 1),
        (vec![("tags", "rare"), ("tags", "missing")], 0),
    ] {
        assert_eq!(total(&app, &pairs).await, expected as u64, "{pairs:?}");
        let mut paged = pairs.clone();
        paged.push(("limit", "100"));
        let listed: Vec<String> = all_pages(&app, &paged).await.iter().flat_map(ids).collect();
        assert_eq!(listed.len(), expected, "{pairs:?}");
    }
}

async fn time_offsets_and_naive_times_mean_the_same_instant(app: TestApp) {
    let task = create(&app, json!({})).await;
    let created = chrono::DateTime::parse_from_rfc3339(task["created_at"].as_str().unwrap())
        .unwrap()
        .with_timezone(&chrono::Utc);
    let pacific = chrono::FixedOffset::west_opt(7 * 3600).unwrap();
    let in_pacific = created
        .with_timezone(&pacific)
        .format("%Y-%m-%dT%H:%M:%S%.3f%:z")
        .to_string();
    let naive = created.format("%Y-%m-%d %H:%M:%S%.6f").to_string();
    let zulu = created.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string();
    for at in [&in_pacific, &naive, &zulu] {
        assert_eq!(
            total(&app, &[("start_time", at), ("end_time", at)]).await,
            1,
            "{at}"
        );
    }
    let a_millisecond_later = created + chrono::Duration::milliseconds(1);
    let later = a_millisecond_later
        .with_timezone(&pacific)
        .format("%Y-%m-%dT%H:%M:%S%.3f%:z")
        .to_string();
    assert_eq!(total(&app, &[("start_time", &later)]).await, 0, "{later}");
    assert_eq!(total(&app, &[("end_time", &later)]).await, 1, "{later}");
}

async fn updated_after_sees_only_recently_changed_tasks(app: TestApp) {
    let untouched = create(&app, json!({})).await;
    let touched = create(&app, json!({})).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let changed = ok(app
        .post(
            &format!("/v1/task/{}/setMetadata", task_id(&touched)),
            &json!({"v": 2}),
        )
        .await);
    let changed_at = changed["updated_at"].as_str().unwrap();
    assert!(changed_at > untouched["updated_at"].as_str().unwrap());
    let page = list(&app, &[("updated_after", changed_at)]).await;
    assert_eq!(ids(&page), [task_id(&touched)]);
    assert_eq!(page["total"], 1);
    let before = list(
        &app,
        &[("updated_before", untouched["updated_at"].as_str().unwrap())],
    )
    .await;
    assert_eq!(ids(&before), [task_id(&untouched)]);
    assert_eq!(total(&app, &[("updated_after", "2021-04-25")]).await, 2);
    // Nothing is completed yet.
    assert_eq!(total(&app, &[("completed_after", "2021-04-25")]).await, 0);
    assert_eq!(total(&app, &[("completed_before", "2999-01-01")]).await, 0);
}

async fn a_bad_time_is_a_400_naming_the_parameter(app: TestApp) {
    for name in [
        "start_time",
        "end_time",
        "created_after",
        "created_before",
        "completed_after",
        "completed_before",
        "updated_after",
        "updated_before",
    ] {
        for bad in [
            "yesterday",
            "2021-13-01",
            "2021-04-25T25:00:00",
            "1619320455",
            "25/04/2021",
        ] {
            bad_request_naming(app.get(&query(&[(name, bad)])).await, name);
        }
    }
}

async fn limited_response_keeps_only_task_id_status_metadata_and_project(app: TestApp) {
    app.create_project("proj", "imageannotation").await;
    create(
        &app,
        json!({"metadata": {"k": "v"}, "unique_id": "u", "tags": ["t"]}),
    )
    .await;
    create(
        &app,
        json!({"project": "proj", "callback_url": "https://example.com/cb"}),
    )
    .await;
    for value in ["true", "True", "1"] {
        let page = list(&app, &[("limited_response", value)]).await;
        assert_eq!(page["total"], 2);
        let docs = page["docs"].as_array().unwrap();
        assert_eq!(docs.len(), 2);
        for doc in docs {
            let mut keys: Vec<&str> = doc
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            keys.sort_unstable();
            if doc.get("project").is_some() {
                assert_eq!(keys, ["metadata", "project", "status", "task_id"], "{doc}");
                assert_eq!(doc["project"], "proj");
                assert_eq!(doc["metadata"], json!({}));
            } else {
                assert_eq!(keys, ["metadata", "status", "task_id"], "{doc}");
                assert_eq!(doc["metadata"], json!({"k": "v"}));
            }
            assert_eq!(doc["status"], "pending");
        }
    }
    for value in ["false", "False", "0"] {
        let page = list(&app, &[("limited_response", value)]).await;
        for doc in page["docs"].as_array().unwrap() {
            assert!(
                doc.get("created_at").is_some() && doc.get("params").is_some(),
                "{doc}"
            );
        }
    }
    bad_request_naming(
        app.get(&query(&[("limited_response", "maybe")])).await,
        "limited_response",
    );
}

async fn unknown_parameters_are_ignored(app: TestApp) {
    create_many(&app, 3).await;
    let page = list(
        &app,
        &[("foo", "bar"), ("limit", "2"), ("sort", "whatever")],
    )
    .await;
    assert_eq!(page["limit"], 2);
    assert_eq!(page["total"], 3);
    assert_eq!(page["docs"].as_array().unwrap().len(), 2);
    assert_eq!(page["offset"], 0);
}

async fn full_docs_are_task_objects_newest_first(app: TestApp) {
    let older = create(&app, json!({"metadata": {"n": 1}})).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let newer = create(&app, json!({"metadata": {"n": 2}, "tags": ["t"]})).await;
    let page = list(&app, &[]).await;
    assert_eq!(page["docs"], json!([newer, older]));
}

async fn another_accounts_tasks_are_never_listed(app: TestApp) {
    app.create_project("p", "imageannotation").await;
    create(
        &app,
        json!({"unique_id": "mine", "project": "p", "tags": ["t"]}),
    )
    .await;
    let stranger = app.new_account_key(false).await;
    for path in [
        "/v1/tasks",
        "/v1/tasks?unique_id=mine",
        "/v1/tasks?project=p",
        "/v1/tasks?tags=t",
        "/v1/tasks?status=pending",
        "/v1/tasks?type=imageannotation",
    ] {
        let page = ok(app.send(app.request_as(&stranger, Method::GET, path)).await);
        assert_eq!(page["total"], 0, "{path}: {page}");
        assert_eq!(page["docs"], json!([]), "{path}");
    }
    assert_eq!(total(&app, &[("project", "p")]).await, 1);
}

/// A total filtered by one tag (and a status) is read from per-tag counters: they must follow
/// every way a task gains or loses a tag or changes status, in both worlds.
async fn one_tag_totals_follow_every_tag_and_status_change(app: TestApp) {
    let create = |tags: Value| {
        let app = &app;
        async move {
            let (status, task) = app.create_image_task(json!({"tags": tags})).await;
            assert_eq!(status, StatusCode::OK, "{task}");
            task["task_id"].as_str().expect("task_id").to_owned()
        }
    };
    let a = create(json!(["a"])).await;
    let ab = create(json!(["a", "b"])).await;
    let b = create(json!(["b"])).await;
    let none = create(json!([])).await;
    let _a2 = create(json!(["a"])).await;
    let tags = |id: &str, method: Method, body: Value| {
        app.request(method, &format!("/v1/task/{id}/tags"))
            .json(&body)
    };
    ok(app.send(tags(&none, Method::PUT, json!(["c", "a"]))).await); // add
    ok(app.send(tags(&ab, Method::POST, json!(["c"]))).await); // replace
    ok(app.send(tags(&b, Method::DELETE, json!(["b"]))).await); // remove the last
    ok(app.send(tags(&a, Method::PUT, json!(["a"]))).await); // a tag it has: no change
    ok(app
        .send(app.request(Method::POST, &format!("/v1/task/{a}/cancel")))
        .await);
    ok(app
        .send(app.request(Method::POST, &format!("/v1/task/{none}/cancel")))
        .await);
    // A completion through the work queue.
    let claimed = ok(app
        .send(
            app.request(Method::POST, "/v1/work/claim")
                .json(&json!({"limit": 1})),
        )
        .await);
    let lease = &claimed["leases"][0];
    let leased_id = lease["task"]["task_id"]
        .as_str()
        .expect("claimed")
        .to_owned();
    ok(app
        .send(
            app.request(Method::POST, &format!("/v1/task/{leased_id}/complete"))
                .json(&json!({"lease_token": lease["lease_token"], "response": {"boxes": []}})),
        )
        .await);
    // The test world keeps counters of its own.
    let test_key = app.key_for_same_account(&app.account, true).await;
    let (status, _) = app
        .send(
            app.request_as(&test_key, Method::POST, "/v1/task/imageannotation")
                .json(
                    &json!({"attachment": "https://e.com/t.png", "geometries": {"box": {}},
                              "tags": ["a"]}),
                ),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    let everything = list(&app, &[("limit", "100")]).await;
    let tasks = everything["docs"].as_array().expect("docs");
    let truth = |tag: &str, status: Option<&str>| {
        tasks
            .iter()
            .filter(|task| {
                task["tags"]
                    .as_array()
                    .is_some_and(|tags| tags.iter().any(|t| t == tag))
                    && status.is_none_or(|status| task["status"] == status)
            })
            .count() as u64
    };
    let mut checked = 0;
    for tag in ["a", "b", "c", "d"] {
        for status in [None, Some("pending"), Some("canceled"), Some("completed")] {
            let mut pairs = vec![("tags", tag)];
            if let Some(status) = status {
                pairs.push(("status", status));
            }
            assert_eq!(
                total(&app, &pairs).await,
                truth(tag, status),
                "tag {tag}, status {status:?}"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 16);
    assert!(truth("a", None) >= 2 && truth("c", None) == 2, "{tasks:?}");
    let test_total = ok(app
        .send(app.request_as(&test_key, Method::GET, "/v1/tasks?tags=a"))
        .await)["total"]
        .as_u64();
    assert_eq!(test_total, Some(1));
}

backend_tests!(
    one_tag_totals_follow_every_tag_and_status_change,
    rare_and_common_tags_page_and_count_alike,
    a_page_and_its_total_agree_under_concurrent_creates,
    creation_window_totals_match_the_rows_whatever_the_edges,
    completion_and_update_window_totals_match_the_rows_across_hours,
    an_empty_account_lists_an_empty_page,
    the_default_page_holds_100_tasks,
    limit_must_be_between_1_and_100,
    paging_by_next_token_yields_every_task_once_in_order,
    a_task_created_while_paging_causes_no_duplicate_or_skip,
    a_malformed_next_token_is_a_400,
    next_token_pages_keep_the_filters,
    status_filter_totals_follow_cancellations,
    type_project_and_batch_filters_match_exactly,
    unique_id_filter_matches_any_of_the_given_values,
    tags_filter_requires_every_given_tag,
    customer_review_status_is_comma_separated_and_matches_nothing_yet,
    created_time_filters_are_inclusive_and_take_every_documented_format,
    time_offsets_and_naive_times_mean_the_same_instant,
    updated_after_sees_only_recently_changed_tasks,
    a_bad_time_is_a_400_naming_the_parameter,
    limited_response_keeps_only_task_id_status_metadata_and_project,
    unknown_parameters_are_ignored,
    full_docs_are_task_objects_newest_first,
    another_accounts_tasks_are_never_listed,
);
