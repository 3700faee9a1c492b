// Drives Debian's Chromium (headless) through the end-to-end pages; run by tests/tests/browser.rs.
// Usage: node e2e/browser.mjs <page url> <foreign-origin page url>
// Prints one JSON line: { pageErrors, cors }.
import { chromium } from 'playwright-core';

const [pageUrl, corsUrl] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  args: [
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
  ],
});
try {
  const context = await browser.newContext();
  const page = await context.newPage();
  const pageErrors = [];
  page.on('pageerror', (e) => pageErrors.push(e.message));
  page.on('console', (m) => console.error(`[page] ${m.text()}`));
  await page.goto(pageUrl);
  await page.waitForFunction(() => window.__logged === true, null, { timeout: 30_000 });
  // Closing runs the page's unload path (pagehide): the logger posts what waits with keepalive.
  await page.close({ runBeforeUnload: true });
  await new Promise((r) => setTimeout(r, 3_000));
  const foreign = await context.newPage();
  await foreign.goto(corsUrl);
  const cors = await (await foreign.waitForFunction(() => window.__cors, null, { timeout: 30_000 })).jsonValue();
  console.log(JSON.stringify({ pageErrors, cors }));
} finally {
  await browser.close();
}
