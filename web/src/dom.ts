// Small DOM helpers: element building, the error banner, modal dialogs.
import { describeError } from "./api";

type Child = Node | string | number | null | undefined | false;
type Attrs = Record<string, unknown>;

export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Attrs | null = null,
  ...children: (Child | Child[])[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs ?? {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      el.addEventListener(name.slice(2).toLowerCase(), value as EventListener);
    } else if (name === "class") {
      el.className = String(value);
    } else if (name === "value" || name === "checked" || name === "disabled") {
      (el as unknown as Record<string, unknown>)[name] = value;
    } else {
      el.setAttribute(name, value === true ? "" : String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el: Element, children: (Child | Child[])[]): void {
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
}

export function clear(el: Element, ...children: (Child | Child[])[]): void {
  el.replaceChildren();
  append(el, children);
}

/** A readable line for a failed call: code, grpc-message, ErrorInfo reason. */
export function errorLine(err: unknown): HTMLElement {
  const e = describeError(err);
  return h(
    "span",
    null,
    h("strong", null, e.code),
    ": ",
    e.message,
    e.reason ? h("span", { class: "reason" }, ` (${e.reason})`) : null,
  );
}

export function showError(err: unknown, context?: string): void {
  const banner = document.getElementById("banner");
  if (!banner) return;
  clear(
    banner,
    h(
      "div",
      { class: "banner error", role: "alert" },
      context ? `${context} — ` : null,
      errorLine(err),
      h("button", { class: "link close", "aria-label": "Dismiss", onclick: () => clear(banner) }, "×"),
    ),
  );
}

export function showNotice(text: string): void {
  const banner = document.getElementById("banner");
  if (!banner) return;
  clear(
    banner,
    h(
      "div",
      { class: "banner notice", role: "status" },
      text,
      h("button", { class: "link close", "aria-label": "Dismiss", onclick: () => clear(banner) }, "×"),
    ),
  );
}

export function clearBanner(): void {
  const banner = document.getElementById("banner");
  if (banner) clear(banner);
}

export interface DialogAction {
  label: string;
  primary?: boolean;
  danger?: boolean;
  /** Return false to keep the dialog open; a thrown error is shown inside the dialog. */
  run: () => Promise<boolean | void> | boolean | void;
}

/** A modal dialog; its actions' errors are shown in it rather than closing it. */
export function openDialog(title: string, body: Node, actions: DialogAction[]): HTMLDialogElement {
  const error = h("div", { class: "dialog-error", role: "alert" });
  const buttons = actions.map((action) => {
    const button = h(
      "button",
      { class: action.primary ? "primary" : action.danger ? "danger" : "", type: "button" },
      action.label,
    );
    button.addEventListener("click", async () => {
      clear(error);
      button.disabled = true;
      try {
        if ((await action.run()) !== false) dialog.close();
      } catch (err) {
        clear(error, errorLine(err));
      } finally {
        button.disabled = false;
      }
    });
    return button;
  });
  const dialog = h(
    "dialog",
    null,
    h("h3", null, title),
    body,
    error,
    h(
      "div",
      { class: "dialog-actions" },
      h("button", { type: "button", onclick: () => dialog.close() }, "Close"),
      buttons,
    ),
  );
  dialog.addEventListener("close", () => dialog.remove());
  document.body.append(dialog);
  dialog.showModal();
  return dialog;
}
