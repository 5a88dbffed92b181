// Where a value holds real Buffers, and where plain {"type": "Buffer"} objects a reviver left
// (shared by read_auth_state.mjs and revive_rows.mjs).

const isBytes = (v) => Buffer.isBuffer(v) || v instanceof Uint8Array;

/** Push to `real` the paths of real Buffers/Uint8Arrays in `value`, to `fake` those of plain
 * objects with type "Buffer". */
export function bufferPaths(value, path, real, fake) {
  if (isBytes(value)) {
    real.push(path);
  } else if (Array.isArray(value)) {
    value.forEach((item, i) => bufferPaths(item, `${path}[${i}]`, real, fake));
  } else if (value !== null && typeof value === 'object') {
    if (value.type === 'Buffer') fake.push(path);
    for (const [k, v] of Object.entries(value)) bufferPaths(v, `${path}.${k}`, real, fake);
  }
}
