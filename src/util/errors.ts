// Errors as log field text.

/** An error's message on one line, at most 300 characters (gRPC and Docker errors can be long). */
export function describeError(e: unknown): string {
  if (e instanceof Error) return e.message.replace(/\s+/g, " ").slice(0, 300);
  return String(e);
}
