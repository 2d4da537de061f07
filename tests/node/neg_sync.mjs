// Runs nostr-tools' NegentropySync (NIP-77) against a relay and prints what it learned.
// Usage: node neg_sync.mjs <ws-url> <items.json> <filter-json>
//   items.json: [[created_at, "<id hex>"], ...], the client's own set.
// Prints one JSON line: {"have": [...], "need": [...], "error": null | "<reason>"}.
import { readFileSync } from 'node:fs'
import WebSocket from 'ws'
import { Relay, useWebSocketImplementation } from 'nostr-tools/relay'
// nostr-tools 2.25 ships nip77 but does not list it in package.json "exports": import the file.
import { NegentropyStorageVector, NegentropySync } from './node_modules/nostr-tools/lib/esm/nip77.js'

useWebSocketImplementation(WebSocket)

const [url, itemsPath, filterJson] = process.argv.slice(2)
const storage = new NegentropyStorageVector()
for (const [createdAt, id] of JSON.parse(readFileSync(itemsPath, 'utf8'))) storage.insert(createdAt, id)
storage.seal()

const have = new Set()
const need = new Set()
const relay = await Relay.connect(url)
const timer = setTimeout(() => finish('timeout'), 60000)

function finish(error) {
  clearTimeout(timer)
  process.stdout.write(JSON.stringify({ have: [...have], need: [...need], error: error ?? null }) + '\n')
  relay.close()
  process.exit(0)
}

const sync = new NegentropySync(relay, storage, JSON.parse(filterJson), {
  onhave: id => have.add(id),
  onneed: id => need.add(id),
  onclose: reason => finish(reason),
})
await sync.start()
