// One connection to a PM2 daemon for the length of a run (see Pm2.connected in pm2.py).
//
// usage: node pm2_session.js <pm2 package dir>     (PM2_HOME from the environment)
// stdout: {"ready": true} once connected (or {"ready": false, "error": ...}), then one answer
// per request: {"id": N, "ok": true, "out": "..."} or {"id": N, "ok": false, "error": "..."}.
// stdin: one request per line, {"id": N, "args": ["stop", "app"]}. EOF ends the session.
"use strict";

const readline = require("readline");

const send = (message) => process.stdout.write(JSON.stringify(message) + "\n");
// whatever PM2 prints goes to stderr: stdout carries the answers only
console.log = (...args) => process.stderr.write(args.join(" ") + "\n");
console.info = console.log;

let pm2;
try {
  pm2 = require(process.argv[2]);
} catch (error) {
  send({ ready: false, error: `cannot load pm2 from ${process.argv[2]}: ${error.message}` });
  process.exit(0);
}

const reason = (error) => (error && error.message ? error.message : String(error));

const COMMANDS = {
  stop: (app, done) => pm2.stop(app, done),
  restart: (app, done) => pm2.restart(app, done),
  delete: (app, done) => pm2.delete(app, done),
  jlist: (_app, done) => pm2.list((error, list) => done(error, JSON.stringify(list))),
};

pm2.connect((error) => {
  if (error) {
    send({ ready: false, error: `cannot connect to the PM2 daemon: ${reason(error)}` });
    process.exit(0);
  }
  send({ ready: true });
  const input = readline.createInterface({ input: process.stdin });
  input.on("line", (line) => {
    let request;
    try {
      request = JSON.parse(line);
    } catch (parseError) {
      return;
    }
    const [command, app] = request.args;
    const run = COMMANDS[command];
    if (run === undefined) {
      send({ id: request.id, ok: false, error: `not a session command: ${command}` });
      return;
    }
    run(app, (failure, out) => {
      if (failure) send({ id: request.id, ok: false, error: reason(failure) });
      else send({ id: request.id, ok: true, out: typeof out === "string" ? out : "" });
    });
  });
  input.on("close", () => pm2.disconnect(() => process.exit(0)));
});
