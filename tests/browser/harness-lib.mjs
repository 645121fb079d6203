// What the renderer harnesses (widgets-harness.mjs, content-harness.mjs)
// share: the generated test page's skeleton, a node:http server on loopback that serves it and
// the chat page's own modules under the gateway's content policy, Debian's
// Chromium, bounded waits, the run of named checks with the page's errors,
// console errors and dialogs counted as failures, screenshots in light, dark
// and narrow, and the exit status.

import { createServer } from "node:http";
import { mkdir, readFile } from "node:fs/promises";
import { dirname, extname, join, normalize, resolve, sep } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
export const PAGE_DIR = join(ROOT, "src/http/page");
export const CSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'";
// Every wait is bounded; the whole run too, so a hang cannot stall CI.
export const STEP_TIMEOUT_MS = 5_000;
const RUN_TIMEOUT_MS = 120_000;

/** What the page's own files are served as. */
const TYPES = { ".js": "text/javascript", ".mjs": "text/javascript", ".css": "text/css" };

export class CheckFailed extends Error {}

export function assert(condition, message) {
  if (!condition) {
    throw new CheckFailed(message);
  }
}

/** Waits, bounded, until `fn(arg)` is truthy in the page. */
export async function until(page, what, fn, arg) {
  try {
    await page.waitForFunction(fn, arg, { timeout: STEP_TIMEOUT_MS });
  } catch {
    throw new CheckFailed(`timed out after ${STEP_TIMEOUT_MS} ms waiting for ${what}`);
  }
}

function parseArgs(argv, artifactsName) {
  const args = { artifacts: join(ROOT, "target/browser-artifacts", artifactsName), headed: false };
  for (let i = 0; i < argv.length; i += 1) {
    if (argv[i] === "--artifacts" && argv[i + 1]) {
      args.artifacts = resolve(argv[(i += 1)]);
    } else if (argv[i] === "--headed") {
      args.headed = true;
    } else {
      throw new Error(`unknown argument ${argv[i]} (use --artifacts <dir> or --headed)`);
    }
  }
  return args;
}

/**
 * Serves `generated` (path → {type, body} or {type, path}) and any script or
 * style sheet of the page directory (and its vendor/), as the gateway would,
 * so that the modules' own imports resolve. Files are read on every request,
 * so a rerun always sees the working tree.
 */
async function serve(generated) {
  const server = createServer(async (request, response) => {
    const pathname = decodeURIComponent(new URL(request.url, "http://x").pathname);
    let file = generated[pathname];
    if (!file && TYPES[extname(pathname)]) {
      const path = normalize(join(PAGE_DIR, pathname));
      if (path.startsWith(PAGE_DIR + sep)) {
        file = { type: TYPES[extname(pathname)], path };
      }
    }
    try {
      if (!file) {
        throw new Error("not found");
      }
      const body = file.body ?? (await readFile(file.path));
      const headers = { "content-type": `${file.type}; charset=utf-8`, "content-security-policy": CSP, "cache-control": "no-store" };
      response.writeHead(200, headers);
      response.end(body);
    } catch {
      response.writeHead(404, { "content-security-policy": CSP }).end();
    }
  });
  await new Promise((ready, fail) => {
    server.once("error", fail);
    server.listen(0, "127.0.0.1", ready);
  });
  return { server, base: `http://127.0.0.1:${server.address().port}/` };
}

/**
 * The generated test page's files: `/` (an HTML skeleton with `title`, the renderer's
 * `stylesheet`, and `body`), `/harness.css` (`css`) and `/harness-page.js` (`script`, the module
 * that renders the fixtures and sets `window.harness.ready`), plus `extra` files.
 */
export function harnessFiles({ title, stylesheet, body, css, script, extra = {} }) {
  const html = `<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>${title}</title>
  <link rel="icon" href="data:,">
  <link rel="stylesheet" href="${stylesheet}">
  <link rel="stylesheet" href="harness.css">
  <script type="module" src="harness-page.js"></script>
</head>
<body>
${body}
</body>
</html>`;
  return {
    "/": { type: "text/html", body: html },
    "/harness.css": { type: "text/css", body: css },
    "/harness-page.js": { type: "text/javascript", body: script },
    ...extra,
  };
}

/** Debian's Chromium (CHATKIT_CHROMIUM, as e2e.mjs); its sandbox refuses to run as root. */
function launch(headed) {
  const args = ["--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"];
  if (typeof process.getuid === "function" && process.getuid() === 0) {
    args.push("--no-sandbox");
  }
  return chromium.launch({ executablePath: process.env.CHATKIT_CHROMIUM ?? "/usr/bin/chromium", headless: !headed, args });
}

/** Screenshots of each fixture (`#fx-<name>`) in light, and of the whole page in dark and narrow. */
async function screenshots(browser, base, options, dir, names) {
  await mkdir(dir, { recursive: true });
  const saved = [];
  for (const [scheme, width, suffix] of [["light", 900, ""], ["dark", 900, "-dark"], ["light", 380, "-narrow"]]) {
    const context = await browser.newContext({ viewport: { width, height: 900 }, colorScheme: scheme, deviceScaleFactor: 1 });
    const page = await context.newPage();
    await page.goto(base);
    await until(page, "the fixtures to render", () => window.harness?.ready === true);
    await options.beforeScreenshots?.(page);
    if (suffix) {
      await page.screenshot({ path: join(dir, `${options.prefix}${suffix}.png`), fullPage: true });
      saved.push(`${options.prefix}${suffix}.png`);
    } else {
      for (const name of names) {
        await page.locator(`#fx-${name}`).screenshot({ path: join(dir, `${name}.png`) });
        saved.push(`${name}.png`);
      }
    }
    await context.close();
  }
  return saved;
}

/**
 * Runs a harness and exits: `name` (for messages), `artifacts` (the default
 * folder's name), `files` (the generated page, see `serve`), `checks` (name →
 * `async (page, run)`; `run` holds the dialogs seen so far), `fixtures()` (the
 * names to screenshot), `prefix` (of the whole-page screenshots),
 * `beforeScreenshots(page)`, `allowedConsole` (a RegExp of console errors
 * the fixtures cause on purpose), `clipboard` (grant the page the clipboard).
 */
export async function runHarness(options) {
  const args = parseArgs(process.argv.slice(2), options.artifacts);
  const watchdog = setTimeout(() => {
    console.error(`${options.name}: FAILED, the run took longer than ${RUN_TIMEOUT_MS / 1000} s`);
    process.exit(2);
  }, RUN_TIMEOUT_MS);
  const failures = [];
  try {
    const { server, base } = await serve(options.files);
    const browser = await launch(args.headed);
    try {
      const context = await browser.newContext({ viewport: { width: 900, height: 900 }, colorScheme: "light" });
      if (options.clipboard) {
        await context.grantPermissions(["clipboard-read", "clipboard-write"], { origin: base.slice(0, -1) });
      }
      const page = await context.newPage();
      page.setDefaultTimeout(STEP_TIMEOUT_MS);
      const run = { dialogs: [], pageErrors: [], consoleErrors: [] };
      page.on("pageerror", (error) => run.pageErrors.push(String(error.stack ?? error)));
      page.on("console", (message) => {
        if (message.type() === "error" && !options.allowedConsole?.test(message.text())) {
          run.consoleErrors.push(message.text());
        }
      });
      // An alert means injected script ran: record it and close it so the run goes on.
      page.on("dialog", (dialog) => {
        run.dialogs.push(`${dialog.type()}: ${dialog.message()}`);
        dialog.dismiss().catch(() => undefined);
      });
      const response = await page.goto(base);
      assert(response.headers()["content-security-policy"] === CSP, "the page was not served with the CSP");
      await until(page, "the fixtures to render", () => window.harness?.ready === true);

      for (const [name, check] of Object.entries(options.checks)) {
        try {
          await check(page, run);
          console.log(`ok   ${name}`);
        } catch (error) {
          failures.push(`${name}: ${error instanceof CheckFailed ? error.message : error.stack}`);
          console.log(`FAIL ${name}\n     ${error.message}`);
        }
      }
      const kept = [["no page errors", run.pageErrors], ["no dialogs (no injected script ran)", run.dialogs], ["no unexpected console errors", run.consoleErrors]];
      for (const [what, list] of kept) {
        if (list.length) {
          failures.push(`${what}: ${list.join("\n")}`);
          console.log(`FAIL ${what}\n     ${list.join("\n     ")}`);
        } else {
          console.log(`ok   ${what}`);
        }
      }
      await context.close();
      const saved = await screenshots(browser, base, options, args.artifacts, await options.fixtures());
      console.log(`saved ${saved.length} screenshots in ${args.artifacts}`);
    } finally {
      await browser.close();
      server.close();
    }
  } catch (error) {
    failures.push(`the run itself: ${error.stack ?? error}`);
  } finally {
    clearTimeout(watchdog);
  }
  if (failures.length) {
    console.error(`\n${options.name}: FAILED, ${failures.length} check(s):\n- ${failures.join("\n- ")}`);
    process.exit(1);
  }
  console.log(`\n${options.name}: all checks passed`);
}
