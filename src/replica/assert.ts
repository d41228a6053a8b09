// Invariants, asserted where the state they constrain changes (TigerBeetle's way): a broken
// invariant is a bug in the engine, and going on with corrupt state could hand a client bytes
// nobody sent or promote a replica that is not a copy. So it throws, at once, naming what broke.
// Checks on the hot path are O(1); whole-engine checks (checkInvariants) are for tests and the
// simulator, which run them after every step.

export class InvariantError extends Error {
  override name = "InvariantError";
}

export function assert(condition: unknown, what: string | (() => string)): asserts condition {
  if (!condition) throw new InvariantError(typeof what === "string" ? what : what());
}
