// An independent NIP-17/NIP-59 reader for the tests: nostr-tools opens the relay's gift wraps
// (kind 1059 -> seal 13 -> rumor 14), checking every layer on the way.
// Reads one JSON command on stdin, writes one JSON answer on stdout.
import { getEventHash, verifyEvent } from 'nostr-tools/pure'
import { hexToBytes } from 'nostr-tools/utils'
import * as nip44 from 'nostr-tools/nip44'
import * as nip17 from 'nostr-tools/nip17'

const input = JSON.parse(await new Promise((resolve) => {
  let text = ''
  process.stdin.on('data', (chunk) => { text += chunk })
  process.stdin.on('end', () => resolve(text))
}))

const secret = hexToBytes(input.secret)
const wrap = input.wrap
const problems = []
if (wrap.kind !== 1059) problems.push('wrap is not kind 1059')
if (!verifyEvent(wrap)) problems.push('wrap signature')
const p = wrap.tags.filter((t) => t[0] === 'p').map((t) => t[1])
if (p.length !== 1 || p[0] !== input.recipient) problems.push('wrap must p-tag the recipient only')
const seal = JSON.parse(nip44.decrypt(wrap.content, nip44.getConversationKey(secret, wrap.pubkey)))
if (seal.kind !== 13) problems.push('seal is not kind 13')
if (!verifyEvent(seal)) problems.push('seal signature')
if (seal.tags.length !== 0) problems.push('seal has tags')
if (seal.pubkey === wrap.pubkey) problems.push('wrap is not signed by a one-time key')
const rumor = JSON.parse(nip44.decrypt(seal.content, nip44.getConversationKey(secret, seal.pubkey)))
if (rumor.pubkey !== seal.pubkey) problems.push('rumor author differs from the seal signer')
if (getEventHash(rumor) !== rumor.id) problems.push('rumor id')
if ('sig' in rumor) problems.push('rumor is signed')
const viaNip17 = nip17.unwrapEvent(wrap, secret)
if (JSON.stringify(viaNip17) !== JSON.stringify(rumor)) problems.push('nip17.unwrapEvent disagrees')
process.stdout.write(JSON.stringify({ problems, rumor }))
