// An independent NIP-98 client for the tests: nostr-tools makes the Authorization header
// (getToken, with the payload hash of the JSON body it sends) and Node's fetch sends the
// request, as a NIP-86 management tool built on nostr-tools would.
// Reads one JSON command on stdin, writes one JSON answer on stdout.
import { finalizeEvent } from 'nostr-tools/pure'
import { hexToBytes } from 'nostr-tools/utils'
import * as nip98 from 'nostr-tools/nip98'

const cmd = JSON.parse(await new Promise((resolve) => {
  let text = ''
  process.stdin.on('data', (chunk) => { text += chunk })
  process.stdin.on('end', () => resolve(text))
}))

const secret = hexToBytes(cmd.secret)
const sign = async (template) => finalizeEvent(template, secret)
// cmd.signedUrl: the `u` the tool signs (NIP-86 tools name the relay's ws(s):// URL); cmd.url: where it sends.
const token = await nip98.getToken(cmd.signedUrl ?? cmd.url, cmd.method, sign, true, cmd.payload ?? undefined)
const headers = { Authorization: token }
let body
if (cmd.payload) {
  headers['Content-Type'] = cmd.contentType ?? 'application/nostr+json+rpc'
  body = JSON.stringify(cmd.payload) // exactly what getToken hashed
}
const response = await fetch(cmd.url, { method: cmd.method, headers, body })
const text = await response.text()
let json = null
try { json = JSON.parse(text) } catch {}
process.stdout.write(JSON.stringify({ status: response.status, json, text: json === null ? text : undefined }))
