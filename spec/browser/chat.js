// Drives examples/sse-chat in a real browser: Debian's chromium, headless,
// through playwright-core. Run by spec/examples_async_spec.lua:
//
//   node spec/browser/chat.js URL PROFILE_DIR PID_FILE
//
// Opens two pages on URL, waits until both EventSources are open, posts a
// message from each page with the page's own form, and checks that both
// pages show both messages, as text (the HTML in them must not become
// elements). A third page opened afterwards must get the history replayed.
// Prints "ok" and exits 0, or prints what went wrong and exits 1. The whole
// run is bounded by a watchdog; chromium's pid goes to PID_FILE so the
// caller can kill its process group should this script itself be killed.
"use strict";
const fs = require("fs");
const { chromium } = require("playwright-core");

const [url, profileDir, pidFile] = process.argv.slice(2);
if (!url || !profileDir || !pidFile) {
  console.error("usage: node chat.js URL PROFILE_DIR PID_FILE");
  process.exit(2);
}

const WAIT_MS = 8000;      // for each thing we wait on in a page
const WATCHDOG_MS = 25000; // the whole run

let context;
async function finish(code, message) {
  console.log(message);
  if (context) await context.close().catch(() => {});
  process.exit(code);
}

const watchdog = setTimeout(() => finish(1, `watchdog: no result within ${WATCHDOG_MS} ms`), WATCHDOG_MS);

// chromium is this process's only child: playwright spawns it directly.
function childPids() {
  const out = [];
  for (const t of fs.readdirSync(`/proc/${process.pid}/task`)) {
    const text = fs.readFileSync(`/proc/${process.pid}/task/${t}/children`, "utf8").trim();
    if (text) out.push(...text.split(/\s+/));
  }
  return out;
}

// Resolves once the page's EventSource has opened (the status says "live").
async function live(page, who) {
  await page.waitForFunction(() => document.getElementById("status").textContent === "live",
    null, { timeout: WAIT_MS, polling: 50 }).catch(() => { throw new Error(`${who}: EventSource never opened`); });
}

// Resolves once the page lists a message with exactly this name and text.
async function shows(page, who, name, text) {
  await page.waitForFunction(([n, t]) => [...document.querySelectorAll("#messages li")].some(li =>
    li.querySelector(".name").textContent === n && li.querySelector(".text").textContent === t),
    [name, text], { timeout: WAIT_MS, polling: 50 })
    .catch(() => { throw new Error(`${who}: never showed ${name}: ${JSON.stringify(text)}`); });
}

async function say(page, name, text) {
  await page.bringToFront();   // tabs in the background get no animation frames
  await page.fill("#name", name);
  await page.fill("#text", text);
  await page.click("#send button");
  // the form clears the text box once the server accepted the message
  await page.waitForFunction(() => document.getElementById("text").value === "", null, { timeout: WAIT_MS, polling: 50 })
    .catch(() => { throw new Error(`POST /send from the page failed for ${JSON.stringify(text)}`); });
}

(async () => {
  context = await chromium.launchPersistentContext(profileDir, {
    executablePath: "/usr/bin/chromium",
    headless: true,
    timeout: 15000,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  fs.writeFileSync(pidFile, childPids().join("\n") + "\n");

  const tag = Date.now().toString(36);
  const tricky = `hello ${tag} <b>bold</b> & <img src=x onerror="document.title='pwned'">`;
  const reply = `reply ${tag}`;

  const a = await context.newPage();
  const b = await context.newPage();
  for (const p of [a, b]) p.setDefaultTimeout(WAIT_MS);
  await Promise.all([a.goto(url), b.goto(url)]);
  await Promise.all([live(a, "page A"), live(b, "page B")]);

  await say(a, "ann", tricky);
  await Promise.all([shows(a, "page A", "ann", tricky), shows(b, "page B", "ann", tricky)]);
  await say(b, "bob", reply);
  await Promise.all([shows(a, "page A", "bob", reply), shows(b, "page B", "bob", reply)]);

  for (const [p, who] of [[a, "page A"], [b, "page B"]]) {
    const bad = await p.evaluate(() => ({
      elements: document.querySelectorAll("#messages b, #messages img, #messages script").length,
      title: document.title,
    }));
    if (bad.elements !== 0 || bad.title === "pwned") {
      throw new Error(`${who}: message HTML became markup: ${JSON.stringify(bad)}`);
    }
  }

  // A page that arrives later gets the recent history replayed, in order.
  const c = await context.newPage();
  c.setDefaultTimeout(WAIT_MS);
  await c.goto(url);
  await live(c, "page C");
  await shows(c, "page C", "bob", reply);
  const order = await c.evaluate(([t1, t2]) => {
    const texts = [...document.querySelectorAll("#messages .text")].map(s => s.textContent);
    return [texts.indexOf(t1), texts.indexOf(t2)];
  }, [tricky, reply]);
  if (!(order[0] >= 0 && order[0] < order[1])) {
    throw new Error(`page C: history not replayed in order: ${JSON.stringify(order)}`);
  }

  clearTimeout(watchdog);
  await finish(0, "ok");
})().catch((err) => {
  clearTimeout(watchdog);
  finish(1, "FAILED: " + (err && err.stack || err));
});
