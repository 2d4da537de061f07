// An independent reader for the tests: nostr-tools' Relay (over ws) sends one REQ, collects
// the stored events until EOSE and checks each with verifyEvent, as a client would before
// trusting what a relay's `self` key signed (NIP-43 roles and member lists).
// Reads one JSON command on stdin ({url, filter}), writes one JSON answer on stdout.
import { Relay, useWebSocketImplementation } from 'nostr-tools/relay'
import { verifyEvent } from 'nostr-tools/pure'
import WebSocket from 'ws'

useWebSocketImplementation(WebSocket)

const cmd = JSON.parse(await new Promise((resolve) => {
  let text = ''
  process.stdin.on('data', (chunk) => { text += chunk })
  process.stdin.on('end', () => resolve(text))
}))

const relay = await Relay.connect(cmd.url)
const events = []
await new Promise((resolve) => {
  const sub = relay.subscribe([cmd.filter], {
    // nostr-tools verifies in the Relay already; keep what it accepted and check again here.
    onevent: (event) => events.push({ event, verified: verifyEvent(event) }),
    oneose: () => { sub.close(); resolve() },
  })
})
relay.close()
process.stdout.write(JSON.stringify({ events }))
