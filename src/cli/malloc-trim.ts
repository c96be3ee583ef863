/**
 * Keeps glibc's malloc from handing memory back to the system after every few megabytes.
 *
 * glibc trims its heap whenever more than M_TRIM_THRESHOLD is free at its top: 128 KiB, until
 * the first time a block it mmapped is freed, when it raises the mmap threshold to that
 * block's size and the trim threshold to twice that (mallopt(3), "dynamic mmap threshold").
 * A process streaming an upload frees its socket and TLS buffers in batches, at each garbage
 * collection: it trimmed, then took fresh pages back with a page fault and zeroing each.
 * Measured on the 2-core machine, 100 MiB uploads through the gateway to a files process:
 * the gateway's main thread spent 3.6 to 5.2 ms per MiB (972 brk calls in 4 s), against
 * 1.7 to 2.2 after this (175), and the uploads ran at 125 to 137 MiB/s, against 187 to 197.
 *
 * One 24 MiB block, never touched but its first page and dropped at once, is freed by the
 * first garbage collection: from then on the heap is trimmed past 48 MiB free. Elsewhere
 * (musl, macOS) it is a 24 MiB allocation freed, nothing more.
 */
const BLOCK_BYTES = 24 * 1024 * 1024;

export function raiseMallocTrimThreshold(): void {
  // allocUnsafeSlow: one malloc of its own (not the pool), left uninitialised (not calloc).
  const block = Buffer.allocUnsafeSlow(BLOCK_BYTES);
  block[0] = 0;
}
