/**
 * The short form of the crash-safety soak (the long form is `npm run soak`): two SIGKILLs while
 * mail flows, then storage failing at random. Nothing that got a 250 may be lost or doubled, and
 * after the orphan sweep no blob is left unreferenced.
 */
import { describe, expect, it } from 'vitest';
import { runSoak, summaryLine } from './soak.js';

describe('crash-safety soak (short form)', () => {
  it('loses no accepted message across SIGKILLs and storage faults, and POP3 returns them byte for byte', async () => {
    const s = await runSoak({ kills: 2, sessions: 6, killEveryMs: 2500, faultMs: 3000, faultRate: 0.2 });
    process.stdout.write(summaryLine(s) + '\n');
    expect(s.accepted).toBeGreaterThan(20);
    expect(s.lost).toBe(0);
    expect(s.duplicates).toBe(0);
    expect(s.danglingIndexItems).toBe(0);
    // The injected faults must have been seen by senders as 4xx, and mail still got through.
    expect(s.temporaryFailures).toBeGreaterThan(0);
    expect(s.acceptedUnderFaults).toBeGreaterThan(0);
    expect(s.pop3Downloaded).toBe(s.delivered + s.unacknowledgedDelivered);
    expect(s.pop3Mismatches).toBe(0);
    // A kill between the blob put and the queue send may leave an unreferenced blob per session;
    // the documented cleanup (the orphan sweep, queues drained) removes every one of them and
    // nothing else: the POP3 downloads above ran after it.
    expect(s.orphanBlobsBeforeCleanup).toBeLessThanOrEqual(s.kills * 6);
    expect(s.sweptBlobs).toBe(s.orphanBlobsBeforeCleanup);
    expect(s.orphanBlobs).toBe(0);
  }, 400_000);
});
