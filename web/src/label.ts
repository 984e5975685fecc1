// The labelling view over the work queue: claim the next task of a project, show its
// attachment and the type's question, then submit a response, fail it or skip it.
import type { JsonObject, JsonValue } from "@bufbuild/protobuf";
import type { Lease } from "./gen/annotask/v1/work_pb";
import { projects, work } from "./api";
import { clear, h, openDialog, showError, showNotice } from "./dom";

const LEASE_SECONDS = 300;

function str(value: JsonValue | undefined): string | undefined {
  return typeof value === "string" ? value : undefined;
}

/** Option names from Scale's string-or-object lists (`["car"]` or `[{"choice": "car"}]`). */
function names(list: JsonValue | undefined): string[] {
  if (!Array.isArray(list)) return [];
  return list
    .map((item) =>
      typeof item === "string"
        ? item
        : item && typeof item === "object" && !Array.isArray(item)
          ? (str(item.choice) ?? str(item.label) ?? str(item.value) ?? "")
          : "",
    )
    .filter(Boolean);
}

function attachmentView(kind: string, content: string): HTMLElement {
  if (kind === "text") return h("div", { class: "attachment-text" }, content);
  if (kind === "image") return h("img", { class: "attachment-image", src: content, alt: "attachment" });
  return h("a", { href: content, target: "_blank", rel: "noreferrer" }, content);
}

/** An answer form for one task type: its elements and how to read the response from them. */
interface Question {
  body: HTMLElement;
  /** The response, or a message saying what is missing. */
  response: () => JsonObject | string;
}

function categorization(params: JsonObject): Question {
  const categories = names(params.categories);
  const body = h(
    "fieldset",
    { class: "choices" },
    h("legend", null, "Category"),
    categories.map((c) => h("label", { class: "choice" }, h("input", { type: "radio", name: "category", value: c }), ` ${c}`)),
  );
  return {
    body,
    response: () => {
      const chosen = body.querySelector<HTMLInputElement>("input[name=category]:checked");
      return chosen ? { category: chosen.value } : "Choose a category.";
    },
  };
}

function textCollection(params: JsonObject): Question {
  const raw = params.fields;
  const fields: { id: string; title: string; description?: string }[] = [];
  if (Array.isArray(raw)) {
    for (const f of raw) {
      if (f && typeof f === "object" && !Array.isArray(f) && typeof f.field_id === "string") {
        fields.push({ id: f.field_id, title: str(f.title) ?? f.field_id, description: str(f.description) });
      }
    }
  } else if (raw && typeof raw === "object") {
    for (const [id, f] of Object.entries(raw)) {
      const spec = f && typeof f === "object" && !Array.isArray(f) ? f : {};
      fields.push({ id, title: str(spec.title) ?? id, description: str(spec.description) });
    }
  }
  const inputs = fields.map((f) => ({
    id: f.id,
    el: h("textarea", { name: `field-${f.id}`, rows: "2", "aria-label": f.title }),
  }));
  return {
    body: h(
      "div",
      { class: "stack" },
      fields.map((f, i) =>
        h("label", { class: "field-input" }, h("strong", null, f.title), f.description ? h("small", null, f.description) : null, inputs[i].el),
      ),
    ),
    response: () => {
      const answers: JsonObject = {};
      for (const input of inputs) {
        if (!input.el.value.trim()) return `Fill in "${input.id}".`;
        answers[input.id] = input.el.value.trim();
      }
      return { fields: answers };
    },
  };
}

interface Box {
  label: string;
  left: number;
  top: number;
  width: number;
  height: number;
}

/** Boxes drawn on the image by dragging; stored in the image's own pixels. */
function imageBoxes(params: JsonObject, attachment: string): Question {
  const geometries = params.geometries;
  const box = geometries && typeof geometries === "object" && !Array.isArray(geometries) ? geometries.box : undefined;
  const labels = names(box && typeof box === "object" && !Array.isArray(box) ? box.objects_to_annotate : undefined);
  if (labels.length === 0) labels.push("object");
  const boxes: Box[] = [];
  const labelSelect = h("select", { name: "box-label", "aria-label": "Label" }, labels.map((l) => h("option", { value: l }, l)));
  const img = h("img", { class: "attachment-image", src: attachment, alt: "attachment", draggable: "false" });
  const overlay = h("div", { class: "box-layer" });
  const stage = h("div", { class: "stage" }, img, overlay);
  const list = h("ol", { class: "box-list" });

  const scale = () => (img.naturalWidth && img.clientWidth ? img.naturalWidth / img.clientWidth : 1);
  function redraw(): void {
    const s = scale();
    clear(
      overlay,
      boxes.map((b) =>
        h("div", {
          class: "box",
          style: `left:${b.left / s}px;top:${b.top / s}px;width:${b.width / s}px;height:${b.height / s}px`,
          "data-label": b.label,
        }, h("span", null, b.label)),
      ),
    );
    clear(
      list,
      boxes.map((b, i) =>
        h(
          "li",
          null,
          `${b.label}: ${b.left},${b.top} ${b.width}×${b.height} `,
          h("button", { class: "link", type: "button", onclick: () => { boxes.splice(i, 1); redraw(); } }, "remove"),
        ),
      ),
    );
  }

  let start: { x: number; y: number } | null = null;
  let draft: HTMLElement | null = null;
  const point = (e: PointerEvent) => {
    const r = stage.getBoundingClientRect();
    return {
      x: Math.max(0, Math.min(e.clientX - r.left, img.clientWidth)),
      y: Math.max(0, Math.min(e.clientY - r.top, img.clientHeight)),
    };
  };
  stage.addEventListener("pointerdown", (e) => {
    e.preventDefault();
    stage.setPointerCapture(e.pointerId);
    start = point(e);
    draft = h("div", { class: "box draft" });
    overlay.append(draft);
  });
  stage.addEventListener("pointermove", (e) => {
    if (!start || !draft) return;
    const p = point(e);
    draft.setAttribute(
      "style",
      `left:${Math.min(p.x, start.x)}px;top:${Math.min(p.y, start.y)}px;width:${Math.abs(p.x - start.x)}px;height:${Math.abs(p.y - start.y)}px`,
    );
  });
  stage.addEventListener("pointerup", (e) => {
    if (!start) return;
    const p = point(e);
    const s = scale();
    const b: Box = {
      label: labelSelect.value,
      left: Math.round(Math.min(p.x, start.x) * s),
      top: Math.round(Math.min(p.y, start.y) * s),
      width: Math.round(Math.abs(p.x - start.x) * s),
      height: Math.round(Math.abs(p.y - start.y) * s),
    };
    start = null;
    if (b.width >= 2 && b.height >= 2) boxes.push(b);
    redraw();
  });
  img.addEventListener("load", redraw);

  return {
    body: h(
      "div",
      { class: "stack" },
      h("label", null, "Label for the next box ", labelSelect),
      h("p", { class: "muted" }, "Drag on the image to draw a box."),
      stage,
      list,
    ),
    response: () =>
      boxes.length === 0
        ? "Draw at least one box."
        : { annotations: boxes.map((b) => ({ type: "box", ...b })) },
  };
}

function freeForm(): Question {
  const editor = h("textarea", { class: "json-editor", rows: "8", name: "response", spellcheck: "false" });
  editor.value = "{}";
  return {
    body: h("label", { class: "stack" }, "Response (JSON object)", editor),
    response: () => {
      try {
        const value: unknown = JSON.parse(editor.value);
        if (typeof value !== "object" || value === null || Array.isArray(value)) return "The response must be a JSON object.";
        return value as JsonObject;
      } catch (err) {
        return `Invalid JSON: ${err instanceof Error ? err.message : String(err)}`;
      }
    },
  };
}

export function renderLabel(root: HTMLElement, query: URLSearchParams): () => void {
  const stop = new AbortController();
  let heartbeat: number | undefined;
  // The lease in hand, released when the labeller leaves the view so the task goes back at once.
  let held: { taskId: string; leaseToken: string } | null = null;
  const projectSelect = h("select", { name: "project", "aria-label": "Project" }, h("option", { value: "" }, "any project"));
  const typeInput = h("input", { name: "type", placeholder: "any type", value: query.get("type") ?? "", "aria-label": "Type" });
  const workArea = h("div", { class: "work-area" }, h("p", { class: "muted" }, "Claim a task to start labelling."));

  clear(
    root,
    h("div", { class: "toolbar" }, h("h2", null, "Label")),
    h(
      "form",
      { class: "filters", onsubmit: (e: Event) => { e.preventDefault(); void claim(); } },
      projectSelect,
      typeInput,
      h("button", { class: "primary", type: "submit" }, "Claim next task"),
    ),
    workArea,
  );

  void projects.listProjects({}, { signal: stop.signal }).then(
    (resp) => {
      const wanted = query.get("project") ?? "";
      for (const p of resp.projects) {
        projectSelect.append(h("option", { value: p.name, selected: p.name === wanted }, `${p.name} (${p.type})`));
      }
    },
    (err) => { if (!stop.signal.aborted) showError(err, "Listing projects failed"); },
  );

  function endLease(): void {
    window.clearInterval(heartbeat);
    heartbeat = undefined;
    held = null;
    clear(workArea, h("p", { class: "muted" }, "Claim a task to start labelling."));
  }

  async function claim(): Promise<void> {
    try {
      const resp = await work.claimTasks(
        { project: projectSelect.value, type: typeInput.value.trim(), limit: 1, leaseSeconds: LEASE_SECONDS },
        { signal: stop.signal },
      );
      const lease = resp.leases[0];
      if (!lease?.task) {
        endLease();
        showNotice("Nothing to label: no pending task matches.");
        return;
      }
      show(lease);
    } catch (err) {
      if (!stop.signal.aborted) showError(err, "Claiming a task failed");
    }
  }

  function show(lease: Lease): void {
    const task = lease.task!;
    const ref = { taskId: task.taskId, leaseToken: lease.leaseToken };
    held = ref;
    window.clearInterval(heartbeat);
    heartbeat = window.setInterval(() => {
      work.heartbeatLease({ ...ref, leaseSeconds: LEASE_SECONDS }).catch((err) => showError(err, "Keeping the lease failed"));
    }, (LEASE_SECONDS / 3) * 1000);

    const params = task.params ?? {};
    const attachment = str(params.attachment);
    const kind = str(params.attachment_type) ?? "image";
    let question: Question;
    if (task.type === "categorization") question = categorization(params);
    else if (task.type === "textcollection") question = textCollection(params);
    else if (task.type === "imageannotation" && attachment) question = imageBoxes(params, attachment);
    else question = freeForm();

    const attachments: HTMLElement[] = [];
    if (attachment && task.type !== "imageannotation") attachments.push(attachmentView(kind, attachment));
    if (Array.isArray(params.attachments)) {
      for (const a of params.attachments) {
        if (typeof a === "string") attachments.push(attachmentView("image", a));
        else if (a && typeof a === "object" && !Array.isArray(a) && typeof a.content === "string") {
          attachments.push(attachmentView(str(a.type) ?? "text", a.content));
        }
      }
    }

    const error = h("div", { class: "dialog-error", role: "alert" });
    question.body.addEventListener("input", () => (error.textContent = ""));
    const submit = async () => {
      const response = question.response();
      if (typeof response === "string") {
        error.textContent = response;
        return;
      }
      try {
        const done = await work.completeTask({ ...ref, response });
        endLease();
        showNotice(`Task ${done.taskId} completed.`);
      } catch (err) {
        showError(err, "Submitting failed");
      }
    };
    const fail = () => {
      const reason = h("input", { name: "error", placeholder: "why can't it be done?" });
      openDialog("Fail this task", reason, [
        {
          label: "Fail task",
          danger: true,
          run: async () => {
            const failed = await work.failTask({ ...ref, error: reason.value.trim() || "failed in the console" });
            endLease();
            showNotice(`Task ${failed.taskId} failed.`);
          },
        },
      ]);
    };
    const skip = async () => {
      try {
        await work.releaseLease(ref);
        endLease();
        showNotice(`Task ${task.taskId} skipped; it is back in the queue.`);
      } catch (err) {
        showError(err, "Skipping failed");
      }
    };

    clear(
      workArea,
      h(
        "div",
        { class: "card", "data-labelling": task.taskId },
        h(
          "div",
          { class: "detail-head" },
          h("a", { class: "mono", href: `#/task/${task.taskId}` }, task.taskId),
          h("span", { class: "type" }, task.type),
          task.project ? h("span", { class: "tag" }, task.project) : null,
        ),
        h("p", { class: "instruction" }, task.instruction ?? "No instruction."),
        attachments,
        question.body,
        error,
        h(
          "div",
          { class: "actions" },
          h("button", { class: "primary", type: "button", onclick: submit }, "Submit"),
          h("button", { type: "button", onclick: skip }, "Skip"),
          h("button", { class: "danger", type: "button", onclick: fail }, "Fail"),
        ),
      ),
    );
  }

  return () => {
    stop.abort();
    window.clearInterval(heartbeat);
    if (held) work.releaseLease(held).catch(() => {});
  };
}
