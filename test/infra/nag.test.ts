/**
 * cdk-nag (AwsSolutions) over the whole app: zero unacknowledged findings, and every
 * acknowledgement carries a reason. A deliberately bad stack proves the check is live.
 */
import { App, Stack, Validations } from 'aws-cdk-lib';
import * as s3 from 'aws-cdk-lib/aws-s3';
import { AwsSolutionsChecks } from 'cdk-nag';
import type { IConstruct } from 'constructs';
import { afterAll, describe, expect, it } from 'vitest';
import { cdkJsonContext, cleanOutdirs, nagFindings, testApp } from './support.js';

afterAll(cleanOutdirs);

function acknowledgements(root: IConstruct): { path: string; id: string; reason: string }[] {
  const out: { path: string; id: string; reason: string }[] = [];
  for (const c of root.node.findAll()) {
    for (const m of c.node.metadata) {
      if (m.type !== Validations.ACKNOWLEDGED_RULES_METADATA_KEY || !m.data) continue;
      for (const [id, reason] of Object.entries(m.data as Record<string, unknown>)) out.push({ path: c.node.path, id, reason: String(reason ?? '') });
    }
  }
  return out;
}

describe('cdk-nag AwsSolutions', () => {
  // The default stage is checked by stacks.test.ts on its shared synth.
  it('finds nothing unacknowledged with direct delivery, a hosted zone and alarm mail', { timeout: 120_000 }, () => {
    const { app } = testApp({ outbound: 'direct', hostedZone: { zoneId: 'Z1', zoneName: 'example.com' }, alarmEmail: 'ops@example.com' }, { nag: true });
    expect(nagFindings(app)).toEqual([]);
  });

  it('gives every acknowledgement a reason', () => {
    const { app } = testApp({ outbound: 'direct' });
    const acks = acknowledgements(app).filter((a) => a.id.includes('AwsSolutions'));
    expect(acks.length).toBeGreaterThan(10);
    for (const a of acks) expect(a.reason.length, `${a.path} ${a.id}`).toBeGreaterThan(30);
  });

  it('fails the synth of a stack that breaks the rules (the check is live)', () => {
    const app = new App({ context: cdkJsonContext() });
    const stack = new Stack(app, 'Bad');
    new s3.Bucket(stack, 'Open', { enforceSSL: false });
    Validations.of(app).addPlugins(new AwsSolutionsChecks(app));
    expect(() => app.synth()).toThrow(/AwsSolutions/);
  });
});
