// The task list: filters (kept in the URL hash, never the key), keyset paging by next_token,
// counts by status, and live updates over WatchTasks.
import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import {
  ListTasksRequestSchema,
  TaskEventKind,
  TaskStatus,
  WatchTasksRequestSchema,
  type ListTasksRequest,
  type Task,
  type TaskEvent,
} from "./gen/annotask/v1/tasks_pb";
import { tasks } from "./api";
import { showLiveState, watchLive } from "./live";
import { clear, clearBanner, h, showError } from "./dom";
import { badge, STATUSES, statusFromName, statusName, time } from "./format";

interface Filters {
  status: TaskStatus;
  type: string;
  project: string;
  batch: string;
  tags: string[];
  uniqueIds: string[];
  createdFrom: string;
  createdTo: string;
  limit: number;
}

const PAGE_SIZES = [25, 50, 100];

function splitList(value: string | null): string[] {
  return (value ?? "")
    .split(",")
    .map((s) => s.trim())
    .filter(Boolean);
}

function filtersFromQuery(query: URLSearchParams): Filters {
  const limit = Number(query.get("limit"));
  return {
    status: statusFromName(query.get("status")),
    type: query.get("type") ?? "",
    project: query.get("project") ?? "",
    batch: query.get("batch") ?? "",
    tags: splitList(query.get("tags")),
    uniqueIds: splitList(query.get("unique_id")),
    createdFrom: query.get("from") ?? "",
    createdTo: query.get("to") ?? "",
    limit: PAGE_SIZES.includes(limit) ? limit : 25,
  };
}

function queryFromFilters(f: Filters): string {
  const q = new URLSearchParams();
  if (f.status !== TaskStatus.UNSPECIFIED) q.set("status", statusName(f.status));
  if (f.type) q.set("type", f.type);
  if (f.project) q.set("project", f.project);
  if (f.batch) q.set("batch", f.batch);
  if (f.tags.length) q.set("tags", f.tags.join(","));
  if (f.uniqueIds.length) q.set("unique_id", f.uniqueIds.join(","));
  if (f.createdFrom) q.set("from", f.createdFrom);
  if (f.createdTo) q.set("to", f.createdTo);
  if (f.limit !== 25) q.set("limit", String(f.limit));
  return q.toString();
}

/** The filters every request shares (list, counts, watch); status is applied separately. */
function commonFilters(f: Filters) {
  return {
    type: f.type,
    project: f.project,
    batch: f.batch,
    tags: f.tags,
    uniqueId: f.uniqueIds,
    startTime: f.createdFrom ? timestampFromDate(new Date(f.createdFrom)) : undefined,
    endTime: f.createdTo ? timestampFromDate(new Date(f.createdTo)) : undefined,
  };
}

function listRequest(f: Filters, nextToken: string): ListTasksRequest {
  return create(ListTasksRequestSchema, {
    ...commonFilters(f),
    status: f.status,
    limit: f.limit,
    nextToken,
  });
}

function matchesStatus(f: Filters, task: Task): boolean {
  return f.status === TaskStatus.UNSPECIFIED || f.status === task.status;
}

export function renderList(root: HTMLElement, query: URLSearchParams): () => void {
  const filters = filtersFromQuery(query);
  const stop = new AbortController();
  // tokens[i] is the next_token that fetched page i ("" for the first page).
  const tokens: string[] = [""];
  let rows: Task[] = [];
  let total = 0n;
  let nextToken: string | undefined;
  let fresh = new Set<string>();

  const countsEl = h("div", { class: "counts", "aria-label": "Counts by status" });
  const liveEl = h("span", { class: "live off", "data-live": "off" }, "○ connecting");
  const tbody = h("tbody");
  const pageInfo = h("span", { class: "page-info" });
  const prevButton = h("button", { type: "button", onclick: () => goPage(-1) }, "← Prev");
  const nextButton = h("button", { type: "button", onclick: () => goPage(1) }, "Next →");

  const input = (name: string, value: string, placeholder: string, type = "text") =>
    h("input", { name, value, placeholder, type, "aria-label": placeholder });
  const statusSelect = h(
    "select",
    { name: "status", "aria-label": "Status" },
    h("option", { value: "" }, "any status"),
    STATUSES.map((s) =>
      h("option", { value: s.name, selected: s.status === filters.status }, s.name),
    ),
  );
  const limitSelect = h(
    "select",
    { name: "limit", "aria-label": "Page size" },
    PAGE_SIZES.map((n) => h("option", { value: String(n), selected: n === filters.limit }, `${n} / page`)),
  );
  const form = h(
    "form",
    { class: "filters", onsubmit: (e: Event) => applyFilters(e) },
    statusSelect,
    input("type", filters.type, "type"),
    input("project", filters.project, "project"),
    input("batch", filters.batch, "batch"),
    input("tags", filters.tags.join(", "), "tags (all of)"),
    input("unique_id", filters.uniqueIds.join(", "), "unique_id (any of)"),
    h("label", null, "created from ", input("from", filters.createdFrom, "created from", "datetime-local")),
    h("label", null, "to ", input("to", filters.createdTo, "created to", "datetime-local")),
    limitSelect,
    h("button", { class: "primary", type: "submit" }, "Apply"),
    h("button", { type: "button", onclick: () => (location.hash = "#/tasks") }, "Reset"),
  );

  function applyFilters(e: Event): void {
    e.preventDefault();
    const data = new FormData(form);
    const value = (name: string) => String(data.get(name) ?? "").trim();
    const next: Filters = {
      status: statusFromName(value("status")),
      type: value("type"),
      project: value("project"),
      batch: value("batch"),
      tags: splitList(value("tags")),
      uniqueIds: splitList(value("unique_id")),
      createdFrom: value("from"),
      createdTo: value("to"),
      limit: Number(value("limit")) || 25,
    };
    location.hash = `#/tasks?${queryFromFilters(next)}`;
  }

  clear(
    root,
    h("div", { class: "toolbar" }, h("h2", null, "Tasks"), countsEl, liveEl),
    form,
    h(
      "div",
      { class: "table-wrap" },
      h(
        "table",
        { class: "tasks" },
        h(
          "thead",
          null,
          h(
            "tr",
            null,
            ["Task", "Type", "Status", "Project", "Batch", "Tags", "Unique id", "Created"].map((t) =>
              h("th", null, t),
            ),
          ),
        ),
        tbody,
      ),
    ),
    h("div", { class: "pager" }, prevButton, pageInfo, nextButton),
  );

  function row(task: Task): HTMLTableRowElement {
    const href = `#/task/${task.taskId}`;
    return h(
      "tr",
      { "data-task-id": task.taskId, class: fresh.has(task.taskId) ? "fresh" : "" },
      h("td", { class: "mono" }, h("a", { href }, task.taskId)),
      h("td", null, task.type),
      h("td", null, badge(task.status)),
      h("td", null, task.project ?? ""),
      h("td", null, task.batch ?? ""),
      h("td", null, task.tags.map((t) => h("span", { class: "tag" }, t))),
      h("td", { class: "mono" }, task.uniqueId ?? ""),
      h("td", { class: "nowrap" }, time(task.createdAt)),
    );
  }

  // Only the page is in the DOM (≤ 100 rows), so long lists stay responsive.
  function renderRows(): void {
    if (rows.length === 0) {
      clear(tbody, h("tr", null, h("td", { colspan: "8", class: "empty" }, "No tasks match these filters.")));
    } else {
      clear(tbody, rows.map(row));
    }
    const page = tokens.length;
    const first = (page - 1) * filters.limit;
    pageInfo.textContent =
      rows.length === 0
        ? `Page ${page} · 0 of ${total}`
        : `Page ${page} · ${first + 1}–${first + rows.length} of ${total}`;
    prevButton.disabled = page <= 1;
    nextButton.disabled = !nextToken;
  }

  // Overlapping loads (paging, live refreshes) may answer out of order: only the latest counts.
  let pageLoads = 0;
  let countLoads = 0;

  async function loadPage(): Promise<void> {
    const load = ++pageLoads;
    try {
      const resp = await tasks.listTasks(listRequest(filters, tokens[tokens.length - 1]), {
        signal: stop.signal,
      });
      if (load !== pageLoads) return;
      rows = resp.docs;
      total = resp.total;
      nextToken = resp.hasMore ? resp.nextToken : undefined;
      renderRows();
    } catch (err) {
      if (!stop.signal.aborted) showError(err, "Listing tasks failed");
    }
  }

  async function loadCounts(): Promise<void> {
    const base = commonFilters(filters);
    const count = async (status: TaskStatus) =>
      (
        await tasks.listTasks(create(ListTasksRequestSchema, { ...base, status, limit: 1, limitedResponse: true }), {
          signal: stop.signal,
        })
      ).total;
    const load = ++countLoads;
    try {
      const totals = await Promise.all([TaskStatus.UNSPECIFIED, ...STATUSES.map((s) => s.status)].map(count));
      if (load !== countLoads) return;
      const chip = (status: TaskStatus, name: string, n: bigint) => {
        const q = queryFromFilters({ ...filters, status });
        return h(
          "a",
          {
            class: `count ${name}${filters.status === status ? " selected" : ""}`,
            href: `#/tasks?${q}`,
            "data-count": name,
          },
          h("span", { class: "n" }, String(n)),
          " ",
          name,
        );
      };
      clear(
        countsEl,
        chip(TaskStatus.UNSPECIFIED, "all", totals[0]),
        STATUSES.map((s, i) => chip(s.status, s.name, totals[i + 1])),
      );
    } catch (err) {
      if (!stop.signal.aborted) showError(err, "Counting tasks failed");
    }
  }

  function goPage(step: number): void {
    // Until the page arrives, another click would page from a stale token.
    prevButton.disabled = nextButton.disabled = true;
    if (step > 0 && nextToken) tokens.push(nextToken);
    if (step < 0 && tokens.length > 1) tokens.pop();
    fresh = new Set();
    void loadPage();
  }

  // Many events in a burst make one re-count and one re-list, not one per event.
  let refreshTimer: number | undefined;
  function refreshSoon(): void {
    window.clearTimeout(refreshTimer);
    refreshTimer = window.setTimeout(() => {
      void loadCounts();
      void loadPage();
    }, 300);
  }

  // A changed row flashes once; re-renders after that show it plainly.
  function markFresh(taskId: string): void {
    fresh.add(taskId);
    window.setTimeout(() => fresh.delete(taskId), 2000);
  }

  function onEvent(event: TaskEvent): void {
    const task = event.task;
    if (!task) return;
    const at = rows.findIndex((r) => r.taskId === task.taskId);
    if (at >= 0) {
      if (matchesStatus(filters, task)) rows[at] = task;
      else rows.splice(at, 1);
      markFresh(task.taskId);
      renderRows();
    } else if (event.kind === TaskEventKind.CREATED && tokens.length === 1 && matchesStatus(filters, task)) {
      rows = [task, ...rows].slice(0, filters.limit);
      total += 1n;
      markFresh(task.taskId);
      renderRows();
    }
    // The page's next_token and the counts come from the server, once the burst settles.
    refreshSoon();
  }

  // Status is left out of the watch so that the counts of every status stay live.
  const watchRequest = create(WatchTasksRequestSchema, commonFilters(filters));
  const watch = () =>
    watchLive(watchRequest, stop.signal, {
      onOpen: () => {
        void loadPage();
        void loadCounts();
      },
      onEvent,
      onState: (state) => showLiveState(liveEl, state),
    });

  clearBanner();
  void loadPage();
  void loadCounts();
  void watch();
  return () => {
    stop.abort();
    window.clearTimeout(refreshTimer);
  };
}
