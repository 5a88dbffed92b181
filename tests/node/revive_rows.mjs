// Baileys' own BufferJSON.reviver over stored rows, as a service that reads its PostgreSQL rows
// with it does (tests/test_buffer_form.py).
//
//   node revive_rows.mjs <baileys-dir> <rows.json>
//       rows: [{"ref": "type/id", "text": "<the row's JSON text>"}, ...]. Prints one JSON line:
//       {ref: {buffers: [paths], fakeBuffers: [paths], value: <revived, BufferJSON.replacer>}}.
//       `buffers` are the paths that are real Buffers in memory after JSON.parse(text, reviver);
//       `fakeBuffers` the paths of plain objects with type "Buffer" it did not revive (the
//       replacer would hide the difference in the printed value).
//
// Baileys is imported by absolute file URL: ESM ignores NODE_PATH.
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { bufferPaths } from './buffer_paths.mjs';

const [baileysDir, rowsPath] = process.argv.slice(2);
if (!baileysDir || !rowsPath) {
  console.error('usage: revive_rows.mjs <baileys-dir> <rows.json>');
  process.exit(2);
}
const { BufferJSON } = await import(pathToFileURL(join(baileysDir, 'lib', 'index.js')).href);

const out = {};
for (const { ref, text } of JSON.parse(await readFile(rowsPath, 'utf-8'))) {
  const value = JSON.parse(text, BufferJSON.reviver);
  const real = [];
  const fake = [];
  bufferPaths(value, 'value', real, fake);
  out[ref] = { buffers: real, fakeBuffers: fake, value };
}
process.stdout.write(JSON.stringify(out, BufferJSON.replacer) + '\n');
