/**
 * Self-signed certificates for test servers that speak TLS (an https origin behind the proxy):
 * made with `selfsigned`, as core/tls.ts makes the product's fallback certificate. A test trusts
 * one by passing its `cert` as a CA to the client under test; nothing disables verification.
 */
import { generate } from 'selfsigned';

/** A certificate and its private key, PEM. */
export interface TestCertificate {
  cert: string;
  key: string;
}

const made = new Map<string, Promise<TestCertificate>>();

/**
 * A self-signed server certificate whose subjectAltName lists `names` (IP addresses as iPAddress
 * entries, the rest as dNSName), made once per process for each list.
 */
export function testCertificate(names: readonly string[] = ['localhost', '127.0.0.1']): Promise<TestCertificate> {
  const key = names.join(',');
  let p = made.get(key);
  if (!p) {
    p = generate([{ name: 'commonName', value: names[0] }], {
      // RSA, as core/tls.ts: selfsigned's EC path fails under vitest's module loading.
      keyType: 'rsa',
      keySize: 2048,
      algorithm: 'sha256',
      notAfterDate: new Date(Date.now() + 7 * 86400_000),
      extensions: [
        { name: 'basicConstraints', cA: false },
        { name: 'keyUsage', digitalSignature: true, keyEncipherment: true },
        { name: 'extKeyUsage', serverAuth: true },
        { name: 'subjectAltName', altNames: names.map((n) => (/^[\d.]+$|:/.test(n) ? { type: 7 as const, ip: n } : { type: 2 as const, value: n })) },
      ],
    }).then((r) => ({ cert: r.cert, key: r.private }));
    made.set(key, p);
  }
  return p;
}
