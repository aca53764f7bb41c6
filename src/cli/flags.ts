// Go-style flags (docs/config.md §7): -name=value, -name value, --name=value; booleans as -name or
// -name=false. yargs-parser does the tokenising; the flag table here does the typing, the
// defaults, -help, and the refusal of unknown flags (yargs-parser lets them through).

import parser from "yargs-parser";

export type FlagType = "string" | "bool" | "duration" | "int";

export interface FlagSpec {
  name: string;
  type: FlagType;
  default: string | boolean | number;
  help: string;
  /** Extra validation; returns an error message or undefined. */
  check?: (value: never) => string | undefined;
  /** Environment variable that supplies the default. */
  env?: string;
}

/**
 * A flag check from a parser that throws: undefined when `parse` accepts the value, else
 * `message` (or, without one, the parser's own message).
 */
export function checkWith(parse: (v: string) => unknown, message?: string): (v: string) => string | undefined {
  return (v: string) => {
    try {
      parse(v);
      return undefined;
    } catch (e) {
      return message ?? (e as Error).message;
    }
  };
}

export class FlagError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "FlagError";
  }
}

export type FlagValues = Record<string, string | boolean | number>;

/** "10s", "1m30s", "500ms", "2h", or a bare number of seconds → milliseconds. */
export function parseDuration(text: string): number | undefined {
  const t = text.trim();
  if (/^\d+(\.\d+)?$/.test(t)) return Number(t) * 1000;
  const re = /(\d+(?:\.\d+)?)(ms|s|m|h)/gy;
  const unit: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };
  let total = 0;
  let pos = 0;
  let m: RegExpExecArray | null;
  while ((m = re.exec(t))) {
    total += Number(m[1]) * unit[m[2]!]!;
    pos = re.lastIndex;
  }
  return pos === t.length && pos > 0 ? total : undefined;
}

export function formatDuration(ms: number): string {
  if (ms % 1000 === 0) return `${ms / 1000}s`;
  return `${ms}ms`;
}

export function usage(program: string, summary: string, specs: FlagSpec[]): string {
  const lines = [`Usage: ${program} [flags]`, summary, "", "Flags:"];
  for (const s of specs) {
    const def =
      s.type === "duration" ? formatDuration(s.default as number) : s.type === "bool" ? String(s.default) : JSON.stringify(s.default);
    lines.push(`  -${s.name}${s.type === "bool" ? "" : `=${s.type.toUpperCase()}`}`);
    lines.push(`        ${s.help} (default ${def}${s.env ? `; env ${s.env}` : ""})`);
  }
  return lines.join("\n") + "\n";
}

/** Parses argv; throws FlagError with a one-line message naming the bad flag. `help` is true for -help. */
export function parseFlags(argv: string[], specs: FlagSpec[], env: Record<string, string | undefined> = process.env): { values: FlagValues; help: boolean } {
  const byName = new Map(specs.map((s) => [s.name, s]));
  // yargs-parser coerces "-bool=junk" silently; booleans given a value are checked here.
  for (const arg of argv) {
    const m = /^--?([^=]+)=(.*)$/s.exec(arg);
    const spec = m && byName.get(m[1]!);
    if (spec?.type === "bool") convert(spec, m![2]);
  }
  const parsed = parser.detailed(argv, {
    configuration: {
      "short-option-groups": false,
      "camel-case-expansion": false,
      "dot-notation": false,
      "parse-numbers": false,
      "parse-positional-numbers": false,
      "boolean-negation": false,
      "duplicate-arguments-array": false,
      "greedy-arrays": false,
    },
    boolean: [...specs.filter((s) => s.type === "bool").map((s) => s.name), "help", "h"],
    string: specs.filter((s) => s.type !== "bool").map((s) => s.name),
  });
  if (parsed.error) throw new FlagError(parsed.error.message);
  const args = parsed.argv as Record<string, unknown>;
  const positional = (args._ as unknown[]) ?? [];
  if (positional.length) throw new FlagError(`unexpected argument ${JSON.stringify(String(positional[0]))}`);
  const values: FlagValues = {};
  for (const s of specs) {
    const fromEnv = s.env ? env[s.env] : undefined;
    values[s.name] = fromEnv !== undefined ? convert(s, fromEnv) : s.default;
  }
  const help = args.help === true || args.h === true;
  for (const [name, raw] of Object.entries(args)) {
    if (name === "_" || name === "$0" || name === "help" || name === "h") continue;
    const spec = byName.get(name);
    if (!spec) throw new FlagError(`flag provided but not defined: -${name}`);
    if (Array.isArray(raw)) throw new FlagError(`flag -${name} given more than once`);
    values[name] = convert(spec, raw);
  }
  return { values, help };
}

function convert(spec: FlagSpec, raw: unknown): string | boolean | number {
  const bad = (why: string) => new FlagError(`invalid value ${JSON.stringify(String(raw))} for flag -${spec.name}: ${why}`);
  let value: string | boolean | number;
  switch (spec.type) {
    case "bool":
      if (typeof raw === "boolean") value = raw;
      else if (raw === "true" || raw === "1") value = true;
      else if (raw === "false" || raw === "0") value = false;
      else throw bad("expected true or false");
      break;
    case "string":
      value = raw === undefined || raw === true ? "" : String(raw);
      break;
    case "duration": {
      const ms = parseDuration(String(raw));
      if (ms === undefined) throw bad("expected a duration such as 10s, 1m or 500ms");
      value = ms;
      break;
    }
    case "int": {
      const s = String(raw);
      if (!/^-?\d+$/.test(s)) throw bad("expected an integer");
      value = Number(s);
      break;
    }
  }
  const msg = spec.check?.(value as never);
  if (msg) throw bad(msg);
  return value;
}

/** Runs a parse for a program's main: prints help or the one-line error and exits as Go's flag package does. */
export function parseOrExit(program: string, summary: string, argv: string[], specs: FlagSpec[]): FlagValues {
  try {
    const { values, help } = parseFlags(argv, specs);
    if (help) {
      process.stdout.write(usage(program, summary, specs));
      process.exit(0);
    }
    return values;
  } catch (e) {
    if (!(e instanceof FlagError)) throw e;
    process.stderr.write(`${program}: ${e.message}\n`);
    process.exit(2);
  }
}
