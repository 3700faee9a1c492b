// A Node process that logs while the ingest API is unreachable, and sends on its next start;
// run by tests/tests/browser.rs.
// Usage: node e2e/offline.mjs offline <endpoint> <token> <queue file> <count>  (prints the ids, waits to be killed)
//        node e2e/offline.mjs resume  <endpoint> <token> <queue file>          (sends, prints stats)
import { Logger } from '../dist/index.js';

const [mode, endpoint, token, file, count] = process.argv.slice(2);
const logger = new Logger({
  endpoint,
  token,
  persist: file,
  retryMinMs: 200,
  retryMaxMs: 1_000,
  defaults: { source: 'SERVER' },
});
if (mode === 'offline') {
  const ids = [];
  for (let i = 0; i < Number(count); i++) ids.push(logger.log(`node offline ${i}`, { i }));
  await logger.persisted();
  console.log(JSON.stringify({ ids }));
  setInterval(() => {}, 1 << 30);
} else {
  const end = Date.now() + 60_000;
  await logger.flush();
  while (logger.stats().queued > 0 && Date.now() < end) {
    await new Promise((r) => setTimeout(r, 100));
    await logger.flush();
  }
  console.log(JSON.stringify(logger.stats()));
  await logger.close();
}
