/**
 * The web listener as a component of the app (`serve web`, and `serve all` through COMPONENTS):
 * it starts on its port, answers, and on close ends open push streams and stops within the grace.
 */
import { Agent, fetch } from 'undici';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { Accounts } from '../../core/accounts/accounts.js';
import { loadConfig } from '../../core/config.js';
import { silentLogger } from '../../core/log.js';
import { COMPONENTS, startApp } from '../../containers/app.js';
import { basic } from './harness.js';

const dirs: string[] = [];
afterAll(async () => Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true }))));

it('serve web starts the listener, answers JMAP, and closes with a push stream open', async () => {
  expect(COMPONENTS).toContain('web');
  const dir = await mkdtemp(join(tmpdir(), 'tomlinson-web-app-'));
  dirs.push(dir);
  const config = loadConfig({ TOMLINSON_DATA_DIR: dir, TOMLINSON_WEB_PORT: '0', TOMLINSON_HEALTH_PORT: '0', TOMLINSON_LOG_LEVEL: 'silent' });
  const app = await startApp(config, ['web'], silentLogger);
  const agent = new Agent({ connect: { rejectUnauthorized: false } });
  try {
    expect(app.listeners.map((l) => l.name)).toEqual(['web']);
    const port = Number(app.listeners[0].addresses[0].split(':').pop());
    const accounts = new Accounts(app.storage.tables);
    await accounts.addDomain('example.com');
    await accounts.addUser('carol@example.com', 'password-carol');
    const auth = { authorization: basic('carol@example.com', 'password-carol') };
    const session = await fetch(`https://127.0.0.1:${port}/.well-known/jmap`, { headers: auth, dispatcher: agent });
    expect(session.status).toBe(200);
    await session.body?.cancel();

    const push = await fetch(`https://127.0.0.1:${port}/jmap/eventsource/?types=*&closeafter=no&ping=0`, { headers: auth, dispatcher: agent });
    expect(push.status).toBe(200);
    const reader = push.body!.getReader();
    await reader.read(); // the opening comment
    const t0 = performance.now();
    const ended = (async () => {
      for (;;) if ((await reader.read()).done) return performance.now();
    })();
    await app.close(5000);
    expect((await ended) - t0).toBeLessThan(2000);
    expect(performance.now() - t0).toBeLessThan(2000);
  } finally {
    await agent.close();
  }
});
