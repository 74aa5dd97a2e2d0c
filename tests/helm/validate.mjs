// validate.mjs FILE...: validates every document of rendered manifests against the
// Kubernetes and KEDA schemas of kubernetes-models (types, required fields, enums).
// It does not see unknown fields: strict.mjs does. Prints "N passed, N failed".
import { loadDocs, modelOf, name, importTool, stripNulls, Counter } from "./lib.mjs";

const c = new Counter("validate");
for (const file of process.argv.slice(2)) {
  for (const doc of await loadDocs(file)) {
    const m = modelOf(doc);
    let mod;
    try {
      mod = await importTool(`${m.path}.js`);
    } catch (e) {
      c.fail(`${file}: ${name(doc)}: no schema for ${doc.apiVersion} ${doc.kind}`);
      continue;
    }
    try {
      new mod[doc.kind](stripNulls(doc)).validate();
      c.ok(`${file}: ${name(doc)}`);
    } catch (e) {
      c.fail(`${file}: ${name(doc)}: ${e.message}`);
    }
  }
}
c.finish();
