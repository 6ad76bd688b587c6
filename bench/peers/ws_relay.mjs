// Peer: Node's `ws` relay speaking catsock's seed protocol.
//
// Any token is accepted; `conversion` from a CATS connection is sent to every AFAD
// connection (the received text, one `send` per recipient); `{"type":"ping"}` gets a
// pong. No validation, no log. Run: `node bench/peers/ws_relay.mjs --port 9000`
// (after `npm install --prefix bench/peers`).
import { WebSocketServer } from 'ws';

const args = process.argv.slice(2);
const port = Number(args[args.indexOf('--port') + 1]);
if (!Number.isInteger(port)) {
  console.error('usage: node ws_relay.mjs --port PORT');
  process.exit(2);
}

const clients = new Map(); // client_type -> Set<WebSocket>
let nextId = 1;
const now = () => new Date().toISOString().replace(/\.\d{3}Z$/, 'Z');

const wss = new WebSocketServer({ host: '127.0.0.1', port, backlog: 4096, maxPayload: 256 * 1024, perMessageDeflate: false });
wss.on('connection', (ws) => {
  let clientType = null;
  ws.on('error', () => {});
  ws.on('message', (data, isBinary) => {
    let message;
    try { message = JSON.parse(data); } catch { return; }
    if (clientType === null) {
      if (!message || message.type !== 'auth') { ws.close(1008, 'auth required'); return; }
      clientType = String(message.client_type ?? '');
      if (!clients.has(clientType)) clients.set(clientType, new Set());
      clients.get(clientType).add(ws);
      const id = `conn_${(nextId++).toString(16).padStart(16, '0')}`;
      ws.send(JSON.stringify({ type: 'auth_success', connection_id: id, timestamp: now() }));
      return;
    }
    if (message.type === 'conversion' && clientType === 'CATS') {
      const targets = clients.get('AFAD');
      if (targets) for (const other of targets) other.send(data, { binary: isBinary });
    } else if (message.type === 'ping') {
      ws.send(JSON.stringify({ type: 'pong', timestamp: now() }));
    }
  });
  ws.on('close', () => { if (clientType !== null) clients.get(clientType)?.delete(ws); });
});
wss.on('listening', () => console.error(`ws_relay: listening on ws://127.0.0.1:${port}/`));
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => { wss.close(); process.exit(0); });
