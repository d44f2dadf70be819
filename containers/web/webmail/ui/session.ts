/**
 * The webmail's own session endpoints (containers/web/webmail/sessions.ts on the server): login
 * sets an HttpOnly cookie the page never sees; the CSRF token it returns goes on every
 * state-changing call (the JMAP API, uploads, logout).
 */
import { JmapClient } from '../client/jmap-client.ts';

export interface WebSession {
  username: string;
  csrfToken: string;
  expires: string;
}

async function problem(res: Response, fallback: string): Promise<string> {
  try {
    const p = (await res.json()) as { detail?: string; title?: string };
    return p.detail ?? p.title ?? fallback;
  } catch {
    return fallback;
  }
}

/** The session the cookie names, or undefined when there is none (or it expired). */
export async function currentSession(): Promise<WebSession | undefined> {
  const res = await fetch('/webmail/api/session', { credentials: 'same-origin', headers: { accept: 'application/json' } });
  if (res.status === 401) return undefined;
  if (!res.ok) throw new Error(await problem(res, `the server answered ${res.status}`));
  return (await res.json()) as WebSession;
}

export async function login(username: string, password: string): Promise<WebSession> {
  const res = await fetch('/webmail/api/login', {
    method: 'POST',
    credentials: 'same-origin',
    headers: { 'content-type': 'application/json', accept: 'application/json' },
    body: JSON.stringify({ username, password }),
  });
  if (res.status === 401) throw new Error('The address or the password is wrong.');
  if (!res.ok) throw new Error(await problem(res, `Sign-in failed: the server answered ${res.status}.`));
  return (await res.json()) as WebSession;
}

export async function logout(session: WebSession): Promise<void> {
  await fetch('/webmail/api/logout', { method: 'POST', credentials: 'same-origin', headers: { 'x-csrf-token': session.csrfToken } });
}

/** A JMAP client that sends the cookie and the CSRF header. */
export function connect(session: WebSession): Promise<JmapClient> {
  return JmapClient.connect({ credentials: 'same-origin', headers: () => ({ 'x-csrf-token': session.csrfToken }) });
}

/** Uploads a file with progress (fetch has no upload progress; XMLHttpRequest does). */
export function uploadWithProgress(
  client: JmapClient,
  session: WebSession,
  file: File,
  onProgress: (fraction: number) => void,
  signal?: AbortSignal,
): Promise<{ blobId: string; type: string; size: number }> {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open('POST', client.uploadUrl());
    xhr.withCredentials = true;
    xhr.setRequestHeader('content-type', file.type || 'application/octet-stream');
    xhr.setRequestHeader('x-csrf-token', session.csrfToken);
    xhr.upload.onprogress = (e) => {
      if (e.lengthComputable) onProgress(e.loaded / e.total);
    };
    xhr.onload = () => {
      if (xhr.status === 201 || xhr.status === 200) resolve(JSON.parse(xhr.responseText) as { blobId: string; type: string; size: number });
      else reject(new Error(xhr.status === 413 ? `${file.name} is too large to attach.` : `Uploading ${file.name} failed (${xhr.status}).`));
    };
    xhr.onerror = () => reject(new Error(`Uploading ${file.name} failed: the connection broke.`));
    xhr.onabort = () => reject(new Error('Upload cancelled.'));
    signal?.addEventListener('abort', () => xhr.abort());
    xhr.send(file);
  });
}
