/**
 * Collapsed forwarding: one origin request that later requests for the same URL (a miss) or the
 * same stored response (a revalidation) may wait for, instead of each sending its own.
 */

/** What the origin paths tell about their progress: a Flight, or NO_FLIGHT when none waits. */
export interface Settle {
  settle(value?: boolean): void;
}

export const NO_FLIGHT: Settle = { settle: () => undefined };

/**
 * One origin request that later requests for the same key may wait for. The promise is made only
 * when a second request actually arrives: most misses are never shared (see docs/performance.md, Proxy).
 */
export class Flight<K> implements Settle {
  private promise: Promise<boolean> | undefined;
  private resolve: ((v: boolean) => void) | undefined;
  private settled = false;
  private value = false;

  /** Registers the flight under `key` until it settles. */
  constructor(
    private readonly map: Map<K, Flight<K>>,
    private readonly key: K,
  ) {
    map.set(key, this);
  }

  /** Resolves once the first request's outcome is known (for a revalidation: true when a 304 refreshed the entry). */
  wait(): Promise<boolean> {
    if (this.settled) return Promise.resolve(this.value);
    return (this.promise ??= new Promise<boolean>((r) => (this.resolve = r)));
  }

  /** Marks the flight done (idempotent; later requests start one of their own). */
  settle(value = false): void {
    if (this.settled) return;
    this.settled = true;
    this.value = value;
    if (this.map.get(this.key) === this) this.map.delete(this.key);
    this.resolve?.(value);
  }
}

/** Waits for `flight` at most `ms`; resolves to its value, or false on timeout. */
export async function waitFor(flight: Flight<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([flight.wait(), new Promise<boolean>((resolve) => (timer = setTimeout(resolve, ms, false)))]);
  } finally {
    clearTimeout(timer);
  }
}
