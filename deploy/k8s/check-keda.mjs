// Every KEDA ScaledObject in the rendered manifests (stdin) against KEDA's CRD schema (the
// @kubernetes-models/keda package, generated from KEDA's CRDs); exits 1 with the errors.
import { readFileSync } from "node:fs";
import { parseAllDocuments } from "yaml";
import { ScaledObject } from "@kubernetes-models/keda/keda.sh/v1alpha1/ScaledObject";

const docs = parseAllDocuments(readFileSync(0, "utf8")).map((doc) => doc.toJS());
const scaled = docs.filter((doc) => doc?.kind === "ScaledObject");
for (const doc of scaled) {
  try {
    new ScaledObject(doc).validate();
  } catch (error) {
    console.error(`ScaledObject ${doc.metadata?.name}: ${error.message}`);
    process.exit(1);
  }
}
console.log(`${scaled.length} ScaledObject(s) valid`);
