// Unit tests of the logger's own logic, with a scripted fetch standing in for the ingest API.
// The real API, a real browser and a killed Node process are tested end to end by
// tests/tests/browser.rs.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { Logger, fingerprint, errorInfo } from '../dist/index.js';

/** A fetch that answers each request with the next scripted status (then 202) and records it. */
function scripted(statuses = [], bodies = []) {
  const requests = [];
  const fetch = async (url, init) => {
    const records = JSON.parse(init.body);
    const status = statuses.shift() ?? 202;
    const body = bodies.shift() ?? { accepted: records.length };
    requests.push({ url, init, records, status });
    if (status === 0) throw new TypeError('Failed to fetch');
    return new Response(JSON.stringify(body), {
      status,
      headers: { 'content-type': 'application/json', 'retry-after': '0' },
    });
  };
  return { fetch, requests };
}

const options = (fetch, extra = {}) => ({
  endpoint: 'http://ingest.test/v1/events',
  token: 'service-token-0123456789',
  fetch,
  persist: false,
  lingerMs: 1,
  retryMinMs: 5,
  retryMaxMs: 20,
  ...extra,
});

async function until(check, ms = 5000) {
  const end = Date.now() + ms;
  while (!check()) {
    if (Date.now() > end) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 5));
  }
}

test('a call becomes a record at once: id, time, type, params, defaults and hook', async () => {
  const { fetch, requests } = scripted();
  let page = 'home';
  const logger = new Logger(
    options(fetch, { defaults: { service: 'web', params: { app: 'studio' } } }),
    () => ({ params: { page }, entities: [{ type: 'page', id: page }] }),
  );
  const before = new Date().toISOString();
  const id = logger.log('opened', { reportId: 'r1' }, 'log', [{ type: 'report', id: 'r1' }]);
  page = 'settings';
  logger.event('query-created', { entities: [{ type: 'query', id: 'q1', name: 'Sales' }] });
  await logger.flush();
  const [a, b] = requests.flatMap((r) => r.records);
  assert.equal(a.event_id, id);
  assert.match(id, /^[0-9a-f-]{36}$/);
  assert.ok(a.timestamp >= before);
  assert.equal(a.event_type, 'log');
  assert.equal(a.success, true);
  assert.deepEqual(a.params, { app: 'studio', page: 'home', reportId: 'r1' });
  assert.equal(a.service, 'web');
  assert.deepEqual(a.entities, [
    { type: 'page', id: 'home' },
    { type: 'report', id: 'r1' },
  ]);
  assert.deepEqual(b.entities, [
    { type: 'page', id: 'settings' },
    { type: 'query', id: 'q1', name: 'Sales' },
  ]);
  assert.equal(requests[0].init.headers.authorization, 'Bearer service-token-0123456789');
  await logger.close();
});

test('an invalid event type is reported, not thrown, and nothing is sent', async () => {
  const { fetch, requests } = scripted();
  const problems = [];
  const logger = new Logger(options(fetch, { onProblem: (p) => problems.push(p) }));
  assert.equal(logger.log('x', {}, 'bad type!'), undefined);
  await logger.flush();
  assert.equal(requests.length, 0);
  assert.equal(problems[0].kind, 'call');
  assert.match(problems[0].reason, /bad type!/);
});

test("log(message, { stackTrace }, 'error') is a structured error with success = false", async () => {
  const { fetch, requests } = scripted();
  const logger = new Logger(options(fetch));
  const stack = 'TypeError: x is undefined\n    at render (https://app.test/main.js?v=3:10:5)\n    at run (https://app.test/main.js:99:1)';
  logger.log('x is undefined', { stackTrace: stack, view: 'grid' }, 'error');
  await logger.flush();
  const [r] = requests[0].records;
  assert.equal(r.event_type, 'error');
  assert.equal(r.success, false);
  assert.equal(r.error.stack_trace, stack);
  assert.equal(r.error.message, 'x is undefined');
  assert.match(r.error.fingerprint, /^[0-9a-f]{16}$/);
  assert.deepEqual(r.params, { view: 'grid' }, 'the stack trace is not also a param');
});

test('fingerprints ignore line numbers, hosts and query strings but not the frames', () => {
  const a = 'at render (https://a.test/main.js?v=1:10:5)\nat run (https://a.test/main.js:99:1)';
  const b = 'at render (https://b.test/main.js?v=2:12:7)\nat run (https://b.test/main.js:101:3)';
  const c = 'at paint (https://a.test/main.js:10:5)\nat run (https://a.test/main.js:99:1)';
  assert.equal(fingerprint('TypeError', a), fingerprint('TypeError', b));
  assert.notEqual(fingerprint('TypeError', a), fingerprint('TypeError', c));
  assert.notEqual(fingerprint('TypeError', a), fingerprint('RangeError', a));
  const firefox = 'render@https://a.test/main.js:10:5\nrun@https://a.test/main.js:99:1';
  assert.equal(fingerprint('E', firefox), fingerprint('E', firefox.replace(':10:5', ':11:2')));
  // Thrown non-errors still get a message and a fingerprint.
  assert.equal(errorInfo('plain').message, 'plain');
  assert.equal(errorInfo({ code: 1 }).message, '{"code":1}');
  const e = Object.assign(new Error('nope'), { code: 'ECONNRESET' });
  assert.equal(errorInfo(e).code, 'ECONNRESET');
});

test('records go in batches, and a retry carries the same ids', async () => {
  const { fetch, requests } = scripted([503, 0]);
  // One request at a time, so the retries are the next requests and the order is kept.
  const logger = new Logger(options(fetch, { batchSize: 100, maxConcurrentRequests: 1 }));
  const ids = [];
  for (let i = 0; i < 250; i++) ids.push(logger.log(`m${i}`));
  await until(() => logger.stats().sent === 250);
  assert.ok(requests.every((r) => r.records.length <= 100));
  const first = requests[0].records.map((r) => r.event_id);
  assert.deepEqual(requests[1].records.map((r) => r.event_id), first, '503 retried with the same ids');
  assert.deepEqual(requests[2].records.map((r) => r.event_id), first, 'network error retried alike');
  const delivered = requests.filter((r) => r.status === 202).flatMap((r) => r.records.map((x) => x.event_id));
  assert.deepEqual(delivered, ids, 'every record once, in order');
  await logger.close();
});

test('with requests in parallel every record is sent once', async () => {
  const { fetch, requests } = scripted([503, 0, 502]);
  const logger = new Logger(options(fetch, { batchSize: 10, maxConcurrentRequests: 4 }));
  const ids = [];
  for (let i = 0; i < 200; i++) ids.push(logger.log(`m${i}`));
  await until(() => logger.stats().sent === 200);
  const delivered = requests.filter((r) => r.status === 202).flatMap((r) => r.records.map((x) => x.event_id));
  assert.deepEqual([...delivered].sort(), [...ids].sort());
  assert.equal(new Set(delivered).size, 200, 'no record twice');
  await logger.close();
});

test('a 422 drops only the records it names; a 413 halves the batch', async () => {
  const { fetch, requests } = scripted(
    [422, 413],
    [{ errors: [{ index: 1, path: '/params', reason: 'too deep' }] }],
  );
  const problems = [];
  const logger = new Logger(options(fetch, { onProblem: (p) => problems.push(p) }));
  logger.log('a');
  logger.log('b');
  logger.log('c');
  logger.log('d');
  await until(() => logger.stats().queued === 0);
  const invalid = problems.filter((p) => p.kind === 'invalid');
  assert.equal(invalid.length, 1);
  assert.equal(invalid[0].record.message, 'b');
  assert.match(invalid[0].reason, /too deep/);
  assert.equal(requests[1].records.length, 3, 'resent without the bad one');
  assert.equal(requests[2].records.length, 1, 'after 413, half the batch');
  assert.equal(logger.stats().sent, 3);
  await logger.close();
});

test('offline past the bound: the oldest are dropped, counted and reported first', async () => {
  let online = false;
  const { fetch: inner, requests } = scripted();
  const fetch = async (url, init) => {
    if (!online) throw new TypeError('Failed to fetch');
    return inner(url, init);
  };
  const logger = new Logger(options(fetch, { maxQueueRecords: 5 }));
  for (let i = 0; i < 8; i++) logger.log(`m${i}`);
  assert.equal(logger.stats().dropped, 3);
  assert.equal(logger.stats().queued, 5);
  online = true;
  await until(() => logger.stats().queued === 0 && requests.length > 0);
  await logger.flush();
  const sent = requests.flatMap((r) => r.records);
  assert.equal(sent[0].event_type, 'logger-records-dropped');
  assert.equal(sent[0].params.dropped, 3);
  assert.deepEqual(
    sent.slice(1).map((r) => r.message),
    ['m3', 'm4', 'm5', 'm6', 'm7'],
  );
  await logger.close();
});

test('a token function is asked again after a 401', async () => {
  const { fetch, requests } = scripted([401]);
  let n = 0;
  const logger = new Logger(options(fetch, { token: async () => `t${++n}` }));
  logger.log('x');
  await until(() => logger.stats().sent === 1);
  assert.deepEqual(
    requests.map((r) => r.init.headers.authorization),
    ['Bearer t1', 'Bearer t2'],
  );
  await logger.close();
});

test('a token function that fails once does not strand the batch', async () => {
  const { fetch, requests } = scripted();
  let calls = 0;
  const token = async () => {
    calls++;
    if (calls === 1) throw new Error('login service down');
    return 'tok';
  };
  const logger = new Logger(options(fetch, { token }));
  logger.log('x');
  await until(() => logger.stats().sent === 1);
  assert.equal(requests.length, 1);
  assert.equal(requests[0].init.headers.authorization, 'Bearer tok');
  await logger.close();
});

test('a file store keeps records across a restart and the next logger sends them', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'audit-logger-'));
  const path = join(dir, 'queue.jsonl');
  const offline = async () => {
    throw new TypeError('offline');
  };
  const first = new Logger(options(offline, { persist: path }));
  const ids = [first.log('a'), first.log('b'), first.log('c')];
  await first.persisted();
  const { fetch, requests } = scripted();
  const second = new Logger(options(fetch, { persist: path }));
  await until(() => second.stats().sent === 3);
  assert.deepEqual(requests.flatMap((r) => r.records.map((x) => x.event_id)), ids);
  await second.close();
  const third = new Logger(options(fetch, { persist: path }));
  await third.flush();
  assert.equal(requests.length, 1, 'sent records are not sent again');
  await third.close();
});

test('an uncaught exception in Node is logged and persisted before the process dies', () => {
  const dir = mkdtempSync(join(tmpdir(), 'audit-logger-'));
  const path = join(dir, 'queue.jsonl');
  const script = `
    import { Logger } from ${JSON.stringify(new URL('../dist/index.js', import.meta.url).href)};
    const logger = new Logger({ endpoint: 'http://127.0.0.1:9/v1/events', persist: ${JSON.stringify(path)},
      captureErrors: true, retryMinMs: 60000 });
    await logger.persisted();
    setTimeout(() => { throw new RangeError('boom at the end'); }, 10);
  `;
  const run = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8' });
  assert.notEqual(run.status, 0, 'the process still dies');
  assert.match(run.stderr, /boom at the end/);
  const lines = readFileSync(path, 'utf8').trim().split('\n').map((l) => JSON.parse(l));
  const error = lines.find((l) => l.a?.event_type === 'error')?.a;
  assert.ok(error, 'the error record is in the file');
  assert.equal(error.error.message, 'boom at the end');
  assert.equal(error.params.origin, 'uncaughtException');
  assert.match(error.error.stack_trace, /RangeError: boom at the end/);
});
