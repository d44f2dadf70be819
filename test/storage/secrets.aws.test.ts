/**
 * core/secrets/aws.ts against moto's Secrets Manager: the one client every secret reader and writer
 * uses (TLS, DKIM, the smarthost password, `dkim generate`).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseDkimSecret, readSecretOnce, SecretStore } from '../../core/secrets/aws.js';
import { startMoto, type AwsTestBackend } from '../support/moto.js';

describe('SecretStore (moto)', () => {
  let moto: AwsTestBackend;
  let store: SecretStore;

  beforeAll(async () => {
    moto = await startMoto({ say: () => undefined });
    store = new SecretStore(moto.env.AWS_REGION);
  });
  afterAll(async () => {
    store?.close();
    await moto?.stop();
  });

  it('reads a missing secret as undefined, creates it on first write and replaces its value on the next', async () => {
    expect(await store.read('tomlinson/test/missing')).toBeUndefined();
    await store.write('tomlinson/test/one', 'first');
    expect(await store.read('tomlinson/test/one')).toBe('first');
    await store.write('tomlinson/test/one', 'second');
    expect(await readSecretOnce('tomlinson/test/one', moto.env.AWS_REGION)).toBe('second');
  });

  it('parses both DKIM secret forms and leaves out keys without a private key', () => {
    expect(parseDkimSecret(undefined)).toEqual([]);
    expect(parseDkimSecret(JSON.stringify({ selector: 's1', privateKey: 'K1' }))).toEqual([{ selector: 's1', privateKey: 'K1' }]);
    expect(parseDkimSecret(JSON.stringify({ selector: 's1', privateKey: '' }))).toEqual([]);
    expect(
      parseDkimSecret(
        JSON.stringify({
          keys: [
            { selector: 'a', privateKey: 'KA' },
            { selector: 'b', privateKey: '' },
            { selector: '', privateKey: 'KC' },
          ],
        }),
      ),
    ).toEqual([{ selector: 'a', privateKey: 'KA' }]);
  });
});
