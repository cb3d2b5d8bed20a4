// The size the README states: src/herald.js bundled and minified by esbuild (ESM, es2020), then
// gzipped at level 9 by Node's zlib. Prints the three sizes in bytes.
//   npm run size
import { build } from "esbuild";
import { readFileSync } from "node:fs";
import { gzipSync } from "node:zlib";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const entry = join(dirname(fileURLToPath(import.meta.url)), "../src/herald.js");
const out = await build({ entryPoints: [entry], bundle: true, minify: true, format: "esm", target: "es2020", write: false });
const min = out.outputFiles[0].contents;
const gz = gzipSync(min, { level: 9 });
console.log(`source ${readFileSync(entry).length} B, minified ${min.length} B, minified+gzip ${gz.length} B`);
