/**
 * The object tier on the aws family (S3 bodies, DynamoDB metadata) through moto's server: what one
 * proxy task stores, another task with an empty memory tier serves without the origin.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readCacheReport } from '../../core/cache/stats.js';
import { silentLogger } from '../../core/log.js';
import { openAwsStorage } from '../../core/storage/aws/index.js';
import { startMoto, type AwsTestBackend } from '../support/moto.js';
import { Harness } from './harness.js';

let moto: AwsTestBackend;
let h: Harness;

beforeAll(async () => {
  moto = await startMoto();
  h = await Harness.start({ ...moto.env, TOMLINSON_PROXY_MEMORY_BYTES: '200000' }, {}, (config) => openAwsStorage(config, silentLogger));
}, 120_000);
afterAll(async () => {
  await h?.stop();
  await moto?.stop();
});

describe('object tier on S3 + DynamoDB', () => {
  it('a second task serves small and large objects stored by the first; Vary variants stay apart', async () => {
    const large = Buffer.alloc(120_000, 'L');
    h.origin.routes.set('/small', (_q, res) => res.writeHead(200, { 'cache-control': 'max-age=600', etag: '"s"' }).end('small body'));
    h.origin.routes.set('/large', (_q, res) => res.writeHead(200, { 'cache-control': 'max-age=600' }).end(large));
    h.origin.routes.set('/vary', (req, res) =>
      res.writeHead(200, { 'cache-control': 'max-age=600', vary: 'accept-language' }).end(`lang ${req.headers['accept-language']}`),
    );
    await h.get('/small');
    await h.get('/large');
    await h.get('/vary', { 'accept-language': 'en' });
    await h.get('/vary', { 'accept-language': 'de' });
    await h.proxy.store.flush();

    await h.stopProxy();
    await h.startProxy();
    const s = await h.get('/small');
    expect(s.text).toBe('small body');
    expect(s.headers['cache-status']).toBe('Tomlinson; hit');
    const l = await h.get('/large', { range: 'bytes=100000-100009' });
    expect(l.status).toBe(206);
    expect(l.text).toBe('L'.repeat(10));
    expect((await h.get('/large')).text.length).toBe(large.length);
    expect((await h.get('/vary', { 'accept-language': 'de' })).text).toBe('lang de');
    expect((await h.get('/vary', { 'accept-language': 'en' })).text).toBe('lang en');
    expect(h.origin.count('/small')).toBe(1);
    expect(h.origin.count('/large')).toBe(1);
    expect(h.origin.count('/vary')).toBe(2);

    const totals = await h.proxy.store.totals();
    expect(totals.objects).toBe(4);
    expect(totals.bytes).toBe('small body'.length + large.length + 'lang en'.length + 'lang de'.length);
    expect(await h.proxy.store.purge(h.origin.url('/vary'))).toBe(2);
    expect((await h.proxy.store.totals()).objects).toBe(2);

    await h.proxy.stats.flush();
    const report = await readCacheReport(h.storage.tables);
    expect(report.hits).toBeGreaterThanOrEqual(5);
    expect(report.misses).toBe(4);
  }, 60_000);
});
