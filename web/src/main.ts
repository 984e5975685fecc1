// The console's shell: sign-in, header, and a hash router over the views.
import "./styles.css";
import { create } from "@bufbuild/protobuf";
import { ListTasksRequestSchema } from "./gen/annotask/v1/tasks_pb";
import { apiKey, setApiKey, tasks } from "./api";
import { clear, clearBanner, errorLine, h, showError } from "./dom";
import { renderList } from "./list";
import { renderDetail } from "./detail";
import { renderLabel } from "./label";

const app = document.getElementById("app")!;
let leaveView: (() => void) | null = null;

function maskedKey(key: string): string {
  return key.length > 12 ? `${key.slice(0, 8)}…${key.slice(-4)}` : "…";
}

function header(key: string): HTMLElement {
  const route = location.hash.startsWith("#/label") ? "label" : "tasks";
  return h(
    "header",
    null,
    h("a", { class: "brand", href: "#/tasks" }, "annotask"),
    h(
      "nav",
      null,
      h("a", { href: "#/tasks", class: route === "tasks" ? "active" : "" }, "Tasks"),
      h("a", { href: "#/label", class: route === "label" ? "active" : "" }, "Label"),
    ),
    h(
      "div",
      { class: "account" },
      h("span", { class: "muted", title: "API key of this session" }, `Signed in · ${maskedKey(key)}`),
      h("button", { type: "button", onclick: signOut }, "Sign out"),
    ),
  );
}

function signOut(): void {
  setApiKey(null);
  location.hash = "";
  route();
}

function signIn(): void {
  const input = h("input", {
    name: "api_key",
    type: "password",
    autocomplete: "off",
    placeholder: "live_…",
    "aria-label": "API key",
    required: true,
  });
  const error = h("div", { class: "dialog-error", role: "alert" });
  const button = h("button", { class: "primary", type: "submit" }, "Sign in");
  const form = h(
    "form",
    {
      class: "signin card",
      onsubmit: async (e: Event) => {
        e.preventDefault();
        clear(error);
        const key = input.value.trim();
        if (!key) return;
        button.disabled = true;
        setApiKey(key);
        try {
          // Any authenticated call proves the key; a list of one task is the cheapest.
          await tasks.listTasks(create(ListTasksRequestSchema, { limit: 1, limitedResponse: true }));
          if (!location.hash.startsWith("#/")) location.hash = "#/tasks";
          route();
        } catch (err) {
          setApiKey(null);
          clear(error, errorLine(err));
        } finally {
          button.disabled = false;
        }
      },
    },
    h("h1", null, "annotask console"),
    h("p", { class: "muted" }, "Sign in with an API key. It stays in this tab's session storage only."),
    input,
    button,
    error,
  );
  clear(app, h("main", { class: "center" }, form));
  input.focus();
}

function route(): void {
  leaveView?.();
  leaveView = null;
  const key = apiKey();
  if (!key) {
    signIn();
    return;
  }
  const [path, queryString = ""] = location.hash.replace(/^#/, "").split("?");
  const query = new URLSearchParams(queryString);
  const main = h("main");
  clear(app, header(key), h("div", { id: "banner" }), main);
  const parts = path.split("/").filter(Boolean);
  if (parts[0] === "task" && parts[1]) {
    leaveView = renderDetail(main, decodeURIComponent(parts[1]));
  } else if (parts[0] === "label") {
    leaveView = renderLabel(main, query);
  } else {
    leaveView = renderList(main, query);
  }
}

window.addEventListener("hashchange", () => {
  clearBanner();
  route();
});
window.addEventListener("unhandledrejection", (e) => showError(e.reason, "Unexpected error"));
route();
