// Go-style flags (docs/config.md §7), parsed exactly as Go's flag package parses them, since the
// original daemons were Go programs and their unit files and scripts carry Go-style command
// lines: -name=value, -name value, --name=value; booleans as -name or -name=false. (GNU-style
// parsers such as yargs-parser read `-config-path -print` or `-once false` differently.)

import { formatDuration, parseDuration } from "../util/duration.ts";

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

/**
 * Parses argv as Go's flag package does (flag.FlagSet.Parse): flags up to the first argument that
 * is not one (or up to `--`); a non-boolean flag without `=` takes the next argument as its value,
 * whatever it looks like; a boolean takes a value only as `-name=value`; a repeated flag's last
 * value wins. These programs take no positional arguments, so anything left over is an error.
 * Throws FlagError with a one-line message naming the bad flag. `help` is true for -help or -h.
 */
export function parseFlags(argv: string[], specs: FlagSpec[], env: Record<string, string | undefined> = process.env): { values: FlagValues; help: boolean } {
  const byName = new Map(specs.map((s) => [s.name, s]));
  const values: FlagValues = {};
  for (const s of specs) {
    const fromEnv = s.env ? env[s.env] : undefined;
    values[s.name] = fromEnv !== undefined ? convert(s, fromEnv) : s.default;
  }
  let i = 0;
  let lastBool: string | undefined; // a boolean just given as "-name", for the hint below
  while (i < argv.length) {
    const arg = argv[i]!;
    if (arg.length < 2 || arg[0] !== "-") break;
    i++;
    if (arg === "--") break;
    let name = arg.slice(arg[1] === "-" ? 2 : 1);
    if (name === "" || name[0] === "-" || name[0] === "=") throw new FlagError(`bad flag syntax: ${arg}`);
    const eq = name.indexOf("=");
    const inline = eq > 0 ? name.slice(eq + 1) : undefined;
    if (eq > 0) name = name.slice(0, eq);
    const spec = byName.get(name);
    // Go stops at -help: the rest is not even looked at.
    if (!spec && (name === "help" || name === "h")) return { values, help: true };
    if (!spec) throw new FlagError(`flag provided but not defined: -${name}`);
    let value = inline;
    if (spec.type === "bool") value ??= "true";
    else if (value === undefined) {
      if (i === argv.length) throw new FlagError(`flag needs an argument: -${name}`);
      value = argv[i++]!;
    }
    values[name] = convert(spec, value);
    lastBool = spec.type === "bool" && inline === undefined ? name : undefined;
  }
  if (i < argv.length) {
    const hint = lastBool && i > 0 && argv[i - 1] !== "--" ? ` (a boolean flag takes its value as -${lastBool}=${argv[i]})` : "";
    throw new FlagError(`unexpected argument ${JSON.stringify(argv[i])}: no arguments are taken, only flags${hint}`);
  }
  return { values, help: false };
}

/** Go's strconv.ParseBool: these spellings and no others. */
const BOOLS: Record<string, boolean> = {
  ...Object.fromEntries(["1", "t", "T", "true", "TRUE", "True"].map((t) => [t, true])),
  ...Object.fromEntries(["0", "f", "F", "false", "FALSE", "False"].map((t) => [t, false])),
};

function convert(spec: FlagSpec, raw: string): string | boolean | number {
  const bad = (why: string) => new FlagError(`invalid value ${JSON.stringify(raw)} for flag -${spec.name}: ${why}`);
  let value: string | boolean | number;
  switch (spec.type) {
    case "bool":
      if (!Object.hasOwn(BOOLS, raw)) throw bad("expected true or false (or 1, 0, t, f)");
      value = BOOLS[raw]!;
      break;
    case "string":
      value = raw;
      break;
    case "duration": {
      const ms = parseDuration(raw);
      if (ms === undefined) throw bad("expected a duration such as 10s, 1m or 500ms");
      value = ms;
      break;
    }
    case "int":
      if (!/^-?\d+$/.test(raw)) throw bad("expected an integer");
      value = Number(raw);
      break;
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
