/**
 * The TLS provider over real sockets: a self-signed certificate made once and reused, TLS 1.2 as
 * the floor and no weak suites, certificate files reloaded without a restart (for a tls.Server
 * and for STARTTLS-style sockets), SNI certificates from a folder, and a certificate from Secrets
 * Manager (moto's server) that is re-read when the secret changes.
 */
import { once } from 'node:events';
import { existsSync } from 'node:fs';
import { mkdir, rename, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import tls from 'node:tls';
import { CreateSecretCommand, PutSecretValueCommand, SecretsManagerClient } from '@aws-sdk/client-secrets-manager';
import { generate } from 'selfsigned';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../core/config.js';
import { createLogger, silentLogger } from '../../core/log.js';
import { createTlsProvider, type TlsProvider } from '../../core/tls.js';
import { startMoto, type AwsTestBackend } from '../support/moto.js';
import { tempDir } from '../support/tmp.js';

interface Pair {
  cert: string;
  key: string;
  fingerprint256: string;
}

async function makePair(cn: string): Promise<Pair> {
  const g = await generate([{ name: 'commonName', value: cn }], {
    keyType: 'rsa',
    keySize: 2048,
    algorithm: 'sha256',
    extensions: [{ name: 'subjectAltName', altNames: [{ type: 2, value: cn }] }],
  });
  return { cert: g.cert, key: g.private, fingerprint256: new (await import('node:crypto')).X509Certificate(g.cert).fingerprint256 };
}

/** Starts a TLS server on 127.0.0.1:0 that follows the provider. */
async function serve(provider: TlsProvider): Promise<{ port: number; close: () => Promise<void> }> {
  const server = tls.createServer(provider.options(), (s) => s.end('hello\n'));
  server.on('tlsClientError', () => undefined);
  provider.attach(server);
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return { port: (server.address() as net.AddressInfo).port, close: () => new Promise((r) => server.close(() => r())) };
}

/** Connects and returns the fingerprint the server presented, or the handshake error. */
function handshake(
  port: number,
  options: tls.ConnectionOptions = {},
): Promise<{ fingerprint256?: string; protocol?: string | null; cipher?: string; error?: string }> {
  return new Promise((resolve) => {
    const s = tls.connect({ host: '127.0.0.1', port, rejectUnauthorized: false, ...options }, () => {
      const out = { fingerprint256: s.getPeerCertificate().fingerprint256, protocol: s.getProtocol(), cipher: s.getCipher().name };
      s.destroy();
      resolve(out);
    });
    s.on('error', (e) => resolve({ error: e.message }));
  });
}

function waitReload(provider: TlsProvider, timeoutMs = 10_000): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('no reload')), timeoutMs);
    const off = provider.onReload(() => {
      clearTimeout(timer);
      off();
      resolve();
    });
  });
}

let dir: { path: string; remove: () => Promise<void> };
let A: Pair;
let B: Pair;
let C: Pair;
let W: Pair;

beforeAll(async () => {
  dir = await tempDir('tomlinson-tls-');
  [A, B, C, W] = await Promise.all([makePair('a.example.com'), makePair('b.example.com'), makePair('mail.example.net'), makePair('*.example.org')]);
});
afterAll(async () => dir?.remove());

describe('self-signed default', () => {
  it('makes a certificate once in <dataDir>/tls, says so in the log, and reuses it', async () => {
    const dataDir = join(dir.path, 'data');
    const lines = new PassThrough();
    let logText = '';
    lines.on('data', (d) => (logText += d));
    const config = loadConfig({ TOMLINSON_DATA_DIR: dataDir, TOMLINSON_HOSTNAME: 'mx.example.com' });
    const p1 = await createTlsProvider(config, createLogger({ destination: lines, level: 'info' }));
    expect(p1.info()).toMatchObject({ source: 'self-signed', subject: 'CN=mx.example.com' });
    expect(p1.info().subjectAltName).toContain('DNS:mx.example.com');
    expect(existsSync(join(dataDir, 'tls', 'selfsigned.crt'))).toBe(true);
    expect(existsSync(join(dataDir, 'tls', 'selfsigned.key'))).toBe(true);
    expect(logText).toContain('generated a self-signed one');
    expect(logText).not.toContain('PRIVATE KEY');
    const p2 = await createTlsProvider(config, silentLogger);
    expect(p2.info().fingerprint256).toBe(p1.info().fingerprint256);
    p1.close();
    p2.close();
  });
});

describe('files, protocol floor and ciphers', () => {
  let provider: TlsProvider;
  let server: { port: number; close: () => Promise<void> };
  const certFile = () => join(dir.path, 'files', 'server.crt');
  const keyFile = () => join(dir.path, 'files', 'server.key');

  beforeAll(async () => {
    await mkdir(join(dir.path, 'files'), { recursive: true });
    await writeFile(certFile(), A.cert);
    await writeFile(keyFile(), A.key);
    const sni = join(dir.path, 'sni');
    await mkdir(sni, { recursive: true });
    await writeFile(join(sni, 'mail.example.net.crt'), C.cert);
    await writeFile(join(sni, 'mail.example.net.key'), C.key);
    await writeFile(join(sni, '*.example.org.crt'), W.cert);
    await writeFile(join(sni, '*.example.org.key'), W.key);
    const config = loadConfig({
      TOMLINSON_DATA_DIR: join(dir.path, 'd2'),
      TOMLINSON_TLS_CERT_FILE: certFile(),
      TOMLINSON_TLS_KEY_FILE: keyFile(),
      TOMLINSON_TLS_SNI_DIR: sni,
    });
    provider = await createTlsProvider(config, silentLogger, { debounceMs: 50 });
    server = await serve(provider);
  });
  afterAll(async () => {
    provider?.close();
    await server?.close();
  });

  it('serves the file certificate with TLS 1.2 or 1.3 and an AEAD suite', async () => {
    expect(provider.info().source).toBe('files');
    const r = await handshake(server.port);
    expect(r.fingerprint256).toBe(A.fingerprint256);
    expect(r.protocol).toBe('TLSv1.3');
    const r12 = await handshake(server.port, { maxVersion: 'TLSv1.2' });
    expect(r12.protocol).toBe('TLSv1.2');
    expect(r12.cipher).toMatch(/^ECDHE-RSA-(AES\d+-GCM-SHA\d+|CHACHA20-POLY1305)$/);
  });

  it('refuses TLS 1.1 and CBC or static-RSA suites', async () => {
    const old = await handshake(server.port, { minVersion: 'TLSv1', maxVersion: 'TLSv1.1', ciphers: 'DEFAULT:@SECLEVEL=0' });
    expect(old.error).toBeDefined();
    const cbc = await handshake(server.port, { maxVersion: 'TLSv1.2', ciphers: 'ECDHE-RSA-AES128-SHA:ECDHE-RSA-AES256-SHA384:AES128-SHA:AES128-GCM-SHA256' });
    expect(cbc.error).toBeDefined();
    // the same client with one good suite added succeeds, so the refusals were the server's choice
    const ok = await handshake(server.port, { maxVersion: 'TLSv1.2', ciphers: 'ECDHE-RSA-AES128-SHA:ECDHE-RSA-AES128-GCM-SHA256' });
    expect(ok.cipher).toBe('ECDHE-RSA-AES128-GCM-SHA256');
  });

  it('serves SNI certificates by exact and wildcard name, the default otherwise', async () => {
    expect((await handshake(server.port, { servername: 'MAIL.example.net' })).fingerprint256).toBe(C.fingerprint256);
    expect((await handshake(server.port, { servername: 'smtp.example.org' })).fingerprint256).toBe(W.fingerprint256);
    expect((await handshake(server.port, { servername: 'other.example.com' })).fingerprint256).toBe(A.fingerprint256);
  });

  it('reloads renewed files without a restart, and keeps the old pair when the new one is broken', async () => {
    const reloaded = waitReload(provider);
    // as certbot does: write new files elsewhere, then rename over the old ones
    await writeFile(`${keyFile()}.new`, B.key);
    await writeFile(`${certFile()}.new`, B.cert);
    await rename(`${keyFile()}.new`, keyFile());
    await rename(`${certFile()}.new`, certFile());
    await reloaded;
    expect(provider.info().fingerprint256).toBe(B.fingerprint256);
    expect((await handshake(server.port)).fingerprint256).toBe(B.fingerprint256);
    // a STARTTLS-style upgrade takes secureContext() per connection
    const raw = net.createServer((sock) => {
      const t = new tls.TLSSocket(sock, { isServer: true, secureContext: provider.secureContext() });
      t.on('error', () => undefined);
      t.on('secure', () => t.end());
    });
    raw.listen(0, '127.0.0.1');
    await once(raw, 'listening');
    expect((await handshake((raw.address() as net.AddressInfo).port)).fingerprint256).toBe(B.fingerprint256);
    raw.close();
    // a half-written renewal (cert of C with key of B) is refused; B stays in use
    await writeFile(certFile(), C.cert);
    await new Promise((r) => setTimeout(r, 500));
    expect(provider.info().fingerprint256).toBe(B.fingerprint256);
    expect((await handshake(server.port)).fingerprint256).toBe(B.fingerprint256);
  });

  it('refuses a configuration with a certificate but no key', async () => {
    const config = loadConfig({ TOMLINSON_DATA_DIR: dir.path, TOMLINSON_TLS_CERT_FILE: certFile() });
    await expect(createTlsProvider(config, silentLogger)).rejects.toThrow('must be set together');
  });
});

describe('Secrets Manager', () => {
  let moto: AwsTestBackend;
  let provider: TlsProvider | undefined;

  beforeAll(async () => {
    moto = await startMoto({ say: () => undefined });
  });
  afterAll(async () => {
    provider?.close();
    await moto?.stop();
  });

  it('loads {"cert","key"} from the secret and follows a new version', async () => {
    const sm = new SecretsManagerClient({});
    await sm.send(new CreateSecretCommand({ Name: 'tomlinson/tls', SecretString: JSON.stringify({ cert: A.cert, key: A.key }) }));
    const config = loadConfig({ ...moto.env, TOMLINSON_DATA_DIR: join(dir.path, 'd3'), TOMLINSON_TLS_SECRET_ID: 'tomlinson/tls' });
    provider = await createTlsProvider(config, silentLogger, { secretPollSeconds: 0.2 });
    expect(provider.info()).toMatchObject({ source: 'secret', fingerprint256: A.fingerprint256 });
    const server = await serve(provider);
    expect((await handshake(server.port)).fingerprint256).toBe(A.fingerprint256);
    const reloaded = waitReload(provider);
    await sm.send(new PutSecretValueCommand({ SecretId: 'tomlinson/tls', SecretString: JSON.stringify({ cert: B.cert, key: B.key }) }));
    await reloaded;
    expect((await handshake(server.port)).fingerprint256).toBe(B.fingerprint256);
    await server.close();
    sm.destroy();
  });

  it('refuses a secret that is not {"cert","key"}', async () => {
    const sm = new SecretsManagerClient({});
    await sm.send(new CreateSecretCommand({ Name: 'tomlinson/bad', SecretString: '{"certificate":"x"}' }));
    const config = loadConfig({ ...moto.env, TOMLINSON_DATA_DIR: join(dir.path, 'd4'), TOMLINSON_TLS_SECRET_ID: 'tomlinson/bad' });
    await expect(createTlsProvider(config, silentLogger)).rejects.toThrow('"cert" and "key"');
    sm.destroy();
  });
});
