// End-to-end test of the console in headless Chromium (Debian's /usr/bin/chromium, driven by
// playwright-core): starts target/debug/annotask on a fresh SQLite database, creates tasks over
// REST, and drives the browser through sign-in, filters, paging, a task's detail and actions,
// live updates and labelling. Screenshots go to target/e2e/. Exits non-zero on any failure.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, existsSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import zlib from "node:zlib";
import { chromium } from "playwright-core";

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, "../..");
const dist = path.join(repo, "web/dist");
const shots = path.join(repo, "target/e2e");
const binary = process.env.ANNOTASK_BIN ?? path.join(repo, "target/debug/annotask");
const WAIT = { timeout: 15_000 };

rmSync(shots, { recursive: true, force: true });
mkdirSync(shots, { recursive: true });

function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.on("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/** A small PNG (a road with two "cars"), so the image attachment is a real image. */
function png(width, height) {
  const raw = Buffer.alloc((width * 3 + 1) * height);
  for (let y = 0; y < height; y++) {
    const row = y * (width * 3 + 1);
    for (let x = 0; x < width; x++) {
      const car = (x > 40 && x < 120 && y > 90 && y < 140) || (x > 180 && x < 270 && y > 100 && y < 150);
      const [r, g, b] = car ? [200, 40, 50] : y > 80 ? [90, 95, 105] : [140, 190, 235];
      raw.set([r, g, b], row + 1 + x * 3);
    }
  }
  const chunk = (type, data) => {
    const out = Buffer.alloc(12 + data.length);
    out.writeUInt32BE(data.length, 0);
    out.write(type, 4, "ascii");
    data.copy(out, 8);
    out.writeUInt32BE(zlib.crc32(Buffer.concat([Buffer.from(type, "ascii"), data])), 8 + data.length);
    return out;
  };
  const header = Buffer.alloc(13);
  header.writeUInt32BE(width, 0);
  header.writeUInt32BE(height, 4);
  header.set([8, 2, 0, 0, 0], 8);
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk("IHDR", header),
    chunk("IDAT", zlib.deflateSync(raw)),
    chunk("IEND", Buffer.alloc(0)),
  ]);
}

const TYPES = { ".html": "text/html", ".js": "text/javascript", ".css": "text/css" };

/**
 * Serves the image attachment, and (when the annotask binary does not serve the console
 * itself) web/dist with every other request proxied to annotask, so the page and its
 * grpc-web calls share one origin as they do in production.
 */
function startSidecar(port, apiPort, serveConsole) {
  const image = png(320, 200);
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, "http://x");
    if (url.pathname === "/fixtures/road.png") {
      res.writeHead(200, { "content-type": "image/png" });
      res.end(image);
      return;
    }
    const file = url.pathname === "/" ? "index.html" : url.pathname.slice(1);
    const local = path.join(dist, file);
    if (serveConsole && req.method === "GET" && local.startsWith(dist) && existsSync(local) && file) {
      res.writeHead(200, { "content-type": TYPES[path.extname(local)] ?? "application/octet-stream" });
      res.end(readFileSync(local));
      return;
    }
    const upstream = http.request(
      { host: "127.0.0.1", port: apiPort, path: req.url, method: req.method, headers: req.headers },
      (up) => {
        res.writeHead(up.statusCode, up.headers);
        // A stream's headers must reach the page before its first message, as they do unproxied.
        res.flushHeaders();
        up.pipe(res);
      },
    );
    upstream.on("error", () => res.destroy());
    res.on("close", () => upstream.destroy());
    req.pipe(upstream);
  });
  return new Promise((resolve) => server.listen(port, "127.0.0.1", () => resolve(server)));
}

/** Starts annotask; the first start on a database prints the key, a restart passes it in. */
async function startAnnotask(dir, port, knownKey) {
  const child = spawn(
    binary,
    ["serve", "--listen", `127.0.0.1:${port}`, "--database-url", `sqlite://${dir}/e2e.db?mode=rwc`],
    { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? "warn" } },
  );
  let log = "";
  child.stderr.on("data", (d) => (log += d));
  const key = knownKey ?? await new Promise((resolve, reject) => {
    let out = "";
    const timer = setTimeout(() => reject(new Error(`no API key printed by annotask\n${out}\n${log}`)), 120_000);
    child.stdout.on("data", (d) => {
      out += d;
      const lines = out.split("\n");
      const at = lines.findIndex((l) => l.includes("created account 'default' with API key:"));
      if (at >= 0 && lines[at + 1]?.trim()) {
        clearTimeout(timer);
        resolve(lines[at + 1].trim());
      }
    });
    child.on("exit", (code) => reject(new Error(`annotask exited (${code})\n${log}`)));
  });
  for (let i = 0; ; i++) {
    try {
      const res = await fetch(`http://127.0.0.1:${port}/healthz`);
      if (res.ok) break;
    } catch {
      // not listening yet
    }
    if (i > 600) throw new Error(`annotask never answered /healthz\n${log}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  return { child, port, key, log: () => log };
}

/** SIGTERM, then SIGKILL if the server has not exited within 10 s; says which it took. */
async function stopAnnotask({ child }) {
  if (child.exitCode !== null) return "already exited";
  const exited = new Promise((resolve) => child.once("exit", resolve));
  child.kill("SIGTERM");
  const timer = new Promise((resolve) => setTimeout(() => resolve("timeout"), 10_000));
  if ((await Promise.race([exited, timer])) !== "timeout") return "SIGTERM";
  child.kill("SIGKILL");
  await exited;
  return "SIGKILL";
}

// ---- the test ----------------------------------------------------------------------------

const dir = mkdtempSync(path.join(os.tmpdir(), "annotask-e2e-"));
let annotask;
let sidecar;
let browser;
let page;
let step = "start";
try {
  annotask = await startAnnotask(dir, await freePort());
  const api = `http://127.0.0.1:${annotask.port}/v1`;
  const auth = "Basic " + Buffer.from(`${annotask.key}:`).toString("base64");
  const rest = async (method, route, body) => {
    const res = await fetch(api + route, {
      method,
      headers: body === undefined ? { authorization: auth } : { authorization: auth, "content-type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const json = await res.json();
    assert.ok(res.ok, `${method} ${route} → ${res.status} ${JSON.stringify(json)}`);
    return json;
  };

  // Does the binary serve the console itself? Then the test drives exactly that.
  const home = await fetch(`http://127.0.0.1:${annotask.port}/`);
  const servesConsole = home.ok && (await home.text()).includes("annotask console");
  const sidecarPort = await freePort();
  sidecar = await startSidecar(sidecarPort, annotask.port, !servesConsole);
  const consoleUrl = servesConsole ? `http://127.0.0.1:${annotask.port}/` : `http://127.0.0.1:${sidecarPort}/`;
  const image = `http://127.0.0.1:${sidecarPort}/fixtures/road.png`;
  console.log(`console at ${consoleUrl} (${servesConsole ? "served by annotask" : "served by the test, API proxied"})`);

  step = "create tasks over REST";
  await rest("POST", "/projects", {
    name: "cars",
    type: "imageannotation",
    params: { instruction: "Box every car", geometries: { box: { objects_to_annotate: ["car", "bus"] } } },
  });
  await rest("POST", "/projects", {
    name: "animals",
    type: "categorization",
    params: { instruction: "Is it a road or a field?", categories: ["road", "field"] },
  });
  const cars = [];
  for (let i = 0; i < 24; i++) {
    cars.push(
      await rest("POST", "/task/imageannotation", {
        project: "cars",
        attachment: image,
        attachment_type: "image",
        tags: i < 12 ? ["fleet"] : ["street"],
        unique_id: `car-${i}`,
        metadata: { frame: i },
      }),
    );
  }
  for (let i = 0; i < 3; i++) {
    await rest("POST", "/task/textcollection", {
      instruction: "Transcribe the plate",
      attachments: [{ type: "text", content: `Plate photo ${i}` }],
      fields: [{ type: "text", field_id: "plate", title: "Plate number" }],
    });
  }
  const animal = await rest("POST", "/task/categorization", {
    project: "animals",
    attachment: image,
    attachment_type: "image",
    unique_id: "scene-1",
  });

  browser = await chromium.launch({ executablePath: "/usr/bin/chromium", args: ["--no-sandbox"] });
  page = await browser.newPage({ viewport: { width: 1360, height: 860 } });
  const pageErrors = [];
  page.on("pageerror", (err) => pageErrors.push(err.message));

  step = "sign in";
  await page.goto(consoleUrl);
  await page.getByRole("button", { name: "Sign in" }).waitFor(WAIT);
  await page.getByLabel("API key").fill("live_not_a_real_key");
  await page.getByRole("button", { name: "Sign in" }).click();
  // A wrong key reads as the server's message, not a blank page.
  await page.locator(".signin [role=alert]", { hasText: "Unauthenticated" }).waitFor(WAIT);
  await page.screenshot({ path: path.join(shots, "01-signin-error.png") });
  await page.getByLabel("API key").fill(annotask.key);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("button", { name: "Sign out" }).waitFor(WAIT);
  assert.ok(!page.url().includes(annotask.key), "the key is never in the URL");
  assert.equal(await page.evaluate(() => sessionStorage.getItem("annotask.apiKey")), annotask.key);

  // Reset re-renders the list view; wait for the new, empty form before typing into it.
  const resetFilters = async () => {
    await page.getByRole("button", { name: "Reset" }).click();
    await page.waitForFunction(
      () => location.hash === "#/tasks" && [...document.querySelectorAll(".filters input")].every((i) => i.value === ""),
      null,
      WAIT,
    );
  };

  step = "see the tasks created over REST, with counts";
  const rows = page.locator("table.tasks tbody tr[data-task-id]");
  await page.locator(".page-info", { hasText: "Page 1 · 1–25 of 28" }).waitFor(WAIT);
  assert.equal(await rows.count(), 25);
  await page.locator('[data-count="all"] .n', { hasText: /^28$/ }).waitFor(WAIT);
  await page.locator('[data-count="pending"] .n', { hasText: /^28$/ }).waitFor(WAIT);
  await page.locator(`tr[data-task-id="${animal.task_id}"]`).waitFor(WAIT);
  await page.screenshot({ path: path.join(shots, "02-list.png") });

  step = "page forward and back";
  await page.getByRole("button", { name: "Next →" }).click();
  await page.locator(".page-info", { hasText: "Page 2 · 26–28 of 28" }).waitFor(WAIT);
  assert.equal(await rows.count(), 3);
  // Newest first: the last page holds the three oldest cars.
  const page2 = await rows.evaluateAll((trs) => trs.map((tr) => tr.dataset.taskId));
  assert.deepEqual(page2, [cars[2].task_id, cars[1].task_id, cars[0].task_id]);
  await page.screenshot({ path: path.join(shots, "03-page2.png") });
  await page.getByRole("button", { name: "← Prev" }).click();
  await page.locator(".page-info", { hasText: "Page 1 · 1–25 of 28" }).waitFor(WAIT);

  step = "filter";
  await page.getByLabel("type", { exact: true }).fill("textcollection");
  await page.getByRole("button", { name: "Apply" }).click();
  await page.locator(".page-info", { hasText: "of 3" }).waitFor(WAIT);
  assert.deepEqual(
    [...new Set(await rows.locator("td:nth-child(2)").allTextContents())],
    ["textcollection"],
  );
  assert.ok(page.url().includes("type=textcollection"));
  await resetFilters();
  await page.getByLabel("tags (all of)").fill("fleet");
  await page.getByRole("button", { name: "Apply" }).click();
  await page.locator(".page-info", { hasText: "Page 1 · 1–12 of 12" }).waitFor(WAIT);
  await page.locator('[data-count="pending"] .n', { hasText: /^12$/ }).waitFor(WAIT);
  await page.screenshot({ path: path.join(shots, "04-filter-tags.png") });

  step = "filter by created range";
  await resetFilters();
  await page.getByLabel("created from", { exact: true }).fill("2099-01-01T00:00");
  await page.getByRole("button", { name: "Apply" }).click();
  await page.locator("td.empty", { hasText: "No tasks match" }).waitFor(WAIT);
  await page.locator('[data-count="all"] .n', { hasText: /^0$/ }).waitFor(WAIT);
  await page.getByLabel("created from", { exact: true }).fill("2000-01-01T00:00");
  await page.getByLabel("tags (all of)").fill("fleet");
  await page.getByRole("button", { name: "Apply" }).click();
  await page.locator(".page-info", { hasText: "Page 1 · 1–12 of 12" }).waitFor(WAIT);

  step = "open a task";
  const target = cars[5];
  await page.locator(`tr[data-task-id="${target.task_id}"] a`).click();
  await page.locator("h2", { hasText: target.task_id }).waitFor(WAIT);
  await page.locator(".detail-head [data-status=pending]").waitFor(WAIT);
  await page.locator('[data-field="unique_id"]', { hasText: "car-5" }).waitFor(WAIT);
  await page.locator('[data-section="metadata"] pre', { hasText: '"frame": 5' }).waitFor(WAIT);

  step = "a conflicting unique_id shows the server's error";
  await page.getByRole("button", { name: "Set unique id" }).click();
  await page.locator("dialog input[name=unique_id]").fill("car-6");
  await page.locator("dialog").getByRole("button", { name: "Save" }).click();
  await page.locator("dialog [role=alert]", { hasText: "AlreadyExists" }).waitFor(WAIT);
  await page.locator("dialog [role=alert]", { hasText: cars[6].task_id }).waitFor(WAIT);
  // The ErrorInfo reason from grpc-status-details-bin, decoded.
  await page.locator("dialog [role=alert] .reason", { hasText: "UNIQUE_ID_CONFLICT" }).waitFor(WAIT);
  await page.screenshot({ path: path.join(shots, "05-error-in-dialog.png") });
  await page.locator("dialog").getByRole("button", { name: "Close" }).click();

  step = "edit metadata with validation";
  await page.getByRole("button", { name: "Edit metadata" }).click();
  await page.locator("dialog textarea").fill('{"frame": 5, "reviewed": tru');
  await page.locator("dialog .validation.bad").waitFor(WAIT);
  await page.locator("dialog textarea").fill("[1, 2]");
  await page.locator("dialog .validation.bad", { hasText: "JSON object" }).waitFor(WAIT);
  await page.locator("dialog").getByRole("button", { name: "Save metadata" }).click();
  assert.equal(await page.locator("dialog").count(), 1, "an invalid editor keeps the dialog open");
  await page.locator("dialog textarea").fill('{"frame": 5, "reviewed": true}');
  await page.locator("dialog .validation.ok").waitFor(WAIT);
  await page.locator("dialog").getByRole("button", { name: "Save metadata" }).click();
  await page.locator('[data-section="metadata"] pre', { hasText: '"reviewed": true' }).waitFor(WAIT);
  assert.deepEqual((await rest("GET", `/task/${target.task_id}`)).metadata, { frame: 5, reviewed: true });

  step = "tag it";
  await page.getByLabel("New tag").fill("needs-review, night");
  await page.getByRole("button", { name: "Add tag" }).click();
  await page.locator('[data-tag="night"]').waitFor(WAIT);
  await page.getByRole("button", { name: "Remove tag fleet" }).click();
  await page.locator('[data-tag="fleet"]').waitFor({ state: "detached", ...WAIT });
  assert.deepEqual((await rest("GET", `/task/${target.task_id}`)).tags, ["needs-review", "night"]);

  step = "cancel it, freeing its unique id";
  await page.getByRole("button", { name: "Cancel task" }).click();
  await page.locator("dialog input[name=clear_unique_id]").check();
  await page.locator("dialog").getByRole("button", { name: "Cancel task" }).click();
  await page.locator(".detail-head [data-status=canceled]").waitFor(WAIT);
  await page.locator('[data-field="unique_id"]', { hasText: "—" }).waitFor(WAIT);
  await page.screenshot({ path: path.join(shots, "06-detail-canceled.png") });
  const canceled = await rest("GET", `/task/${target.task_id}`);
  assert.equal(canceled.status, "canceled");
  assert.equal(canceled.unique_id, undefined);

  step = "set and clear a unique id";
  await page.getByRole("button", { name: "Set unique id" }).click();
  await page.locator("dialog input[name=unique_id]").fill("car-5-retired");
  await page.locator("dialog").getByRole("button", { name: "Save" }).click();
  await page.locator('[data-field="unique_id"]', { hasText: "car-5-retired" }).waitFor(WAIT);
  await page.getByRole("button", { name: "Clear unique id" }).click();
  await page.locator('[data-field="unique_id"]', { hasText: "—" }).waitFor(WAIT);
  assert.equal((await rest("GET", `/task/${target.task_id}`)).unique_id, undefined);

  step = "watch a task created over REST appear without a reload";
  await page.locator("a", { hasText: "← Back to tasks" }).click();
  await page.locator(".page-info", { hasText: "of 28" }).waitFor(WAIT);
  await page.locator('[data-count="canceled"] .n', { hasText: /^1$/ }).waitFor(WAIT);
  // Subscribed: from here every committed change reaches the page.
  await page.locator('[data-live="live"]').waitFor(WAIT);
  await page.evaluate(() => (window.__notReloaded = true));
  const live = await rest("POST", "/task/categorization", {
    project: "animals",
    attachment: image,
    attachment_type: "image",
    tags: ["live"],
  });
  await page.locator(`tr[data-task-id="${live.task_id}"]`).waitFor(WAIT);
  assert.equal(await rows.first().getAttribute("data-task-id"), live.task_id, "the new task is on top");
  await page.locator('[data-count="all"] .n', { hasText: /^29$/ }).waitFor(WAIT);
  await page.locator('[data-count="pending"] .n', { hasText: /^28$/ }).waitFor(WAIT);
  // A change to a listed task updates its row and the counts too.
  await rest("POST", `/task/${live.task_id}/cancel`);
  await page.locator(`tr[data-task-id="${live.task_id}"] [data-status=canceled]`).waitFor(WAIT);
  await page.locator('[data-count="canceled"] .n', { hasText: /^2$/ }).waitFor(WAIT);
  assert.equal(await page.evaluate(() => window.__notReloaded), true, "the page was not reloaded");
  await page.screenshot({ path: path.join(shots, "07-live.png") });

  step = "the live list reconnects after a server restart";
  const stoppedBy = await stopAnnotask(annotask);
  console.log(`annotask stopped (${stoppedBy}); restarting on the same port and database`);
  await page.locator('[data-live="reconnecting"]').waitFor(WAIT);
  annotask = await startAnnotask(dir, annotask.port, annotask.key);
  // The backoff doubles from 1 s: the next attempt after the restart may be some seconds away.
  await page.locator('[data-live="live"]').waitFor({ timeout: 60_000 });
  const afterRestart = await rest("POST", "/task/textcollection", {
    instruction: "Transcribe the plate",
    attachments: [{ type: "text", content: "Plate photo after restart" }],
    fields: [{ type: "text", field_id: "plate", title: "Plate number" }],
  });
  await page.locator(`tr[data-task-id="${afterRestart.task_id}"]`).waitFor(WAIT);
  await page.locator('[data-count="all"] .n', { hasText: /^30$/ }).waitFor(WAIT);
  assert.equal(await page.evaluate(() => window.__notReloaded), true, "the page was not reloaded");

  step = "label a categorization task";
  await page.getByRole("link", { name: "Label" }).click();
  await page.locator("select[name=project] option[value=animals]").waitFor({ state: "attached", ...WAIT });
  await page.getByLabel("Project").selectOption("animals");
  await page.getByRole("button", { name: "Claim next task" }).click();
  await page.locator(`[data-labelling="${animal.task_id}"]`).waitFor(WAIT);
  await page.locator(".instruction", { hasText: "Is it a road or a field?" }).waitFor(WAIT);
  const img = page.locator(`[data-labelling] img.attachment-image`);
  await img.waitFor(WAIT);
  await page.waitForFunction(() => document.querySelector("img.attachment-image")?.naturalWidth === 320, null, WAIT);
  await page.getByRole("button", { name: "Submit", exact: true }).click();
  await page.locator("[data-labelling] [role=alert]", { hasText: "Choose a category" }).waitFor(WAIT);
  await page.getByLabel("road").check();
  await page.screenshot({ path: path.join(shots, "08-label-categorization.png") });
  await page.getByRole("button", { name: "Submit", exact: true }).click();
  await page.locator(".banner.notice", { hasText: `Task ${animal.task_id} completed` }).waitFor(WAIT);

  step = "see it completed";
  await page.goto(`${consoleUrl}#/task/${animal.task_id}`);
  await page.locator(".detail-head [data-status=completed]").waitFor(WAIT);
  await page.locator('[data-section="response"] pre', { hasText: '"category": "road"' }).waitFor(WAIT);
  const done = await rest("GET", `/task/${animal.task_id}`);
  assert.equal(done.status, "completed");
  assert.deepEqual(done.response, { category: "road" });
  await page.screenshot({ path: path.join(shots, "09-completed.png") });

  step = "audit it: reject with rework";
  await page.getByRole("button", { name: "Audit", exact: true }).click();
  await page.locator("dialog input[value=reject]").check();
  await page.locator("dialog input[name=rework]").check();
  await page.locator("dialog textarea[name=comments]").fill("It is a field");
  await page.locator("dialog").getByRole("button", { name: "Submit audit" }).click();
  await page.locator(".detail-head [data-status=pending]").waitFor(WAIT);
  await page.locator('[data-section="audits"]', { hasText: "It is a field" }).waitFor(WAIT);

  step = "the open detail follows a change made elsewhere";
  await page.locator('.detail-head [data-live="live"]').waitFor(WAIT);
  await page.evaluate(() => (window.__notReloaded = true));
  const { leases } = await rest("POST", "/work/claim", { project: "animals", limit: 1 });
  assert.equal(leases[0]?.task.task_id, animal.task_id);
  await rest("POST", `/task/${animal.task_id}/complete`, {
    lease_token: leases[0].lease_token,
    response: { category: "field" },
  });
  await page.locator(".detail-head [data-status=completed]").waitFor(WAIT);
  await page.locator('[data-section="response"] pre', { hasText: '"category": "field"' }).waitFor(WAIT);
  assert.equal(await page.evaluate(() => window.__notReloaded), true, "the page was not reloaded");

  step = "draw a box on an image task";
  await page.goto(`${consoleUrl}#/label?project=cars`);
  await page.locator("select[name=project] option[value=cars]").waitFor({ state: "attached", ...WAIT });
  await page.getByLabel("Project").selectOption("cars");
  await page.getByRole("button", { name: "Claim next task" }).click();
  await page.locator(`[data-labelling="${cars[0].task_id}"]`).waitFor(WAIT);
  await page.waitForFunction(() => document.querySelector("img.attachment-image")?.naturalWidth === 320, null, WAIT);
  const box = await page.locator(".stage img").boundingBox();
  const scale = box.width / 320;
  await page.mouse.move(box.x + 40 * scale, box.y + 90 * scale);
  await page.mouse.down();
  await page.mouse.move(box.x + 80 * scale, box.y + 115 * scale, { steps: 4 });
  await page.mouse.move(box.x + 120 * scale, box.y + 140 * scale, { steps: 4 });
  await page.mouse.up();
  await page.locator(".box-layer .box[data-label=car]").waitFor(WAIT);
  await page.screenshot({ path: path.join(shots, "10-label-boxes.png") });
  await page.getByRole("button", { name: "Submit", exact: true }).click();
  await page.locator(".banner.notice", { hasText: `Task ${cars[0].task_id} completed` }).waitFor(WAIT);
  const boxed = await rest("GET", `/task/${cars[0].task_id}`);
  assert.equal(boxed.status, "completed");
  const [annotation] = boxed.response.annotations;
  assert.equal(annotation.label, "car");
  assert.equal(annotation.type, "box");
  for (const [got, want] of [[annotation.left, 40], [annotation.top, 90], [annotation.width, 80], [annotation.height, 50]]) {
    assert.ok(Math.abs(got - want) <= 2, `box ${JSON.stringify(annotation)} is where it was drawn`);
  }

  step = "skip a task, then fail it";
  await page.getByRole("button", { name: "Claim next task" }).click();
  await page.locator(`[data-labelling="${cars[1].task_id}"]`).waitFor(WAIT);
  await page.getByRole("button", { name: "Skip", exact: true }).click();
  await page.locator(".banner.notice", { hasText: "skipped" }).waitFor(WAIT);
  await page.getByRole("button", { name: "Claim next task" }).click();
  await page.locator(`[data-labelling="${cars[1].task_id}"]`).waitFor(WAIT);
  await page.getByRole("button", { name: "Fail", exact: true }).click();
  await page.locator("dialog input[name=error]").fill("image unreadable");
  await page.locator("dialog").getByRole("button", { name: "Fail task" }).click();
  await page.locator(".banner.notice", { hasText: `Task ${cars[1].task_id} failed` }).waitFor(WAIT);
  const failed = await rest("GET", `/task/${cars[1].task_id}`);
  assert.equal(failed.status, "error");

  step = "answer a textcollection task";
  await page.getByLabel("Project").selectOption("");
  await page.getByLabel("Type", { exact: true }).fill("textcollection");
  await page.getByRole("button", { name: "Claim next task" }).click();
  const text = page.locator("[data-labelling]");
  await text.waitFor(WAIT);
  await text.locator(".attachment-text", { hasText: /Plate photo \d/ }).waitFor(WAIT);
  const textId = await text.getAttribute("data-labelling");
  await page.getByLabel("Plate number").fill("KA 01 AB 1234");
  await page.getByRole("button", { name: "Submit", exact: true }).click();
  await page.locator(".banner.notice", { hasText: `Task ${textId} completed` }).waitFor(WAIT);
  assert.deepEqual((await rest("GET", `/task/${textId}`)).response, { fields: { plate: "KA 01 AB 1234" } });

  step = "README screenshot";
  await page.goto(`${consoleUrl}#/tasks`);
  await page.locator('[data-live="live"]').waitFor(WAIT);
  await page.locator(".page-info", { hasText: "of 30" }).waitFor(WAIT);
  await page.screenshot({ path: path.join(shots, "console.png") });
  if (process.env.WEB_E2E_README_SCREENSHOT) {
    await page.screenshot({ path: path.join(repo, "web/screenshot.png") });
  }

  step = "sign out";
  await page.getByRole("button", { name: "Sign out" }).click();
  await page.getByRole("button", { name: "Sign in" }).waitFor(WAIT);
  assert.equal(await page.evaluate(() => sessionStorage.getItem("annotask.apiKey")), null);

  assert.deepEqual(pageErrors, [], "no uncaught errors in the page");
  console.log("web-e2e: ok (screenshots in target/e2e/)");
} catch (err) {
  console.error(`web-e2e: FAILED at step "${step}"`);
  console.error(err);
  if (page) await page.screenshot({ path: path.join(shots, "failure.png") }).catch(() => {});
  if (annotask) console.error(`--- annotask log ---\n${annotask.log().slice(-4000)}`);
  process.exitCode = 1;
} finally {
  await browser?.close();
  sidecar?.close();
  sidecar?.closeAllConnections?.();
  if (annotask) await stopAnnotask(annotask);
  rmSync(dir, { recursive: true, force: true });
}
