/**
 * A wake-up that runs `work` at most once at a time: a wake during a run asks for one more run
 * after it, however many came. IMAP IDLE and JMAP push are woken this way by local commits and by
 * their poll, so a burst of deliveries costs one or two reads of the change log, not one each.
 */
export function coalescedWake(work: () => Promise<void>, options: { active: () => boolean; onError: (e: Error) => void }): () => void {
  let running = false;
  let again = false;
  return () => {
    if (running) {
      again = true;
      return;
    }
    running = true;
    void (async () => {
      try {
        do {
          again = false;
          await work();
        } while (again && options.active());
      } catch (e) {
        options.onError(e as Error);
      } finally {
        running = false;
      }
    })();
  };
}
