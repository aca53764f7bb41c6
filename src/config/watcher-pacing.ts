// chokidar and readdirp, loaded with watcher-fs.ts in place of node:fs/promises (why: there).
// A plugin that rewrites their import: at run time (Bun.plugin, before chokidar is first
// imported: dir-watch.ts loads it through loadChokidar) and in the packaged build (Bun.build's
// plugins, packaging/build.ts), where the modules are bundled and no run-time plugin sees them.

import type { BunPlugin } from "bun";

const WATCHER_FS = new URL("./watcher-fs.ts", import.meta.url).pathname;
const FS_PROMISES_IMPORT = /(from\s*)(['"])(node:)?fs\/promises\2/g;

/** The module text with its node:fs/promises import pointed at watcher-fs.ts. */
export function pacedSource(text: string, watcherFs = WATCHER_FS): string {
  return text.replace(FS_PROMISES_IMPORT, (_m, from: string) => `${from}${JSON.stringify(watcherFs)}`);
}

export const watcherPacing: BunPlugin = {
  name: "clusterf-watcher-pacing",
  setup(build) {
    build.onLoad({ filter: /[\\/]node_modules[\\/](chokidar|readdirp)[\\/].*\.js$/ }, async (args) => ({
      contents: pacedSource(await Bun.file(args.path).text()),
      loader: "js",
    }));
  },
};

let chokidar: Promise<typeof import("chokidar")> | null = null;

/** chokidar, its file-system calls paced (the plugin installed once, before the first import). */
export function loadChokidar(): Promise<typeof import("chokidar")> {
  if (!chokidar) {
    Bun.plugin(watcherPacing);
    chokidar = import("chokidar");
  }
  return chokidar;
}
