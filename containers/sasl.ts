/**
 * The SASL pieces every listener with password logins shares: SMTP AUTH (RFC 4954), POP3 AUTH
 * (RFC 5034) and IMAP AUTHENTICATE (RFC 9051 §6.2.2) all carry base64 responses and the PLAIN
 * mechanism's message (RFC 4616), and refuse to let one user act as another alike.
 */

/** A client's base64 response decoded as UTF-8, or undefined when it is not strict base64. */
export function decodeSaslBase64(s: string): string | undefined {
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(s) || s.length % 4 !== 0) return undefined;
  return Buffer.from(s, 'base64').toString('utf8');
}

/** What a PLAIN response carries. */
export interface PlainCredentials {
  authzid: string;
  authcid: string;
  password: string;
}

/** RFC 4616 §2: message = [authzid] NUL authcid NUL passwd; undefined when it is not that. */
export function splitPlain(decoded: string): PlainCredentials | undefined {
  const parts = decoded.split('\0');
  if (parts.length !== 3) return undefined;
  const [authzid, authcid, password] = parts as [string, string, string];
  return { authzid, authcid, password };
}

/** True when the response asks to act as another user than the one logging in (never allowed). */
export function actsForAnother(c: PlainCredentials): boolean {
  return c.authzid !== '' && c.authzid.toLowerCase() !== c.authcid.toLowerCase();
}
