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

/** Builds the process's root logger; components take children (`log.child({ c: 'smtp' })`). */
export function createLogger(options: LogOptions = {}): Logger {
  const pretty =
    options.pretty === true || options.pretty === 'true' || ((options.pretty ?? 'auto') === 'auto' && !options.destination && process.stdout.isTTY === true);
  const base = { level: options.level ?? 'info', redact: { paths: REDACT, censor: '[redacted]' } };
  if (pretty) {
    return pino({ ...base, transport: { target: 'pino-pretty', options: { colorize: true, translateTime: 'SYS:HH:MM:ss.l', ignore: 'pid,hostname' } } });
  }
  if (options.destination) return pino(base, options.destination);
  return pino(base);
}

/** A logger that drops everything, for tests and library defaults. */
export const silentLogger: Logger = pino({ level: 'silent' });
