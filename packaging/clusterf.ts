// The packaged executable: one `bun build --compile` binary for both daemons (the Bun runtime
// is ~95 MB of it, so one binary instead of two halves the package). /usr/bin/clusterf-ipvs
// and /usr/bin/clusterf-docker are symlinks to it; the name it is started under picks the
// daemon (`clusterf ipvs …` and `clusterf docker …` work too).
// packaging/build.ts replaces a daemon whose entry point is not in the tree by a stub.

import { basename } from "node:path";
import { exitWhenWritten } from "../src/cli/exit.ts";
import { writeStderr } from "../src/util/stdio.ts";

type Main = (argv: string[]) => Promise<number>;

const COMMANDS: Record<string, () => Promise<Main>> = {
  "clusterf-ipvs": async () => (await import("../src/cli/clusterf-ipvs.ts")).main,
  "clusterf-docker": async () => (await import("../src/cli/clusterf-docker.ts")).main,
};

function usage(): string {
  return [
    "usage: clusterf-ipvs [flags]   (or: clusterf ipvs [flags])",
    "       clusterf-docker [flags] (or: clusterf docker [flags])",
    "Each command lists its flags with -help.",
    "",
  ].join("\n");
}

async function run(): Promise<number> {
  let name = basename(process.argv0);
  let argv = process.argv.slice(2);
  if (!(name in COMMANDS)) {
    const sub = argv[0] ?? "";
    if (!(`clusterf-${sub}` in COMMANDS)) {
      const help = sub === "" || sub === "-help" || sub === "--help" || sub === "-h" || sub === "help";
      writeStderr((help ? "" : `clusterf: unknown command ${JSON.stringify(sub)}\n`) + usage());
      return help ? 0 : 2;
    }
    name = `clusterf-${sub}`;
    argv = argv.slice(1);
  }
  const main = await COMMANDS[name]!();
  return await main(argv);
}

run().then(
  exitWhenWritten,
  (e) => {
    writeStderr(`${(e as Error)?.stack ?? e}\n`);
    return exitWhenWritten(1);
  },
);
