/**
 * Table-driven protocol tests over real sockets, grouped by RFC section. Each step sends a line
 * (or raw bytes) and checks the reply code and enhanced code; every reply is also checked against
 * the reply grammar by the harness client.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MailboxStore } from '../../core/mailbox/store.js';
import { blobExists } from '../support/blobs.js';
import { ALICE, BOB, DOMAIN, drainInbound, PASSWORD, startHarness, storedMessage, TestClient, type Harness } from './harness.js';

type Step = [send: string | { raw: string }, code: number, enhanced?: string];
interface Case {
  name: string;
  port?: 'mx' | 'submission' | 'submissions';
  steps: Step[];
  /** Messages expected in the inbound queue after the case. */
  queued?: number;
  /** The server closes the connection after the last step. */
  closes?: boolean;
}

const plain = (user: string, pass: string) => Buffer.from(`\0${user}\0${pass}`).toString('base64');
const EHLO: Step = ['EHLO client.example', 250];
/** A BDAT command with its chunk (RFC 3030 §2: the size counts octets exactly). */
const bdat = (chunk: string, last = false) => ({ raw: `BDAT ${Buffer.byteLength(chunk)}${last ? ' LAST' : ''}\r\n${chunk}` });

const SECTIONS: Record<string, Case[]> = {
  'RFC 5321 §4.1.1 commands': [
    {
      name: 'HELO then a full transaction',
      steps: [
        ['HELO client.example', 250],
        ['MAIL FROM:<a@remote.example>', 250, '2.1.0'],
        [`RCPT TO:<${ALICE}>`, 250, '2.1.5'],
        ['DATA', 354],
        [{ raw: 'Subject: t\r\n\r\nx\r\n.\r\n' }, 250, '2.0.0'],
      ],
      queued: 1,
    },
    { name: 'MAIL before EHLO is a bad sequence', steps: [['MAIL FROM:<a@remote.example>', 503, '5.5.1']] },
    { name: 'RCPT before MAIL', steps: [EHLO, [`RCPT TO:<${ALICE}>`, 503, '5.5.1']] },
    { name: 'DATA before MAIL', steps: [EHLO, ['DATA', 503, '5.5.1']] },
    { name: 'DATA without a valid recipient', steps: [EHLO, ['MAIL FROM:<a@remote.example>', 250], ['DATA', 554, '5.5.1']] },
    { name: 'nested MAIL', steps: [EHLO, ['MAIL FROM:<a@remote.example>', 250], ['MAIL FROM:<b@remote.example>', 503, '5.5.1']] },
    {
      name: 'RSET clears the transaction but keeps EHLO',
      steps: [EHLO, ['MAIL FROM:<a@remote.example>', 250], ['RSET', 250, '2.0.0'], [`RCPT TO:<${ALICE}>`, 503, '5.5.1'], ['MAIL FROM:<a@remote.example>', 250]],
    },
    {
      name: 'NOOP, VRFY (252), HELP (214), EXPN (502)',
      steps: [EHLO, ['NOOP', 250, '2.0.0'], [`VRFY ${ALICE}`, 252, '2.5.0'], ['HELP', 214], ['EXPN staff', 502, '5.5.1']],
    },
    { name: 'unknown command', steps: [EHLO, ['FROB', 500, '5.5.1']] },
    { name: 'EHLO without a name', steps: [['EHLO', 501, '5.5.4']] },
    { name: 'the null reverse-path', steps: [EHLO, ['MAIL FROM:<>', 250], [`RCPT TO:<${ALICE}>`, 250]] },
    { name: 'QUIT', steps: [EHLO, ['QUIT', 221, '2.0.0']] },
    {
      name: 'ESMTP parameters after HELO are refused',
      steps: [
        ['HELO client.example', 250],
        ['MAIL FROM:<a@remote.example> SIZE=10', 555, '5.5.4'],
      ],
    },
    { name: 'unknown MAIL parameter', steps: [EHLO, ['MAIL FROM:<a@remote.example> FOO=BAR', 555, '5.5.4']] },
  ],
  'RFC 5321 §3.6 relaying, §3.3 recipients': [
    { name: 'unknown local user: 550 5.1.1', steps: [EHLO, ['MAIL FROM:<a@remote.example>', 250], [`RCPT TO:<nobody@${DOMAIN}>`, 550, '5.1.1']] },
    {
      name: 'remote recipient without AUTH: 550 5.7.1',
      steps: [EHLO, ['MAIL FROM:<a@remote.example>', 250], ['RCPT TO:<someone@elsewhere.example>', 550, '5.7.1']],
    },
    {
      name: 'alias and postmaster are accepted',
      steps: [
        EHLO,
        ['MAIL FROM:<a@remote.example>', 250],
        [`RCPT TO:<postmaster@${DOMAIN}>`, 250],
        [`RCPT TO:<sales@${DOMAIN}>`, 250],
        [`RCPT TO:<${BOB.toUpperCase()}>`, 250],
      ],
    },
  ],
  'RFC 1870 SIZE': [
    { name: 'declared size over the limit: 552 5.3.4', steps: [EHLO, ['MAIL FROM:<a@remote.example> SIZE=999999999', 552, '5.3.4']] },
    { name: 'bad SIZE value', steps: [EHLO, ['MAIL FROM:<a@remote.example> SIZE=abc', 501, '5.5.4']] },
    {
      name: 'content over the limit: 552 5.3.4 at end of data',
      steps: [
        EHLO,
        ['MAIL FROM:<a@remote.example>', 250],
        [`RCPT TO:<${ALICE}>`, 250],
        ['DATA', 354],
        [{ raw: ('x'.repeat(998) + '\r\n').repeat(70) + '.\r\n' }, 552, '5.3.4'],
      ],
      queued: 0,
    },
  ],
  'RFC 5321 §4.5.3.1 limits': [
    {
      name: 'too many recipients: 452 4.5.3',
      steps: [
        EHLO,
        ['MAIL FROM:<a@remote.example>', 250],
        [`RCPT TO:<${ALICE}>`, 250],
        [`RCPT TO:<${BOB}>`, 250],
        [`RCPT TO:<postmaster@${DOMAIN}>`, 250],
        [`RCPT TO:<sales@${DOMAIN}>`, 452, '4.5.3'],
      ],
    },
    { name: 'command line over 512 octets: 500 5.5.2', steps: [EHLO, [`NOOP ${'x'.repeat(600)}`, 500, '5.5.2'], ['NOOP', 250]] },
    {
      name: 'text line over 1000 octets: refused',
      steps: [EHLO, ['MAIL FROM:<a@remote.example>', 250], [`RCPT TO:<${ALICE}>`, 250], ['DATA', 354], [{ raw: 'x'.repeat(1200) + '\r\n.\r\n' }, 550, '5.5.2']],
      queued: 0,
    },
  ],
  'RFC 5321 §2.3.8 smuggling': [
    {
      name: 'bare LF dot line does not end DATA; the message is refused and nothing is smuggled',
      steps: [
        EHLO,
        ['MAIL FROM:<a@remote.example>', 250],
        [`RCPT TO:<${ALICE}>`, 250],
        ['DATA', 354],
        [{ raw: `Subject: a\r\n\r\nx\n.\nMAIL FROM:<evil@remote.example>\r\nRCPT TO:<${BOB}>\r\nDATA\r\nSubject: smuggled\r\n\r\ny\r\n.\r\n` }, 550, '5.6.11'],
        ['NOOP', 250],
      ],
      queued: 0,
    },
    {
      name: 'bare CR dot does not end DATA',
      steps: [
        EHLO,
        ['MAIL FROM:<a@remote.example>', 250],
        [`RCPT TO:<${ALICE}>`, 250],
        ['DATA', 354],
        [{ raw: `Subject: a\r\n\r\nx\r.\rMAIL FROM:<evil@remote.example>\r\n.\r\n` }, 550, '5.6.11'],
      ],
      queued: 0,
    },
    {
      name: 'a command line ending in a bare LF: 500 5.5.2, the session goes on',
      steps: [
        EHLO,
        [{ raw: 'NOOP\n' }, 500, '5.5.2'],
        [{ raw: `MAIL FROM:<a@remote.example>\n` }, 500, '5.5.2'],
        ['NOOP', 250],
        ['MAIL FROM:<a@remote.example>', 250],
      ],
    },
    {
      name: 'CRLF dot LF does not end DATA',
      steps: [
        EHLO,
        ['MAIL FROM:<a@remote.example>', 250],
        [`RCPT TO:<${ALICE}>`, 250],
        ['DATA', 354],
        [{ raw: `Subject: a\r\n\r\nx\r\n.\nRSET\r\n.\r\n` }, 550, '5.6.11'],
      ],
      queued: 0,
    },
  ],
  'RFC 2920 PIPELINING': [
    {
      name: 'a whole transaction in one write gets every reply in order',
      steps: [
        EHLO,
        [{ raw: `MAIL FROM:<a@remote.example>\r\nRCPT TO:<${ALICE}>\r\nRCPT TO:<nobody@${DOMAIN}>\r\nRCPT TO:<${BOB}>\r\nDATA\r\n` }, 250],
        [{ raw: '' }, 250],
        [{ raw: '' }, 550, '5.1.1'],
        [{ raw: '' }, 250],
        [{ raw: '' }, 354],
        [{ raw: 'Subject: p\r\n\r\nhi\r\n.\r\nNOOP\r\n' }, 250, '2.0.0'],
        [{ raw: '' }, 250],
      ],
      queued: 1,
    },
  ],
  'RFC 2920 §3.1 improper pipelining': [
    {
      name: 'message text sent with DATA, before 354: 554 5.5.0 and the connection is closed, nothing queued',
      steps: [EHLO, ['MAIL FROM:<a@remote.example>', 250], [`RCPT TO:<${ALICE}>`, 250], [{ raw: 'DATA\r\nSubject: early\r\n\r\nx\r\n.\r\n' }, 554, '5.5.0']],
      queued: 0,
      closes: true,
    },
  ],
  'RFC 3030 CHUNKING': [
    {
      name: 'BDAT in two chunks',
      steps: [
        EHLO,
        ['MAIL FROM:<a@remote.example>', 250],
        [`RCPT TO:<${ALICE}>`, 250],
        [bdat('Subject: b\r\n\r\n'), 250, '2.0.0'],
        [bdat('hi\r\n', true), 250, '2.0.0'],
      ],
      queued: 1,
    },
    {
      name: 'BDAT 0 LAST ends an empty last chunk',
      steps: [EHLO, ['MAIL FROM:<a@remote.example>', 250], [`RCPT TO:<${ALICE}>`, 250], [bdat('Subject: c\r\n\r\nx\r\n'), 250], ['BDAT 0 LAST', 250, '2.0.0']],
      queued: 1,
    },
    { name: 'BDAT without MAIL: its octets are read, then 503', steps: [EHLO, [{ raw: 'BDAT 5\r\nNOOP\n' }, 503, '5.5.1'], ['NOOP', 250]] },
    {
      name: 'DATA after BDAT is refused',
      steps: [EHLO, ['MAIL FROM:<a@remote.example>', 250], [`RCPT TO:<${ALICE}>`, 250], [{ raw: 'BDAT 3\r\nabc' }, 250], ['DATA', 503, '5.5.1']],
    },
    { name: 'BDAT with a bad size closes the connection', steps: [EHLO, ['BDAT x', 501, '5.5.4']] },
  ],
  'RFC 3461 DSN': [
    {
      name: 'RET, ENVID, NOTIFY and ORCPT are accepted and kept',
      steps: [
        EHLO,
        ['MAIL FROM:<a@remote.example> RET=HDRS ENVID=QQ+2B1', 250],
        [`RCPT TO:<${ALICE}> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;${ALICE}`, 250],
        ['DATA', 354],
        [{ raw: 'Subject: d\r\n\r\nx\r\n.\r\n' }, 250],
      ],
      queued: 1,
    },
    {
      name: 'NOTIFY=NEVER with others is refused',
      steps: [EHLO, ['MAIL FROM:<a@remote.example>', 250], [`RCPT TO:<${ALICE}> NOTIFY=NEVER,SUCCESS`, 501, '5.5.4']],
    },
    { name: 'bad RET', steps: [EHLO, ['MAIL FROM:<a@remote.example> RET=ALL', 501, '5.5.4']] },
  ],
  'RFC 6531 SMTPUTF8': [
    { name: 'UTF-8 address with SMTPUTF8', steps: [EHLO, ['MAIL FROM:<j\u00fcrgen@b\u00fccher.example> SMTPUTF8', 250], [`RCPT TO:<${ALICE}>`, 250]] },
    { name: 'UTF-8 address without SMTPUTF8: 553 5.6.7', steps: [EHLO, ['MAIL FROM:<j\u00fcrgen@b\u00fccher.example>', 553, '5.6.7']] },
  ],
  'RFC 4954 AUTH and RFC 6409 submission': [
    { name: 'AUTH before TLS is refused with 538', port: 'submission', steps: [EHLO, [`AUTH PLAIN ${plain(ALICE, PASSWORD)}`, 538, '5.7.11']] },
    { name: 'submission needs AUTH before MAIL', port: 'submission', steps: [EHLO, [`MAIL FROM:<${ALICE}>`, 530, '5.7.0']] },
    {
      name: 'implicit TLS: AUTH PLAIN, relay, own address',
      port: 'submissions',
      steps: [
        EHLO,
        [`AUTH PLAIN ${plain(ALICE, PASSWORD)}`, 235, '2.7.0'],
        [`MAIL FROM:<${ALICE}>`, 250],
        ['RCPT TO:<friend@elsewhere.example>', 250],
        ['DATA', 354],
        [{ raw: 'Subject: s\r\n\r\nx\r\n.\r\n' }, 250],
      ],
      queued: 1,
    },
    {
      name: 'implicit TLS: MAIL FROM an address the user does not own: 553 5.7.1',
      port: 'submissions',
      steps: [EHLO, [`AUTH PLAIN ${plain(ALICE, PASSWORD)}`, 235], [`MAIL FROM:<${BOB}>`, 553, '5.7.1'], [`MAIL FROM:<postmaster@${DOMAIN}>`, 250]],
    },
    { name: 'implicit TLS: wrong password: 535 5.7.8', port: 'submissions', steps: [EHLO, [`AUTH PLAIN ${plain(ALICE, 'wrong')}`, 535, '5.7.8']] },
    {
      name: 'AUTH LOGIN in steps, and * cancels',
      port: 'submissions',
      steps: [
        EHLO,
        ['AUTH LOGIN', 334],
        ['*', 501, '5.7.0'],
        ['AUTH LOGIN', 334],
        [Buffer.from(ALICE).toString('base64'), 334],
        [Buffer.from(PASSWORD).toString('base64'), 235, '2.7.0'],
        ['AUTH LOGIN', 503, '5.5.1'],
      ],
    },
    { name: 'unknown mechanism', port: 'submissions', steps: [EHLO, ['AUTH CRAM-MD5', 504, '5.5.4']] },
  ],
};

describe('SMTP protocol over real sockets', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness({ TOMLINSON_SMTP_MAX_MESSAGE_BYTES: '65536', TOMLINSON_SMTP_MAX_RECIPIENTS: '3' });
  });
  afterAll(async () => h?.close());

  for (const [section, cases] of Object.entries(SECTIONS)) {
    describe(section, () => {
      for (const c of cases) {
        it(c.name, async () => {
          await drainInbound(h.storage);
          const port = h.server.ports[c.port ?? 'mx']!;
          const client = await TestClient.connect(port, { tls: c.port === 'submissions' });
          try {
            expect((await client.reply()).code).toBe(220);
            for (const [send, code, enhanced] of c.steps) {
              if (typeof send === 'string') client.send(send + '\r\n');
              else if (send.raw) client.send(send.raw);
              const r = await client.reply();
              expect(r.code, `reply to ${JSON.stringify(send).slice(0, 80)}: ${r.raw}`).toBe(code);
              if (enhanced) expect(r.enhanced, r.raw).toBe(enhanced);
              else if (code !== 220 && code !== 354 && code !== 334 && r.lines.length === 1 && code !== 250) expect(r.enhanced).toBeDefined();
            }
            if (c.closes) await client.waitClosed();
          } finally {
            client.close();
          }
          if (c.queued !== undefined) expect((await drainInbound(h.storage)).length).toBe(c.queued);
        });
      }
    });
  }

  it('RFC 2920: a client that pipelines a whole session and half-closes still gets every reply', async () => {
    await drainInbound(h.storage);
    const c = await TestClient.connect(h.server.ports.mx!);
    try {
      await c.reply();
      c.socket.end(`EHLO client.example\r\nMAIL FROM:<a@remote.example>\r\nRCPT TO:<${ALICE}>\r\nDATA\r\n`);
      const codes: number[] = [];
      for (let i = 0; i < 4; i++) codes.push((await c.reply()).code);
      expect(codes).toEqual([250, 250, 250, 354]);
      await c.waitClosed();
    } finally {
      c.close();
    }
    // The client ended before sending the content: nothing is queued.
    expect(await drainInbound(h.storage)).toHaveLength(0);
  });

  it('RFC 2920 §3.1: a whole session pipelined through the message text is refused at DATA (554 5.5.0) and closed', async () => {
    await drainInbound(h.storage);
    const c = await TestClient.connect(h.server.ports.mx!);
    try {
      await c.reply();
      c.send(`EHLO client.example\r\nMAIL FROM:<a@remote.example>\r\nRCPT TO:<${ALICE}>\r\nDATA\r\nSubject: hc\r\n\r\nx\r\n.\r\nQUIT\r\n`);
      const replies: string[] = [];
      for (let i = 0; i < 4; i++) {
        const r = await c.reply();
        replies.push(`${r.code} ${r.enhanced ?? ''}`.trim());
      }
      expect(replies).toEqual(['250', '250 2.1.0', '250 2.1.5', '554 5.5.0']);
      await c.waitClosed();
    } finally {
      c.close();
    }
    expect(await drainInbound(h.storage)).toHaveLength(0);
  });

  it('RFC 5321 §4.5.1 and §4.1.2: <Postmaster> without a domain, postmaster@ a domain without an alias, and a quoted local part reach their mailboxes', async () => {
    await drainInbound(h.storage);
    if (!(await h.accounts.getDomain('other.test'))) await h.accounts.addDomain('other.test');
    const c = await TestClient.connect(h.server.ports.mx!);
    try {
      await c.reply();
      await c.cmd('EHLO client.example');
      expect((await c.cmd('MAIL FROM:<a@remote.example>')).code).toBe(250);
      expect((await c.cmd('RCPT TO:<Postmaster>')).code).toBe(250);
      expect((await c.cmd('RCPT TO:<POSTMASTER@other.test>')).code).toBe(250);
      expect((await c.cmd(`RCPT TO:<"bob"@${DOMAIN}>`)).code).toBe(250);
      // A quoted local part that is not a dot-string names no mailbox here.
      expect((await c.cmd(`RCPT TO:<"bob smith"@${DOMAIN}>`)).code).toBe(550);
      expect((await c.cmd('DATA')).code).toBe(354);
      expect((await c.cmd('Subject: pm\r\n\r\nhello postmaster\r\n.')).code).toBe(250);
    } finally {
      c.close();
    }
    const jobs = await drainInbound(h.storage);
    expect(jobs).toHaveLength(1);
    // The two postmaster forms are one recipient (the alias to alice); bob by his plain address.
    expect(jobs[0].rcpts.map((r) => r.address)).toEqual([`postmaster@${DOMAIN}`, BOB]);
  });

  it('RFC 3463 X.2.2: a full mailbox is refused at RCPT with 452 4.2.2, others still accepted', async () => {
    const carol = `carol@${DOMAIN}`;
    await h.accounts.addUser(carol, PASSWORD, { quotaBytes: 1000 });
    const store = new MailboxStore(h.storage.tables, h.storage.mail);
    const blob = await h.storage.mail.put('in/quota-test.eml', 'x'.repeat(1000)); // exactly the quota
    await store.deliver(carol, { jobId: 'quota-fill', blobKey: blob.key, size: blob.size, receivedAt: new Date().toISOString(), summary: {} });
    const c = await TestClient.connect(h.server.ports.mx!);
    try {
      await c.reply();
      await c.cmd('EHLO client.example');
      expect((await c.cmd('MAIL FROM:<a@remote.example>')).code).toBe(250);
      const r = await c.cmd(`RCPT TO:<${carol}>`);
      expect([r.code, r.enhanced]).toEqual([452, '4.2.2']);
      expect((await c.cmd(`RCPT TO:<${ALICE}>`)).code).toBe(250);
    } finally {
      c.close();
    }
  });

  it('RFC 3463 X.2.2: a message that fits none of its full-quota mailboxes gets 452 4.2.2 at the end of DATA, not 250 and a wait', async () => {
    await drainInbound(h.storage);
    const dave = `dave@${DOMAIN}`;
    await h.accounts.addUser(dave, PASSWORD, { quotaBytes: 2000 });
    const store = new MailboxStore(h.storage.tables, h.storage.mail);
    const blob = await h.storage.mail.put('in/quota-dave.eml', 'x'.repeat(1500)); // 500 bytes of room left
    await store.deliver(dave, { jobId: 'quota-dave', blobKey: blob.key, size: blob.size, receivedAt: new Date().toISOString(), summary: {} });
    const c = await TestClient.connect(h.server.ports.mx!);
    try {
      await c.reply();
      await c.cmd('EHLO client.example');
      // No SIZE declared: the RCPT cannot know, the end of data can.
      expect((await c.cmd('MAIL FROM:<a@remote.example>')).code).toBe(250);
      expect((await c.cmd(`RCPT TO:<${dave}>`)).code).toBe(250);
      expect((await c.cmd('DATA')).code).toBe(354);
      const big = await c.cmd(`Subject: big\r\n\r\n${('y'.repeat(78) + '\r\n').repeat(10)}.`);
      expect([big.code, big.enhanced]).toEqual([452, '4.2.2']);
      // A message that fits is accepted.
      expect((await c.cmd('MAIL FROM:<a@remote.example>')).code).toBe(250);
      expect((await c.cmd(`RCPT TO:<${dave}>`)).code).toBe(250);
      expect((await c.cmd('DATA')).code).toBe(354);
      expect((await c.cmd('Subject: small\r\n\r\nhi\r\n.')).code).toBe(250);
    } finally {
      c.close();
    }
    expect(await drainInbound(h.storage)).toHaveLength(1);
  });

  it('RFC 1869 EHLO lists the extensions; STARTTLS and AUTH per state (RFC 3207, RFC 4954 §4)', async () => {
    const client = await TestClient.connect(h.server.ports.submission!);
    try {
      await client.reply();
      const before = await client.cmd('EHLO client.example');
      const ext = before.lines.slice(1);
      expect(ext).toEqual(expect.arrayContaining(['SIZE 65536', 'PIPELINING', '8BITMIME', 'SMTPUTF8', 'ENHANCEDSTATUSCODES', 'CHUNKING', 'DSN', 'STARTTLS']));
      expect(ext.some((l) => l.startsWith('AUTH'))).toBe(false);
      // Anything pipelined behind STARTTLS must be dropped (RFC 3207 §4.2).
      client.send('STARTTLS\r\nNOOP\r\n');
      const r = await client.reply();
      expect(r.code).toBe(220);
      await client.startTls();
      const after = await client.cmd('EHLO client.example');
      expect(after.lines).toContain('AUTH PLAIN LOGIN');
      expect(after.lines).not.toContain('STARTTLS');
      expect((await client.cmd(`AUTH PLAIN ${plain(BOB, PASSWORD)}`)).code).toBe(235);
      expect((await client.cmd(`MAIL FROM:<${BOB}>`)).code).toBe(250);
      expect((await client.cmd('STARTTLS')).code).toBe(503);
    } finally {
      client.close();
    }
  });

  it('RFC 5321 §3.6.2: an authenticated session on the MX port may relay; without AUTH it may not', async () => {
    const c = await TestClient.connect(h.server.ports.mx!);
    try {
      await c.reply();
      await c.cmd('EHLO client.example');
      expect((await c.cmd('STARTTLS')).code).toBe(220);
      await c.startTls();
      await c.cmd('EHLO client.example');
      expect((await c.cmd('MAIL FROM:<a@remote.example>')).code).toBe(250);
      expect((await c.cmd('RCPT TO:<x@elsewhere.example>')).code).toBe(550);
      expect((await c.cmd('RSET')).code).toBe(250);
      expect((await c.cmd(`AUTH PLAIN ${plain(ALICE, PASSWORD)}`)).code).toBe(235);
      expect((await c.cmd('MAIL FROM:<a@remote.example>')).code).toBe(553); // not alice's address
      expect((await c.cmd(`MAIL FROM:<${ALICE}>`)).code).toBe(250);
      expect((await c.cmd('RCPT TO:<x@elsewhere.example>')).code).toBe(250);
    } finally {
      c.close();
    }
  });

  it('the queued job keeps the DSN parameters, client, TLS and auth facts', async () => {
    await drainInbound(h.storage);
    const client = await TestClient.connect(h.server.ports.submissions!, { tls: true });
    try {
      await client.reply();
      await client.cmd('EHLO client.example');
      expect((await client.cmd(`AUTH PLAIN ${plain(ALICE, PASSWORD)}`)).code).toBe(235);
      expect((await client.cmd(`MAIL FROM:<${ALICE}> RET=FULL ENVID=abc+2Bdef`)).code).toBe(250);
      expect((await client.cmd('RCPT TO:<x@elsewhere.example> NOTIFY=FAILURE,DELAY ORCPT=rfc822;x+2By@elsewhere.example')).code).toBe(250);
      expect((await client.cmd('DATA')).code).toBe(354);
      const done = await client.cmd('Subject: j\r\n\r\nx\r\n.');
      expect(done.code).toBe(250);
      const [job] = await drainInbound(h.storage);
      expect(done.lines[0]).toBe(`2.0.0 ${job.id}`);
      expect(job).toMatchObject({
        v: 1,
        from: ALICE,
        dsn: { ret: 'FULL', envid: 'abc+def' },
        rcpts: [{ address: 'x@elsewhere.example', notify: ['FAILURE', 'DELAY'], orcpt: 'rfc822;x+y@elsewhere.example' }],
        listener: 'submission',
        client: { address: '127.0.0.1', helo: 'client.example', authUser: ALICE },
      });
      expect(job.client.tls).toMatch(/^TLSv1\.[23]$/);
      // A small message travels inside its job (no blob yet), so the worker need not read it back.
      expect(job.raw).toBeDefined();
      expect(job.summary).toBeUndefined();
      expect(await blobExists(h.storage.mail, job.blobKey)).toBe(false);
      const text = (await storedMessage(h.storage, job)).toString();
      expect(Buffer.byteLength(text)).toBe(job.size);
      expect(text).toMatch(
        /^Return-Path: <alice@example\.test>\r\nReceived: from client\.example \(\[127\.0\.0\.1\]\)\r\n\tby mx\.tomlinson\.test \(Tomlinson\) with ESMTPSA id /,
      );
      expect(text).toContain(`(authenticated sender: ${ALICE})`);
      expect(text).toMatch(/\(version=TLSv1\.[23] cipher=/);
      expect(text.endsWith('Subject: j\r\n\r\nx\r\n')).toBe(true);
    } finally {
      client.close();
    }
  });
});

describe('SMTP session limits', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness({
      TOMLINSON_SMTP_MAX_BAD_COMMANDS: '3',
      TOMLINSON_SMTP_MAX_CONNECTIONS_PER_CLIENT: '2',
      TOMLINSON_SMTP_TRUSTED_NETWORKS: '192.0.2.0/24',
      TOMLINSON_SMTP_IDLE_TIMEOUT: '1',
    });
  });
  afterAll(async () => h?.close());

  it('too many bad commands: 421 4.7.0 and disconnect', async () => {
    const c = await TestClient.connect(h.server.ports.mx!);
    await c.reply();
    expect((await c.cmd('FOO')).code).toBe(500);
    expect((await c.cmd('BAR')).code).toBe(500);
    expect((await c.cmd('BAZ')).code).toBe(500);
    const r = await c.reply();
    expect(r.code).toBe(421);
    expect(r.enhanced).toBe('4.7.0');
    await c.waitClosed();
  });

  it('connections per client address: the third gets 421', async () => {
    await new Promise((r) => setTimeout(r, 200)); // let the previous test's connection close
    const a = await TestClient.connect(h.server.ports.mx!);
    const b = await TestClient.connect(h.server.ports.mx!);
    expect((await a.reply()).code).toBe(220);
    expect((await b.reply()).code).toBe(220);
    const c = await TestClient.connect(h.server.ports.mx!);
    const r = await c.reply();
    expect(r.code).toBe(421);
    await c.waitClosed();
    a.close();
    b.close();
    await new Promise((r) => setTimeout(r, 100));
    const d = await TestClient.connect(h.server.ports.mx!);
    expect((await d.reply()).code).toBe(220);
    d.close();
  });

  it('a client that stalls in the middle of DATA times out and nothing is stored', async () => {
    await drainInbound(h.storage);
    const c = await TestClient.connect(h.server.ports.mx!);
    await c.reply();
    await c.cmd('EHLO client.example');
    await c.cmd('MAIL FROM:<a@remote.example>');
    await c.cmd(`RCPT TO:<${ALICE}>`);
    expect((await c.cmd('DATA')).code).toBe(354);
    c.send('Subject: half\r\n\r\nhalf a mess');
    const r = await c.reply(5000);
    expect(r.code).toBe(421);
    await c.waitClosed();
    expect(await drainInbound(h.storage)).toHaveLength(0);
    expect((await h.storage.mail.list('in/')).items).toEqual([]);
  });

  it('an idle client gets 421 4.4.2 after the timeout (RFC 5321 §4.5.3.2)', async () => {
    const c = await TestClient.connect(h.server.ports.mx!);
    await c.reply();
    const started = Date.now();
    const r = await c.reply(5000);
    expect(r.code).toBe(421);
    expect(r.enhanced).toBe('4.4.2');
    expect(Date.now() - started).toBeGreaterThanOrEqual(900);
    await c.waitClosed();
  });
});

describe('graceful close', () => {
  it('idle sessions get 421 at once; a transaction in flight may finish; new connections are refused', async () => {
    const h = await startHarness();
    try {
      const idle = await TestClient.connect(h.server.ports.mx!);
      await idle.reply();
      await idle.cmd('EHLO client.example');
      const busy = await TestClient.connect(h.server.ports.mx!);
      await busy.reply();
      await busy.cmd('EHLO client.example');
      await busy.cmd('MAIL FROM:<a@remote.example>');
      await busy.cmd(`RCPT TO:<${ALICE}>`);
      expect((await busy.cmd('DATA')).code).toBe(354);
      busy.send('Subject: in flight\r\n\r\n');
      const closing = h.server.close(5000);
      const r = await idle.reply();
      expect([r.code, r.enhanced]).toEqual([421, '4.4.2']);
      busy.send('done\r\n.\r\n');
      expect((await busy.reply()).code).toBe(250);
      await closing;
      await busy.waitClosed();
      expect(h.server.healthy()).toBe(false);
      await expect(TestClient.connect(h.server.ports.mx!)).rejects.toThrow();
      expect(await drainInbound(h.storage)).toHaveLength(1);
    } finally {
      await h.close();
    }
  });
});
