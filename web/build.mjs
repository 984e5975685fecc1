// Bundles src/ into dist/: content-hashed assets (served with a long max-age) and an
// index.html naming them (served no-cache). Deterministic: .ci/web-check rebuilds and diffs.
import { build } from "esbuild";
import { readFile, rm, writeFile } from "node:fs/promises";
import path from "node:path";

const dist = "dist";
await rm(dist, { recursive: true, force: true });
const result = await build({
  entryPoints: ["src/main.ts"],
  bundle: true,
  minify: true,
  format: "esm",
  target: ["es2022"],
  outdir: path.join(dist, "assets"),
  entryNames: "[name]-[hash]",
  assetNames: "[name]-[hash]",
  metafile: true,
  legalComments: "none",
  logLevel: "warning",
});

const outputs = Object.keys(result.metafile.outputs).map((file) => path.relative(dist, file));
const js = outputs.find((f) => f.endsWith(".js"));
const css = outputs.find((f) => f.endsWith(".css"));
const template = await readFile("src/index.html", "utf8");
const html = template
  .replace("<!--css-->", css ? `<link rel="stylesheet" href="/${css}">` : "")
  .replace("<!--js-->", `<script type="module" src="/${js}"></script>`);
await writeFile(path.join(dist, "index.html"), html);
for (const [file, { bytes }] of Object.entries(result.metafile.outputs)) {
  console.log(`${file}  ${(bytes / 1024).toFixed(1)} KiB`);
}
