//! Crash cycles (issue 11): the real binary is started over one database, driven with
//! concurrent writes (creates with a unique_id or an Idempotency-Key, contended unique_ids,
//! cancels, tags, metadata, unique_id changes, work-queue claims and completions) and
//! SIGKILLed at a random moment with requests in flight — again and again. After every crash
//! a fresh replica must show every acknowledged write (each task's latest acknowledged
//! state), at most one holder per unique_id, replays of acknowledged Idempotency-Keys, a
//! retried in-flight keyed create taking effect exactly once, exact counts, and in the end a
//! callback for every completion.
//!
//! `ANNOTASK_CRASH_CYCLES` sets the number of cycles (50 by default), `ANNOTASK_CRASH_SEED`
//! the random seed (printed in the summary).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    time::{Duration, Instant},
};

use futures::{future::join_all, stream, StreamExt};
use rand::{rngs::StdRng, Rng, SeedableRng};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::{
    callbacks::{Answer, Receiver},
    helpers::{Backend, TestApp},
    process::ServerProcess,
};

/// Concurrent clients per cycle.
const WORKERS: usize = 6;
/// The project whose tasks the work queue hands out (the others are never claimed).
const QUEUE: &str = "crash-queue";
/// How many unique_ids per cycle several clients race to create.
const CONTENDED: u32 = 3;
/// Requests to a replica that is verified run this many at once.
const VERIFY_CONCURRENCY: usize = 8;
/// A crash may strand a claimed delivery for the attempt timeout plus the server's 30 s claim
/// margin before another replica may send it.
const CALLBACK_WAIT: Duration = Duration::from_secs(50);

const REPLICA_ENV: [(&str, &str); 4] = [
    ("ANNOTASK_ALLOW_PRIVATE_CALLBACKS", "true"),
    ("ANNOTASK_CALLBACK_SCHEDULE", "200ms,200ms,200ms"),
    ("ANNOTASK_CALLBACK_TIMEOUT", "2s"),
    ("ANNOTASK_DATABASE_MAX_CONNECTIONS", "8"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_acknowledged_writes_survive_repeated_crashes() {
    crash_cycles(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_acknowledged_writes_survive_repeated_crashes() {
    crash_cycles(Backend::Postgres).await;
}

/// What a client can see of a task, compared between what was acknowledged and what is read.
#[derive(Debug, Clone, PartialEq)]
struct State {
    status: String,
    unique_id: Option<String>,
    tags: Option<Vec<String>>,
    metadata: Value,
    attachment: String,
    callback_url: String,
    project: Option<String>,
    response: Option<Value>,
}

impl State {
    fn of(task: &Value) -> State {
        let text = |field: &str| task.get(field).and_then(Value::as_str).map(str::to_owned);
        State {
            status: text("status").unwrap_or_else(|| panic!("no status: {task}")),
            unique_id: text("unique_id"),
            tags: task.get("tags").and_then(Value::as_array).map(|tags| {
                tags.iter()
                    .map(|tag| tag.as_str().expect("tags are strings").to_owned())
                    .collect()
            }),
            metadata: task["metadata"].clone(),
            attachment: task["params"]["attachment"]
                .as_str()
                .unwrap_or_else(|| panic!("no attachment: {task}"))
                .to_owned(),
            callback_url: text("callback_url").unwrap_or_default(),
            project: text("project"),
            response: task.get("response").filter(|r| !r.is_null()).cloned(),
        }
    }

    /// The task a creation body asks for.
    fn intended(body: &Value) -> State {
        let text = |field: &str| body.get(field).and_then(Value::as_str).map(str::to_owned);
        State {
            status: "pending".to_owned(),
            unique_id: text("unique_id"),
            tags: body.get("tags").and_then(Value::as_array).map(|tags| {
                tags.iter()
                    .map(|tag| tag.as_str().expect("tag").to_owned())
                    .collect()
            }),
            metadata: body.get("metadata").cloned().unwrap_or_else(|| json!({})),
            attachment: text("attachment").expect("attachment"),
            callback_url: text("callback_url").unwrap_or_default(),
            project: text("project"),
            response: None,
        }
    }

    fn apply(&self, change: &Change) -> State {
        let mut next = self.clone();
        match change {
            Change::Cancel { clear_unique_id } => {
                if next.status == "pending" {
                    next.status = "canceled".to_owned();
                }
                if *clear_unique_id {
                    next.unique_id = None;
                }
            }
            Change::AddTags(tags) => {
                let current = next.tags.get_or_insert_with(Vec::new);
                for tag in tags {
                    if !current.contains(tag) {
                        current.push(tag.clone());
                    }
                }
            }
            Change::SetTags(tags) => next.tags = Some(tags.clone()),
            Change::SetMetadata(metadata) => next.metadata = metadata.clone(),
            Change::SetUniqueId(unique_id) => next.unique_id = Some(unique_id.clone()),
            Change::DeleteUniqueId => next.unique_id = None,
            Change::Complete { response, .. } => {
                next.status = "completed".to_owned();
                next.response = Some(response.clone());
            }
        }
        next
    }
}

#[derive(Debug, Clone)]
enum Change {
    Cancel {
        clear_unique_id: bool,
    },
    AddTags(Vec<String>),
    SetTags(Vec<String>),
    SetMetadata(Value),
    SetUniqueId(String),
    DeleteUniqueId,
    Complete {
        lease_token: String,
        response: Value,
    },
}

impl Change {
    /// Method, path below `/v1/task/{id}/`, and body.
    fn request(&self) -> (Method, String, Option<Value>) {
        match self {
            Change::Cancel { clear_unique_id } => (
                Method::POST,
                if *clear_unique_id {
                    "cancel?clear_unique_id=true".to_owned()
                } else {
                    "cancel".to_owned()
                },
                None,
            ),
            Change::AddTags(tags) => (Method::PUT, "tags".to_owned(), Some(json!(tags))),
            Change::SetTags(tags) => (Method::POST, "tags".to_owned(), Some(json!(tags))),
            Change::SetMetadata(metadata) => (
                Method::POST,
                "setMetadata".to_owned(),
                Some(metadata.clone()),
            ),
            Change::SetUniqueId(unique_id) => (
                Method::POST,
                "unique_id".to_owned(),
                Some(json!({ "unique_id": unique_id })),
            ),
            Change::DeleteUniqueId => (Method::DELETE, "unique_id".to_owned(), None),
            Change::Complete {
                lease_token,
                response,
            } => (
                Method::POST,
                "complete".to_owned(),
                Some(json!({"lease_token": lease_token, "response": response})),
            ),
        }
    }
}

/// An acknowledged keyed create: replaying it must return `raw` again, byte for byte.
#[derive(Debug, Clone)]
struct KeyRecord {
    key: String,
    body: Value,
    task_id: String,
    raw: String,
}

/// A request answered with success before the crash.
#[derive(Debug)]
enum Event {
    Created {
        task: Value,
        key: Option<KeyRecord>,
        mutable: bool,
    },
    /// A claim proves the task exists, even when its create was not acknowledged.
    Claimed {
        task: Value,
    },
    Changed {
        task_id: String,
        state: State,
    },
    /// A create racing others for one unique_id: `Ok(its task)` or `Err(the holder named by the 409)`.
    Contended {
        unique_id: String,
        outcome: Result<String, String>,
    },
    Replayed,
}

/// The one request a client had sent without an answer when the server died: it may or may
/// not have taken effect.
#[derive(Debug, Clone)]
enum InFlight {
    Create {
        key: Option<String>,
        body: Value,
        mutable: bool,
    },
    Change {
        task_id: String,
        before: Box<State>,
        after: Box<State>,
    },
}

#[derive(Debug, Default)]
struct Log {
    events: Vec<Event>,
    in_flight: Option<InFlight>,
    leases_lost: usize,
}

struct Reply {
    status: StatusCode,
    replayed: bool,
    text: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|err| panic!("answer is not JSON ({err}): {}", self.text))
    }
}

/// A client of one replica.
#[derive(Clone)]
struct Client {
    http: reqwest::Client,
    base_url: String,
    api_key: String,
}

impl Client {
    fn new(base_url: &str, api_key: &str) -> Client {
        Client {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("http client"),
            base_url: base_url.to_owned(),
            api_key: api_key.to_owned(),
        }
    }

    /// `None` when no complete answer arrived (the server died).
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        idempotency_key: Option<&str>,
    ) -> Option<Reply> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base_url))
            .basic_auth(&self.api_key, Some(""));
        if let Some(body) = body {
            request = request.json(body);
        }
        if let Some(key) = idempotency_key {
            request = request.header("Idempotency-Key", key);
        }
        let response = request.send().await.ok()?;
        let status = response.status();
        let replayed = response
            .headers()
            .get("idempotent-replayed")
            .is_some_and(|value| value == "true");
        let text = response.text().await.ok()?;
        Some(Reply {
            status,
            replayed,
            text,
        })
    }

    /// For a live replica: any missing answer is a failure.
    async fn must(&self, method: Method, path: &str, body: Option<&Value>) -> Value {
        let reply = self
            .send(method, path, body, None)
            .await
            .unwrap_or_else(|| panic!("{path}: no answer from a live replica"));
        assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.text);
        reply.json()
    }

    async fn get(&self, path: &str) -> Value {
        self.must(Method::GET, path, None).await
    }

    async fn total(&self, query: &str) -> u64 {
        self.get(&format!("/v1/tasks?limit=1{query}")).await["total"]
            .as_u64()
            .expect("total")
    }

    /// Sends a keyed create until it is not refused as still running (429), as a client
    /// retrying after a crash does.
    async fn create_keyed(&self, key: &str, body: &Value) -> Reply {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let reply = self
                .send(
                    Method::POST,
                    "/v1/task/imageannotation",
                    Some(body),
                    Some(key),
                )
                .await
                .expect("a live replica answers");
            if reply.status != StatusCode::TOO_MANY_REQUESTS {
                return reply;
            }
            assert!(
                Instant::now() < deadline,
                "Idempotency-Key {key} still refused as in progress long after the crash"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The request had no answer: the server is gone.
struct Crashed;

struct Worker {
    client: Client,
    cycle: usize,
    worker: usize,
    n: usize,
    rng: StdRng,
    callback_url: String,
    /// Tasks only this worker changes during this cycle, with their acknowledged state.
    owned: Vec<(String, State)>,
    /// Keys this worker may replay: acknowledged earlier, or by itself in this cycle.
    keys: Vec<KeyRecord>,
    log: Log,
}

impl Worker {
    async fn run(mut self) -> Log {
        loop {
            self.n += 1;
            let roll = self.rng.random_range(0..100u32);
            let step = match roll {
                0..14 => self.create(Kind::Unique).await,
                14..26 => self.create(Kind::Keyed).await,
                26..31 => self.create_contended().await,
                31..43 => self.create(Kind::Queue).await,
                43..55 => self.claim_and_complete().await,
                55..60 => self.replay().await,
                _ => self.change().await,
            };
            if step.is_err() {
                return self.log;
            }
        }
    }

    fn label(&self) -> String {
        format!("{}-{}-{}", self.cycle, self.worker, self.n)
    }

    fn body(&mut self) -> Value {
        let label = self.label();
        let mut body = json!({
            "attachment": format!("https://example.com/crash/{label}.png"),
            "geometries": {"box": {"objects_to_annotate": ["car"]}},
            "metadata": {"cycle": self.cycle, "worker": self.worker, "n": self.n},
        });
        if self.rng.random_bool(0.3) {
            body["tags"] = json!(["initial"]);
        }
        body
    }

    async fn create(&mut self, kind: Kind) -> Result<(), Crashed> {
        let label = self.label();
        let mut body = self.body();
        let key = match kind {
            Kind::Unique => {
                body["unique_id"] = json!(format!("u-{label}"));
                None
            }
            Kind::Keyed => {
                if self.rng.random_bool(0.5) {
                    body["unique_id"] = json!(format!("ku-{label}"));
                }
                Some(format!("key-{label}"))
            }
            Kind::Queue => {
                body["unique_id"] = json!(format!("q-{label}"));
                body["project"] = json!(QUEUE);
                body["callback_url"] = json!(self.callback_url);
                None
            }
        };
        let mutable = kind != Kind::Queue;
        let Some(reply) = self
            .client
            .send(
                Method::POST,
                "/v1/task/imageannotation",
                Some(&body),
                key.as_deref(),
            )
            .await
        else {
            self.log.in_flight = Some(InFlight::Create { key, body, mutable });
            return Err(Crashed);
        };
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "create {label}: {}",
            reply.text
        );
        assert!(!reply.replayed, "a fresh key was replayed: {}", reply.text);
        let task = reply.json();
        let state = State::of(&task);
        assert_eq!(
            state,
            State::intended(&body),
            "the create answered what was sent"
        );
        let task_id = task_id(&task);
        if mutable {
            self.owned.push((task_id.clone(), state));
        }
        let key = key.map(|key| KeyRecord {
            key,
            body,
            task_id,
            raw: reply.text,
        });
        if let Some(record) = &key {
            self.keys.push(record.clone());
        }
        self.log.events.push(Event::Created { task, key, mutable });
        Ok(())
    }

    /// Several workers create tasks with the same few unique_ids: one wins, the rest get 409
    /// naming it. These tasks are never changed, so their unique_id stays held.
    async fn create_contended(&mut self) -> Result<(), Crashed> {
        let unique_id = format!("c-{}-{}", self.cycle, self.rng.random_range(0..CONTENDED));
        let mut body = self.body();
        body["unique_id"] = json!(unique_id);
        let Some(reply) = self
            .client
            .send(Method::POST, "/v1/task/imageannotation", Some(&body), None)
            .await
        else {
            self.log.in_flight = Some(InFlight::Create {
                key: None,
                body,
                mutable: false,
            });
            return Err(Crashed);
        };
        let outcome = match reply.status {
            StatusCode::OK => {
                let task = reply.json();
                assert_eq!(State::of(&task), State::intended(&body));
                let id = task_id(&task);
                self.log.events.push(Event::Created {
                    task,
                    key: None,
                    mutable: false,
                });
                Ok(id)
            }
            StatusCode::CONFLICT => Err(conflicting_task_id(&reply.json())),
            status => panic!("contended create {unique_id}: {status} {}", reply.text),
        };
        self.log
            .events
            .push(Event::Contended { unique_id, outcome });
        Ok(())
    }

    async fn claim_and_complete(&mut self) -> Result<(), Crashed> {
        let limit = self.rng.random_range(1..=3);
        let Some(reply) = self
            .client
            .send(
                Method::POST,
                "/v1/work/claim",
                Some(&json!({"project": QUEUE, "limit": limit, "lease_seconds": 5})),
                None,
            )
            .await
        else {
            // A lease is not visible on a task: an unanswered claim changes nothing to check.
            return Err(Crashed);
        };
        assert_eq!(reply.status, StatusCode::OK, "claim: {}", reply.text);
        let leases = reply.json()["leases"].as_array().cloned().expect("leases");
        for lease in leases {
            let task = lease["task"].clone();
            let id = task_id(&task);
            let before = State::of(&task);
            assert_eq!(
                before.status, "pending",
                "only pending tasks are handed out"
            );
            self.log.events.push(Event::Claimed { task });
            let change = Change::Complete {
                lease_token: lease["lease_token"]
                    .as_str()
                    .expect("lease token")
                    .to_owned(),
                response: json!({"annotations": [{"label": "car", "by": self.label()}]}),
            };
            match self.apply(&id, &before, &change).await? {
                Some(_) => {}
                None => self.log.leases_lost += 1,
            }
        }
        Ok(())
    }

    async fn replay(&mut self) -> Result<(), Crashed> {
        if self.keys.is_empty() {
            return self.create(Kind::Keyed).await;
        }
        let record = self.keys[self.rng.random_range(0..self.keys.len())].clone();
        let Some(reply) = self
            .client
            .send(
                Method::POST,
                "/v1/task/imageannotation",
                Some(&record.body),
                Some(&record.key),
            )
            .await
        else {
            return Err(Crashed);
        };
        assert_replay(&record, &reply);
        self.log.events.push(Event::Replayed);
        Ok(())
    }

    async fn change(&mut self) -> Result<(), Crashed> {
        if self.owned.is_empty() {
            return self.create(Kind::Unique).await;
        }
        // Half the time one of the latest tasks, so that tasks see several changes in a row.
        let len = self.owned.len();
        let index = if self.rng.random_bool(0.5) {
            self.rng.random_range(len.saturating_sub(8)..len)
        } else {
            self.rng.random_range(0..len)
        };
        let (id, before) = self.owned[index].clone();
        let label = self.label();
        let tag = |rng: &mut StdRng| format!("t{}", rng.random_range(0..6));
        let change = match self.rng.random_range(0..8) {
            0 => Change::Cancel {
                clear_unique_id: self.rng.random_bool(0.5),
            },
            1 | 2 => Change::AddTags(vec![tag(&mut self.rng), tag(&mut self.rng)]),
            3 => Change::SetTags(vec![tag(&mut self.rng)]),
            4 | 5 => Change::SetMetadata(json!({"set": label, "nested": {"n": self.n}})),
            6 => Change::SetUniqueId(format!("s-{label}")),
            _ => Change::DeleteUniqueId,
        };
        if let Some(state) = self.apply(&id, &before, &change).await? {
            self.owned[index].1 = state;
        }
        Ok(())
    }

    /// Sends `change` to a task whose acknowledged state is `before`; `None` when a lease was
    /// lost (409), which changes nothing.
    async fn apply(
        &mut self,
        id: &str,
        before: &State,
        change: &Change,
    ) -> Result<Option<State>, Crashed> {
        let after = before.apply(change);
        let (method, path, body) = change.request();
        let Some(reply) = self
            .client
            .send(
                method,
                &format!("/v1/task/{id}/{path}"),
                body.as_ref(),
                None,
            )
            .await
        else {
            self.log.in_flight = Some(InFlight::Change {
                task_id: id.to_owned(),
                before: Box::new(before.clone()),
                after: Box::new(after),
            });
            return Err(Crashed);
        };
        if reply.status == StatusCode::CONFLICT && matches!(change, Change::Complete { .. }) {
            return Ok(None);
        }
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "{change:?} on {id}: {}",
            reply.text
        );
        let state = State::of(&reply.json());
        assert_eq!(state, after, "{change:?} on {id} answered another state");
        self.log.events.push(Event::Changed {
            task_id: id.to_owned(),
            state: state.clone(),
        });
        Ok(Some(state))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// With a fresh unique_id.
    Unique,
    /// With an Idempotency-Key (and half the time a unique_id).
    Keyed,
    /// In the work queue's project, with a unique_id and a callback_url.
    Queue,
}

fn task_id(task: &Value) -> String {
    task["task_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no task_id: {task}"))
        .to_owned()
}

/// `The unique_id ("X") is already used for a different task (ID).` → ID.
fn conflicting_task_id(error: &Value) -> String {
    let message = error["error"].as_str().unwrap_or_default();
    message
        .rsplit_once('(')
        .and_then(|(_, tail)| tail.split_once(')'))
        .map(|(id, _)| id.to_owned())
        .unwrap_or_else(|| panic!("no conflicting task id in {error}"))
}

fn assert_replay(record: &KeyRecord, reply: &Reply) {
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "replay of {}: {}",
        record.key,
        reply.text
    );
    assert!(
        reply.replayed,
        "replay of {} not marked replayed",
        record.key
    );
    assert_eq!(
        reply.text, record.raw,
        "replay of {} differs from the acknowledged answer",
        record.key
    );
}

/// Everything acknowledged so far: each task's latest acknowledged state.
#[derive(Default)]
struct Model {
    tasks: BTreeMap<String, State>,
    /// Tasks the workers may change (not queue tasks, not contended ones).
    mutable: Vec<String>,
    keys: Vec<KeyRecord>,
    /// Every unique_id ever sent, held or not.
    unique_ids: BTreeSet<String>,
    stats: Stats,
}

#[derive(Debug, Default)]
struct Stats {
    cycles: usize,
    creates: usize,
    keyed_creates: usize,
    contended_conflicts: usize,
    changes: usize,
    completions: usize,
    replays: usize,
    leases_lost: usize,
    in_flight: usize,
    in_flight_applied: usize,
    keyed_retries: usize,
    keyed_retries_replayed: usize,
    tasks_checked: usize,
    unique_ids_checked: usize,
}

impl Stats {
    fn acknowledged(&self) -> usize {
        self.creates + self.changes + self.replays + self.contended_conflicts
    }
}

/// What one crash left to verify.
#[derive(Default)]
struct Pending {
    cycle: usize,
    touched: BTreeSet<String>,
    unique_ids: BTreeSet<String>,
    in_flight: Vec<InFlight>,
    new_keys: Vec<KeyRecord>,
    /// Contended unique_ids whose 409 named a holder whose create was not acknowledged.
    named_holders: BTreeMap<String, String>,
}

impl Model {
    fn merge(&mut self, cycle: usize, logs: Vec<Log>) -> Pending {
        let mut pending = Pending {
            cycle,
            ..Pending::default()
        };
        let mut contended: BTreeMap<String, (BTreeSet<String>, BTreeSet<String>)> = BTreeMap::new();
        // Creations and claims first: a queue task may be created by one worker and completed
        // by another. Each task is changed by one worker only, in its log's order.
        for log in &logs {
            for event in &log.events {
                match event {
                    Event::Created { task, key, mutable } => {
                        let id = task_id(task);
                        let state = State::of(task);
                        pending.unique_ids.extend(state.unique_id.clone());
                        self.tasks.insert(id.clone(), state);
                        if *mutable {
                            self.mutable.push(id.clone());
                        }
                        self.stats.creates += 1;
                        if let Some(record) = key {
                            self.stats.keyed_creates += 1;
                            pending.new_keys.push(record.clone());
                            self.keys.push(record.clone());
                        }
                        pending.touched.insert(id);
                    }
                    Event::Claimed { task } => {
                        let id = task_id(task);
                        self.tasks
                            .entry(id.clone())
                            .or_insert_with(|| State::of(task));
                        pending.touched.insert(id);
                    }
                    Event::Contended { unique_id, outcome } => {
                        let entry = contended.entry(unique_id.clone()).or_default();
                        match outcome {
                            Ok(id) => entry.0.insert(id.clone()),
                            Err(id) => {
                                self.stats.contended_conflicts += 1;
                                entry.1.insert(id.clone())
                            }
                        };
                    }
                    Event::Replayed => self.stats.replays += 1,
                    Event::Changed { .. } => {}
                }
            }
        }
        for log in logs {
            self.stats.leases_lost += log.leases_lost;
            for event in log.events {
                if let Event::Changed { task_id, state } = event {
                    self.stats.changes += 1;
                    if state.status == "completed" {
                        self.stats.completions += 1;
                    }
                    pending.unique_ids.extend(state.unique_id.clone());
                    self.tasks.insert(task_id.clone(), state);
                    pending.touched.insert(task_id);
                }
            }
            if let Some(in_flight) = log.in_flight {
                match &in_flight {
                    InFlight::Create { body, .. } => {
                        pending.unique_ids.extend(State::intended(body).unique_id);
                    }
                    InFlight::Change {
                        task_id,
                        before,
                        after,
                    } => {
                        pending.unique_ids.extend(before.unique_id.clone());
                        pending.unique_ids.extend(after.unique_id.clone());
                        pending.touched.insert(task_id.clone());
                    }
                }
                pending.in_flight.push(in_flight);
            }
        }
        for (unique_id, (winners, named)) in contended {
            assert!(
                winners.len() <= 1,
                "two acknowledged creates got unique_id {unique_id}: {winners:?}"
            );
            let holders: BTreeSet<_> = winners.union(&named).cloned().collect();
            assert!(
                holders.len() <= 1,
                "the conflicts on {unique_id} named several holders: {holders:?}"
            );
            if winners.is_empty() {
                if let Some(holder) = holders.into_iter().next() {
                    pending.named_holders.insert(unique_id.clone(), holder);
                }
            }
            pending.unique_ids.insert(unique_id);
        }
        self.unique_ids.extend(pending.unique_ids.iter().cloned());
        self.stats.in_flight += pending.in_flight.len();
        pending
    }

    /// After a crash, over a fresh replica: resolves the requests left in flight, then checks
    /// every task and unique_id the cycle touched, the keys it acknowledged and the counts.
    async fn verify(&mut self, client: &Client, mut pending: Pending) {
        let cycle = pending.cycle;
        // States each task may be in: its acknowledged one, or the outcome of a request in flight.
        let mut allowed: BTreeMap<String, Vec<State>> = BTreeMap::new();
        // Creates without a key are found by their unique_id (each has one).
        let mut by_unique_id: BTreeMap<String, Vec<(Value, bool)>> = BTreeMap::new();
        let mut keyed = Vec::new();
        for in_flight in &pending.in_flight {
            match in_flight {
                InFlight::Create {
                    key: Some(key),
                    body,
                    mutable,
                } => keyed.push((key.clone(), body.clone(), *mutable)),
                InFlight::Create {
                    key: None,
                    body,
                    mutable,
                } => {
                    let unique_id = State::intended(body)
                        .unique_id
                        .expect("a create without a key has a unique_id");
                    by_unique_id
                        .entry(unique_id)
                        .or_default()
                        .push((body.clone(), *mutable));
                }
                InFlight::Change {
                    task_id,
                    before,
                    after,
                } => {
                    assert_eq!(
                        self.tasks.get(task_id),
                        Some(before.as_ref()),
                        "cycle {cycle}: the model lost track of {task_id}"
                    );
                    allowed.insert(task_id.clone(), vec![(**before).clone(), (**after).clone()]);
                }
            }
        }
        for unique_id in pending.named_holders.keys() {
            by_unique_id.entry(unique_id.clone()).or_default();
        }
        for (unique_id, candidates) in &by_unique_id {
            let docs = self.holders(client, std::slice::from_ref(unique_id)).await;
            assert!(
                docs.len() <= 1,
                "cycle {cycle}: {} tasks hold unique_id {unique_id}: {docs:?}",
                docs.len()
            );
            let holder = docs.first().map(task_id);
            if let Some(named) = pending.named_holders.get(unique_id) {
                assert_eq!(
                    holder.as_ref(),
                    Some(named),
                    "cycle {cycle}: a 409 on {unique_id} named {named}, but after the crash the holder is {holder:?}"
                );
            }
            let (Some(doc), Some(id)) = (docs.first(), holder) else {
                continue;
            };
            if self.tasks.contains_key(&id) {
                // Created, then claimed (acknowledged) by another worker: already known. Or
                // held by an acknowledged create this one raced.
                let attachment = &self.tasks[&id].attachment;
                self.stats.in_flight_applied += usize::from(
                    candidates
                        .iter()
                        .any(|(body, _)| body["attachment"] == attachment.as_str()),
                );
                continue;
            }
            let observed = State::of(doc);
            let Some((_, mutable)) = candidates
                .iter()
                .find(|(body, _)| State::intended(body) == observed)
            else {
                panic!("cycle {cycle}: {id} holds {unique_id} but matches no create sent: {doc}");
            };
            self.stats.in_flight_applied += 1;
            if *mutable {
                self.mutable.push(id.clone());
            }
            self.tasks.insert(id.clone(), observed);
            pending.touched.insert(id);
        }

        // Every task the cycle touched, as a fresh replica reads it.
        let ids: Vec<String> = pending.touched.iter().cloned().collect();
        let observed = stream::iter(ids)
            .map(|id| async move {
                let reply = client
                    .send(Method::GET, &format!("/v1/task/{id}"), None, None)
                    .await
                    .expect("a live replica answers");
                assert_eq!(
                    reply.status,
                    StatusCode::OK,
                    "cycle {cycle}: task {id}, acknowledged before the crash, is gone: {}",
                    reply.text
                );
                (id, State::of(&reply.json()))
            })
            .buffer_unordered(VERIFY_CONCURRENCY)
            .collect::<Vec<_>>()
            .await;
        for (id, state) in observed {
            let expected = allowed
                .get(&id)
                .cloned()
                .unwrap_or_else(|| vec![self.tasks[&id].clone()]);
            assert!(
                expected.contains(&state),
                "cycle {cycle}: task {id} after the crash is\n  {state:?}\nbut was acknowledged as\n  {:?}{}",
                expected[0],
                expected
                    .get(1)
                    .map(|after| format!("\n  or (request in flight) {after:?}"))
                    .unwrap_or_default()
            );
            if expected.len() > 1 && state == expected[1] && expected[0] != expected[1] {
                self.stats.in_flight_applied += 1;
            }
            self.tasks.insert(id, state);
            self.stats.tasks_checked += 1;
        }

        // A keyed create left in flight, retried: it takes effect exactly once.
        for (key, body, mutable) in keyed {
            let first = client.create_keyed(&key, &body).await;
            assert_eq!(
                first.status,
                StatusCode::OK,
                "cycle {cycle}: retry of {key}: {}",
                first.text
            );
            let task = first.json();
            let id = task_id(&task);
            assert!(
                !self.tasks.contains_key(&id),
                "cycle {cycle}: the retry of {key} answered a task known before: {id}"
            );
            assert_eq!(
                State::of(&task),
                State::intended(&body),
                "cycle {cycle}: retry of {key}"
            );
            self.stats.keyed_retries += 1;
            self.stats.keyed_retries_replayed += usize::from(first.replayed);
            let record = KeyRecord {
                key,
                body,
                task_id: id.clone(),
                raw: first.text,
            };
            let again = client.create_keyed(&record.key, &record.body).await;
            assert_replay(&record, &again);
            if mutable {
                self.mutable.push(id.clone());
            }
            self.tasks.insert(id, State::of(&task));
            pending.new_keys.push(record.clone());
            self.keys.push(record);
        }

        // Every key acknowledged in the cycle replays its answer and creates nothing.
        self.replay_all(client, &pending.new_keys).await;

        // Each unique_id touched has exactly the holder the model says, or none.
        let unique_ids: Vec<String> = pending.unique_ids.iter().cloned().collect();
        self.check_unique_ids(client, &unique_ids, cycle).await;
        self.check_counts(client, cycle).await;
    }

    /// Tasks listed for any of `unique_ids` (at most 100 of them); asserts the page holds all.
    async fn holders(&self, client: &Client, unique_ids: &[String]) -> Vec<Value> {
        let query: String = unique_ids
            .iter()
            .map(|unique_id| format!("&unique_id={unique_id}"))
            .collect();
        let page = client.get(&format!("/v1/tasks?limit=100{query}")).await;
        let docs = page["docs"].as_array().cloned().expect("docs");
        assert_eq!(
            page["total"].as_u64(),
            Some(docs.len() as u64),
            "more holders than fit a page: {page}"
        );
        docs
    }

    async fn check_unique_ids(&mut self, client: &Client, unique_ids: &[String], cycle: usize) {
        let mut expected: HashMap<&str, &str> = HashMap::new();
        for (id, state) in &self.tasks {
            if let Some(unique_id) = &state.unique_id {
                if let Some(other) = expected.insert(unique_id, id) {
                    panic!("cycle {cycle}: {other} and {id} both hold unique_id {unique_id}");
                }
            }
        }
        for chunk in unique_ids.chunks(50) {
            let docs = self.holders(client, chunk).await;
            let mut seen: HashMap<String, String> = HashMap::new();
            for doc in &docs {
                let unique_id = doc["unique_id"].as_str().expect("unique_id").to_owned();
                if let Some(other) = seen.insert(unique_id.clone(), task_id(doc)) {
                    panic!(
                        "cycle {cycle}: {other} and {} both hold unique_id {unique_id}",
                        task_id(doc)
                    );
                }
            }
            for unique_id in chunk {
                assert_eq!(
                    seen.get(unique_id).map(String::as_str),
                    expected.get(unique_id.as_str()).copied(),
                    "cycle {cycle}: the holder of unique_id {unique_id}"
                );
            }
        }
        self.stats.unique_ids_checked += unique_ids.len();
    }

    async fn check_counts(&self, client: &Client, cycle: usize) {
        let total = client.total("").await;
        assert_eq!(
            total,
            self.tasks.len() as u64,
            "cycle {cycle}: total is not the number of distinct tasks known"
        );
        for status in ["pending", "completed", "canceled"] {
            let expected = self
                .tasks
                .values()
                .filter(|state| state.status == status)
                .count();
            assert_eq!(
                client.total(&format!("&status={status}")).await,
                expected as u64,
                "cycle {cycle}: total of {status} tasks"
            );
        }
    }

    async fn replay_all(&self, client: &Client, keys: &[KeyRecord]) {
        stream::iter(keys)
            .map(|record| async move {
                let reply = client.create_keyed(&record.key, &record.body).await;
                assert_replay(record, &reply);
                assert!(
                    reply.json()["task_id"] == record.task_id.as_str(),
                    "replay of {}",
                    record.key
                );
            })
            .buffer_unordered(VERIFY_CONCURRENCY)
            .collect::<Vec<()>>()
            .await;
    }

    /// After the last crash: every task, listed page by page, is exactly the known one.
    async fn verify_everything(&mut self, client: &Client) {
        let mut listed: BTreeMap<String, State> = BTreeMap::new();
        let mut token: Option<String> = None;
        loop {
            let path = match &token {
                Some(token) => format!("/v1/tasks?limit=100&next_token={token}"),
                None => "/v1/tasks?limit=100".to_owned(),
            };
            let page = client.get(&path).await;
            for doc in page["docs"].as_array().expect("docs") {
                assert!(
                    listed.insert(task_id(doc), State::of(doc)).is_none(),
                    "listed twice: {doc}"
                );
            }
            match page["next_token"].as_str() {
                Some(next) if page["has_more"] == true => token = Some(next.to_owned()),
                _ => break,
            }
        }
        let missing: Vec<_> = self
            .tasks
            .keys()
            .filter(|id| !listed.contains_key(*id))
            .collect();
        let unknown: Vec<_> = listed
            .keys()
            .filter(|id| !self.tasks.contains_key(*id))
            .collect();
        assert!(
            missing.is_empty() && unknown.is_empty(),
            "acknowledged but missing: {missing:?}; present but never acknowledged: {unknown:?}"
        );
        for (id, state) in &listed {
            assert_eq!(state, &self.tasks[id], "task {id} in the final list");
        }
        self.stats.tasks_checked += listed.len();
        let unique_ids: Vec<String> = self.unique_ids.iter().cloned().collect();
        self.check_unique_ids(client, &unique_ids, self.stats.cycles)
            .await;
        self.replay_all(client, &self.keys).await;
        self.check_counts(client, self.stats.cycles).await;
    }
}

/// The replicas' PostgreSQL sessions go by this name, so the crashed one's can be waited out.
const REPLICA_SESSION: &str = "annotask_crash_replica";

/// Waits until PostgreSQL has ended every session of the killed replica. A COMMIT the replica
/// sent just before it died may still be on its way through a busy PostgreSQL: checked too
/// soon, such a task (unacknowledged, so never known to the model) appears only after the
/// check that looked for it by unique_id, and the total counts one more than the model knows.
async fn sessions_ended(database_url: &str) {
    let admin = sea_orm::Database::connect(database_url)
        .await
        .expect("connect");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let row = sea_orm::ConnectionTrait::query_one(
            &admin,
            sea_orm::Statement::from_sql_and_values(
                sea_orm::DbBackend::Postgres,
                "SELECT count(*) AS sessions FROM pg_stat_activity \
                 WHERE datname = current_database() AND application_name = $1",
                [REPLICA_SESSION.into()],
            ),
        )
        .await
        .expect("pg_stat_activity")
        .expect("a count");
        let sessions: i64 = row.try_get("", "sessions").expect("sessions");
        if sessions == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the killed replica's {sessions} sessions outlived it by 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = admin.close().await;
}

async fn crash_cycles(backend: Backend) {
    let cycles: usize = std::env::var("ANNOTASK_CRASH_CYCLES")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(50);
    let seed: u64 = std::env::var("ANNOTASK_CRASH_SEED")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    // The in-process server only makes the database, the key and the project; it must not
    // deliver callbacks itself.
    let Some(app) = TestApp::spawn_with(backend, |config| config.callbacks.deliver = false).await
    else {
        return;
    };
    app.create_project(QUEUE, "imageannotation").await;
    let receiver = Receiver::start(|_, _| Answer::Status(200)).await;
    let callback_url = format!("{}/done", receiver.url);
    let started = Instant::now();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut model = Model::default();
    let mut pending: Option<Pending> = None;

    let replica_url = match backend {
        Backend::Postgres => format!("{}?application_name={REPLICA_SESSION}", app.database_url),
        Backend::Sqlite => app.database_url.clone(),
    };
    for cycle in 0..cycles {
        let replica = ServerProcess::start_with_env(&replica_url, &REPLICA_ENV).await;
        let client = Client::new(&replica.base_url, &app.api_key);
        if let Some(pending) = pending.take() {
            model.verify(&client, pending).await;
        }
        // Each worker replays its own keys: two requests with one key at once would rightly
        // be refused (429) while the first runs.
        let sample = rand::seq::index::sample(
            &mut rng,
            model.keys.len(),
            model.keys.len().min(4 * WORKERS),
        );
        let mut replayable: Vec<Vec<KeyRecord>> = vec![Vec::new(); WORKERS];
        for (n, index) in sample.into_iter().enumerate() {
            replayable[n % WORKERS].push(model.keys[index].clone());
        }
        let workers: Vec<_> = (0..WORKERS)
            .map(|worker| {
                let owned = model
                    .mutable
                    .iter()
                    .skip(worker)
                    .step_by(WORKERS)
                    .map(|id| (id.clone(), model.tasks[id].clone()))
                    .collect();
                tokio::spawn(
                    Worker {
                        client: Client::new(&replica.base_url, &app.api_key),
                        cycle,
                        worker,
                        n: 0,
                        rng: StdRng::seed_from_u64(rng.random()),
                        callback_url: callback_url.clone(),
                        owned,
                        keys: std::mem::take(&mut replayable[worker]),
                        log: Log::default(),
                    }
                    .run(),
                )
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(rng.random_range(50..=300))).await;
        replica.crash();
        let mut logs = Vec::with_capacity(WORKERS);
        for joined in join_all(workers).await {
            match joined {
                Ok(log) => logs.push(log),
                Err(err) => std::panic::resume_unwind(err.into_panic()),
            }
        }
        if backend == Backend::Postgres {
            sessions_ended(&app.database_url).await;
        }
        pending = Some(model.merge(cycle, logs));
        model.stats.cycles += 1;
    }

    let cycles_took = started.elapsed();
    let survivor = ServerProcess::start_with_env(&replica_url, &REPLICA_ENV).await;
    let client = Client::new(&survivor.base_url, &app.api_key);
    if let Some(pending) = pending.take() {
        model.verify(&client, pending).await;
    }
    model.verify_everything(&client).await;

    // Every completion (acknowledged, or found applied after a crash) is delivered at least
    // once, by whichever replica is alive once it is due; and no callback reports anything else.
    let completed: BTreeSet<String> = model
        .tasks
        .iter()
        .filter(|(_, state)| state.status == "completed" && !state.callback_url.is_empty())
        .map(|(id, _)| id.clone())
        .collect();
    let checks_took = started.elapsed() - cycles_took;
    let waiting = Instant::now();
    let deadline = waiting + CALLBACK_WAIT;
    let deliveries = loop {
        let deliveries = receiver.requests("done");
        let delivered: BTreeSet<String> = deliveries
            .iter()
            .map(|request| request.json()["task_id"].as_str().unwrap_or("").to_owned())
            .collect();
        let undelivered: Vec<_> = completed
            .iter()
            .filter(|id| !delivered.contains(id.as_str()))
            .collect();
        if undelivered.is_empty() {
            break deliveries;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} completions never got their callback: {undelivered:?}",
            undelivered.len(),
            completed.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for request in &deliveries {
        let body = request.json();
        let id = body["task_id"].as_str().unwrap_or("");
        assert!(
            completed.contains(id),
            "a callback for a task not known completed: {body}"
        );
        assert_eq!(body["status"], "completed", "{body}");
        assert_eq!(
            Some(&body["response"]),
            model.tasks[id].response.as_ref(),
            "the callback carries the acknowledged response"
        );
    }
    drop(survivor);

    let stats = &model.stats;
    eprintln!(
        "crash cycles ({backend:?}, seed {seed}): {} cycles survived in {:.1}s \
         (cycles {:.1}s, final checks {:.1}s, waiting for callbacks {:.1}s); \
         {} writes acknowledged and checked ({} creates of which {} keyed, {} changes of which \
         {} completions, {} replays, {} unique_id conflicts); {} requests cut off by a crash \
         ({} had taken effect; {} keyed retried exactly once, {} of them already done); \
         {} task reads, {} unique_id look-ups, {} tasks; {} callbacks checked ({} deliveries)",
        stats.cycles,
        started.elapsed().as_secs_f64(),
        cycles_took.as_secs_f64(),
        checks_took.as_secs_f64(),
        waiting.elapsed().as_secs_f64(),
        stats.acknowledged(),
        stats.creates,
        stats.keyed_creates,
        stats.changes,
        stats.completions,
        stats.replays,
        stats.contended_conflicts,
        stats.in_flight,
        stats.in_flight_applied,
        stats.keyed_retries,
        stats.keyed_retries_replayed,
        stats.tasks_checked,
        stats.unique_ids_checked,
        model.tasks.len(),
        completed.len(),
        deliveries.len(),
    );
}
