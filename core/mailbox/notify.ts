/**
 * "This user's mailbox changed": the nudge that wakes IMAP IDLE (and, later, JMAP push) in the
 * process where the change was made. Locally every listener and the queue workers share one
 * process, the workers maybe on their own thread, so the nudge goes over a BroadcastChannel, which
 * reaches every thread of the process. It carries no data: a woken session reads the user's change
 * log (core/mailbox/changes.ts), which stays the only truth. Across processes (AWS: the delivering
 * Lambda and the listening task differ) nothing arrives here; sessions also poll the change log's
 * head at a bounded rate (containers/imap/selected.ts says how often and what that costs).
 */
import { BroadcastChannel } from 'node:worker_threads';

const CHANNEL = 'tomlinson:mailbox-changes';

type Listener = () => void;

let sender: BroadcastChannel | undefined;
let receiver: BroadcastChannel | undefined;
const listeners = new Map<string, Set<Listener>>();

/** Tells every thread of this process that `user`'s mailbox changed. */
export function publishMailboxChange(user: string): void {
  if (!sender) {
    sender = new BroadcastChannel(CHANNEL);
    sender.unref();
  }
  sender.postMessage(user);
}

/** Calls `fn` whenever `user`'s mailbox changes in this process; returns the unsubscribe. */
export function onMailboxChange(user: string, fn: Listener): () => void {
  if (!receiver) {
    receiver = new BroadcastChannel(CHANNEL);
    receiver.unref();
    receiver.onmessage = (event) => {
      const user = (event as { data: unknown }).data;
      if (typeof user !== 'string') return;
      for (const l of listeners.get(user) ?? []) l();
    };
  }
  let set = listeners.get(user);
  if (!set) listeners.set(user, (set = new Set()));
  set.add(fn);
  return () => {
    set.delete(fn);
    if (set.size === 0) listeners.delete(user);
  };
}
