/**
 * The accept race through the real SMTP listener and a real client (nodemailer): a sweep runs in
 * the exact gap between the raw message's put and its job's send, with every queue empty. With the
 * settle time the blob survives and the message is delivered; with `settleSeconds: 0` (which the
 * docs allow only with every listener stopped) the same interleaving deletes it, which is the
 * hazard the settle time exists for. Also: the embedded default starts the periodic sweep.
 */
import nodemailer from 'nodemailer';
import { afterEach, describe, expect, it } from 'vitest';
import { silentLogger } from '../../core/log.js';
import { inboundJob } from '../../core/mail/inbound.js';
import { sweepOrphanBlobs, type SweepReport } from '../../core/mail/sweep.js';
import { MailboxStore } from '../../core/mailbox/store.js';
import { isStorageError, type Storage } from '../../core/storage/ports.js';
import { runOne } from '../../core/workers/runner.js';
import { startApp } from '../../containers/app.js';
import { BOB, startHarness, type Harness } from '../smtp/harness.js';

let h: Harness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
});

/** Starts SMTP on storage whose inbound `send` first runs a sweep with the given settle time. */
async function raceHarness(settleSeconds: number): Promise<{ h: Harness; sweeps: SweepReport[]; real: () => Storage }> {
  const sweeps: SweepReport[] = [];
  let real: Storage | undefined;
  // The race is between a blob put and the job's send, so every message takes that path here
  // (a small one would otherwise travel inside its job, with no blob to race for).
  const harness = await startHarness(
    { TOMLINSON_SMTP_QUEUE_INLINE_BYTES: '0' },
    {
      wrapStorage: (s) => {
        real = s;
        const queues = Object.create(s.queues) as Storage['queues'];
        queues.send = async (queue, body, o) => {
          if (queue === 'inbound') sweeps.push(await sweepOrphanBlobs(s, { settleSeconds, log: silentLogger }));
          return s.queues.send(queue, body, o);
        };
        return { ...s, queues, check: () => s.check(), close: () => s.close() };
      },
    },
  );
  return { h: harness, sweeps, real: () => real! };
}

async function send(harness: Harness, subject: string): Promise<string> {
  const transport = nodemailer.createTransport({ host: '127.0.0.1', port: harness.server.ports.mx, secure: false, ignoreTLS: true, socketTimeout: 30_000 });
  try {
    const info = await transport.sendMail({ from: 'someone@remote.example', to: BOB, subject, text: `body of ${subject}\n` });
    return info.response;
  } finally {
    transport.close();
  }
}

async function workInbound(storage: Storage, harness: Harness): Promise<void> {
  const ctx = { config: harness.config, storage, log: silentLogger, now: () => new Date() };
  for (const m of await storage.queues.receive('inbound', { max: 10, waitSeconds: 0 })) {
    const r = await runOne('inbound', m, inboundJob, ctx);
    if (r instanceof Error) throw r;
  }
}

describe('the orphan sweep against the SMTP accept path', () => {
  it('a sweep between the put and the send leaves the blob (settle time), and the 250 message is delivered whole', async () => {
    const r = await raceHarness(900);
    h = r.h;
    const reply = await send(h, 'raced');
    expect(reply).toMatch(/^250 /);
    expect(r.sweeps).toHaveLength(1);
    expect(r.sweeps[0]).toMatchObject({ quiescent: true, deleted: 0, marked: 1 });
    await workInbound(r.real(), h);
    const [entry] = await new MailboxStore(r.real().tables, r.real().mail).list(BOB);
    expect(entry).toBeDefined();
    const { body } = await r.real().mail.get(entry.blobKey);
    let text = '';
    for await (const c of body) text += Buffer.from(c as Uint8Array).toString('utf8');
    expect(text).toContain('body of raced');
    // Later sweeps (past the settle time too) see it referenced.
    const later = await sweepOrphanBlobs(r.real(), { now: () => new Date(Date.now() + 16 * 60_000) });
    expect(later).toMatchObject({ deleted: 0, keptReferenced: 1 });
  });

  it('without the settle time the same interleaving deletes the blob of a message about to get its 250', async () => {
    const r = await raceHarness(0);
    h = r.h;
    expect(await send(h, 'lost')).toMatch(/^250 /);
    expect(r.sweeps[0].deleted).toBe(1);
    const [key] = r.sweeps[0].deletedKeys;
    await expect(r.real().mail.head(key)).rejects.toSatisfy((e: unknown) => isStorageError(e, 'NotFound'));
  });

  it('the embedded default registers the periodic sweep with the workers', async () => {
    const harness = await startHarness();
    h = harness;
    const app = await startApp({ ...harness.config, health: { ...harness.config.health, port: 0 } }, ['workers'], silentLogger);
    try {
      expect(await app.metrics.text()).toContain('tomlinson_orphan_sweep_blobs_total');
    } finally {
      await app.close(1000);
    }
  });
});
