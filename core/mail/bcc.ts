/**
 * Bcc on the way out (RFC 5322 §3.6.3): a draft keeps its Bcc field, so its sender sees whom it
 * went to and EmailSubmission can take the recipients from it, but the copy that is sent must not
 * show it. `withoutBcc` drops every Bcc field, folded lines included, from the message's own
 * header section and passes every other octet unchanged. It holds at most the header section (a
 * section longer than `maxHeaderBytes` passes as it is: no Bcc of ours is that far down).
 */
import { Transform, type Readable } from 'node:stream';

const END = /\r?\n\r?\n/;

/** The header section's text without its Bcc fields. */
export function dropBccFields(section: string): string {
  const lines = section.split(/(?<=\n)/);
  const out: string[] = [];
  let dropping = false;
  for (const line of lines) {
    const continued = line[0] === ' ' || line[0] === '\t';
    if (!continued) dropping = /^bcc[ \t]*:/i.test(line);
    if (!dropping) out.push(line);
  }
  return out.join('');
}

/** The message without its Bcc header fields. */
export function withoutBcc(src: Readable, maxHeaderBytes = 256 * 1024): Readable {
  let head: Buffer | undefined = Buffer.alloc(0);
  const out = new Transform({
    transform(chunk: Buffer, _enc, done) {
      if (!head) return done(null, chunk);
      head = Buffer.concat([head, chunk]);
      const text = head.toString('latin1');
      const end = END.exec(text);
      if (!end && head.length < maxHeaderBytes) return done();
      const cut = end ? end.index + end[0].length : head.length;
      const rest = head.subarray(cut);
      const section = end ? dropBccFields(text.slice(0, cut)) : text;
      head = undefined;
      done(null, Buffer.concat([Buffer.from(section, 'latin1'), rest]));
    },
    flush(done) {
      if (head?.length) this.push(Buffer.from(dropBccFields(head.toString('latin1')), 'latin1'));
      done();
    },
  });
  src.on('error', (e) => out.destroy(e));
  out.on('close', () => src.destroy());
  return src.pipe(out);
}
