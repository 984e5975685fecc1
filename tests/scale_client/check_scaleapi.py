#!/usr/bin/env python3
"""End-to-end check: Scale's official Python client (`pip install scaleapi`), unchanged,
against a running annotask.

    ANNOTASK_URL=http://127.0.0.1:8080/v1 ANNOTASK_API_KEY=live_... \
        python3 tests/scale_client/check_scaleapi.py

Only the client's public methods are used. Every task, project and batch carries a
run-specific prefix, so runs against a shared server do not see each other's data.
Prints one line per check and `N passed, M failed`; exits non-zero on any failure.
"""

import os
import re
import sys
import traceback
import uuid

try:
    import scaleapi
    from scaleapi.exceptions import (
        ScaleDuplicateResource,
        ScaleException,
        ScaleInvalidRequest,
        ScaleResourceNotFound,
        ScaleUnauthorized,
    )
    from scaleapi.batches import BatchStatus
    from scaleapi.tasks import TaskStatus, TaskType
except ImportError as err:  # pragma: no cover - reported, not tested
    print(f"cannot import scaleapi: {err}", file=sys.stderr)
    sys.exit(2)

URL = os.environ.get("ANNOTASK_URL", "http://127.0.0.1:8080/v1").rstrip("/")
KEY = os.environ.get("ANNOTASK_API_KEY", "")
if not KEY:
    print("ANNOTASK_API_KEY is not set", file=sys.stderr)
    sys.exit(2)

RUN = uuid.uuid4().hex[:12]
PROJECT = f"scaleapi-check-{RUN}"
OTHER_PROJECT = f"scaleapi-check-{RUN}-other"
TEXT_PROJECT = f"scaleapi-check-{RUN}-text"
BATCH_PROJECT = f"scaleapi check {RUN}/batches"
BATCH = f"scaleapi check {RUN}/batch 1"
TASK_ID = re.compile(r"^[0-9a-f]{24}$")
TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
UNKNOWN_TASK_ID = "0" * 24

client = scaleapi.ScaleClient(KEY, api_instance_url=URL)

# Filled in by earlier checks, read by later ones.
state = {}


class CheckFailed(Exception):
    """A failed check. Not `assert`: `python -O` / PYTHONOPTIMIZE would strip every assert
    and let each check pass without checking anything."""


def expect(condition, message):
    if not condition:
        raise CheckFailed(message)


def uid(name):
    return f"{RUN}-{name}"


def expect_error(exc_type, call, *args, **kwargs):
    """Runs call, which must raise exc_type (and nothing else); returns the exception."""
    try:
        result = call(*args, **kwargs)
    except exc_type as err:
        return err
    except ScaleException as err:
        raise CheckFailed(
            f"expected {exc_type.__name__}, got {type(err).__name__}: {err}"
        ) from err
    raise CheckFailed(
        f"expected {exc_type.__name__}, but the call succeeded: {result!r}"
    )


def has_unique_id(task):
    return "unique_id" in task.as_dict()


def image_task(**extra):
    fields = {
        "instruction": "Draw a box around each car",
        "attachment": "https://example.com/car.png",
        "attachment_type": "image",
        "geometries": {"box": {"objects_to_annotate": ["car"], "min_height": 5}},
        "project": PROJECT,
    }
    fields.update(extra)
    return client.create_task(TaskType.ImageAnnotation, **fields)


def check_task_shape(task, task_type):
    body = task.as_dict()
    expect(TASK_ID.match(task.id), f"task_id is not 24 lowercase hex: {task.id!r}")
    expect(body["task_id"] == task.id, 'body["task_id"] == task.id')
    expect(body["type"] == task_type, f"type {body['type']!r} != {task_type!r}")
    expect(body["status"] == "pending", f"status {body['status']!r}")
    for field in ("created_at", "updated_at"):
        expect(TIMESTAMP.match(body.get(field, "")), f"{field} {body.get(field)!r}")
    expect("completed_at" not in body, f"completed_at on a pending task: {body}")
    expect(isinstance(body.get("params"), dict), f"params: {body.get('params')!r}")


# ---------------------------------------------------------------------------- checks

CHECKS = []


def check(function):
    CHECKS.append(function)
    return function


@check
def projects_are_created_fetched_listed_and_refused_twice():
    project = client.create_project(
        PROJECT,
        TaskType.ImageAnnotation,
        params={"instruction": "Draw a box around each car"},
    )
    expect(project.name == PROJECT and project.type == "imageannotation", project.as_dict())
    expect(project.version == 0, project.as_dict())
    expect(project.instruction == "Draw a box around each car", project.as_dict())
    client.create_project(OTHER_PROJECT, TaskType.ImageAnnotation)
    client.create_project(TEXT_PROJECT, TaskType.Categorization)
    fetched = client.get_project(PROJECT)
    expect(fetched.as_dict() == project.as_dict(), (fetched.as_dict(), project.as_dict()))
    names = [p.name for p in client.projects()]
    expect({PROJECT, OTHER_PROJECT, TEXT_PROJECT} <= set(names), names)
    err = expect_error(ScaleDuplicateResource, client.create_project, PROJECT, TaskType.ImageAnnotation)
    expect(err.code == 409, err.code)
    expect_error(ScaleResourceNotFound, client.get_project, f"{PROJECT}-nobody")


@check
def create_an_image_annotation_task_with_attachment_and_geometries():
    task = image_task(
        unique_id=uid("img-1"),
        metadata={"run": RUN, "nested": {"n": 1}},
        tags=["first"],
    )
    check_task_shape(task, "imageannotation")
    params = task.params
    expect(params.get("attachment") == "https://example.com/car.png", params)
    expect(params.get("attachment_type") == "image", params)
    expect(params.get("geometries") == {
        "box": {"objects_to_annotate": ["car"], "min_height": 5}
    }, params)
    expect(task.instruction == "Draw a box around each car", task.as_dict())
    expect(task.unique_id == uid("img-1"), task.as_dict())
    expect(task.project == PROJECT, task.as_dict())
    expect(task.metadata == {"run": RUN, "nested": {"n": 1}}, task.metadata)
    expect(task.tags == ["first"], task.as_dict())
    state["image"] = task


@check
def create_a_categorization_task_with_instruction_attachment_and_categories():
    task = client.create_task(
        TaskType.Categorization,
        instruction="Is this text about cars?",
        attachment="A red car drives by.",
        attachment_type="text",
        categories=["yes", "no"],
        project=TEXT_PROJECT,
        unique_id=uid("cat-1"),
    )
    check_task_shape(task, "categorization")
    params = task.params
    expect(params.get("categories") == ["yes", "no"], params)
    expect(params.get("attachment") == "A red car drives by.", params)
    expect(params.get("attachment_type") == "text", params)
    expect(task.metadata == {}, f"metadata defaults to {{}}: {task.as_dict()}")
    expect("tags" not in task.as_dict(), f"tags never set: {task.as_dict()}")
    state["categorization"] = task


@check
def get_task_returns_the_created_task_unchanged():
    for name in ("image", "categorization"):
        created = state[name]
        fetched = client.get_task(created.id)
        expect(fetched.id == created.id, 'fetched.id == created.id')
        expect(fetched.as_dict() == created.as_dict(), f"created {created.as_dict()} != fetched {fetched.as_dict()}")


@check
def create_four_more_tasks_in_the_project():
    extra = [image_task(unique_id=uid(f"img-{n}")) for n in range(2, 6)]
    for task in extra:
        check_task_shape(task, "imageannotation")
    state["all_ids"] = [state["image"].id] + [t.id for t in extra]
    expect(len(set(state["all_ids"])) == 5, state["all_ids"])


@check
def tasks_pages_by_next_token_and_sees_every_task_exactly_once():
    seen = []
    pages = 0
    next_token = None
    while True:
        kwargs = {"project": PROJECT, "limit": 2}
        if next_token is not None:
            kwargs["next_token"] = next_token
        page = client.tasks(**kwargs)
        pages += 1
        expect(pages <= 5, "paging does not end")
        expect(page.total == 5, f"page {pages}: total {page.total}, expected 5")
        expect(page.limit == 2, f"page {pages}: limit {page.limit}")
        expect(page.offset == 0, f"page {pages}: offset {page.offset}")
        expect(1 <= len(page.docs) <= 2, f"page {pages}: {len(page.docs)} docs")
        seen.extend(page.docs)
        if not page.has_more:
            expect(page.next_token is None, f"next_token without has_more: {page.next_token!r}")
            break
        expect(page.next_token, f"page {pages}: has_more without next_token")
        next_token = page.next_token
    ids = [t.id for t in seen]
    expect(pages == 3, f"5 tasks at limit 2 take 3 pages, took {pages}")
    expect(len(ids) == len(set(ids)), f"a task was listed twice: {ids}")
    expect(set(ids) == set(state["all_ids"]), f"listed {ids}, created {state['all_ids']}")
    keys = [(t.created_at, t.id) for t in seen]
    expect(keys == sorted(keys, reverse=True), f"not newest first: {keys}")


@check
def get_tasks_generator_yields_every_project_task_once():
    for limit in (2, None):
        ids = [t.id for t in client.get_tasks(project_name=PROJECT, limit=limit)]
        expect(len(ids) == len(set(ids)), f"limit={limit}: duplicates {ids}")
        expect(set(ids) == set(state["all_ids"]), f"limit={limit}: {ids}")


@check
def get_tasks_count_counts_the_project_and_honours_filters():
    expect(client.get_tasks_count(project_name=PROJECT) == 5, 'client.get_tasks_count(project_name=PROJECT) == 5')
    count = client.get_tasks_count(
        project_name=PROJECT, unique_id=[uid("img-1"), uid("img-2"), uid("cat-1")]
    )
    expect(count == 2, f"unique_id filter counted {count}")
    count = client.get_tasks_count(project_name=PROJECT, task_type=TaskType.Categorization)
    expect(count == 0, f"type filter counted {count}")
    count = client.get_tasks_count(project_name=TEXT_PROJECT, task_type=TaskType.Categorization)
    expect(count == 1, f"type filter counted {count}")
    count = client.get_tasks_count(project_name=PROJECT, tags="first")
    expect(count == 1, f"tags filter counted {count}")
    expect(client.get_tasks_count(project_name=f"{PROJECT}-nobody") == 0, 'client.get_tasks_count(project_name=f"{PROJECT}-nobody") == 0')


@check
def limited_response_keeps_only_the_documented_fields():
    page = client.tasks(project=PROJECT, limit=5, limited_response=True)
    expect(len(page.docs) == 5, len(page.docs))
    for task in page.docs:
        keys = set(task.as_dict())
        expect({"task_id", "status"} <= keys, keys)
        extra = keys - {"task_id", "status", "metadata", "project", "otherVersion"}
        expect(not extra, f"limited_response returned {sorted(extra)}")


@check
def a_taken_unique_id_raises_duplicate_resource_naming_the_holder():
    holder = state["image"].id
    err = expect_error(ScaleDuplicateResource, image_task, unique_id=uid("img-1"))
    expect(err.code == 409, err.code)
    expect(err.message.rstrip(". ").endswith(f"({holder})"), f"message does not end with the holder ({holder}): {err.message!r}")
    expect(uid("img-1") in err.message, f"unique_id not named in {err.message!r}")
    expect(client.get_tasks_count(project_name=PROJECT) == 5, "a task was created anyway")


@check
def an_unknown_task_id_raises_resource_not_found():
    err = expect_error(ScaleResourceNotFound, client.get_task, UNKNOWN_TASK_ID)
    expect(err.code == 404, err.code)
    err = expect_error(ScaleResourceNotFound, client.get_task, "not-a-task-id")
    expect(err.code == 404, err.code)
    expect_error(ScaleResourceNotFound, client.cancel_task, UNKNOWN_TASK_ID)
    expect_error(ScaleResourceNotFound, client.set_task_metadata, UNKNOWN_TASK_ID, {"a": 1})


@check
def a_bad_api_key_raises_unauthorized():
    bad = scaleapi.ScaleClient("live_" + "0" * 32, api_instance_url=URL)
    err = expect_error(ScaleUnauthorized, bad.get_task, state["image"].id)
    expect(err.code == 401, err.code)
    expect_error(ScaleUnauthorized, bad.tasks, project=PROJECT)
    expect_error(
        ScaleUnauthorized,
        bad.create_task,
        TaskType.Categorization,
        instruction="x",
        attachment="y",
        attachment_type="text",
        categories=["a"],
    )


@check
def a_missing_required_field_raises_invalid_request_naming_it():
    err = expect_error(
        ScaleInvalidRequest,
        client.create_task,
        TaskType.ImageAnnotation,
        instruction="Draw a box around each car",
        geometries={"box": {"objects_to_annotate": ["car"]}},
        project=PROJECT,
    )
    expect(err.code == 400, err.code)
    expect("attachment" in err.message, f"field not named in {err.message!r}")
    err = expect_error(
        ScaleInvalidRequest,
        client.create_task,
        TaskType.Categorization,
        instruction="Is this text about cars?",
        attachment="A red car drives by.",
        attachment_type="text",
        project=TEXT_PROJECT,
    )
    expect("categories" in err.message, f"field not named in {err.message!r}")
    expect(client.get_tasks_count(project_name=PROJECT) == 5, "a task was created anyway")


@check
def cancel_with_clear_unique_id_frees_the_unique_id():
    task_id = state["all_ids"][-1]  # img-5
    canceled = client.cancel_task(task_id, clear_unique_id=True)
    expect(canceled.id == task_id, 'canceled.id == task_id')
    expect(canceled.status == "canceled", canceled.as_dict())
    expect(not has_unique_id(canceled), f"unique_id kept: {canceled.as_dict()}")
    fetched = client.get_task(task_id)
    expect(fetched.status == "canceled" and not has_unique_id(fetched), fetched.as_dict())
    again = client.cancel_task(task_id)
    expect(again.status == "canceled", f"second cancel: {again.as_dict()}")
    reused = image_task(unique_id=uid("img-5"), project=OTHER_PROJECT)
    expect(reused.unique_id == uid("img-5") and reused.id != task_id, reused.as_dict())
    state["reused"] = reused


@check
def status_filter_finds_the_canceled_task():
    ids = [t.id for t in client.get_tasks(project_name=PROJECT, status=TaskStatus.Canceled)]
    expect(ids == [state["all_ids"][-1]], f"canceled: {ids}")
    count = client.get_tasks_count(project_name=PROJECT, status=TaskStatus.Pending)
    expect(count == 4, f"pending: {count}")


@check
def set_task_metadata_replaces_the_metadata():
    task_id = state["categorization"].id
    before = client.get_task(task_id)
    updated = client.set_task_metadata(task_id, {"reviewed": True, "score": 0.5})
    expect(updated.metadata == {"reviewed": True, "score": 0.5}, updated.metadata)
    expect(updated.updated_at >= before.updated_at, (before.updated_at, updated.updated_at))
    expect(client.get_task(task_id).metadata == {"reviewed": True, "score": 0.5}, 'client.get_task(task_id).metadata == {"reviewed": True, "score": 0.5}')
    replaced = client.set_task_metadata(task_id, {"only": "this"})
    expect(replaced.metadata == {"only": "this"}, f"not replaced: {replaced.metadata}")
    # The client sends `{}` as an empty body with a JSON content type.
    emptied = client.set_task_metadata(task_id, {})
    expect(emptied.metadata == {}, f"set_task_metadata({{}}): {emptied.metadata}")


@check
def set_task_metadata_works_on_a_canceled_task():
    task_id = state["all_ids"][-1]
    updated = client.set_task_metadata(task_id, {"after": "cancel"})
    expect(updated.status == "canceled" and updated.metadata == {"after": "cancel"}, 'updated.status == "canceled" and updated.metadata == {"after": "cancel"}')


@check
def update_task_unique_id_sets_it_and_a_taken_one_is_refused():
    task_id = state["categorization"].id
    updated = client.update_task_unique_id(task_id, uid("cat-renamed"))
    expect(updated.unique_id == uid("cat-renamed"), updated.as_dict())
    found = list(client.get_tasks(project_name=TEXT_PROJECT, unique_id=uid("cat-renamed")))
    expect([t.id for t in found] == [task_id], found)
    expect(client.get_tasks_count(project_name=TEXT_PROJECT, unique_id=uid("cat-1")) == 0, 'client.get_tasks_count(project_name=TEXT_PROJECT, unique_id=uid("cat-1")) == 0')
    same = client.update_task_unique_id(task_id, uid("cat-renamed"))
    expect(same.unique_id == uid("cat-renamed"), f"own value: {same.as_dict()}")
    holder = state["image"].id
    err = expect_error(
        ScaleDuplicateResource, client.update_task_unique_id, task_id, uid("img-1")
    )
    expect(f"({holder})" in err.message, f"holder {holder} not named in {err.message!r}")
    expect(client.get_task(task_id).unique_id == uid("cat-renamed"), "changed anyway")


@check
def clear_task_unique_id_removes_it_and_frees_the_value():
    task_id = state["categorization"].id
    cleared = client.clear_task_unique_id(task_id)
    expect(not has_unique_id(cleared), f"unique_id kept: {cleared.as_dict()}")
    expect(not has_unique_id(client.get_task(task_id)), 'not has_unique_id(client.get_task(task_id))')
    taken = client.update_task_unique_id(state["all_ids"][2], uid("cat-renamed"))
    expect(taken.unique_id == uid("cat-renamed"), taken.as_dict())


@check
def add_task_tags_appends_keeping_order_and_ignoring_duplicates():
    task_id = state["image"].id
    task = client.add_task_tags(task_id, ["blue", "red"])
    expect(task.tags == ["first", "blue", "red"], task.tags)
    task = client.add_task_tags(task_id, ["red", "green", "blue"])
    expect(task.tags == ["first", "blue", "red", "green"], task.tags)
    expect(client.get_task(task_id).tags == ["first", "blue", "red", "green"], 'client.get_task(task_id).tags == ["first", "blue", "red", "green"]')


@check
def set_task_tags_replaces_all_tags():
    task_id = state["image"].id
    task = client.set_task_tags(task_id, ["alpha", "beta", "gamma"])
    expect(task.tags == ["alpha", "beta", "gamma"], task.tags)
    ids = [t.id for t in client.get_tasks(project_name=PROJECT, tags=["alpha", "gamma"])]
    expect(ids == [task_id], f"tags filter: {ids}")
    expect(client.get_tasks_count(project_name=PROJECT, tags="first") == 0, 'client.get_tasks_count(project_name=PROJECT, tags="first") == 0')


@check
def delete_task_tags_removes_only_the_given_tags():
    task_id = state["image"].id
    task = client.delete_task_tags(task_id, ["beta", "not-there"])
    expect(task.tags == ["alpha", "gamma"], task.tags)
    expect(client.get_task(task_id).tags == ["alpha", "gamma"], 'client.get_task(task_id).tags == ["alpha", "gamma"]')


@check
def an_empty_tag_is_refused_and_changes_nothing():
    task_id = state["image"].id
    expect_error(ScaleInvalidRequest, client.add_task_tags, task_id, ["ok", ""])
    expect_error(ScaleInvalidRequest, client.set_task_tags, task_id, ["ok", ""])
    expect(client.get_task(task_id).tags == ["alpha", "gamma"], "changed anyway")


@check
def set_task_tags_with_an_empty_list_removes_every_tag():
    # The client sends `[]` as an empty body with a JSON content type.
    task = client.set_task_tags(state["image"].id, [])
    expect(task.as_dict().get("tags", []) == [], task.as_dict())


@check
def tasks_of_another_project_are_not_listed():
    ids = [t.id for t in client.get_tasks(project_name=OTHER_PROJECT)]
    expect(ids == [state["reused"].id], ids)
    expect(client.get_tasks_count(project_name=PROJECT) == 5, 'client.get_tasks_count(project_name=PROJECT) == 5')


@check
def update_project_appends_a_version_that_new_tasks_inherit():
    updated = client.update_project(PROJECT, instruction="Box every bicycle")
    expect(updated.version == 1, updated.as_dict())
    expect(updated.instruction == "Box every bicycle", updated.as_dict())
    patched = client.update_project(PROJECT, patch=True, extra_note="kept")
    expect(patched.version == 2, patched.as_dict())
    expect(patched.params.get("instruction") == "Box every bicycle", patched.as_dict())
    expect(patched.params.get("extra_note") == "kept", patched.as_dict())
    replaced = client.update_project(PROJECT, instruction="Box every car")
    expect(replaced.version == 3 and "extra_note" not in replaced.params, replaced.as_dict())
    task = client.create_task(
        TaskType.ImageAnnotation,
        attachment="https://example.com/bike.png",
        geometries={"box": {"objects_to_annotate": ["car"]}},
        project=PROJECT,
        unique_id=uid("inherits"),
    )
    expect(task.instruction == "Box every car", task.as_dict())
    expect(task.as_dict().get("project_param_version") == 3, task.as_dict())
    err = expect_error(
        ScaleInvalidRequest,
        client.create_task,
        TaskType.Categorization,
        instruction="x",
        attachment="y",
        categories=["a"],
        project=PROJECT,
    )
    expect(PROJECT in err.message, err.message)
    client.cancel_task(task.id)


@check
def a_batch_is_created_filled_finalized_and_completes_when_its_tasks_finish():
    client.create_project(BATCH_PROJECT, TaskType.ImageAnnotation, params={"instruction": "Box it"})
    batch = client.create_batch(BATCH_PROJECT, BATCH, metadata={"run": RUN})
    expect(batch.name == BATCH and batch.project == BATCH_PROJECT, batch.as_dict())
    expect(batch.status == BatchStatus.InProgress.value, batch.as_dict())
    expect(batch.metadata == {"run": RUN}, batch.as_dict())
    err = expect_error(ScaleDuplicateResource, client.create_batch, BATCH_PROJECT, BATCH)
    expect(err.code == 409, err.code)
    tasks = [
        client.create_task(
            TaskType.ImageAnnotation,
            attachment=f"https://example.com/{n}.png",
            geometries={"box": {"objects_to_annotate": ["car"]}},
            batch=BATCH,
        )
        for n in range(3)
    ]
    for task in tasks:
        expect(task.batch == BATCH and task.project == BATCH_PROJECT, task.as_dict())
        expect(task.instruction == "Box it", task.as_dict())
    finalized = client.finalize_batch(BATCH)
    expect(finalized.status == BatchStatus.InProgress.value, finalized.as_dict())
    status = client.batch_status(BATCH)
    expect(status["status"] == "in_progress", status)
    expect((status["pending"], status["completed"], status["error"], status["canceled"]) == (3, 0, 0, 0), status)
    fetched = client.get_batch(BATCH)
    fetched.get_status()
    expect(fetched.tasks_pending == 3, fetched.as_dict())
    ids = {t.id for t in client.get_tasks(batch_name=BATCH)}
    expect(ids == {t.id for t in tasks}, ids)
    expect(client.get_tasks_count(batch_name=BATCH) == 3, 'client.get_tasks_count(batch_name=BATCH) == 3')
    expect(client.get_tasks_count(project_name=BATCH_PROJECT, batch_name=BATCH, status=TaskStatus.Pending) == 3, 'client.get_tasks_count(project_name=BATCH_PROJECT, batch_name=BATCH, status=TaskStatus.Pending) == 3')
    for task in tasks:
        client.cancel_task(task.id)
    done = client.get_batch(BATCH)
    expect(done.status == BatchStatus.Completed.value, done.as_dict())
    expect(client.batch_status(BATCH)["canceled"] == 3, 'client.batch_status(BATCH)["canceled"] == 3')
    err = expect_error(
        ScaleInvalidRequest,
        client.create_task,
        TaskType.ImageAnnotation,
        attachment="https://example.com/late.png",
        geometries={"box": {"objects_to_annotate": ["car"]}},
        batch=BATCH,
    )
    expect("completed" in err.message, err.message)


@check
def batches_are_listed_paged_by_offset_and_take_new_metadata():
    for n in range(2):
        client.create_batch(BATCH_PROJECT, f"{BATCH}-{n}")
    page = client.batches(project=BATCH_PROJECT, limit=2)
    expect(page.total == 3 and len(page.docs) == 2 and page.has_more, vars(page))
    names = [b.name for b in client.get_batches(project_name=BATCH_PROJECT)]
    expect(sorted(names) == sorted([BATCH, f"{BATCH}-0", f"{BATCH}-1"]), names)
    completed = [b.name for b in client.get_batches(project_name=BATCH_PROJECT, batch_status=BatchStatus.Completed)]
    expect(completed == [BATCH], completed)
    updated = client.set_batch_metadata(f"{BATCH}-0", {"reviewed": True})
    expect(updated.metadata == {"reviewed": True}, updated.as_dict())
    expect(client.get_batch(f"{BATCH}-0").metadata == {"reviewed": True}, 'client.get_batch(f"{BATCH}-0").metadata == {"reviewed": True}')
    expect_error(ScaleResourceNotFound, client.get_batch, f"{BATCH}-nobody")


# ------------------------------------------------------------------------------ main


def main():
    print(f"scaleapi {scaleapi.__version__} against {URL} (run {RUN})")
    passed = failed = 0
    for function in CHECKS:
        name = function.__name__.replace("_", " ")
        try:
            function()
        except Exception as err:  # noqa: BLE001 - every failure is reported
            failed += 1
            print(f"FAIL {name}: {type(err).__name__}: {err}")
            traceback.print_exc(file=sys.stdout)
        else:
            passed += 1
            print(f"ok   {name}")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
