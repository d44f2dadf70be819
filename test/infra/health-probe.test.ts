/**
 * A listener task's /health probe on AWS (core/storage/aws/index.ts `check`) asks only for the
 * backends its enabled services use, which is all its task role may reach (infra/access.ts):
 * against moto, a proxy-only task whose mail bucket and queues are out of reach still reports
 * healthy, an SMTP-only task probes the inbound queue and not the outbound one, a mailbox task
 * (POP3, IMAP or both) probes the mail bucket and the table only, and a web task (JMAP) the mail
 * bucket, the table and the inbound queue its EmailSubmissions go to.
 */
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../core/config.js';
import { silentLogger } from '../../core/log.js';
import { openAwsStorage } from '../../core/storage/aws/index.js';
import { startMoto, type AwsTestBackend } from '../support/moto.js';

let backend: AwsTestBackend;
beforeAll(async () => {
  backend = await startMoto();
}, 120_000);
afterAll(async () => {
  await backend?.stop();
});

/** The switches infra/stacks/listeners.ts gives one group's task. */
const only = (...components: ('smtp' | 'pop3' | 'imap' | 'web' | 'proxy')[]) => ({
  TOMLINSON_SMTP_ENABLED: String(components.includes('smtp')),
  TOMLINSON_POP3_ENABLED: String(components.includes('pop3')),
  TOMLINSON_IMAP_ENABLED: String(components.includes('imap')),
  TOMLINSON_WEB_ENABLED: String(components.includes('web')),
  TOMLINSON_PROXY_ENABLED: String(components.includes('proxy')),
  TOMLINSON_WORKERS_ENABLED: 'false',
});

/** Names that exist nowhere: what a role without access to them sees as well (a 403 or 404 is "down"). */
const unreachable = () => {
  const n = randomBytes(3).toString('hex');
  return { bucket: `nope-${n}`, queue: `${backend.endpoint}/123456789012/nope-${n}` };
};

async function checkOf(env: Record<string, string>): Promise<Record<string, boolean>> {
  const config = loadConfig({ ...backend.env, ...env });
  const s = await openAwsStorage(config, silentLogger);
  try {
    return await s.check();
  } finally {
    await s.close();
  }
}

describe('health probe on AWS', () => {
  it('of a proxy task asks for the cache bucket and the table only', async () => {
    const x = unreachable();
    const report = await checkOf({
      ...only('proxy'),
      TOMLINSON_MAIL_BUCKET: x.bucket,
      TOMLINSON_INBOUND_QUEUE_URL: x.queue,
      TOMLINSON_OUTBOUND_QUEUE_URL: x.queue,
    });
    expect(report).toEqual({ cache: true, tables: true });
  });

  it('of an SMTP task asks for the mail bucket, the table and the inbound queue', async () => {
    const x = unreachable();
    expect(await checkOf({ ...only('smtp'), TOMLINSON_CACHE_BUCKET: x.bucket, TOMLINSON_OUTBOUND_QUEUE_URL: x.queue })).toEqual({
      mail: true,
      tables: true,
      queues: true,
    });
    // and still sees its own backends go down
    expect(await checkOf({ ...only('smtp'), TOMLINSON_MAIL_BUCKET: x.bucket, TOMLINSON_INBOUND_QUEUE_URL: x.queue })).toEqual({
      mail: false,
      tables: true,
      queues: false,
    });
  });

  it('of a mailbox task (POP3 and IMAP, or either alone) asks for no queue and no cache bucket', async () => {
    const x = unreachable();
    const elsewhere = { TOMLINSON_CACHE_BUCKET: x.bucket, TOMLINSON_INBOUND_QUEUE_URL: x.queue, TOMLINSON_OUTBOUND_QUEUE_URL: x.queue };
    for (const components of [['pop3', 'imap'], ['pop3'], ['imap']] as const) {
      expect(await checkOf({ ...only(...components), ...elsewhere }), components.join(',')).toEqual({ mail: true, tables: true });
    }
    // An IMAP-only task still sees its mail bucket go down.
    expect(await checkOf({ ...only('imap'), TOMLINSON_MAIL_BUCKET: x.bucket })).toEqual({ mail: false, tables: true });
  });

  it('of a web task (JMAP) asks for the mail bucket, the table and the inbound queue, not the cache bucket or the outbound queue', async () => {
    const x = unreachable();
    expect(await checkOf({ ...only('web'), TOMLINSON_CACHE_BUCKET: x.bucket, TOMLINSON_OUTBOUND_QUEUE_URL: x.queue })).toEqual({
      mail: true,
      tables: true,
      queues: true,
    });
    // and sees the inbound queue its submissions go to go down
    expect(await checkOf({ ...only('web'), TOMLINSON_INBOUND_QUEUE_URL: x.queue })).toEqual({ mail: true, tables: true, queues: false });
  });

  it('of a process running everything asks for everything', async () => {
    expect(await checkOf({})).toEqual({ mail: true, cache: true, tables: true, queues: true });
  });
});
