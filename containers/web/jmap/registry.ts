/**
 * Which JMAP methods the API serves: the method modules (types.ts `JmapMethods`) merged into one
 * lookup, and the blob resolvers for blobIds the engine does not make itself. To add a module
 * (Mailbox, Email, Thread, SearchSnippet, Identity, EmailSubmission, VacationResponse), import it
 * and list it in MODULES; a module whose blobIds start with a prefix of its own (the mail model's
 * `G`) lists its resolver in BLOB_RESOLVERS.
 */
import { coreModule } from './core-methods.js';
import { emailQueryMethods } from './email-query.js';
import { emailMethods, resolveEmailBlob, resolveUploadPart } from './email.js';
import { mailboxMethods } from './mailbox.js';
import { searchSnippetMethods } from './search-snippet.js';
import { submissionMethods } from './submission.js';
import { threadMethods } from './thread.js';
import { vacationMethods } from './vacation.js';
import type { BlobResolver } from './blobs.js';
import type { JmapMethod, JmapMethods, JsonObject } from './types.js';

/** RFC 8620 §2: the core capability every request must use. */
export const CORE_CAPABILITY = 'urn:ietf:params:jmap:core';

/** A module as registered: `onAccount: false` for a capability the user's account does not have
 * (its methods then answer accountNotSupportedByMethod). @default onAccount true */
export type RegisteredModule = JmapMethods & { onAccount?: boolean };

/** The method modules the API serves. */
export const MODULES: RegisteredModule[] = [
  coreModule,
  mailboxMethods,
  emailMethods,
  emailQueryMethods,
  threadMethods,
  searchSnippetMethods,
  submissionMethods,
  vacationMethods,
];

/** Blob resolvers by blobId prefix (one letter). `U` (uploads) is the engine's own, but for a
 * part of an uploaded message (`U<upload>P<n>`, Email/parse); the mail model registers `G` (raw
 * messages and their parts) and those upload parts here. */
export const BLOB_RESOLVERS: Record<string, BlobResolver> = { G: resolveEmailBlob, U: resolveUploadPart };

/** One method, found by name. */
export interface FoundMethod {
  capability: string;
  onAccount: boolean;
  run: JmapMethod;
}

/** The merged method table and the capabilities for the session resource. */
export class JmapRegistry {
  private readonly methods = new Map<string, FoundMethod>();
  /** Capability URIs this server knows (the session's `capabilities` keys). */
  readonly capabilities = new Set<string>([CORE_CAPABILITY]);
  /** Extra capability objects for the session (core's is made from the limits). */
  readonly sessionCapabilities: Record<string, JsonObject> = {};
  /** The account's capability objects. */
  readonly accountCapabilities: Record<string, JsonObject> = {};

  constructor(
    modules: readonly RegisteredModule[] = MODULES,
    readonly blobResolvers: Readonly<Record<string, BlobResolver>> = BLOB_RESOLVERS,
  ) {
    for (const m of modules) {
      this.capabilities.add(m.capability);
      // Several modules share a capability (Mailbox, Email, Thread... are all mail): their
      // capability objects merge.
      if (m.capability !== CORE_CAPABILITY) this.sessionCapabilities[m.capability] = { ...this.sessionCapabilities[m.capability], ...m.sessionCapability };
      const onAccount = m.onAccount !== false;
      if (onAccount && m.capability !== CORE_CAPABILITY)
        this.accountCapabilities[m.capability] = { ...this.accountCapabilities[m.capability], ...m.accountCapability };
      for (const [name, run] of Object.entries(m.methods)) {
        if (this.methods.has(name)) throw new Error(`JMAP method ${name} is registered twice`);
        this.methods.set(name, { capability: m.capability, onAccount, run });
      }
    }
  }

  /** The method of that name, or undefined. */
  method(name: string): FoundMethod | undefined {
    return this.methods.get(name);
  }
}
