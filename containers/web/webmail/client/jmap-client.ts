/**
 * A small typed JMAP client (RFC 8620 core, the RFC 8621 objects the webmail uses), built on
 * `fetch` alone so that it runs in the browser (the webmail, with the session cookie and its CSRF
 * header) and in Node (the tests, with HTTP Basic). It knows our server only through the session
 * resource: every URL comes from there.
 *
 * Why our own and not jmap-jam (a test dependency): the webmail needs cookie credentials, a CSRF
 * header on every call, result references built by hand and no runtime dependency; the whole
 * client is this file.
 */

export const CORE = 'urn:ietf:params:jmap:core';
export const MAIL = 'urn:ietf:params:jmap:mail';
export const SUBMISSION = 'urn:ietf:params:jmap:submission';
export const VACATION = 'urn:ietf:params:jmap:vacationresponse';
const USING = [CORE, MAIL, SUBMISSION, VACATION];

export type Id = string;
export type Invocation = [name: string, args: Record<string, unknown>, callId: string];

export interface JmapSession {
  username: string;
  apiUrl: string;
  downloadUrl: string;
  uploadUrl: string;
  eventSourceUrl: string;
  state: string;
  accounts: Record<Id, { name: string }>;
  primaryAccounts: Record<string, Id>;
  capabilities: Record<string, Record<string, unknown>>;
}

export interface EmailAddress {
  name: string | null;
  email: string;
}

export interface Mailbox {
  id: Id;
  name: string;
  parentId: Id | null;
  role: string | null;
  sortOrder: number;
  totalEmails: number;
  unreadEmails: number;
  totalThreads: number;
  unreadThreads: number;
  isSubscribed: boolean;
}

export interface BodyPart {
  partId: string | null;
  blobId: Id | null;
  size: number;
  name: string | null;
  type: string;
  charset: string | null;
  disposition: string | null;
  cid: string | null;
}

/** The properties of an Email the list shows. */
export interface EmailSummary {
  id: Id;
  threadId: Id;
  mailboxIds: Record<Id, true>;
  keywords: Record<string, true>;
  from: EmailAddress[] | null;
  to: EmailAddress[] | null;
  subject: string | null;
  receivedAt: string;
  preview: string;
  hasAttachment: boolean;
  size: number;
}

/** An Email as the reader shows it. */
export interface EmailFull extends EmailSummary {
  blobId: Id;
  cc: EmailAddress[] | null;
  bcc: EmailAddress[] | null;
  replyTo: EmailAddress[] | null;
  sentAt: string | null;
  messageId: string[] | null;
  inReplyTo: string[] | null;
  references: string[] | null;
  textBody: BodyPart[];
  htmlBody: BodyPart[];
  attachments: BodyPart[];
  bodyValues: Record<string, { value: string; isTruncated: boolean; isEncodingProblem: boolean }>;
}

export const SUMMARY_PROPERTIES = ['id', 'threadId', 'mailboxIds', 'keywords', 'from', 'to', 'subject', 'receivedAt', 'preview', 'hasAttachment', 'size'];
export const FULL_PROPERTIES = [
  ...SUMMARY_PROPERTIES,
  'blobId',
  'cc',
  'bcc',
  'replyTo',
  'sentAt',
  'messageId',
  'inReplyTo',
  'references',
  'textBody',
  'htmlBody',
  'attachments',
  'bodyValues',
];
export const BODY_PROPERTIES = ['partId', 'blobId', 'size', 'name', 'type', 'charset', 'disposition', 'cid'];

export interface Identity {
  id: Id;
  name: string;
  email: string;
}

export interface VacationResponse {
  id: 'singleton';
  isEnabled: boolean;
  fromDate: string | null;
  toDate: string | null;
  subject: string | null;
  textBody: string | null;
  htmlBody: string | null;
}

/** A request-level problem (RFC 8620 §3.6.1) or an HTTP failure. */
export class JmapRequestError extends Error {
  constructor(
    readonly status: number,
    readonly type: string,
    message: string,
  ) {
    super(message);
  }
}

/** A method-level error (RFC 8620 §3.6.2): the response was `["error", {type, description}]`. */
export class JmapMethodError extends Error {
  constructor(
    readonly type: string,
    readonly description: string | undefined,
    readonly method: string,
  ) {
    super(`${method}: ${type}${description ? ` (${description})` : ''}`);
  }
}

/** A /set call that refused some objects: `notCreated`/`notUpdated`/`notDestroyed`. */
export class JmapSetError extends Error {
  constructor(
    readonly method: string,
    readonly errors: Record<string, { type: string; description?: string }>,
  ) {
    const first = Object.entries(errors)[0];
    super(`${method}: ${first ? `${first[0]}: ${first[1].type}${first[1].description ? ` (${first[1].description})` : ''}` : 'refused'}`);
  }
}

export interface ClientOptions {
  /** Where the server is; '' (the default) is the page's own origin. */
  baseUrl?: string;
  /** Headers every request carries: Authorization in tests, X-CSRF-Token in the browser. */
  headers?: () => Record<string, string>;
  /** 'same-origin' in the browser so the session cookie goes along. */
  credentials?: 'include' | 'omit' | 'same-origin';
  fetch?: typeof fetch;
}

/** A result reference (RFC 8620 §3.7) to an earlier call of the same request. */
export function ref(resultOf: string, name: string, path: string): { resultOf: string; name: string; path: string } {
  return { resultOf, name, path };
}

export class JmapClient {
  private constructor(
    readonly session: JmapSession,
    readonly accountId: Id,
    private readonly options: ClientOptions,
  ) {}

  /** Reads the session resource and returns a client for the user's primary mail account. */
  static async connect(options: ClientOptions = {}): Promise<JmapClient> {
    const doFetch = options.fetch ?? fetch;
    const res = await doFetch(`${options.baseUrl ?? ''}/jmap/session`, {
      headers: { accept: 'application/json', ...options.headers?.() },
      credentials: options.credentials,
    });
    if (!res.ok) throw new JmapRequestError(res.status, 'session', `session resource: HTTP ${res.status}`);
    const session = (await res.json()) as JmapSession;
    const accountId = session.primaryAccounts[MAIL];
    if (!accountId) throw new JmapRequestError(500, 'session', 'the session names no mail account');
    return new JmapClient(session, accountId, options);
  }

  private headers(extra: Record<string, string> = {}): Record<string, string> {
    return { ...this.options.headers?.(), ...extra };
  }

  /** Sends method calls in one request; returns the responses (method errors included). */
  async request(calls: Invocation[], signal?: AbortSignal): Promise<Invocation[]> {
    const doFetch = this.options.fetch ?? fetch;
    const res = await doFetch(this.session.apiUrl, {
      method: 'POST',
      headers: this.headers({ 'content-type': 'application/json', accept: 'application/json' }),
      credentials: this.options.credentials,
      body: JSON.stringify({ using: USING, methodCalls: calls }),
      signal,
    });
    if (!res.ok) {
      let type = 'http';
      let detail = `HTTP ${res.status}`;
      try {
        const p = (await res.json()) as { type?: string; detail?: string; title?: string };
        type = p.type ?? type;
        detail = p.detail ?? p.title ?? detail;
      } catch {
        /* not JSON: keep the status */
      }
      throw new JmapRequestError(res.status, type, detail);
    }
    const body = (await res.json()) as { methodResponses: Invocation[] };
    return body.methodResponses;
  }

  /**
   * Sends calls and returns the response of each call id, throwing the first method error, or
   * the first refusal of a /set call.
   */
  async run(calls: Invocation[], signal?: AbortSignal): Promise<Record<string, Record<string, unknown>>> {
    const responses = await this.request(calls, signal);
    const out: Record<string, Record<string, unknown>> = {};
    for (const [name, args, id] of responses) {
      if (name === 'error') {
        const call = calls.find((c) => c[2] === id);
        throw new JmapMethodError(String(args.type), args.description as string | undefined, call?.[0] ?? id);
      }
      for (const key of ['notCreated', 'notUpdated', 'notDestroyed']) {
        const errors = args[key] as Record<string, { type: string; description?: string }> | null | undefined;
        if (errors && Object.keys(errors).length) throw new JmapSetError(name, errors);
      }
      // A call id can answer twice (an implicit Email/set after EmailSubmission/set); keep the first.
      out[id] ??= args;
    }
    return out;
  }

  /** One method call; its response arguments. */
  async call<T = Record<string, unknown>>(method: string, args: Record<string, unknown>): Promise<T> {
    const r = await this.run([[method, { accountId: this.accountId, ...args }, '0']]);
    return r['0'] as T;
  }

  async mailboxes(): Promise<{ state: string; list: Mailbox[] }> {
    return this.call('Mailbox/get', { ids: null });
  }

  /**
   * A window of a query with the summaries of its Emails, in one request (a result reference
   * from Email/query to Email/get), and the thread sizes when threads are collapsed.
   */
  async queryPage(
    query: { filter?: Record<string, unknown> | null; sort?: { property: string; isAscending: boolean }[]; collapseThreads?: boolean },
    position: number,
    limit: number,
    signal?: AbortSignal,
  ): Promise<{ queryState: string; total: number; position: number; ids: Id[]; emails: EmailSummary[]; threadSizes: Record<Id, number> }> {
    const a = this.accountId;
    const calls: Invocation[] = [
      ['Email/query', { accountId: a, ...query, position, limit, calculateTotal: true }, 'q'],
      ['Email/get', { accountId: a, '#ids': ref('q', 'Email/query', '/ids'), properties: SUMMARY_PROPERTIES }, 'g'],
    ];
    if (query.collapseThreads) calls.push(['Thread/get', { accountId: a, '#ids': ref('g', 'Email/get', '/list/*/threadId') }, 't']);
    const r = await this.run(calls, signal);
    const q = r.q as { queryState: string; total: number; position: number; ids: Id[] };
    const threadSizes: Record<Id, number> = {};
    for (const t of (r.t?.list as { id: Id; emailIds: Id[] }[] | undefined) ?? []) threadSizes[t.id] = t.emailIds.length;
    return { queryState: q.queryState, total: q.total, position: q.position, ids: q.ids, emails: (r.g as { list: EmailSummary[] }).list, threadSizes };
  }

  /** One Email with its body values (text and HTML) for the reader. */
  async email(id: Id, maxBodyValueBytes = 1_000_000): Promise<EmailFull | undefined> {
    const r = await this.call<{ list: EmailFull[] }>('Email/get', {
      ids: [id],
      properties: FULL_PROPERTIES,
      bodyProperties: BODY_PROPERTIES,
      fetchTextBodyValues: true,
      fetchHTMLBodyValues: true,
      maxBodyValueBytes,
    });
    return r.list[0];
  }

  /** Email/set update of several Emails with one patch each. */
  async updateEmails(patches: Record<Id, Record<string, unknown>>): Promise<void> {
    if (Object.keys(patches).length) await this.call('Email/set', { update: patches });
  }

  async destroyEmails(ids: Id[]): Promise<void> {
    if (ids.length) await this.call('Email/set', { destroy: ids });
  }

  /** A blob's download URL (RFC 8620 §6.2), from the session's template. */
  downloadUrl(blobId: Id, name: string, type: string): string {
    return this.session.downloadUrl
      .replace('{accountId}', encodeURIComponent(this.accountId))
      .replace('{blobId}', encodeURIComponent(blobId))
      .replace('{name}', encodeURIComponent(name))
      .replace('{type}', encodeURIComponent(type));
  }

  /** The upload URL of the account (RFC 8620 §6.1). */
  uploadUrl(): string {
    return this.session.uploadUrl.replace('{accountId}', encodeURIComponent(this.accountId));
  }

  /** Uploads bytes with fetch (no progress; the browser's compose uses XMLHttpRequest for that). */
  async upload(body: Uint8Array<ArrayBuffer> | Blob, type: string): Promise<{ blobId: Id; type: string; size: number }> {
    const doFetch = this.options.fetch ?? fetch;
    const res = await doFetch(this.uploadUrl(), {
      method: 'POST',
      headers: this.headers({ 'content-type': type }),
      credentials: this.options.credentials,
      body,
    });
    if (!res.ok) throw new JmapRequestError(res.status, 'upload', `upload: HTTP ${res.status}`);
    return (await res.json()) as { blobId: Id; type: string; size: number };
  }

  /** The push URL (RFC 8620 §7.3) for every type, without closeafter, with a ping. */
  eventSourceUrl(pingSeconds = 60): string {
    return this.session.eventSourceUrl.replace('{types}', '*').replace('{closeafter}', 'no').replace('{ping}', String(pingSeconds));
  }
}

/** "Name <address>" lists as people write them, for the compose fields. */
export function formatAddresses(list: EmailAddress[] | null | undefined): string {
  return (list ?? [])
    .map((a) => (a.name ? `${a.name.includes(',') || a.name.includes('"') ? JSON.stringify(a.name) : a.name} <${a.email}>` : a.email))
    .join(', ');
}

/** Parses what a user typed into To/Cc/Bcc: addresses separated by commas or semicolons. */
export function parseAddresses(text: string): { list: EmailAddress[]; invalid: string[] } {
  const list: EmailAddress[] = [];
  const invalid: string[] = [];
  // Split on separators outside quotes and angle brackets.
  const parts: string[] = [];
  let cur = '';
  let quoted = false;
  let angle = false;
  for (const ch of text) {
    if (ch === '"') quoted = !quoted;
    else if (ch === '<' && !quoted) angle = true;
    else if (ch === '>' && !quoted) angle = false;
    if ((ch === ',' || ch === ';') && !quoted && !angle) {
      parts.push(cur);
      cur = '';
    } else cur += ch;
  }
  parts.push(cur);
  for (const raw of parts) {
    const p = raw.trim();
    if (!p) continue;
    const m = /^(.*)<([^<>\s]+@[^<>\s]+)>$/.exec(p);
    const email = (m ? m[2] : p).trim();
    const name = m ? m[1].trim().replace(/^"(.*)"$/, '$1') || null : null;
    if (/^[^@\s]+@[^@\s]+\.[^@\s]+$|^[^@\s]+@[^@\s.]+$/.test(email)) list.push({ name, email });
    else invalid.push(p);
  }
  return { list, invalid };
}
