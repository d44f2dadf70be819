/** `cache stats` and `cache purge <url>`: the proxy cache as every proxy task shares it. */
import type { Command } from 'commander';
import { silentLogger } from '../../core/log.js';
import { normalizeUrl } from '../../core/cache/keys.js';
import { readCacheReport } from '../../core/cache/stats.js';
import { CacheStore } from '../../core/cache/store.js';
import { formatSize } from '../units.js';
import { CliError, type CliContext } from '../context.js';

function percent(x: number): string {
  return `${(x * 100).toFixed(1)}%`;
}

/** Adds the `cache` command group. */
export function register(program: Command, ctx: CliContext): void {
  const cache = program.command('cache').description('the proxy cache: statistics and purging');

  cache
    .command('stats')
    .description('requests, hits, revalidations, misses, refused and failed requests, bytes from cache and origin, hit ratio, traffic saved')
    .action(async () => {
      const r = await readCacheReport((await ctx.storage()).tables);
      ctx.print(
        () =>
          [
            `requests:        ${r.requests}`,
            `hits:            ${r.hits}`,
            `revalidations:   ${r.revalidations} (304 from the origin, body served from cache)`,
            `stale served:    ${r.stale}`,
            `misses:          ${r.misses}`,
            `not cacheable:   ${r.bypass}`,
            `refused:         ${r.refused} (by the proxy: client, origin address, connection caps, bad requests)`,
            `origin failed:   ${r.failed} (502 or 504 from the proxy)`,
            `hit ratio:       ${percent(r.hitRatio)}`,
            `from cache:      ${formatSize(r.bytesFromCache)}`,
            `from origins:    ${formatSize(r.bytesFromOrigin)}`,
            `byte hit ratio:  ${percent(r.byteHitRatio)}`,
            `link traffic saved: ${formatSize(r.savedBytes)}`,
            `stored:          ${r.storedObjects} objects, ${formatSize(r.storedBytes)}`,
          ].join('\n'),
        r,
      );
    });

  cache
    .command('purge')
    .argument('<url>', 'absolute http:// or https:// URL; every stored variant is removed')
    .description('remove a URL from the cache; running proxies drop their memory copy within about a second')
    .action(async (raw: string) => {
      let url: string;
      try {
        url = normalizeUrl(raw);
      } catch {
        throw new CliError(`not an http or https URL: ${raw}`);
      }
      const s = await ctx.storage();
      const store = new CacheStore({ tables: s.tables, blobs: s.cache, log: ctx.log() ?? silentLogger, memoryBytes: 0 });
      const n = await store.purge(url);
      ctx.print(n ? `purged ${url} (${n} variant${n === 1 ? '' : 's'})` : `${url} was not in the cache`, { url, purged: n });
    });
}
