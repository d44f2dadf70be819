import { describe, expect, it } from 'vitest';
import { buildReceived, rfc5322Date, withProtocol } from '../../core/mail/received.js';

describe('Received header (RFC 5321 §4.4)', () => {
  const base = {
    helo: 'client.example',
    clientAddress: '192.0.2.7',
    hostname: 'mx.example.test',
    esmtp: true,
    id: 'abc123',
    rcpts: ['a@example.test'],
    date: new Date('2026-11-26T07:15:07Z'),
  };

  it('names client, server, protocol, id, recipient and date', () => {
    expect(buildReceived(base)).toBe(
      'Received: from client.example ([192.0.2.7])\r\n\tby mx.example.test (Tomlinson) with ESMTP id abc123\r\n\tfor <a@example.test>; Thu, 26 Nov 2026 07:15:07 +0000\r\n',
    );
  });

  it('records TLS version and cipher and the authenticated user', () => {
    const h = buildReceived({ ...base, tls: { version: 'TLSv1.3', cipher: 'TLS_AES_256_GCM_SHA384' }, authUser: 'alice@example.test' });
    expect(h).toContain('with ESMTPSA id abc123\r\n\t(version=TLSv1.3 cipher=TLS_AES_256_GCM_SHA384)\r\n\t(authenticated sender: alice@example.test)\r\n');
  });

  it('never names several recipients (Bcc stays private) and writes IPv6 literals', () => {
    const h = buildReceived({ ...base, clientAddress: '2001:db8::1', rcpts: ['a@x.test', 'b@x.test'] });
    expect(h).toContain('([IPv6:2001:db8::1])');
    expect(h).not.toContain('for <');
  });

  it('keeps a hostile HELO from breaking the header', () => {
    const h = buildReceived({ ...base, helo: 'evil\r\nX-Injected: yes (x)' });
    expect(h.split('\r\n').filter((l) => l.startsWith('X-Injected'))).toEqual([]);
    expect(h).toContain('from evil??X-Injected: yes ?x? (');
  });

  it('uses the RFC 3848 / RFC 6531 protocol names', () => {
    expect(withProtocol({ esmtp: false })).toBe('SMTP');
    expect(withProtocol({ esmtp: true })).toBe('ESMTP');
    expect(withProtocol({ esmtp: true, tls: { version: 'TLSv1.2', cipher: 'x' } })).toBe('ESMTPS');
    expect(withProtocol({ esmtp: true, authUser: 'u' })).toBe('ESMTPA');
    expect(withProtocol({ esmtp: true, smtputf8: true, tls: { version: 'TLSv1.3', cipher: 'x' }, authUser: 'u' })).toBe('UTF8SMTPSA');
  });

  it('formats RFC 5322 dates in UTC', () => {
    expect(rfc5322Date(new Date('2026-01-05T03:04:05Z'))).toBe('Mon, 5 Jan 2026 03:04:05 +0000');
  });
});
