// Validate pipeline documents against headrace's published JSON Schema with ajv in strict mode.
// stdin: {"schema": {...}, "documents": [...]}; stdout: {"compiled": true|false, "error": "...",
// "results": [{"valid": bool, "errors": [{"instancePath", "keyword", "message"}]}]}.
"use strict";
const Ajv2020 = require("ajv/dist/2020");
const addFormats = require("ajv-formats");

let input = "";
process.stdin.on("data", (chunk) => (input += chunk));
process.stdin.on("end", () => {
  const { schema, documents } = JSON.parse(input);
  const ajv = new Ajv2020({ strict: true, allErrors: false });
  addFormats(ajv);
  let validate;
  try {
    validate = ajv.compile(schema);
  } catch (err) {
    process.stdout.write(JSON.stringify({ compiled: false, error: String(err.message), results: [] }));
    return;
  }
  const results = documents.map((doc) => {
    const valid = validate(doc);
    const errors = (validate.errors || []).map((e) => ({
      instancePath: e.instancePath,
      keyword: e.keyword,
      message: e.message,
    }));
    return { valid, errors };
  });
  process.stdout.write(JSON.stringify({ compiled: true, error: null, results }));
});
