// Live updates: WatchTasks kept open for as long as a view shows, reconnected with backoff.
import type { TaskEvent, WatchTasksRequest } from "./gen/annotask/v1/tasks_pb";
import { Code, isCode, watchTasks } from "./api";
import { showError } from "./dom";

export type LiveState = "live" | "reconnecting" | "off";

export interface LiveHandlers {
  /** Subscribed: re-read what changed before the subscription (the stream does not replay). */
  onOpen: () => void;
  onEvent: (event: TaskEvent) => void;
  onState: (state: LiveState) => void;
}

/** Runs until `signal` aborts, or until the key may no longer watch. */
export async function watchLive(request: WatchTasksRequest, signal: AbortSignal, handlers: LiveHandlers): Promise<void> {
  let backoff = 1000;
  while (!signal.aborted) {
    try {
      const events = watchTasks(request, signal, () => {
        handlers.onState("live");
        backoff = 1000;
        handlers.onOpen();
      });
      for await (const event of events) handlers.onEvent(event);
    } catch (err) {
      if (signal.aborted) return;
      if (isCode(err, Code.Unauthenticated) || isCode(err, Code.PermissionDenied)) {
        handlers.onState("off");
        showError(err, "Live updates stopped");
        return;
      }
      // RESOURCE_EXHAUSTED: this watcher fell behind; onOpen's re-read on reconnect catches up.
      if (!isCode(err, Code.ResourceExhausted)) console.warn("watch ended", err);
    }
    if (signal.aborted) return;
    handlers.onState("reconnecting");
    await new Promise((resolve) => window.setTimeout(resolve, backoff));
    backoff = Math.min(backoff * 2, 30_000);
  }
}

const LABELS: Record<LiveState, string> = { live: "● live", reconnecting: "◌ reconnecting", off: "○ not live" };

/** The indicator a view shows; `data-live` carries the state. */
export function showLiveState(el: HTMLElement, state: LiveState): void {
  el.className = `live ${state}`;
  el.dataset.live = state;
  el.textContent = LABELS[state];
}
