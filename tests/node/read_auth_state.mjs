// Real Baileys reads (or writes) a multi-file auth state for tests/test_baileys_compat.py.
//
//   node read_auth_state.mjs read  <baileys-dir> <auth-dir> <spec.json>
//       spec: {"type": ["id", ...], ...}. Prints JSON (BufferJSON.replacer) of
//       {creds, keys: {type: {id: value|null}}, buffers: {...}, fakeBuffers: {...}}.
//       `buffers` lists, per value, the paths that are real Buffers/Uint8Arrays in memory;
//       `fakeBuffers` the paths of plain objects with type "Buffer" the reviver did not revive
//       (BufferJSON.replacer would hide the difference in the printed JSON).
//       app-state-sync-key values come back as proto.Message.AppStateSyncKeyData; they are
//       printed as {isProto, keyData, fingerprint, timestamp} with keyData as a Buffer.
//   node read_auth_state.mjs write <baileys-dir> <auth-dir> <data.json>
//       data (BufferJSON): {creds, keys: {type: {id: value|null}}}: keys.set(keys), then the
//       creds are merged into state.creds and saveCreds() writes creds.json.
//
// Baileys is imported by absolute file URL: ESM ignores NODE_PATH.
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { bufferPaths } from './buffer_paths.mjs';

const [mode, baileysDir, authDir, argPath] = process.argv.slice(2);
if (!['read', 'write'].includes(mode) || !baileysDir || !authDir || !argPath) {
  console.error('usage: read_auth_state.mjs read|write <baileys-dir> <auth-dir> <json-file>');
  process.exit(2);
}
const { useMultiFileAuthState, BufferJSON, proto } = await import(
  pathToFileURL(join(baileysDir, 'lib', 'index.js')).href
);

function syncKeyView(value) {
  const fp = value.fingerprint;
  return {
    isProto: value instanceof proto.Message.AppStateSyncKeyData,
    keyData: value.keyData == null ? null : Buffer.from(value.keyData),
    fingerprint: fp == null ? null : {
      rawId: fp.rawId,
      currentIndex: fp.currentIndex,
      deviceIndexes: Array.from(fp.deviceIndexes ?? []),
    },
    timestamp: value.timestamp == null ? null : String(value.timestamp),
  };
}

const { state, saveCreds } = await useMultiFileAuthState(authDir);
const input = JSON.parse(await readFile(argPath, 'utf-8'), BufferJSON.reviver);

if (mode === 'write') {
  await state.keys.set(input.keys);
  Object.assign(state.creds, input.creds);
  await saveCreds();
  process.stdout.write('{"ok":true}\n');
} else {
  const out = { creds: state.creds, keys: {}, buffers: {}, fakeBuffers: {} };
  const real = [];
  const fake = [];
  bufferPaths(state.creds, 'creds', real, fake);
  out.buffers.creds = real;
  out.fakeBuffers.creds = fake;
  for (const [type, ids] of Object.entries(input)) {
    const got = await state.keys.get(type, ids);
    out.keys[type] = {};
    out.buffers[type] = {};
    out.fakeBuffers[type] = {};
    for (const id of ids) {
      let value = got[id] ?? null;
      const r = [];
      const f = [];
      bufferPaths(value, 'value', r, f);
      if (type === 'app-state-sync-key' && value !== null) value = syncKeyView(value);
      out.keys[type][id] = value;
      out.buffers[type][id] = r;
      out.fakeBuffers[type][id] = f;
    }
  }
  process.stdout.write(JSON.stringify(out, BufferJSON.replacer) + '\n');
}
