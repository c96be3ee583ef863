/**
 * An export's progress, written to its row at most once every `everyMs` and one write at a
 * time, without holding up the zip: `update` returns at once, and an update that comes while
 * one is in flight or too soon after the last is left out (the next carries newer figures).
 * A failed write fails the next `update` and `flush`; `flush` waits for the write in flight.
 */
export function throttledProgress<T>(write: (progress: T) => Promise<void>, everyMs: number, now: () => number = () => performance.now()) {
  let lastAt = Number.NEGATIVE_INFINITY;
  let inFlight: Promise<void> | undefined;
  let failure: { error: unknown } | undefined;
  return {
    update(progress: T): Promise<void> {
      if (failure) return Promise.reject(failure.error);
      if (inFlight || now() - lastAt < everyMs) return Promise.resolve();
      lastAt = now();
      inFlight = write(progress)
        .catch((error: unknown) => {
          failure = { error };
        })
        .finally(() => {
          inFlight = undefined;
        });
      return Promise.resolve();
    },
    async flush(): Promise<void> {
      await inFlight;
      if (failure) throw failure.error;
    },
  };
}
