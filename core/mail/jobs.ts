/**
 * The bodies of the messages on the `inbound` and `outbound` queues (JSON, versioned). The SMTP
 * listener writes InboundJob after the raw message is durable in the mail blobs, or with a small
 * raw message inside it (`raw`), which the inbound worker then stores under `blobKey` before
 * anything refers to it; the inbound worker writes OutboundJob for remote recipients. Both
 * workers must be idempotent on `id`.
 */

/** DSN parameters of one recipient (RFC 3461 §4.1, §4.2). */
export interface DsnRecipient {
  /** The envelope recipient as given in RCPT TO (mailbox, no angle brackets). */
  address: string;
  /** NOTIFY=NEVER | SUCCESS,FAILURE,DELAY; absent means the default (FAILURE, and maybe DELAY). */
  notify?: ('NEVER' | 'SUCCESS' | 'FAILURE' | 'DELAY')[];
  /** ORCPT, as `addr-type;xtext-decoded-address`, e.g. `rfc822;bob@example.com`. */
  orcpt?: string;
}

/** Envelope-level DSN parameters (RFC 3461 §4.3, §4.4). */
export interface DsnEnvelope {
  ret?: 'FULL' | 'HDRS';
  envid?: string;
}

/** One accepted message, as the SMTP listener hands it to the inbound worker. */
export interface InboundJob {
  v: 1;
  /** The queue id given in `250 2.0.0 <id>`; stable across redeliveries. */
  id: string;
  /** Key of the raw message (with our Received header) in the mail blobs. */
  blobKey: string;
  /** The raw message itself (base64), when it is small enough to travel in the job; the blob
   * `blobKey` then does not exist until the inbound worker writes it. */
  raw?: string;
  size: number;
  sha256?: string;
  /** Envelope sender; '' for the null sender `<>`. */
  from: string;
  rcpts: DsnRecipient[];
  dsn?: DsnEnvelope;
  receivedAt: string;
  client: { address: string; helo: string; tls?: string; authUser?: string };
  /** Which listener accepted it. */
  listener: 'mx' | 'submission';
  smtputf8?: boolean;
  body8bit?: boolean;
  /** The spam scan's outcome on the MX listener (core/mail/spam.ts): the inbound worker files an
   * `add header` / `rewrite subject` verdict into the recipient's Junk folder. Absent: not scanned. */
  spam?: import('./spam.js').SpamResult;
  /** The message's `summarizeMessage` result when the listener made it (small messages, read
   * whole in memory anyway); the worker then need not read the blob again. */
  summary?: Record<string, import('../storage/ports.js').AttrValue>;
}

/** Remote recipients of one message, for the outbound worker. */
export interface OutboundJob {
  v: 1;
  /** Same as the InboundJob id: one outbound message per accepted message. */
  id: string;
  blobKey: string;
  size: number;
  from: string;
  rcpts: DsnRecipient[];
  dsn?: DsnEnvelope;
  receivedAt: string;
  authUser?: string;
  smtputf8?: boolean;
  body8bit?: boolean;
  /** Earliest time to work the job again (ISO); for waits longer than a queue delay allows. */
  notBefore?: string;
}
