// NIP-45 HyperLogLog as nostr-tools computes it, for tests/test_count_hll.py: the offset
// of a filter (its first tag value), the registers fed with the given pubkeys, and the
// estimate nostr-tools reads from a relay's hll.
// Reads one JSON command on stdin, writes one JSON answer on stdout.
import { computeOffset, estimateCount, feedPubkey, getFilterFirstTagValue, hllDecode, hllEncode, newHll } from 'nostr-tools/nip45'

const cmd = JSON.parse(await new Promise((resolve) => {
  let text = ''
  process.stdin.on('data', (chunk) => { text += chunk })
  process.stdin.on('end', () => resolve(text))
}))

const offset = computeOffset(getFilterFirstTagValue(cmd.filter))
let hll = newHll()
for (const pubkey of cmd.pubkeys) hll = feedPubkey(hll, pubkey, offset)
const relayHll = cmd.relayHll ? hllDecode(cmd.relayHll) : undefined
process.stdout.write(JSON.stringify({
  offset,
  hll: hllEncode(hll),
  estimate: relayHll ? estimateCount(relayHll) : null,
}))
