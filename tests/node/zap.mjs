// An independent NIP-57 client for the tests: nostr-tools makes the zap request, finds the
// zap endpoint from the relay's kind-0 profile, and checks the relay's zap receipt.
// Reads one JSON command on stdin, writes one JSON answer on stdout.
import { finalizeEvent, verifyEvent } from 'nostr-tools/pure'
import { hexToBytes } from 'nostr-tools/utils'
import * as nip57 from 'nostr-tools/nip57'

const input = JSON.parse(await new Promise((resolve) => {
  let text = ''
  process.stdin.on('data', (chunk) => { text += chunk })
  process.stdin.on('end', () => resolve(text))
}))

// Test relays listen on plain http://127.0.0.1:<port>; clients fetch https://<domain>.
nip57.useFetchImplementation((url) => fetch(String(url).replace(/^https:/, 'http:')))

async function run (cmd) {
  if (cmd.op === 'endpoint') {
    return { callback: await nip57.getZapEndpoint(cmd.profile) }
  }
  if (cmd.op === 'request') {
    const template = nip57.makeZapRequest({
      pubkey: cmd.profile, amount: cmd.amount, relays: cmd.relays, comment: cmd.comment ?? ''
    })
    const signed = finalizeEvent(template, hexToBytes(cmd.secret))
    return { request: JSON.stringify(signed), valid: nip57.validateZapRequest(JSON.stringify(signed)) }
  }
  if (cmd.op === 'check-receipt') {
    const receipt = cmd.receipt
    const problems = []
    if (!verifyEvent(receipt)) problems.push('bad signature')
    if (receipt.pubkey !== cmd.nostrPubkey) problems.push('not signed by the lnurl nostrPubkey')
    const tag = (name) => receipt.tags.filter((t) => t[0] === name).map((t) => t[1])
    const [description] = tag('description')
    const [bolt11] = tag('bolt11')
    if (description !== cmd.request) problems.push('description is not the zap request')
    const invalid = nip57.validateZapRequest(description)
    if (invalid) problems.push('zap request: ' + invalid)
    // nostr-tools reads amounts of mainnet invoices only (lnbc...), not the demo wallet's regtest ones.
    if (!bolt11.startsWith('lnbcrt') && nip57.getSatoshisAmountFromBolt11(bolt11) * 1000 !== cmd.amount) {
      problems.push('bolt11 amount differs')
    }
    // What nostr-tools itself would put in a receipt for this request and payment.
    const expected = nip57.makeZapReceipt({
      zapRequest: description, preimage: tag('preimage')[0], bolt11, paidAt: new Date(receipt.created_at * 1000)
    })
    const key = (tags) => JSON.stringify(tags.map((t) => JSON.stringify(t)).sort())
    if (key(expected.tags) !== key(receipt.tags)) problems.push('tags differ from nostr-tools makeZapReceipt')
    return { problems }
  }
  throw new Error('unknown op ' + cmd.op)
}

process.stdout.write(JSON.stringify(await run(input)))
