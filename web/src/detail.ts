// One task: its fields, params, metadata, response, tags, audits and callback outcome, and the
// actions on it (cancel, tags, metadata, unique_id, audit).
import type { JsonObject } from "@bufbuild/protobuf";
import { create } from "@bufbuild/protobuf";
import { TaskStatus, WatchTasksRequestSchema, type Task } from "./gen/annotask/v1/tasks_pb";
import { tasks } from "./api";
import { showLiveState, watchLive } from "./live";
import { clear, h, openDialog, showError, showNotice } from "./dom";
import { badge, callbackOutcome, json, time } from "./format";

export function renderDetail(root: HTMLElement, taskId: string): () => void {
  const stop = new AbortController();
  clear(root, h("p", { class: "muted" }, "Loading task…"));

  const liveEl = h("span", { class: "live off", "data-live": "off" });
  let watching = false;

  async function load(): Promise<void> {
    try {
      const task = await tasks.getTask({ taskId }, { signal: stop.signal });
      show(task);
      if (!watching) {
        watching = true;
        // No task_id filter exists: narrow by what cannot change, then pick this task's events.
        const request = create(WatchTasksRequestSchema, { type: task.type, project: task.project ?? "" });
        void watchLive(request, stop.signal, {
          onOpen: () => void refresh(),
          onEvent: (event) => {
            if (event.task?.taskId === taskId && !document.querySelector("dialog[open]")) show(event.task);
          },
          onState: (state) => showLiveState(liveEl, state),
        });
      }
    } catch (err) {
      if (stop.signal.aborted) return;
      showError(err, `Task ${taskId}`);
      clear(root, h("p", null, h("a", { href: "#/tasks" }, "← Back to tasks")));
    }
  }

  async function refresh(): Promise<void> {
    try {
      show(await tasks.getTask({ taskId }, { signal: stop.signal }));
    } catch (err) {
      if (!stop.signal.aborted) showError(err, `Task ${taskId}`);
    }
  }

  function show(task: Task): void {
    const field = (label: string, value: Node | string) =>
      h("div", { class: "field" }, h("dt", null, label), h("dd", null, value));
    clear(
      root,
      h("p", null, h("a", { href: "#/tasks" }, "← Back to tasks")),
      h(
        "div",
        { class: "detail-head" },
        h("h2", { class: "mono" }, task.taskId),
        badge(task.status),
        h("span", { class: "type" }, task.type),
        liveEl,
      ),
      h("div", { class: "actions" }, actions(task)),
      h(
        "dl",
        { class: "fields" },
        field("Created", time(task.createdAt)),
        field("Updated", time(task.updatedAt)),
        field("Completed", time(task.completedAt)),
        field("Project", task.project ?? "—"),
        field("Batch", task.batch ?? "—"),
        field("Unique id", h("span", { class: "mono", "data-field": "unique_id" }, task.uniqueId ?? "—")),
        field("Instruction", task.instruction ?? "—"),
        field("Callback URL", task.callbackUrl ?? "—"),
        field("Callback", h("span", { "data-field": "callback" }, callbackOutcome(task))),
        field("Test task", task.isTest ? "yes" : "no"),
      ),
      section("Tags", tagEditor(task)),
      section("Params", json(task.params ?? {})),
      section("Metadata", json(task.metadata ?? {})),
      section("Response", task.response ? json(task.response) : h("p", { class: "muted" }, "No response yet.")),
      section(
        "Audits",
        task.audits.length === 0
          ? h("p", { class: "muted" }, "No audits.")
          : h(
              "ul",
              { class: "audits" },
              task.audits.map((a) =>
                h(
                  "li",
                  null,
                  h("span", { class: `badge ${a.accepted ? "completed" : "error"}` }, a.accepted ? "accepted" : "rejected"),
                  " ",
                  time(a.createdAt),
                  a.comments ? ` — ${a.comments}` : null,
                ),
              ),
            ),
      ),
    );
  }

  function section(title: string, body: Node): HTMLElement {
    return h("section", { class: "card", "data-section": title.toLowerCase() }, h("h3", null, title), body);
  }

  async function act(what: string, call: () => Promise<Task>): Promise<void> {
    const task = await call();
    showNotice(what);
    show(task);
  }

  function actions(task: Task): HTMLElement[] {
    const buttons: HTMLElement[] = [];
    if (task.status === TaskStatus.PENDING) {
      buttons.push(h("button", { class: "danger", type: "button", onclick: () => cancelDialog(task) }, "Cancel task"));
    }
    buttons.push(h("button", { type: "button", onclick: () => metadataDialog(task) }, "Edit metadata"));
    buttons.push(h("button", { type: "button", onclick: () => uniqueIdDialog(task) }, "Set unique id"));
    if (task.uniqueId !== undefined) {
      buttons.push(
        h(
          "button",
          {
            type: "button",
            onclick: () =>
              act("Unique id cleared", () => tasks.deleteTaskUniqueId({ taskId: task.taskId })).catch((err) =>
                showError(err, "Clearing the unique id failed"),
              ),
          },
          "Clear unique id",
        ),
      );
    }
    if (task.status === TaskStatus.COMPLETED) {
      buttons.push(h("button", { type: "button", onclick: () => auditDialog(task) }, "Audit"));
    }
    return buttons;
  }

  function cancelDialog(task: Task): void {
    const clearUnique = h("input", { type: "checkbox", name: "clear_unique_id" });
    openDialog(
      "Cancel this task?",
      h(
        "div",
        null,
        h("p", null, "A canceled task is never handed out to labellers again."),
        task.uniqueId !== undefined
          ? h("label", null, clearUnique, ` Also free its unique id (${task.uniqueId})`)
          : null,
      ),
      [
        {
          label: "Cancel task",
          danger: true,
          run: () =>
            act("Task canceled", () => tasks.cancelTask({ taskId: task.taskId, clearUniqueId: clearUnique.checked })),
        },
      ],
    );
  }

  function metadataDialog(task: Task): void {
    const editor = h("textarea", { class: "json-editor", rows: "14", spellcheck: "false", name: "metadata" });
    editor.value = JSON.stringify(task.metadata ?? {}, null, 2);
    const status = h("div", { class: "validation" });
    let parsed: JsonObject | null = task.metadata ?? {};
    const validate = () => {
      try {
        const value: unknown = JSON.parse(editor.value);
        if (typeof value !== "object" || value === null || Array.isArray(value)) {
          throw new Error("metadata must be a JSON object ({…})");
        }
        parsed = value as JsonObject;
        status.className = "validation ok";
        status.textContent = "Valid JSON object";
      } catch (err) {
        parsed = null;
        status.className = "validation bad";
        status.textContent = err instanceof Error ? err.message : String(err);
      }
    };
    editor.addEventListener("input", validate);
    validate();
    openDialog("Edit metadata", h("div", null, editor, status), [
      {
        label: "Save metadata",
        primary: true,
        run: async () => {
          if (!parsed) return false;
          const metadata = parsed;
          await act("Metadata saved", () => tasks.setTaskMetadata({ taskId: task.taskId, metadata }));
        },
      },
    ]);
  }

  function uniqueIdDialog(task: Task): void {
    const input = h("input", { name: "unique_id", value: task.uniqueId ?? "", placeholder: "unique id" });
    openDialog("Set unique id", h("div", null, input), [
      {
        label: "Save",
        primary: true,
        run: () => act("Unique id set", () => tasks.updateTaskUniqueId({ taskId: task.taskId, uniqueId: input.value.trim() })),
      },
    ]);
  }

  function auditDialog(task: Task): void {
    const accept = h("input", { type: "radio", name: "verdict", value: "accept", checked: true });
    const reject = h("input", { type: "radio", name: "verdict", value: "reject" });
    const rework = h("input", { type: "checkbox", name: "rework" });
    const comments = h("textarea", { name: "comments", rows: "3", placeholder: "comments (optional)" });
    openDialog(
      "Audit",
      h(
        "div",
        { class: "stack" },
        h("label", null, accept, " Accept"),
        h("label", null, reject, " Reject"),
        h("label", null, rework, " With rework: send it back to pending for another round"),
        comments,
      ),
      [
        {
          label: "Submit audit",
          primary: true,
          run: () =>
            act(reject.checked ? "Audit: rejected" : "Audit: accepted", () =>
              tasks.auditTask({
                taskId: task.taskId,
                accepted: accept.checked,
                comments: comments.value.trim() || undefined,
                rework: reject.checked && rework.checked,
              }),
            ),
        },
      ],
    );
  }

  function tagEditor(task: Task): HTMLElement {
    const input = h("input", { name: "new_tag", placeholder: "new tag(s), comma-separated", "aria-label": "New tag" });
    const add = async (e: Event) => {
      e.preventDefault();
      const tags = input.value.split(",").map((t) => t.trim()).filter(Boolean);
      if (tags.length === 0) return;
      await act("Tags added", () => tasks.addTaskTags({ taskId: task.taskId, tags })).catch((err) =>
        showError(err, "Adding tags failed"),
      );
    };
    return h(
      "div",
      { class: "tag-editor" },
      h(
        "div",
        { class: "tags" },
        task.tags.length === 0 ? h("span", { class: "muted" }, "No tags. ") : null,
        task.tags.map((tag) =>
          h(
            "span",
            { class: "tag", "data-tag": tag },
            tag,
            h(
              "button",
              {
                class: "link",
                type: "button",
                "aria-label": `Remove tag ${tag}`,
                onclick: () =>
                  act("Tag removed", () => tasks.deleteTaskTags({ taskId: task.taskId, tags: [tag] })).catch((err) =>
                    showError(err, "Removing the tag failed"),
                  ),
              },
              "×",
            ),
          ),
        ),
      ),
      h("form", { class: "inline", onsubmit: add }, input, h("button", { type: "submit" }, "Add tag")),
    );
  }

  void load();
  return () => stop.abort();
}
