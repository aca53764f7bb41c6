// The modules that use etcd3 are loaded through here: a module graph that imports etcd3 (a
// CommonJS module) evaluates it while the graph is linked, before any of the graph's own code
// runs, so schema.ts, which hands etcd3 its gRPC schema parsed in advance, must have run before
// such a graph is imported. No static import of etcd3 here or in schema.ts.

/** Imports a module that uses etcd3, after schema.ts. */
export async function importEtcd<T>(load: () => Promise<T>): Promise<T> {
  await import("./schema.ts");
  return load();
}
