/**
 * A worker process for the crash tests: works the outbound queue once against the data folder
 * in KILL_DATA_DIR and kills itself with SIGKILL at the point KILL_AT names:
 * - `after-250`: right after the remote's final 250, before the delivery is recorded;
 * - `before-queue-delete`: after everything is recorded, when the queue message is deleted.
 */
import { createOutboundJob } from '../../core/mail/outbound.js';
import { deliverTransaction } from '../../core/mail/smtp-client.js';
import type { Queues } from '../../core/storage/ports.js';
import { drain, openEnv, TestClock } from './harness.js';

const killAt = process.env.KILL_AT;
const env = await openEnv(
  { TOMLINSON_DNS_SERVERS: process.env.KILL_DNS!, TOMLINSON_OUTBOUND_MX_PORT: process.env.KILL_MX_PORT! },
  new TestClock(Number(process.env.KILL_CLOCK_MS)),
  process.env.KILL_DATA_DIR,
);
const die = () => process.kill(process.pid, 'SIGKILL');
const handler = createOutboundJob({
  transact: async (t) => {
    const r = await deliverTransaction(t);
    if (killAt === 'after-250' && r.rcpts.some((x) => x.ok)) die();
    return r;
  },
});
const queues = env.storage.queues;
const wrapped: Queues = {
  send: (...a) => queues.send(...a),
  receive: (...a) => queues.receive(...a),
  delete: async (...a) => {
    if (killAt === 'before-queue-delete') die();
    return queues.delete(...a);
  },
  changeVisibility: (...a) => queues.changeVisibility(...a),
  stats: (...a) => queues.stats(...a),
};
env.ctx.storage = { ...env.storage, queues: wrapped };
await drain(env, 'outbound', handler);
console.log('NOT KILLED');
await env.close();
