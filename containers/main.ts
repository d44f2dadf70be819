/**
 * The entry point of every process: `serve smtp|pop3|imap|proxy|workers|all` (several may be given,
 * comma- or space-separated). Reads the configuration once, opens storage, starts what was asked,
 * prints where it listens and where its data lives, and shuts down cleanly on SIGINT/SIGTERM.
 * Exit codes: 0 after a clean stop, 2 for bad configuration or usage, 1 for a failed start.
 */
import { ConfigError, loadConfig, type Config } from '../core/config.js';
import { createLogger } from '../core/log.js';
import { COMPONENTS, startApp, type Component } from './app.js';

const USAGE = `usage: main serve <${[...COMPONENTS, 'all'].join('|')}>[,...]`;

function parseArgs(argv: string[]): Component[] {
  const [verb, ...rest] = argv;
  if (verb !== 'serve' || rest.length === 0) throw new UsageError(USAGE);
  const names = rest.flatMap((a) => a.split(',')).filter(Boolean);
  const out = new Set<Component>();
  for (const n of names) {
    if (n === 'all') COMPONENTS.forEach((c) => out.add(c));
    else if ((COMPONENTS as readonly string[]).includes(n)) out.add(n as Component);
    else throw new UsageError(`unknown component "${n}"; ${USAGE}`);
  }
  return [...out];
}

class UsageError extends Error {}

async function main(): Promise<void> {
  let config: Config;
  let components: Component[];
  try {
    components = parseArgs(process.argv.slice(2));
    config = loadConfig(process.env);
    if (config.outbound.smarthost) {
      // Checked now, so a mistyped URL stops the start instead of failing every delivery.
      const { parseSmarthost } = await import('../core/mail/outbound.js');
      try {
        parseSmarthost(config.outbound.smarthost);
      } catch (e) {
        throw new ConfigError('TOMLINSON_SMARTHOST', (e as Error).message);
      }
    }
  } catch (e) {
    if (e instanceof ConfigError || e instanceof UsageError) {
      process.stderr.write(`tomlinson: ${e instanceof ConfigError ? 'invalid configuration: ' : ''}${e.message}\n`);
      process.exit(2);
    }
    throw e;
  }
  const log = createLogger({ level: config.log.level, pretty: config.log.pretty });
  let app: Awaited<ReturnType<typeof startApp>>;
  try {
    app = await startApp(config, components, log);
  } catch (e) {
    log.fatal({ err: (e as Error).message }, 'start failed');
    // Give the log transport a moment to flush before exiting.
    await new Promise((r) => setTimeout(r, 100));
    process.exit(1);
  }
  const where = config.storage.driver === 'local' ? `data in ${config.dataDir}` : `storage on AWS (${config.storage.aws.table})`;
  for (const l of app.listeners) log.info({ addresses: l.addresses }, `${l.name} listening on ${l.addresses.join(', ')}`);
  if (app.workers.length) log.info(`workers running for queues ${app.workers.map((w) => w.queue).join(', ')}`);
  if (app.healthAddress) log.info(`health on http://${app.healthAddress}/health, metrics on http://${app.healthAddress}/metrics`);
  log.info(`tomlinson ready: ${where}`);

  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) {
      log.warn(`${signal} again: exiting now`);
      process.exit(1);
    }
    stopping = true;
    log.info(`${signal}: stopping (finishing in-flight work)`);
    app.close(10_000).then(
      () => {
        log.info('stopped');
        setTimeout(() => process.exit(0), 50).unref();
      },
      (e: Error) => {
        log.error({ err: e.message }, 'error while stopping');
        process.exit(1);
      },
    );
  };
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('SIGTERM', () => stop('SIGTERM'));
}

main().catch((e: unknown) => {
  process.stderr.write(`tomlinson: ${(e as Error).stack ?? String(e)}\n`);
  process.exit(1);
});
