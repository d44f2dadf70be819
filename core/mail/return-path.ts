/**
 * The Return-Path header field (RFC 5321 §4.4): "When the delivery SMTP server makes the 'final
 * delivery' of a message, it inserts a return-path line at the beginning of the mail data",
 * holding the reverse-path of the MAIL command. The reverse-path is one per message, so the
 * listener writes the line at the top of the stored blob once, for every mailbox that gets it.
 * A message relayed onward must not carry it ("a relay SMTP server MUST NOT inspect or act upon
 * ... Return-path", and an originating system "SHOULD NOT send a message that already contains
 * a Return-path header field"): the outbound path reads the blob through `withoutReturnPath`.
 */
import { Transform, type Readable } from 'node:stream';

/** `Return-Path: <reverse-path>` with its CRLF; `<>` for the null sender. */
export function returnPathLine(reversePath: string): string {
  return `Return-Path: <${reversePath}>\r\n`;
}

/** Longest first line we look at: `Return-Path: <` + a 256-octet path (RFC 5321 §4.5.3.1.3) + `>`. */
const MAX_LINE = 300;

/** The message without a leading Return-Path line (other bytes pass unchanged). */
export function withoutReturnPath(src: Readable): Readable {
  let head: Buffer | undefined = Buffer.alloc(0);
  const out = new Transform({
    transform(chunk: Buffer, _enc, done) {
      if (!head) return done(null, chunk);
      head = Buffer.concat([head, chunk]);
      const nl = head.indexOf('\r\n');
      if (nl < 0 && head.length < MAX_LINE) return done();
      let rest = head;
      if (nl >= 0 && /^return-path:/i.test(head.toString('latin1', 0, Math.min(nl, 12)))) rest = head.subarray(nl + 2);
      head = undefined;
      done(null, rest);
    },
    flush(done) {
      // A message shorter than one line: nothing to strip that is not the whole message.
      if (head?.length) this.push(head);
      done();
    },
  });
  src.on('error', (e) => out.destroy(e));
  out.on('close', () => src.destroy());
  return src.pipe(out);
}
