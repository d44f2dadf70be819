/**
 * Structured logging: JSON lines (pino) for machines, pretty lines on a terminal.
 * Never log a password, an AUTH payload or a message body: the redact list below removes the
 * usual field names as a second line of defence.
 */
import { pino, type Logger } from 'pino';

export type { Logger };

/** Options for createLogger; read from Config.log at the edge. */
export interface LogOptions {
  /** @default 'info' */
  level?: string;
  /** 'auto' pretty-prints when stdout is a terminal. @default 'auto' */
  pretty?: 'auto' | 'true' | 'false' | boolean;
  /** Write here instead of stdout (tests). */
  destination?: NodeJS.WritableStream;
}

const REDACT = ['password', 'pass', 'secret', '*.password', '*.pass', '*.secret', 'authorization', '*.authorization', 'body', '*.body'];

const { chindingsSym } = pino.symbols;
/** The binding keys of each child logger, for the log-call check below. */
const boundKeys = new WeakMap<object, Set<string>>();

/** A component name nests under its parent's (`worker` + `inbound` = `worker.inbound`), once. */
function merged(outer: Record<string, unknown>, k: string, v: unknown): unknown {
  const was = outer[k];
  if (k !== 'c' || typeof was !== 'string' || typeof v !== 'string') return v;
  return was === v || was.endsWith(`.${v}`) ? was : `${was}.${v}`;
}

/**
 * pino appends a child's bindings to its parent's, so `log.child({ c: 'worker' }).child({ c: 'inbound' })`
 * would write `"c":"worker",…,"c":"inbound"`. This keeps one value per key: the child's replaces
 * the parent's, and component names nest (`"c":"worker.inbound"`).
 */
function oneValuePerKey(child: Logger): void {
  const self = child as unknown as Record<symbol, string>;
  const before = (Object.getPrototypeOf(child) as Record<symbol, string>)[chindingsSym] ?? '';
  const all = self[chindingsSym] ?? '';
  if (!all.startsWith(before)) return;
  const outer = JSON.parse(`{${before.slice(1)}}`) as Record<string, unknown>;
  const inner = JSON.parse(`{${all.slice(before.length + 1)}}`) as Record<string, unknown>;
  const dup = Object.keys(inner).some((k) => k in outer);
  for (const [k, v] of Object.entries(inner)) outer[k] = merged(outer, k, v);
  boundKeys.set(child, new Set(Object.keys(outer)));
  if (!dup) return;
  // The values were already serialised (and redacted) by pino; re-encoding them keeps that.
  self[chindingsSym] = Object.entries(outer)
    .map(([k, v]) => `,${JSON.stringify(k)}:${JSON.stringify(v)}`)
    .join('');
}

/**
 * The same for a log call whose object repeats a bound key (`log.info({ queue }, …)` on a logger
 * bound to a queue): the line is written by a child bound to the call's values.
 */
function logMethod(this: Logger, args: unknown[], method: (...a: unknown[]) => void): void {
  const keys = boundKeys.get(this);
  const first = args[0];
  if (keys && first && typeof first === 'object' && !(first instanceof Error)) {
    let dup: Record<string, unknown> | undefined;
    for (const k of Object.keys(first)) if (keys.has(k)) (dup ??= {})[k] = (first as Record<string, unknown>)[k];
    if (dup) {
      const rest = { ...(first as Record<string, unknown>) };
      for (const k of Object.keys(dup)) delete rest[k];
      method.apply(this.child(dup), [rest, ...args.slice(1)]);
      return;
    }
  }
  method.apply(this, args);
}

/** Builds the process's root logger; components take children (`log.child({ c: 'smtp' })`). */
export function createLogger(options: LogOptions = {}): Logger {
  const pretty =
    options.pretty === true || options.pretty === 'true' || ((options.pretty ?? 'auto') === 'auto' && !options.destination && process.stdout.isTTY === true);
  const base = { level: options.level ?? 'info', redact: { paths: REDACT, censor: '[redacted]' }, onChild: oneValuePerKey, hooks: { logMethod } };
  if (pretty) {
    return pino({ ...base, transport: { target: 'pino-pretty', options: { colorize: true, translateTime: 'SYS:HH:MM:ss.l', ignore: 'pid,hostname' } } });
  }
  if (options.destination) return pino(base, options.destination);
  return pino(base);
}

/** A logger that drops everything, for tests and library defaults. */
export const silentLogger: Logger = pino({ level: 'silent' });
