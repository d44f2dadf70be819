/**
 * TLS certificates for every listener, read through the secrets port (core/secrets.ts): from PEM
 * files (reloaded when they change on disk), from AWS Secrets Manager (polled), per-domain certificates by SNI from a folder, or, with nothing
 * configured, a self-signed certificate generated once into `<dataDir>/tls/`. Contexts are
 * rebuilt on change and handed out fresh, so new connections pick up a renewed certificate
 * without a restart; listeners built on tls.Server call `attach(server)` to follow reloads.
 */
import { constants as cryptoConstants, X509Certificate } from 'node:crypto';
import { existsSync, watch, type FSWatcher } from 'node:fs';
import { chmod, mkdir, readdir, readFile, rename, writeFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import tls from 'node:tls';
import type { Config } from './config.js';
import type { Logger } from './log.js';
import { openSecrets, type Secrets, type TlsPair } from './secrets.js';

/** TLS 1.2 is the floor (RFC 8996 deprecates 1.0 and 1.1; RFC 9325 §3.1.1). */
export const MIN_TLS_VERSION = 'TLSv1.2' as const;

/**
 * TLS 1.2 suites: ECDHE key exchange with AEAD ciphers only (RFC 9325 §4.2 recommended suites);
 * TLS 1.3 suites are Node's defaults, all AEAD. No CBC, RC4, 3DES, static RSA or anonymous suites.
 */
export const CIPHERS = [
  'TLS_AES_128_GCM_SHA256',
  'TLS_AES_256_GCM_SHA384',
  'TLS_CHACHA20_POLY1305_SHA256',
  'ECDHE-ECDSA-AES128-GCM-SHA256',
  'ECDHE-RSA-AES128-GCM-SHA256',
  'ECDHE-ECDSA-AES256-GCM-SHA384',
  'ECDHE-RSA-AES256-GCM-SHA384',
  'ECDHE-ECDSA-CHACHA20-POLY1305',
  'ECDHE-RSA-CHACHA20-POLY1305',
].join(':');

/**
 * What every server context gets: the version floor, the suites, and no renegotiation. Node only
 * reports a client that renegotiates more than tls.CLIENT_RENEG_LIMIT times as an 'error' event
 * and leaves the connection up, so each renegotiation cost a handshake (CVE-2011-1473); OpenSSL's
 * SSL_OP_NO_RENEGOTIATION refuses the first one with a no_renegotiation alert (RFC 5746 §4.4).
 */
const SERVER_CONTEXT = {
  minVersion: MIN_TLS_VERSION,
  ciphers: CIPHERS,
  honorCipherOrder: true,
  secureOptions: cryptoConstants.SSL_OP_NO_RENEGOTIATION,
} as const;

/** Where the default certificate came from. */
export type TlsSource = 'files' | 'secret' | 'self-signed';

/** A description of the certificate in use, for logs, health output and tests. */
export interface CertificateInfo {
  source: TlsSource;
  subject: string;
  subjectAltName: string;
  validTo: string;
  fingerprint256: string;
}

/** What listeners need for TLS; every call reflects the latest successful load. */
export interface TlsProvider {
  /** Options for tls.createServer / new tls.TLSSocket: key, cert, TLS 1.2 minimum, modern
   * ciphers, and an SNICallback that serves per-domain certificates. */
  options(): tls.TlsOptions & { SNICallback: NonNullable<tls.TlsOptions['SNICallback']> };
  /** The current default context (for STARTTLS: `new tls.TLSSocket(sock, { secureContext })`). */
  secureContext(): tls.SecureContext;
  /** Keeps a tls.Server's default context current across reloads and closes each connection whose
   * handshake fails or times out; returns a detach function. */
  attach(server: tls.Server): () => void;
  /** Calls `listener` after each successful reload; returns an unsubscribe function. */
  onReload(listener: () => void): () => void;
  /** The default certificate in use. */
  info(): CertificateInfo;
  /** Re-reads every source now (the watchers and the poller call this). */
  reload(): Promise<void>;
  /** Stops watching and polling. */
  close(): void;
}

/** Options of createTlsProvider (tests shorten the timers). */
export interface TlsProviderOptions {
  /** Wait this long after a file event before reloading, so both halves of a renewal land. @default 300 */
  debounceMs?: number;
  /** How often the Secrets Manager secret is re-read. @default 300 */
  secretPollSeconds?: number;
  /** Where the certificate is read. @default openSecrets(config) */
  secrets?: Pick<Secrets, 'tlsPair'>;
}

type Pair = TlsPair;

interface Loaded {
  source: TlsSource;
  pair: Pair;
  context: tls.SecureContext;
  info: CertificateInfo;
  /** Lower-case server name (or `*.domain`) -> context. */
  sni: Map<string, tls.SecureContext>;
}

function contextFor(pair: Pair): tls.SecureContext {
  // createSecureContext throws when key and certificate do not match: a half-renewed pair is
  // refused here and the previous context stays in use.
  return tls.createSecureContext({ key: pair.key, cert: pair.cert, ...SERVER_CONTEXT });
}

function describe(source: TlsSource, certPem: string): CertificateInfo {
  const x = new X509Certificate(certPem);
  return { source, subject: x.subject, subjectAltName: x.subjectAltName ?? '', validTo: x.validTo, fingerprint256: x.fingerprint256 };
}

/** The SNI folder's and the self-signed pairs (files tls.ts manages itself, never secrets). */
async function readPair(certFile: string, keyFile: string): Promise<Pair> {
  const [cert, key] = await Promise.all([readFile(certFile, 'utf8'), readFile(keyFile, 'utf8')]);
  return { cert, key };
}

async function loadSni(dir: string, log: Logger): Promise<Map<string, tls.SecureContext>> {
  const out = new Map<string, tls.SecureContext>();
  if (!dir) return out;
  let names: string[];
  try {
    names = await readdir(dir);
  } catch (e) {
    log.warn({ dir, err: (e as Error).message }, 'tls: cannot read the SNI folder');
    return out;
  }
  for (const name of names) {
    if (!name.endsWith('.crt')) continue;
    const host = name.slice(0, -4).toLowerCase();
    try {
      const pair = await readPair(join(dir, name), join(dir, `${name.slice(0, -4)}.key`));
      out.set(host, contextFor(pair));
    } catch (e) {
      log.warn({ host, err: (e as Error).message }, 'tls: skipping an SNI certificate that does not load');
    }
  }
  return out;
}

/** Makes (once) and returns the self-signed pair in `<dataDir>/tls/`. */
async function selfSigned(config: Config, log: Logger): Promise<Pair> {
  const dir = join(config.dataDir, 'tls');
  const certFile = join(dir, 'selfsigned.crt');
  const keyFile = join(dir, 'selfsigned.key');
  if (existsSync(certFile) && existsSync(keyFile)) {
    const pair = await readPair(certFile, keyFile);
    const x = new X509Certificate(pair.cert);
    if (new Date(x.validTo).getTime() > Date.now() + 7 * 86400_000) return pair;
    log.warn({ certFile }, 'tls: the self-signed certificate is about to expire; making a new one');
  }
  const { generate } = await import('selfsigned');
  const host = config.hostname || 'localhost';
  const notAfter = new Date(Date.now() + 825 * 86400_000);
  const made = await generate([{ name: 'commonName', value: host }], {
    keyType: 'rsa',
    keySize: 2048,
    algorithm: 'sha256',
    notAfterDate: notAfter,
    extensions: [
      { name: 'basicConstraints', cA: false },
      { name: 'keyUsage', digitalSignature: true, keyEncipherment: true },
      { name: 'extKeyUsage', serverAuth: true },
      {
        name: 'subjectAltName',
        altNames: [
          { type: 2, value: host },
          { type: 2, value: 'localhost' },
          { type: 7, ip: '127.0.0.1' },
          { type: 7, ip: '::1' },
        ],
      },
    ],
  });
  await mkdir(dir, { recursive: true, mode: 0o700 });
  // Key first, then certificate, each through a temporary name: the pair check above only passes
  // once both are whole.
  await writeFile(`${keyFile}.tmp`, made.private, { mode: 0o600 });
  await chmod(`${keyFile}.tmp`, 0o600);
  await rename(`${keyFile}.tmp`, keyFile);
  await writeFile(`${certFile}.tmp`, made.cert, { mode: 0o600 });
  await rename(`${certFile}.tmp`, certFile);
  const info = describe('self-signed', made.cert);
  log.warn(
    { certFile, keyFile, subject: info.subject, fingerprint256: info.fingerprint256 },
    'tls: no certificate configured (TOMLINSON_TLS_CERT_FILE / TOMLINSON_TLS_SECRET_ID): generated a self-signed one; clients will not trust it',
  );
  return { cert: made.cert, key: made.private };
}

/** Loads the configured certificates and starts watching them; throws when none can be loaded. */
export async function createTlsProvider(config: Config, log: Logger, options: TlsProviderOptions = {}): Promise<TlsProvider> {
  const tlog = log.child({ c: 'tls' });
  const { certFile, keyFile, secretId, sniDir } = config.tls;
  if (Boolean(certFile) !== Boolean(keyFile)) throw new Error('TOMLINSON_TLS_CERT_FILE and TOMLINSON_TLS_KEY_FILE must be set together');
  const secrets = options.secrets ?? openSecrets(config);
  const listeners = new Set<() => void>();
  const source: TlsSource = secretId ? 'secret' : certFile ? 'files' : 'self-signed';

  async function load(): Promise<Loaded> {
    const pair = (await secrets.tlsPair()) ?? (await selfSigned(config, tlog));
    const context = contextFor(pair);
    return { source, pair, context, info: describe(source, pair.cert), sni: await loadSni(sniDir, tlog) };
  }

  let current = await load();
  tlog.info({ ...current.info, sni: [...current.sni.keys()] }, 'tls: certificate loaded');

  const SNICallback = (servername: string, cb: (err: Error | null, ctx?: tls.SecureContext) => void) => {
    const name = servername.toLowerCase().replace(/\.$/, '');
    const wildcard = name.includes('.') ? `*.${name.slice(name.indexOf('.') + 1)}` : '';
    cb(null, current.sni.get(name) ?? (wildcard ? current.sni.get(wildcard) : undefined) ?? current.context);
  };

  let reloading: Promise<void> | undefined;
  async function reload(): Promise<void> {
    // One reload at a time; a request during a reload is served by that reload's result.
    reloading ??= (async () => {
      try {
        const next = await load();
        current = next;
        tlog.info({ ...next.info, sni: [...next.sni.keys()] }, 'tls: certificate reloaded');
        for (const l of listeners) l();
      } catch (e) {
        tlog.warn({ err: (e as Error).message }, 'tls: reload failed; keeping the previous certificate');
      } finally {
        reloading = undefined;
      }
    })();
    return reloading;
  }

  // File watching: watch the folders (not the files) so that renames and symlink swaps, the way
  // certbot and Kubernetes replace certificates, are seen too.
  const watchers: FSWatcher[] = [];
  let timer: NodeJS.Timeout | undefined;
  const debounceMs = options.debounceMs ?? 300;
  const schedule = () => {
    if (timer) clearTimeout(timer);
    timer = setTimeout(() => void reload(), debounceMs);
    timer.unref();
  };
  const watched = new Map<string, Set<string> | 'all'>();
  if (certFile && !secretId) {
    for (const f of [certFile, keyFile]) {
      const d = dirname(f);
      const set = watched.get(d);
      if (set !== 'all') watched.set(d, new Set([...(set ?? []), basename(f)]));
    }
  }
  if (sniDir) watched.set(sniDir, 'all');
  for (const [dir, names] of watched) {
    try {
      const w = watch(dir, { persistent: false }, (_event, filename) => {
        if (names === 'all' || !filename || names.has(String(filename)) || String(filename).startsWith('..')) schedule();
      });
      w.on('error', (e) => tlog.warn({ dir, err: e.message }, 'tls: watcher failed'));
      watchers.push(w);
    } catch (e) {
      tlog.warn({ dir, err: (e as Error).message }, 'tls: cannot watch for certificate changes');
    }
  }

  let poller: NodeJS.Timeout | undefined;
  if (secretId) {
    poller = setInterval(
      () => {
        void (async () => {
          try {
            const pair = await secrets.tlsPair();
            if (pair && (pair.cert !== current.pair.cert || pair.key !== current.pair.key)) await reload();
          } catch (e) {
            tlog.warn({ err: (e as Error).message }, 'tls: cannot read the secret; keeping the previous certificate');
          }
        })();
      },
      (options.secretPollSeconds ?? 300) * 1000,
    );
    poller.unref();
  }

  return {
    options: () => ({ key: current.pair.key, cert: current.pair.cert, ...SERVER_CONTEXT, SNICallback }),
    secureContext: () => current.context,
    attach(server) {
      const update = () => server.setSecureContext({ key: current.pair.key, cert: current.pair.cert, ...SERVER_CONTEXT });
      listeners.add(update);
      // Node emits 'tlsClientError' when `handshakeTimeout` runs out but leaves the socket open
      // (a partial ClientHello held a connection for minutes): close it.
      const refuse = (_err: Error, socket: tls.TLSSocket) => socket.destroy();
      server.on('tlsClientError', refuse);
      return () => {
        listeners.delete(update);
        server.off('tlsClientError', refuse);
      };
    },
    onReload(listener) {
      listeners.add(listener);
      return () => listeners.delete(listener);
    },
    info: () => current.info,
    reload,
    close() {
      for (const w of watchers) w.close();
      if (timer) clearTimeout(timer);
      if (poller) clearInterval(poller);
      listeners.clear();
    },
  };
}
