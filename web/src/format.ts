// How task fields read on screen.
import { timestampDate, type Timestamp } from "@bufbuild/protobuf/wkt";
import { TaskStatus, type Task } from "./gen/annotask/v1/tasks_pb";
import { h } from "./dom";

export const STATUSES: { status: TaskStatus; name: string }[] = [
  { status: TaskStatus.PENDING, name: "pending" },
  { status: TaskStatus.COMPLETED, name: "completed" },
  { status: TaskStatus.CANCELED, name: "canceled" },
  { status: TaskStatus.ERROR, name: "error" },
];

export function statusName(status: TaskStatus): string {
  return STATUSES.find((s) => s.status === status)?.name ?? "unknown";
}

export function statusFromName(name: string | null): TaskStatus {
  return STATUSES.find((s) => s.name === name)?.status ?? TaskStatus.UNSPECIFIED;
}

export function badge(status: TaskStatus): HTMLElement {
  const name = statusName(status);
  return h("span", { class: `badge ${name}`, "data-status": name }, name);
}

export function time(ts: Timestamp | undefined): string {
  if (!ts) return "—";
  return timestampDate(ts).toLocaleString(undefined, {
    year: "numeric",
    month: "short",
    day: "2-digit",
    hour: "2-digit",
    minute: "2-digit",
    second: "2-digit",
  });
}

export function json(value: unknown): HTMLElement {
  return h("pre", { class: "json" }, JSON.stringify(value ?? null, null, 2));
}

export function callbackOutcome(task: Task): string {
  if (!task.callbackUrl) return "no callback";
  if (task.callbackSucceeded === undefined) return "not sent yet";
  return task.callbackSucceeded ? "delivered" : "failed";
}
