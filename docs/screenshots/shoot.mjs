// Opens the dashboard at URL in headless Chromium (Debian's /usr/bin/chromium; nothing
// is downloaded), waits SECS seconds of real time so that its charts fill with real
// rates, and saves a full-page screenshot to OUT. Also clicks the live tail's Start
// button for the last few seconds, so the tail shows events.
// Usage: node shoot.mjs URL OUT SECS
import { chromium } from 'playwright-core';

const [url, out, secs] = process.argv.slice(2);
if (!url || !out) {
  console.error('usage: node shoot.mjs URL OUT [SECS]');
  process.exit(2);
}
const wait = Math.max(5, Math.min(600, Number(secs) || 60)) * 1000;
const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: [
    '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
  ],
});
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
  await page.goto(url);
  await page.waitForTimeout(wait - 4000);
  const start = page.getByRole('button', { name: 'Start' });
  if (await start.count()) await start.first().click();
  await page.waitForTimeout(4000);
  await page.screenshot({ path: out, fullPage: true });
} finally {
  await browser.close();
}
