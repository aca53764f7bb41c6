// One line per event on stderr, with a level and the context (source, key) of what happened.

export type Level = "debug" | "info" | "warn" | "error";
const order: Record<Level | "off", number> = { debug: 10, info: 20, warn: 30, error: 40, off: 100 };

let minLevel: Level | "off" = (process.env.CLUSTERF_LOG_LEVEL as Level) in order ? (process.env.CLUSTERF_LOG_LEVEL as Level) : "info";
let jsonFormat = false;

/** `off` silences everything (tests that make thousands of failures on purpose). */
export function configureLog(opts: { level?: Level | "off"; json?: boolean }): void {
  if (opts.level) minLevel = opts.level;
  if (opts.json !== undefined) jsonFormat = opts.json;
}

export type Fields = Record<string, string | number | boolean | undefined | null>;

export function log(level: Level, msg: string, fields: Fields = {}): void {
  if (order[level] < order[minLevel]) return;
  let line: string;
  if (jsonFormat) {
    line = JSON.stringify({ time: new Date().toISOString(), level, msg, ...fields });
  } else {
    const extra = Object.entries(fields)
      .filter(([, v]) => v !== undefined && v !== null)
      .map(([k, v]) => `${k}=${typeof v === "string" && /[\s"=]/.test(v) ? JSON.stringify(v) : v}`)
      .join(" ");
    line = `${level.toUpperCase()} ${msg}${extra ? " " + extra : ""}`;
  }
  process.stderr.write(line + "\n");
}

export const debug = (m: string, f?: Fields) => log("debug", m, f);
/** For hot loops: skip building debug messages that would be dropped. */
export const debugEnabled = () => order.debug >= order[minLevel];
export const info = (m: string, f?: Fields) => log("info", m, f);
export const warn = (m: string, f?: Fields) => log("warn", m, f);
export const error = (m: string, f?: Fields) => log("error", m, f);
