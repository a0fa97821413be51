// aedes as a broker under test: node server.mjs CONFIG.json
// CONFIG lists listeners ({kind, host, port, tls?}); mqtt-harness renders it from config/*.json.
import { readFileSync } from 'node:fs'
import { createServer as createNetServer } from 'node:net'
import { createServer as createTlsServer } from 'node:tls'
import { createServer as createHttpServer } from 'node:http'
import { createServer as createHttpsServer } from 'node:https'
import { Aedes } from 'aedes'
import { WebSocketServer, createWebSocketStream } from 'ws'

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'))
const broker = await Aedes.createBroker()

function tlsOptions (tls) {
  return {
    ca: readFileSync(tls.ca),
    cert: readFileSync(tls.cert),
    key: readFileSync(tls.key),
    requestCert: tls.requireClientCert,
    rejectUnauthorized: tls.requireClientCert
  }
}

function makeServer (listener) {
  switch (listener.kind) {
    case 'mqtt':
      return createNetServer(broker.handle)
    case 'mqtts':
    case 'mqtts-mtls':
      return createTlsServer(tlsOptions(listener.tls), broker.handle)
    case 'ws':
    case 'wss': {
      const server = listener.tls ? createHttpsServer(tlsOptions(listener.tls)) : createHttpServer()
      const wss = new WebSocketServer({ server })
      wss.on('connection', (socket, req) => broker.handle(createWebSocketStream(socket), req))
      return server
    }
    default:
      throw new Error(`unknown listener kind ${listener.kind}`)
  }
}

broker.on('client', (client) => console.log(`client connected: ${client.id}`))
broker.on('clientDisconnect', (client) => console.log(`client disconnected: ${client.id}`))
broker.on('clientError', (client, err) => console.log(`client error: ${client.id}: ${err.message}`))
broker.on('connectionError', (client, err) => console.log(`connection error: ${err.message}`))

// One after another, in config order: mqtt-harness puts the plain listener last, so a CONNACK there means all
// listeners are up.
for (const listener of config.listeners) {
  const server = makeServer(listener)
  server.on('tlsClientError', (err) => console.log(`${listener.kind} TLS error: ${err.message}`))
  await new Promise((resolve, reject) => {
    server.once('error', reject)
    server.listen(listener.port, listener.host, resolve)
  })
  console.log(`aedes ${listener.kind} listener on ${listener.host}:${listener.port}`)
}

process.on('SIGTERM', () => broker.close(() => process.exit(0)))
