// Generates the TypeScript declarations of fnmill's contract (wit/function.wit, world
// `event-function`) into sdk/js/types/, with jco's guest type generator:
//
//   eval "$(scripts/polyglot-tools.sh env)" && node sdk/js/generate-types.mjs [out-dir]
//
// `jco guest-types` 1.35.0 cannot read WIT files from Node.js: its WASI shim starts with no
// preopened directories. This calls the same generator through jco's library after giving the
// shim the root directory.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, realpathSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const wit = resolve(here, '..', '..', 'wit');
const out = resolve(process.argv[2] ?? join(here, 'types'));

let jco;
try {
  jco = realpathSync(execFileSync('sh', ['-c', 'command -v jco']).toString().trim());
} catch {
  console.error('error: jco not found on PATH (run scripts/polyglot-tools.sh)');
  process.exit(2);
}
const modules = resolve(dirname(jco), '..', '..', '..');
const transpile = join(modules, '@bytecodealliance', 'jco-transpile');
let shim = join(transpile, 'node_modules', '@bytecodealliance', 'preview2-shim');
if (!existsSync(shim)) shim = join(modules, '@bytecodealliance', 'preview2-shim');

const fs = await import(pathToFileURL(join(shim, 'dist', 'nodejs', 'filesystem.js')).href);
fs._setPreopens({ '/': '/' });
const { generateGuestTypes } = await import(pathToFileURL(join(transpile, 'dist', 'index.js')).href);
const files = await generateGuestTypes(wit, { worldName: 'event-function' });
for (const [name, content] of Object.entries(files)) {
  const path = join(out, name);
  mkdirSync(dirname(path), { recursive: true });
  writeFileSync(path, content);
}
console.log(`wrote ${Object.keys(files).length} declaration files to ${out}`);
