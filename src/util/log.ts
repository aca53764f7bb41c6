// One line per event on stderr, with a level and the context (source, key) of what happened.

import { writeStderr } from "./stdio.ts";

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

const SHORT_ESCAPE: Record<string, string> = { "\n": "\\n", "\r": "\\r", "\t": "\\t" };

/**
 * Every control character (C0, DEL, C1) as an escape: a log line stays one line, and text from a
 * config key or value cannot move a terminal's cursor or start an escape sequence. JSON.stringify
 * leaves DEL and C1 raw; their \u escapes keep JSON valid.
 */
export function escapeControls(s: string): string {
  return s.replace(/\p{Cc}/gu, (c) => SHORT_ESCAPE[c] ?? `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`);
}

/** A string in double quotes, every control character escaped (for names in messages, too). */
export const quote = (s: string): string => escapeControls(JSON.stringify(s));

export function log(level: Level, msg: string, fields: Fields = {}): void {
  if (order[level] < order[minLevel]) return;
  let line: string;
  if (jsonFormat) {
    line = escapeControls(JSON.stringify({ time: new Date().toISOString(), level, msg, ...fields }));
  } else {
    const extra = Object.entries(fields)
      .filter(([, v]) => v !== undefined && v !== null)
      .map(([k, v]) => `${escapeControls(k)}=${typeof v === "string" && /[\s"=\p{Cc}]/u.test(v) ? quote(v) : v}`)
      .join(" ");
    line = `${level.toUpperCase()} ${escapeControls(msg)}${extra ? " " + extra : ""}`;
  }
  writeStderr(line + "\n");
}

export const debug = (m: string, f?: Fields) => log("debug", m, f);
/** For hot loops: skip building debug messages that would be dropped. */
export const debugEnabled = () => order.debug >= order[minLevel];
export const info = (m: string, f?: Fields) => log("info", m, f);
export const warn = (m: string, f?: Fields) => log("warn", m, f);
export const error = (m: string, f?: Fields) => log("error", m, f);
