// stdout and stderr through Bun's file sinks (src/util/stdio.ts): everything written reaches a
// reader that starts late, before the process exits (exitWhenWritten), and the writes never
// wait for the reader (the event loop goes on while a pipe is full).

import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ROOT } from "./support/proc.ts";
import { until } from "./support/until.ts";

const dir = mkdtempSync(join(tmpdir(), "clusterf-stdio-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe("stdio", () => {
  test("readers that start a second late still get every line of stdout and stderr; the writes did not wait for them", async () => {
    const n = 100_000; // 1.1 MB on each, far beyond a pipe's 64 KiB
    const child = join(dir, "child.ts");
    writeFileSync(
      child,
      `import { writeFileSync } from "node:fs";
import { writeStderr, writeStdout } from ${JSON.stringify(join(ROOT, "src/util/stdio.ts"))};
import { exitWhenWritten } from ${JSON.stringify(join(ROOT, "src/cli/exit.ts"))};
const t0 = performance.now();
for (let i = 0; i < ${n}; i++) { writeStdout("out " + i + "\\n"); writeStderr("err " + i + "\\n"); }
writeFileSync(${JSON.stringify(join(dir, "loop-ms"))}, String(Math.round(performance.now() - t0)));
await exitWhenWritten(0);
`,
    );
    const errCount = join(dir, "err-count");
    const p = Bun.spawn(["bash", "-c", `"$@" 2> >(sleep 1; wc -l > ${errCount}) | (sleep 1; wc -l); wait`, "bash", process.execPath, child], { stdout: "pipe", stderr: "inherit" });
    const out = await new Response(p.stdout).text();
    expect(await p.exited).toBe(0);
    expect(Number(out.trim())).toBe(n);
    await until(() => readFileSync(errCount, "utf8").endsWith("\n"), 5000); // the process substitution's count
    expect(Number(readFileSync(errCount, "utf8").trim())).toBe(n);
    expect(Number(readFileSync(join(dir, "loop-ms"), "utf8"))).toBeLessThan(900); // the readers slept 1000 ms
  }, 30_000);
});
