// The namespace's network, as tests and benchmarks shape it.
import { execFileSync } from 'node:child_process';

/**
 * Runs `fn` with loopback segmenting UDP GSO sends the way a NIC does before the wire. The
 * gateway sends a frame's packets in one GSO call; loopback would otherwise hand an INPUT rule
 * (a random-loss rule, say) the whole batch as one packet, and the network loses packets, not
 * frames.
 */
export async function withSegmentedLoopback(fn) {
  execFileSync('ip', ['link', 'set', 'lo', 'gso_max_segs', '1']);
  try {
    return await fn();
  } finally {
    execFileSync('ip', ['link', 'set', 'lo', 'gso_max_segs', '65535']);
  }
}
