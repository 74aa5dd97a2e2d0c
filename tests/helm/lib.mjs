// lib.mjs: shared by the manifest checks in tests/helm (validate, strict, assert, config).
// The npm packages live in $TIERONE_TOOLS_DIR/node_modules (scripts/lib/helm_tools.sh), not
// beside these files, so they are imported by absolute path.
import { readFileSync, existsSync } from "node:fs";
import { join, resolve, dirname } from "node:path";
import { pathToFileURL, fileURLToPath } from "node:url";

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
export const TOOLS = process.env.TIERONE_TOOLS_DIR || join(ROOT, ".tools");
export const MODULES = join(TOOLS, "node_modules");

export async function importTool(rel) {
  const p = join(MODULES, rel);
  if (!existsSync(p)) throw new Error(`${p} missing: run bash scripts/lib/helm_tools.sh`);
  return import(pathToFileURL(p).href);
}

// Every document of a rendered multi-document file (empty ones dropped).
export async function loadDocs(file) {
  const YAML = await importTool("yaml/dist/index.js");
  return YAML.parseAllDocuments(readFileSync(file, "utf8"))
    .map((d) => {
      if (d.errors.length) throw new Error(`${file}: ${d.errors[0].message}`);
      return d.toJS();
    })
    .filter((d) => d && typeof d === "object");
}

// apiVersion + kind -> module path (relative to node_modules) and TypeScript interface.
export function modelOf(doc) {
  const [group, version] = doc.apiVersion.includes("/") ? doc.apiVersion.split("/") : ["", doc.apiVersion];
  if (group === "keda.sh") return { path: `@kubernetes-models/keda/keda.sh/${version}/${doc.kind}`, iface: `I${doc.kind}` };
  const dir = group ? `${group}/${version}` : version;
  return { path: `kubernetes-models/${dir}/${doc.kind}`, iface: `I${doc.kind}` };
}

export function name(doc) {
  return `${doc.kind}/${doc.metadata?.name}`;
}

// Nulls are dropped (helm renders `creationTimestamp: null` etc.; the API server ignores them).
export function stripNulls(v) {
  if (Array.isArray(v)) return v.map(stripNulls);
  if (v && typeof v === "object") {
    const o = {};
    for (const [k, x] of Object.entries(v)) if (x !== null) o[k] = stripNulls(x);
    return o;
  }
  return v;
}

export class Counter {
  constructor(tag) { this.tag = tag; this.passed = 0; this.failed = 0; }
  ok(msg) { this.passed++; if (process.env.HELM_TEST_VERBOSE) console.log(`${this.tag}: ok: ${msg}`); }
  fail(msg) { this.failed++; console.log(`${this.tag}: FAILED: ${msg}`); }
  check(cond, msg) { cond ? this.ok(msg) : this.fail(msg); return cond; }
  finish() {
    console.log(`${this.passed} passed, ${this.failed} failed`);
    process.exit(this.failed ? 1 : 0);
  }
}
