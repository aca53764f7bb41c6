// A value made at its first use, then kept: a module loaded only when a feature needs it (the
// require stays literal at the call site, so that the packaged build still bundles it), or a
// fact about the machine asked only when a step needs it.

export function lazy<T>(make: () => T): () => T {
  let made = false;
  let value: T;
  return () => {
    if (!made) {
      value = make();
      made = true;
    }
    return value;
  };
}
