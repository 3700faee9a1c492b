// The logger's send rate from Node against a running ingest API.
// Usage: AUDIT_ENDPOINT=http://127.0.0.1:8080/v1/events AUDIT_TOKEN=… [EVENTS=100000] npm run bench
import { Logger } from '../dist/index.js';

const endpoint = process.env.AUDIT_ENDPOINT ?? 'http://127.0.0.1:8080/v1/events';
const token = process.env.AUDIT_TOKEN;
const events = Number(process.env.EVENTS ?? 100_000);
const problems = [];
const logger = new Logger({
  endpoint,
  token,
  persist: false,
  maxQueueRecords: events + 1,
  maxQueueBytes: 1 << 30,
  defaults: { source: 'SERVER', service: process.env.AUDIT_SERVICE },
  onProblem: (p) => problems.push(p),
});
const start = process.hrtime.bigint();
for (let i = 0; i < events; i++) {
  logger.log(`bench ${i}`, { i, page: 'reports', filters: { region: 'emea' } });
}
const queued = Number(process.hrtime.bigint() - start) / 1e9;
while (logger.stats().sent < events) {
  await logger.flush();
  if (problems.some((p) => p.kind === 'invalid')) throw new Error(JSON.stringify(problems[0]));
  if (logger.stats().sent < events) await new Promise((r) => setTimeout(r, 10));
}
const total = Number(process.hrtime.bigint() - start) / 1e9;
const rss = process.memoryUsage().rss / 2 ** 20;
console.log(
  `${events} events: logged in ${queued.toFixed(2)} s (${Math.round(events / queued)}/s), ` +
    `all acknowledged after ${total.toFixed(2)} s (${Math.round(events / total)} events/s sent), ` +
    `${problems.length} send problems, rss ${rss.toFixed(0)} MiB`,
);
await logger.close();
