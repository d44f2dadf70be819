/**
 * The storage contract against the aws family. By default it runs against moto's server, started
 * on 127.0.0.1 by test/support/moto.ts. With TOMLINSON_CONTRACT_AWS=external it uses whatever the
 * standard AWS variables point at (LocalStack, or an account), creating uniquely named buckets,
 * table and queues first and deleting them afterwards:
 *
 *   AWS_ENDPOINT_URL=http://127.0.0.1:4566 AWS_REGION=us-east-1 AWS_ACCESS_KEY_ID=test \
 *   AWS_SECRET_ACCESS_KEY=test AWS_S3_FORCE_PATH_STYLE=1 TOMLINSON_CONTRACT_AWS=external \
 *   npx vitest run test/contract/aws.test.ts
 */
import { randomBytes } from 'node:crypto';
import { vi } from 'vitest';
import { deleteAwsResources, ensureAwsResources, type AwsResourceOptions } from '../../scripts/aws-resources.js';
import { startMoto } from '../support/moto.js';
import { describeStorageContract } from './suite.js';

// Starting moto (a Python server) and creating the resources takes a second or two on an idle
// machine, but far longer on a loaded two-core CI box; give the suite's beforeAll room for it.
vi.setConfig({ hookTimeout: 120_000 });

/** The suite checks dead-lettering after this many receives (it asks for at most 3). */
const MAX_RECEIVES = 2;

describeStorageContract('aws', async () => {
  if (process.env.TOMLINSON_CONTRACT_AWS === 'external') {
    const forcePathStyle = ['1', 'true', 'yes', 'on'].includes((process.env.AWS_S3_FORCE_PATH_STYLE ?? '').toLowerCase());
    const options: AwsResourceOptions = { prefix: `tomlinson-ct-${randomBytes(4).toString('hex')}`, maxReceives: MAX_RECEIVES, forcePathStyle };
    process.stderr.write(`[aws-harness] using the endpoint of the AWS variables (${process.env.AWS_ENDPOINT_URL ?? 'AWS'}), resources ${options.prefix}-*\n`);
    const env = await ensureAwsResources(options);
    return {
      env: { ...env, AWS_S3_FORCE_PATH_STYLE: forcePathStyle ? '1' : '0', TOMLINSON_LOG_LEVEL: 'silent' },
      cleanup: () => deleteAwsResources(options),
    };
  }
  const moto = await startMoto({ maxReceives: MAX_RECEIVES });
  return { env: { ...moto.env, TOMLINSON_LOG_LEVEL: 'silent' }, cleanup: () => moto.stop() };
});
