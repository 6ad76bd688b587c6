// A Node rewrite of the browser dashboard client of seed 000 §9.6, for
// catsock's interop tests. It is our own code, not the seed's, and behaves the
// same on the wire:
//
// - opens a WebSocket to the URL and, on open, sends
//   JSON.stringify({type: 'auth', token, client_type: 'DASHBOARD'});
// - JSON.parses every message and dispatches on data.type: auth_success marks
//   it connected, resets the reconnect counter and starts a heartbeat that
//   sends {"type":"ping"} every 30 s (never cleared: each reconnect adds one,
//   as in the seed); pong is swallowed; any other type goes to the handler
//   registered with on(type, callback), which receives the whole message;
// - on close it reconnects after min(2000 * 2^attempt, 60000) ms, at most 5
//   times.
//
// Node's WebSocket is the browser API (undici): global in Node >= 22, behind
// --experimental-websocket in Node 20 and 21.
//
// CLI: node [--experimental-websocket] seed_client.mjs URL TOKEN N
//   Prints the first auth_success, then every handled message (conversion,
//   stats_update), every pong and every later auth_success (after a
//   reconnect) as JSON lines, and exits 0 after N lines following the first
//   auth_success. Exits 1 when it gives up reconnecting. Diagnostics go to
//   stderr.
//   Environment, for tests that cannot wait for the seed's real timings:
//   SEED_HEARTBEAT_MS (default 30000), SEED_RECONNECT_BASE_MS (default 2000).

import { pathToFileURL } from 'node:url';

export class DashboardSocketClient {
  constructor(url, token, options = {}) {
    this.url = url;
    this.token = token;
    this.ws = null;
    this.connected = false;
    this.reconnectAttempts = 0;
    this.maxReconnectAttempts = options.maxReconnectAttempts ?? 5;
    this.heartbeatMs = options.heartbeatMs ?? 30000;
    this.reconnectBaseMs = options.reconnectBaseMs ?? 2000;
    this.log = options.log ?? ((...args) => console.error(...args));
    // Not in the seed: lets a caller watch auth_success / pong, which the seed
    // handles itself, and stop the client for good.
    this.onControl = options.onControl ?? (() => {});
    this.onGiveUp = options.onGiveUp ?? (() => {});
    this.handlers = {};
    this.timers = [];
    this.stopped = false;
  }

  connect() {
    const ws = new WebSocket(this.url);
    this.ws = ws;
    ws.onopen = () => {
      this.log('WebSocket connected');
      this.authenticate();
    };
    ws.onmessage = (event) => {
      this.handleMessage(JSON.parse(event.data));
    };
    ws.onclose = () => {
      this.log('WebSocket disconnected');
      this.connected = false;
      if (!this.stopped) {
        this.reconnect();
      }
    };
    ws.onerror = (error) => {
      this.log('WebSocket error:', error.message ?? error.type ?? error);
    };
  }

  authenticate() {
    this.ws.send(JSON.stringify({ type: 'auth', token: this.token, client_type: 'DASHBOARD' }));
  }

  handleMessage(data) {
    const type = data.type;
    if (type === 'auth_success') {
      this.connected = true;
      this.reconnectAttempts = 0;
      this.log('Authentication successful');
      this.startHeartbeat();
      this.onControl(data);
    } else if (type === 'pong') {
      this.onControl(data);
    } else if (this.handlers[type]) {
      this.handlers[type](data);
    }
  }

  on(messageType, callback) {
    this.handlers[messageType] = callback;
  }

  startHeartbeat() {
    this.timers.push(setInterval(() => {
      if (this.connected) {
        this.ws.send(JSON.stringify({ type: 'ping' }));
      }
    }, this.heartbeatMs));
  }

  reconnect() {
    if (this.reconnectAttempts >= this.maxReconnectAttempts) {
      this.log('Max reconnection attempts exceeded');
      this.onGiveUp();
      return;
    }
    this.reconnectAttempts++;
    const delay = Math.min(this.reconnectBaseMs * Math.pow(2, this.reconnectAttempts), 60000);
    this.timers.push(setTimeout(() => {
      this.log(`Reconnecting... (attempt ${this.reconnectAttempts})`);
      this.connect();
    }, delay));
  }

  /** Not in the seed: stop for good (no reconnect, no heartbeat) so the process can end. */
  stop() {
    this.stopped = true;
    this.connected = false;
    for (const timer of this.timers) {
      clearTimeout(timer);
      clearInterval(timer);
    }
    this.timers = [];
    this.ws?.close(1000);
  }
}

function main(argv) {
  if (argv.length !== 3 || !/^\d+$/.test(argv[2])) {
    console.error('usage: node seed_client.mjs URL TOKEN N');
    process.exit(64);
  }
  if (typeof globalThis.WebSocket !== 'function') {
    console.error('this Node has no WebSocket: use Node >= 22, or --experimental-websocket');
    process.exit(69);
  }
  const [url, token, count] = argv;
  const wanted = Number(count);
  let printed = -1; // the first auth_success is line 0
  let client = null;
  const print = (data) => {
    process.stdout.write(JSON.stringify(data) + '\n');
    printed++;
    if (printed >= wanted) {
      client.stop();
    }
  };
  client = new DashboardSocketClient(url, token, {
    heartbeatMs: Number(process.env.SEED_HEARTBEAT_MS ?? 30000),
    reconnectBaseMs: Number(process.env.SEED_RECONNECT_BASE_MS ?? 2000),
    onControl: print,
    onGiveUp: () => {
      process.exitCode = 1;
      client.stop();
    },
  });
  client.on('conversion', (data) => print(data));
  client.on('stats_update', (data) => print(data));
  client.connect();
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main(process.argv.slice(2));
}
