/**
 * The contract between the JMAP request engine (RFC 8620: the API endpoint, result references,
 * errors, limits, blobs, push) and the method modules (Mailbox, Email, Thread, SearchSnippet,
 * Identity, EmailSubmission, VacationResponse). A method module exports a `JmapMethods` map; the
 * engine authenticates, checks `accountId`, resolves result references and creation ids, calls the
 * handler, and turns a thrown `MethodError` into an `error` response.
 *
 * Ids (all in RFC 8620 §1.2's alphabet, so no escaping anywhere):
 * - accountId: the user's address is not an id; it is `A` + the first 24 hex digits of
 *   sha256(lower-case address). Every handler sees it in `ctx.accountId` and never trusts one
 *   from the arguments (the engine rejects a foreign one with `accountNotFound`).
 * - mailboxId: the folder id (`INBOX` or 16 hex digits), as the folder store makes it.
 * - emailId: `M` + the first 24 hex digits of sha256(blobKey). The same raw message in several
 *   folders of one user (IMAP COPY, JMAP mailboxIds) is one Email, as in Cyrus; MOVE keeps it.
 * - threadId: `T` + 24 hex digits, assigned when a message is first filed (RFC 8621 §3).
 * - blobId: `U…` an upload (engine); `G<emailId>` the raw message; `G<emailId>P<partId>` one
 *   decoded body part (mail module); `U<uploadId>P<partId>` one decoded body part of an uploaded
 *   message, as Email/parse names them (mail module). The engine dispatches download and lookups
 *   by prefix.
 */
import type { Readable } from 'node:stream';
import type { Config } from '../../../core/config.js';
import type { Logger } from '../../../core/log.js';
import type { SpamScanner } from '../../../core/mail/spam.js';
import type { FolderStore } from '../../../core/mailbox/folders.js';
import type { Storage } from '../../../core/storage/ports.js';

/** RFC 8621's capability: Mailbox, Thread, Email and SearchSnippet all belong to it. */
export const MAIL_CAPABILITY = 'urn:ietf:params:jmap:mail';

/** A JSON object as JMAP passes it. */
export type JsonObject = Record<string, unknown>;

/** A blob the account may read. */
export interface JmapBlob {
  size: number;
  /** Media type when known (uploads keep the type they were sent with). */
  type?: string;
  /** The bytes, streamed; each call opens a new stream. */
  open(): Promise<Readable>;
}

/** Blob access for method handlers (Email/import, Email/set create, Email/parse, attachments). */
export interface JmapBlobs {
  /** The blob, if it exists and belongs to the account; undefined otherwise (never another's). */
  get(blobId: string): Promise<JmapBlob | undefined>;
  /** Stores new bytes for the account and returns their blobId (an upload made by the server). */
  put(body: Readable | Uint8Array, type: string): Promise<{ blobId: string; size: number; type: string }>;
}

/** Everything a handler may use for one method call. */
export interface JmapContext {
  /** The authenticated user's address, lower-case. */
  user: string;
  accountId: string;
  config: Config;
  storage: Storage;
  folders: FolderStore;
  blobs: JmapBlobs;
  log: Logger;
  /** Scans what the user sends (spam.scanOutbound, core/mail/outbound-verdict.ts); absent: no scan. */
  spam?: SpamScanner;
  /** Creation ids of this request (`#abc` in an id position) resolved to real ids. Handlers that
   * create objects record them here (`createdIds.set(creationId, id)`), as RFC 8620 §5.3 says. */
  createdIds: Map<string, string>;
  /** Responses a method adds after its own (RFC 8621 onSuccessUpdateEmail, Email/copy's
   * onSuccessDestroyOriginal): pushed as [name, arguments], sent with the caller's call id. */
  followUps: [string, JsonObject][];
  /** Another method of this request, as an implicit call (e.g. EmailSubmission's Email/set). */
  call(name: string, args: JsonObject): Promise<JsonObject>;
}

/** A method handler: the arguments after result references are resolved; returns the response
 * arguments. Throw `MethodError` for RFC 8620 §3.6.2 method-level errors. */
export type JmapMethod = (args: JsonObject, ctx: JmapContext) => Promise<JsonObject>;

/** Methods by name (`Mailbox/get`), plus the capability they belong to. */
export interface JmapMethods {
  capability: string;
  /** The capability's object in the session resource (`capabilities` and `accountCapabilities`). */
  sessionCapability?: JsonObject;
  accountCapability?: JsonObject;
  methods: Record<string, JmapMethod>;
}

/** A method-level error (RFC 8620 §3.6.2), e.g. `invalidArguments`, `stateMismatch`. */
export class MethodError extends Error {
  constructor(
    readonly type: string,
    readonly description?: string,
    readonly extra: JsonObject = {},
  ) {
    super(description ?? type);
  }
}

/** A per-object error of a /set or /copy (RFC 8620 §5.3), e.g. `notFound`, `invalidProperties`. */
export interface SetError {
  type: string;
  description?: string;
  properties?: string[];
  [extra: string]: unknown;
}
