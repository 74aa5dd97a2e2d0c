// config.mjs WORKER_JSON INGEST_JSON: the config table, checked both ways. The JSON files
// are the binaries' `--config-json`. Every key must be reachable from values (worker.config,
// ingest.config, or secrets for secret keys), typed alike in values.schema.json, mapped to
// its environment variable in templates/_helpers.tpl and documented in README.md; every
// config value in values.yaml (and every entry of the env table) must be a real key; a
// default in values.yaml is "" (the binary's own) or the binary's default.
// Prints "N passed, N failed".
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { ROOT, importTool, Counter } from "./lib.mjs";

const c = new Counter("config");
const chart = join(ROOT, "helm/tierone");
const YAML = await importTool("yaml/dist/index.js");
const values = YAML.parse(readFileSync(join(chart, "values.yaml"), "utf8"));
const schema = JSON.parse(readFileSync(join(chart, "values.schema.json"), "utf8"));
const readme = readFileSync(join(chart, "README.md"), "utf8");
const helpers = readFileSync(join(chart, "templates/_helpers.tpl"), "utf8");
const table = /define "tierone\.envNames" -}}\n([\s\S]*?)\{\{- end -}}/.exec(helpers);
const envNames = table ? YAML.parse(table[1]) : {};
c.check(table && Object.keys(envNames).length > 0, "templates/_helpers.tpl has the env table (tierone.envNames)");

// Values whose default differs from the binary's on purpose.
const CHART_DEFAULTS = { "ingest.spool_path": "the spool volume of the pod" };

const bins = { worker: JSON.parse(readFileSync(process.argv[2], "utf8")), ingest: JSON.parse(readFileSync(process.argv[3], "utf8")) };
const norm = (type, v) => {
  if (v === null || v === undefined) return "";
  if (type === "bool") return ["1", "true", true].includes(v) ? "true" : "false";
  return String(v);
};
const schemaTypes = (s) => new Set((s?.anyOf || [s]).map((x) => x?.type).filter(Boolean));
const secretKeys = new Set();

for (const [comp, defs] of Object.entries(bins)) {
  for (const d of defs) {
    const where = d.secret ? `secrets.${d.key}` : `${comp}.config.${d.key}`;
    const holder = d.secret ? values.secrets : values[comp].config;
    const sch = d.secret ? schema.properties.secrets.properties[d.key] : schema.properties[comp].properties.config.properties[d.key];
    if (d.secret) secretKeys.add(d.key);
    if (!c.check(holder && d.key in holder, `${comp} key ${d.key} (${d.env}) is reachable from values as ${where}`)) continue;
    c.check(envNames[d.key] === d.env, `env table maps ${d.key} to ${d.env} (has ${envNames[d.key]})`);
    c.check(readme.includes(`\`${where}\``) && readme.includes(d.env), `README.md documents ${where} (${d.env})`);
    const v = holder[d.key];
    if (!d.secret && !(`${comp}.${d.key}` in CHART_DEFAULTS))
      c.check(v === "" || norm(d.type, v) === norm(d.type, d.default),
        `values ${where} default ${JSON.stringify(v)} is "" or the binary's ${JSON.stringify(d.default)}`);
    if (!c.check(sch, `values.schema.json has ${where}`)) continue;
    const t = schemaTypes(sch);
    const ok = {
      int: t.has("integer"), bool: t.has("boolean"), string: t.has("string") && !sch.enum,
      duration: t.has("string") && (sch.anyOf || []).some((x) => x.pattern),
      enum: JSON.stringify([...(sch.enum || [])].filter((x) => x !== "").sort()) === JSON.stringify([...(d.choices || [])].sort()),
    }[d.type];
    c.check(ok, `values.schema.json types ${where} as the binary's ${d.type}${d.choices ? ` (${d.choices})` : ""}`);
    const int = (sch.anyOf || [sch]).find((x) => x.type === "integer");
    if (d.type === "int" && int && d.min !== null)
      c.check(int.minimum >= d.min && (d.max === null || int.maximum <= d.max),
        `values.schema.json bounds of ${where} (${int.minimum}..${int.maximum}) are within the binary's ${d.min}..${d.max}`);
  }
}
// The other way: nothing in values or the env table that the binaries do not know.
for (const comp of Object.keys(bins)) {
  const known = new Set(bins[comp].filter((d) => !d.secret).map((d) => d.key));
  for (const k of Object.keys(values[comp].config))
    c.check(known.has(k), `values ${comp}.config.${k} is a setting of tierone-${comp}`);
}
for (const k of Object.keys(values.secrets).filter((k) => !["existingSecret", "annotations"].includes(k)))
  c.check(secretKeys.has(k), `values secrets.${k} is a secret setting of a binary`);
const all = new Set(Object.values(bins).flat().map((d) => d.key));
for (const k of Object.keys(envNames)) c.check(all.has(k), `env table entry ${k} is a setting of a binary`);
c.finish();
