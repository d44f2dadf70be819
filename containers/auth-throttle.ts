/**
 * Slows repeated failed logins, shared by SMTP submission and POP3. Every failure is answered
 * after a delay that doubles with the recent failures of the same (client address, account) pair,
 * so one person's typos behind a shared address (NAT, office) slow only that person, and a
 * success clears the pair. A looser per-address count slows an address that sprays many accounts:
 * past `addressAllowance` failures in the window, its failures are answered one after another,
 * each a delay (doubling with the excess) after the previous one, so parallel connections do not
 * multiply its guesses (a wait is cut at `maxWaitMs`). The first failure waits the base delay too, so an unknown user
 * and a wrong password take the same time (the password check itself is constant-time in
 * Accounts). Memory is bounded: each table keeps at most `maxEntries` keys, least recently failed
 * dropped first, and account names are cut to 256 characters.
 */

/** Options of the throttle. */
export interface ThrottleOptions {
  /** Delay of the first failure. @default 1000 */
  baseDelayMs?: number;
  /** The doubling stops here. @default 16 * baseDelayMs */
  maxDelayMs?: number;
  /** Failures older than this (counted from the key's last failure) are forgotten. @default 15 minutes */
  windowMs?: number;
  /** Failures from one address, over all accounts, before the address itself is slowed. @default 10 */
  addressAllowance?: number;
  /** Longest wait a failure from a spraying address is given (its failures queue one after another up to this). @default 60 * baseDelayMs */
  maxWaitMs?: number;
  /** Keys remembered at most in each table (the least recently failed are dropped first). @default 10000 */
  maxEntries?: number;
  /** Injectable clock. @default Date.now */
  now?: () => number;
  /** Injectable sleep, for tests. @default setTimeout */
  sleep?: (ms: number) => Promise<void>;
}

interface Entry {
  failures: number;
  last: number;
  /** Spraying address: when its latest queued failure is answered. */
  gate?: number;
}

/** Failure counts per (address, account) and per address, and the delay they call for. */
export class AuthThrottle {
  private readonly pairs = new Map<string, Entry>();
  private readonly addresses = new Map<string, Entry>();
  private readonly base: number;
  private readonly max: number;
  private readonly windowMs: number;
  private readonly allowance: number;
  private readonly maxWait: number;
  private readonly maxEntries: number;
  private readonly now: () => number;
  private readonly sleep: (ms: number) => Promise<void>;

  constructor(options: ThrottleOptions = {}) {
    this.base = options.baseDelayMs ?? 1000;
    this.max = options.maxDelayMs ?? this.base * 16;
    this.windowMs = options.windowMs ?? 15 * 60_000;
    this.allowance = options.addressAllowance ?? 10;
    this.maxWait = options.maxWaitMs ?? this.base * 60;
    this.maxEntries = options.maxEntries ?? 10_000;
    this.now = options.now ?? Date.now;
    this.sleep = options.sleep ?? ((ms) => new Promise((r) => setTimeout(r, ms)));
  }

  /** Records a failure of `account` from `address` and returns the delay to apply before answering it. */
  record(address: string, account: string): number {
    const t = this.now();
    const pair = this.bump(this.pairs, pairKey(address, account), t);
    const addr = this.bump(this.addresses, address, t);
    const own = this.delay(pair.failures);
    if (addr.failures <= this.allowance) return own;
    // Past the allowance the address's failures are answered one after another, so parallel
    // connections do not multiply its guesses.
    const start = Math.max(t, addr.gate ?? 0);
    addr.gate = start + this.delay(addr.failures - this.allowance);
    return Math.max(own, Math.min(this.maxWait, addr.gate - t));
  }

  /** Records a failure and waits its delay; returns the delay. */
  async fail(address: string, account: string): Promise<number> {
    const ms = this.record(address, account);
    if (ms > 0) await this.sleep(ms);
    return ms;
  }

  /** A successful login clears that pair's failures (not the address's, which a valid account must not reset). */
  succeed(address: string, account: string): void {
    this.pairs.delete(pairKey(address, account));
  }

  /** Keys held, for tests of the memory bound. */
  get size(): { pairs: number; addresses: number } {
    return { pairs: this.pairs.size, addresses: this.addresses.size };
  }

  private delay(failures: number): number {
    return Math.min(this.max, this.base * 2 ** Math.min(30, failures - 1));
  }

  private bump(map: Map<string, Entry>, key: string, t: number): Entry {
    let e = map.get(key);
    if (!e || t - e.last > this.windowMs) e = { failures: 0, last: t };
    e.failures++;
    e.last = t;
    // Re-insert so that Map order is least recently failed first.
    map.delete(key);
    map.set(key, e);
    while (map.size > this.maxEntries) map.delete(map.keys().next().value!);
    return e;
  }
}

function pairKey(address: string, account: string): string {
  return `${address}\0${account.trim().toLowerCase().slice(0, 256)}`;
}

/** One line per failed login that fail2ban-style tools can match; the client address comes first
 * and the user name is JSON-quoted, so a crafted name cannot pose as another address. */
export function authFailureText(listener: string, address: string, user: string): string {
  return `auth failed: client=${address} listener=${listener} user=${JSON.stringify(user.slice(0, 256))}`;
}
