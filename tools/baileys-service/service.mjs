// A drill service on real Baileys code, written the way a site would write its own: not ours.
//
// File mode (USE_REPOSITORY_PATTERN, USE_DATABASE_AUTH_STATE and USE_LEGACY_SUPABASE all
// `false` in .env): Baileys' own useMultiFileAuthState(<AUTH_DIR>/company_<COMPANY_ID>).
// PostgreSQL mode (anything else): an auth state shaped like the production adapter: keys read
// by company_id, key_type, key_id = ANY(ids), written by multi-row upserts in batches of 100 with
// the type's TTL, a null value deletes the key, creds one upsert; values through Baileys' own
// BufferJSON both ways (so rows this service writes hold base64 Buffers, and rows in the
// byte-array form come back as plain objects: it cannot read them).
//
// Like a busy session it writes through keys.set: pre-keys issued from creds.nextPreKeyId (creds
// advanced and saved, as Baileys does on every upload), used pre-keys deleted, sessions updated.
// Every write acknowledged by the auth state is appended to writes.jsonl (BufferJSON value or
// null), fsynced, before the next. Logs the mode line and "connection open" as the stand-in does;
// GET /health answers {"mode": "files"|"postgres", "company", "writes_ok"}: no loaded_digest.
// GET /selfcheck reads every key back through the auth state in use and counts the values whose
// Buffers did not revive (plain {"type": "Buffer"} objects).
import { createServer } from 'node:http';
import { randomBytes, randomInt } from 'node:crypto';
import { openSync, writeSync, fsyncSync, readFileSync } from 'node:fs';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import pg from 'pg';
import { useMultiFileAuthState, BufferJSON, proto } from '@whiskeysockets/baileys';

const FLAGS = ['USE_REPOSITORY_PATTERN', 'USE_DATABASE_AUTH_STATE', 'USE_LEGACY_SUPABASE'];
const SHORT_TTL_TYPES = ['pre-key', 'session', 'sender-key'];

function readEnv(path) {
  const env = {};
  for (const raw of readFileSync(path, 'utf-8').split(/\r?\n/)) {
    const line = raw.trim();
    if (!line || line.startsWith('#') || !line.includes('=')) continue;
    const at = line.indexOf('=');
    let value = line.slice(at + 1).trim();
    if ((value.startsWith('"') && value.endsWith('"')) || (value.startsWith("'") && value.endsWith("'"))) {
      value = value.slice(1, -1);
    }
    env[line.slice(0, at).replace(/^export\s+/, '').trim()] = value;
  }
  return env;
}

const env = readEnv('.env');
const company = env.COMPANY_ID;
const fileMode = FLAGS.every((name) => (env[name] ?? '').toLowerCase() === 'false');
const interval = Number(env.WRITE_INTERVAL_MS ?? 100);
const revive = (value) => JSON.parse(JSON.stringify(value), BufferJSON.reviver);
const ttlDays = (type) => (SHORT_TTL_TYPES.includes(type) || type.includes('lid-mapping') ? 7 : 14);

function postgresAuthState(pool) {
  const keys = {
    async get(type, ids) {
      const { rows } = await pool.query(
        'SELECT key_id, value FROM whatsapp_keys WHERE company_id = $1 AND key_type = $2 AND key_id = ANY($3)',
        [company, type, ids],
      );
      const out = {};
      for (const row of rows) {
        let value = revive(row.value);
        if (type === 'app-state-sync-key' && value) value = proto.Message.AppStateSyncKeyData.fromObject(value);
        out[row.key_id] = value;
      }
      return out;
    },
    async set(data) {
      const upserts = [];
      const deletes = [];
      for (const [type, byId] of Object.entries(data)) {
        for (const [id, value] of Object.entries(byId ?? {})) {
          if (value == null) deletes.push([type, id]);
          else upserts.push([type, id, JSON.stringify(value, BufferJSON.replacer)]);
        }
      }
      const client = await pool.connect();
      try {
        await client.query('BEGIN');
        for (let i = 0; i < upserts.length; i += 100) {
          const batch = upserts.slice(i, i + 100);
          const params = [company];
          const values = batch.map(([type, id, json], n) => {
            params.push(type, id, json, ttlDays(type));
            const b = 2 + n * 4;
            return `($1, $${b}, $${b + 1}, $${b + 2}::jsonb, now() + make_interval(days => $${b + 3}))`;
          });
          await client.query(
            `INSERT INTO whatsapp_keys (company_id, key_type, key_id, value, expires_at) VALUES ${values.join(', ')} ` +
              'ON CONFLICT (company_id, key_type, key_id) DO UPDATE SET value = EXCLUDED.value, expires_at = EXCLUDED.expires_at',
            params,
          );
        }
        for (const [type, id] of deletes) {
          await client.query('DELETE FROM whatsapp_keys WHERE company_id = $1 AND key_type = $2 AND key_id = $3', [company, type, id]);
        }
        await client.query('COMMIT');
      } catch (error) {
        await client.query('ROLLBACK').catch(() => {});
        throw error;
      } finally {
        client.release();
      }
    },
  };
  return {
    async load() {
      const { rows } = await pool.query('SELECT creds FROM whatsapp_auth WHERE company_id = $1', [company]);
      if (!rows.length) throw new Error(`no creds for company ${company}`);
      return revive(rows[0].creds);
    },
    keys,
    async saveCreds(creds) {
      await pool.query(
        'INSERT INTO whatsapp_auth (company_id, creds) VALUES ($1, $2::jsonb) ON CONFLICT (company_id) DO UPDATE SET creds = EXCLUDED.creds',
        [company, JSON.stringify(creds, BufferJSON.replacer)],
      );
    },
    async ids(type) {
      const { rows } = await pool.query('SELECT key_id FROM whatsapp_keys WHERE company_id = $1 AND key_type = $2', [company, type]);
      return rows.map((row) => row.key_id);
    },
    async everything() {
      const { rows } = await pool.query('SELECT key_type, key_id, value FROM whatsapp_keys WHERE company_id = $1', [company]);
      return rows.map((row) => [row.key_type, revive(row.value)]);
    },
  };
}

async function fileAuthState(dir) {
  const { state, saveCreds } = await useMultiFileAuthState(dir);
  const prefix = (type) => `${type}-`;
  return {
    creds: state.creds,
    keys: state.keys,
    saveCreds,
    async ids(type) {
      // pre-key and session ids of the drill hold no '/' or ':': their file names reverse
      return (await readdir(dir))
        .filter((name) => name.startsWith(prefix(type)) && name.endsWith('.json'))
        .map((name) => name.slice(prefix(type).length, -'.json'.length))
        .filter((id) => type !== 'pre-key' || /^[0-9]+$/.test(id));
    },
    async everything() {
      const out = [];
      for (const name of await readdir(dir)) {
        if (!name.endsWith('.json') || name === 'creds.json' || name === 'manifest.json') continue;
        out.push([name, JSON.parse(await readFile(join(dir, name), 'utf-8'), BufferJSON.reviver)]);
      }
      return out;
    },
  };
}

function unrevived(value) {
  if (Buffer.isBuffer(value) || value instanceof Uint8Array) return 0;
  if (Array.isArray(value)) return value.reduce((n, item) => n + unrevived(item), 0);
  if (value !== null && typeof value === 'object') {
    if (value.type === 'Buffer') return 1;
    return Object.values(value).reduce((n, item) => n + unrevived(item), 0);
  }
  return 0;
}

const pool = fileMode ? null : new pg.Pool({ connectionString: env.DATABASE_URL, max: 4, application_name: 'baileys-service' });
const dir = join(env.AUTH_DIR ?? 'auth_info', `company_${company}`);
let store;
let creds;
if (fileMode) {
  store = await fileAuthState(dir);
  creds = store.creds;
  console.log(`[auth] using file auth state in ${dir} for company ${company}`);
} else {
  console.log(`[auth] using PostgreSQL auth state for company ${company}`);
  store = postgresAuthState(pool);
  creds = await store.load();
}
console.log('connection open');

const log = openSync('writes.jsonl', 'a');
let seq = 0;
let writesOk = 0;
let writesFailed = 0;
function journal(data) {
  const at = new Date().toISOString();
  const lines = [];
  for (const [type, byId] of Object.entries(data)) {
    for (const [id, value] of Object.entries(byId)) {
      seq += 1;
      lines.push(JSON.stringify({
        seq, time: at, mode: fileMode ? 'file' : 'postgres', company, type, id, pid: process.pid,
        deleted: value == null, value: value == null ? null : JSON.stringify(value, BufferJSON.replacer),
      }));
    }
  }
  writeSync(log, lines.join('\n') + '\n');
  fsyncSync(log);
  writesOk += lines.length;
}

const preKeys = new Set(await store.ids('pre-key'));
const sessions = [...new Set(await store.ids('session'))].filter((id) => !id.includes('__'));
let tick = 0;
let running = true;
let pending = null;

async function writeOnce() {
  tick += 1;
  const data = {};
  let credsChanged = false;
  if (tick % 5 === 1) { // upload pre-keys: issued from nextPreKeyId, as Baileys does
    const first = creds.nextPreKeyId ?? 1;
    data['pre-key'] = {};
    for (let id = first; id < first + 2; id += 1) {
      data['pre-key'][String(id)] = { private: randomBytes(32), public: randomBytes(32) };
    }
    creds.nextPreKeyId = first + 2;
    creds.firstUnuploadedPreKeyId = first + 2;
    credsChanged = true;
  } else if (tick % 5 === 3 && preKeys.size > 20) { // a pre-key used by a new session: deleted
    const ids = [...preKeys];
    data['pre-key'] = { [ids[randomInt(ids.length)]]: null };
  } else if (sessions.length) {
    data.session = { [sessions[randomInt(sessions.length)]]: { _sessions: { [randomBytes(8).toString('base64')]: { record: randomBytes(48) } } } };
  }
  await store.keys.set(data);
  journal(data);
  for (const [id, value] of Object.entries(data['pre-key'] ?? {})) {
    if (value == null) preKeys.delete(id); else preKeys.add(id);
  }
  if (credsChanged) await store.saveCreds(creds);
}

async function loop() {
  while (running) {
    try {
      pending = writeOnce();
      await pending;
    } catch (error) {
      writesFailed += 1;
      console.error(`[auth] write failed: ${error.message}`);
    }
    pending = null;
    await new Promise((resolve) => setTimeout(resolve, interval));
  }
}

const server = createServer(async (req, res) => {
  const reply = (code, body) => {
    res.writeHead(code, { 'content-type': 'application/json' });
    res.end(JSON.stringify(body));
  };
  try {
    if (req.url === '/health') {
      return reply(200, { mode: fileMode ? 'files' : 'postgres', company, writes_ok: writesOk, writes_failed: writesFailed });
    }
    if (req.url === '/selfcheck') {
      const values = await store.everything();
      const bad = values.filter(([, value]) => unrevived(value) > 0).map(([name]) => name);
      return reply(200, { mode: fileMode ? 'files' : 'postgres', keys: values.length, unrevived: bad.length, first: bad.slice(0, 10), creds_unrevived: unrevived(creds) });
    }
    reply(404, { error: 'not found' });
  } catch (error) {
    reply(500, { error: error.message });
  }
});
server.listen(Number(env.PORT), '127.0.0.1');

async function shutdown() {
  running = false;
  if (pending) await pending.catch(() => {});
  server.close();
  if (pool) await pool.end().catch(() => {});
  console.log(`[service] stopped (writes_ok=${writesOk}, writes_failed=${writesFailed})`);
  process.exit(0);
}
process.on('SIGINT', shutdown);
process.on('SIGTERM', shutdown);
loop();
