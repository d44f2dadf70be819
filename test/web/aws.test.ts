/**
 * The web listener on the aws storage family (DynamoDB and S3 adapters against moto's server):
 * an upload and its download (type and age read back from S3), an API request, an app password,
 * and push told of a delivery made by another process (the inbound Lambda's place), which no
 * in-process nudge reaches: the change-log poll finds it.
 */
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AppPasswords } from '../../core/accounts/app-passwords.js';
import { accountIdOf } from '../../containers/web/jmap/auth.js';
import { coreModule } from '../../containers/web/jmap/core-methods.js';
import { JmapRegistry } from '../../containers/web/jmap/registry.js';
import { startMoto, type AwsTestBackend } from '../support/moto.js';
import { startWebHarness, type WebHarness } from './harness.js';

const run = promisify(execFile);
const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const ALICE = 'alice@example.com';
const POLL_MS = 500;
let moto: AwsTestBackend;
let h: WebHarness;

beforeAll(async () => {
  moto = await startMoto();
  h = await startWebHarness(moto.env, { registry: new JmapRegistry([coreModule], {}), pushPollMs: POLL_MS }, [ALICE]);
}, 120_000);
afterAll(async () => {
  await h?.close();
  await moto?.stop();
});

describe('web listener on aws storage', () => {
  it('uploads, downloads, answers the API and takes an app password', async () => {
    const alice = accountIdOf(ALICE);
    const up = await h.fetch(`/jmap/upload/${alice}/`, { method: 'POST', user: ALICE, headers: { 'content-type': 'text/plain' }, body: 'on s3' });
    expect(up.status).toBe(201);
    const { blobId } = (await up.json()) as { blobId: string };
    const down = await h.fetch(`/jmap/download/${alice}/${blobId}/x.txt`, { user: ALICE });
    expect(down.status).toBe(200);
    expect(down.headers.get('content-type')).toBe('text/plain');
    expect(await down.text()).toBe('on s3');

    const echo = await h.api({ using: ['urn:ietf:params:jmap:core'], methodCalls: [['Core/echo', { s3: true }, '0']] }, ALICE);
    expect(echo.json.methodResponses).toEqual([['Core/echo', { s3: true }, '0']]);

    const { password } = await new AppPasswords(h.storage.tables, h.accounts).add(ALICE, 'tablet');
    const session = await h.fetch('/jmap/session', { user: ALICE, password });
    expect(session.status).toBe(200);
    await session.body?.cancel();
  });

  it('pushes a delivery made by another process, found by the change-log poll', async () => {
    const res = await h.fetch('/jmap/eventsource/?types=Email&closeafter=state&ping=0', { user: ALICE });
    expect(res.status).toBe(200);
    const text = res.text();
    const { stdout } = await run(process.execPath, ['--import', 'tsx', 'test/web/support/deliver.ts', ALICE, 'from elsewhere'], {
      cwd: ROOT,
      env: { ...process.env, ...moto.env, TOMLINSON_LOG_LEVEL: 'silent' },
    });
    const committed = Number(stdout.trim());
    const body = await text;
    const delay = Date.now() - committed;
    expect(body).toContain('event: state');
    expect(JSON.parse(body.split('data: ')[1]).changed[accountIdOf(ALICE)]).toEqual({ Email: expect.any(String) });
    // The poll interval plus the reads of one check.
    expect(delay).toBeLessThan(POLL_MS + 1500);
  }, 60_000);
});
