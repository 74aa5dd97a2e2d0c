// strict.mjs FILE...: the unknown-field check (kubeconform -strict): each document becomes
// `export const dN: IKind = {...}` in a TypeScript file compiled with tsc --noEmit, whose
// excess-property check names every misspelled or misplaced field. Prints "N passed, N failed".
import { mkdtempSync, writeFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { spawnSync } from "node:child_process";
import { loadDocs, modelOf, name, stripNulls, TOOLS, MODULES, Counter } from "./lib.mjs";

const c = new Counter("strict");
const dir = mkdtempSync(join(TOOLS, "strict-")); // inside TOOLS so node_modules resolves
const docs = [];
for (const file of process.argv.slice(2)) for (const d of await loadDocs(file)) docs.push({ file, d });
let src = "";
docs.forEach(({ d }, i) => {
  const m = modelOf(d);
  src += `import type { ${m.iface} as T${i} } from "${m.path}";\n`;
});
docs.forEach(({ d }, i) => {
  src += `// ${i}: ${name(d)}\nexport const d${i}: T${i} = ${JSON.stringify(stripNulls(d), null, 1)};\n`;
});
writeFileSync(join(dir, "manifests.ts"), src);
writeFileSync(join(dir, "package.json"), '{"type":"module"}\n');
const r = spawnSync(process.execPath, [join(MODULES, "typescript/bin/tsc"), "--noEmit", "--strict",
  "--module", "nodenext", "--moduleResolution", "nodenext", "--skipLibCheck", "--target", "es2022",
  join(dir, "manifests.ts")], { encoding: "utf8" });
const out = (r.stdout || "") + (r.stderr || "");
// Map each error to its document by line number.
const lines = src.split("\n");
const docAt = (line) => {
  for (let l = line - 1; l >= 0; l--) {
    const m = /^\/\/ (\d+): /.exec(lines[l]);
    if (m) return Number(m[1]);
  }
  return -1;
};
const bad = new Map();
for (const m of out.matchAll(/manifests\.ts\((\d+),\d+\): error (TS\d+: .*)/g)) {
  const i = docAt(Number(m[1]));
  if (!bad.has(i)) bad.set(i, []);
  bad.get(i).push(m[2]);
}
if (r.status !== 0 && bad.size === 0) c.fail(`tsc failed without a located error: ${out.slice(0, 2000)}`);
docs.forEach(({ file, d }, i) => {
  if (bad.has(i)) c.fail(`${file}: ${name(d)}: ${bad.get(i).join("; ")}`);
  else c.ok(`${file}: ${name(d)}`);
});
if (bad.has(-1)) c.fail(bad.get(-1).join("; "));
rmSync(dir, { recursive: true, force: true });
c.finish();
