// The dashboard in a real browser (Debian's Chromium, headless, driven by playwright-core) over
// the real API, a real engine driven by hand and a real embedded Redis: the page shows the roles,
// a wrong token is refused on the page and changes nothing, a switchover from the page moves the
// roles (seen through the event stream, without a reload), the timeline and the RTT chart have
// data, and the page raised no script or security-policy error. A screenshot is saved in
// test-artifacts/.
import t from "tap";
import { mkdir } from "node:fs/promises";
import { join } from "node:path";
import { chromium, type Browser } from "playwright-core";
import { ClientConnection, ORIGINAL, R1, R2, TOKEN, startHarness, tempDir } from "./helpers.js";

const CHROMIUM = "/usr/bin/chromium";
const ARTIFACTS = join(process.cwd(), "test-artifacts");

t.test("the dashboard's files: served with a strict content security policy", async (t) => {
  const h = await startHarness(t, await tempDir(t, "dashfiles"));
  const page = await fetch(`${h.url}/`);
  t.equal(page.status, 200);
  t.match(page.headers.get("content-type"), /^text\/html/);
  t.match(page.headers.get("content-security-policy"), /default-src 'self'; script-src 'self'/);
  t.match(await page.text(), /<script type="module" src="\/ui\/app.js">/);
  const js = await fetch(`${h.url}/ui/app.js`);
  t.equal(js.status, 200);
  t.match(js.headers.get("content-type"), /^text\/javascript/);
  t.match(await js.text(), /EventSource\("\/v1\/events"\)/, "the compiled dashboard script");
  t.equal((await fetch(`${h.url}/ui/../package.json`)).status, 404, "nothing outside the list");
  t.equal((await fetch(`${h.url}/ui/other.js`)).status, 404);
});

t.test("the dashboard in Chromium: roles, a refused and a real switchover, timeline, RTT", async (t) => {
  const h = await startHarness(t, await tempDir(t, "dash"));
  for (let i = 0; i < 3; i++) new ClientConnection(h.dp).open({ r1: R1, r2: R2 });

  const browser: Browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  t.teardown(() => browser.close());
  const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
  const problems: string[] = [];
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  page.on("console", (m) => {
    // A failed request is logged as a console error too: those are checked one by one below.
    if (m.type() === "error" && !m.text().startsWith("Failed to load resource"))
      problems.push(`console: ${m.text()}`);
  });
  const failed: string[] = [];
  page.on("response", (r) => {
    if (r.status() >= 400) failed.push(`${r.request().method()} ${new URL(r.url()).pathname} ${r.status()}`);
  });
  /** An attribute of every element the selector matches (the test's TypeScript has no DOM). */
  const attrs = async (selector: string, name: string) => {
    const l = page.locator(selector);
    const out: Array<string | null> = [];
    for (let i = 0; i < (await l.count()); i++) out.push(await l.nth(i).getAttribute(name));
    return out;
  };

  await page.goto(`${h.url}/`);
  await page.waitForSelector("body[data-loaded=true]", { timeout: 10_000 });
  t.match(await page.textContent("#original .address"), ORIGINAL, "the original is shown");
  t.same(
    [
      ...(await attrs("#replicas .replica", "data-id")),
      ...(await attrs("#replicas .replica", "data-address")),
    ],
    ["r1", "r2", R1, R2],
    "both replicas are shown",
  );
  await page.waitForSelector("#stream.ok", { timeout: 10_000 });
  t.equal(await page.textContent("#stream"), "live");
  t.pass("the event stream is connected");
  t.match(await page.textContent("#connections"), /^3 open, 0 diverged, 0 lagging/);
  t.equal(await page.locator("#replica-table tbody tr").count(), 2, "a row per replica");

  // A wrong token: refused, said on the page, nothing changes.
  await page.selectOption("#switchover-target", "r2");
  await page.fill("#token", "not-the-token");
  await page.click("#switchover");
  await page.waitForSelector("#switchover-result.error", { timeout: 10_000 });
  t.match(await page.textContent("#switchover-result"), /refused \(401\): a valid bearer token is required/);
  t.equal(h.dp.original(), ORIGINAL, "the original did not change");

  // The right one: the page shows the new original from the event stream, without a reload.
  await page.fill("#token", TOKEN);
  await page.click("#switchover");
  await page.waitForSelector("#switchover-result.done", { timeout: 10_000 });
  t.match(
    await page.textContent("#switchover-result"),
    /r2 is the original now .* 3 connections continued, 0 reset/,
  );
  t.equal(h.dp.original(), R2, "the data plane's original is r2");
  await page.locator("#original .address", { hasText: R2 }).waitFor({ timeout: 10_000 });
  t.pass("the page shows r2 as the original");
  t.same(await attrs("#replicas .replica", "data-id"), ["r1"], "r2 left the replica list");
  t.match(
    await page.textContent("#timeline li[data-kind=switchover]"),
    new RegExp(`switchover: ${ORIGINAL} → ${R2} \\(r2\\), 3 spliced, 0 reset`),
    "the timeline shows the switchover",
  );
  t.ok(await page.$("#events li[data-type=promoted]"), "the live event list shows the promotion");
  t.ok(await page.$("#rtt-chart path[data-series=client]"), "the RTT chart draws the client path");
  t.ok(await page.$("#rtt-legend span[data-series=original]"), "and the original's");
  t.same(problems, [], "no script error, no content-security-policy violation");
  t.same(failed, ["POST /v1/switchover 401"], "the only failed request: the wrong token's");

  await mkdir(ARTIFACTS, { recursive: true });
  const shot = join(ARTIFACTS, `dashboard-${process.pid}.png`);
  await page.screenshot({ path: shot, fullPage: true });
  console.error(`# dashboard screenshot: ${shot}`);
});
