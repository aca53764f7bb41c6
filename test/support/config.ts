// Helpers for building config key events in tests.
import type { KeyEvent, RawValue } from "../../src/config/source.ts";

export const raw = (value: unknown, origin = "test"): RawValue => ({
  text: typeof value === "string" ? value : JSON.stringify(value),
  format: "json",
  origin,
});

export const put = (key: string, value: unknown): KeyEvent => ({ key, value: raw(value, key) });
export const del = (key: string): KeyEvent => ({ key, value: null });

export const entries = (obj: Record<string, unknown>): Map<string, RawValue> =>
  new Map(Object.entries(obj).map(([k, v]) => [k, raw(v, k)]));
