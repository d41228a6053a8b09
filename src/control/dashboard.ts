// The dashboard's files (built into dist/src/control/dashboard/ by `npm run build:dashboard`),
// served by the API: `/` is the page, `/ui/*` its script and style. Read once at start, so a
// request never touches the disk; a fixed list, so no path from a request reaches the file system.
import { readFile } from "node:fs/promises";

const FILES: Record<string, { file: string; type: string }> = {
  "/": { file: "index.html", type: "text/html; charset=utf-8" },
  "/ui/app.js": { file: "app.js", type: "text/javascript; charset=utf-8" },
  "/ui/dashboard.css": { file: "dashboard.css", type: "text/css; charset=utf-8" },
};

/** The page loads nothing from elsewhere and runs no inline code: what it shows cannot run. */
export const DASHBOARD_HEADERS = {
  "content-security-policy":
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; " +
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
  "x-content-type-options": "nosniff",
  "cache-control": "no-cache",
};

export interface DashboardFile {
  route: string;
  type: string;
  body: Buffer;
}

/** `eventTypes`: the stream's event types, written into the page for its script to listen to. */
export async function loadDashboard(eventTypes: readonly string[]): Promise<DashboardFile[]> {
  const dir = new URL("./dashboard/", import.meta.url);
  return Promise.all(
    Object.entries(FILES).map(async ([route, f]) => {
      try {
        let body = await readFile(new URL(f.file, dir));
        if (route === "/")
          body = Buffer.from(body.toString("utf8").replace("__EVENT_TYPES__", eventTypes.join(" ")));
        return { route, type: f.type, body };
      } catch (e) {
        throw new Error(
          `dashboard file ${f.file} missing in ${dir.pathname} (run npm run build): ${(e as Error).message}`,
        );
      }
    }),
  );
}
