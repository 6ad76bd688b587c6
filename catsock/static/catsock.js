/*
 * catsock.js: a small browser client for the catsock gateway.
 *
 * Seed 000 §9.6's CatsSocketClient, rewritten: the same wire messages
 * (`auth` without an envelope, JSON `ping`/`pong`, events in the seed
 * envelope), plus what a dashboard left open all day needs:
 *
 *   - reconnect with exponential backoff and jitter: 2 s, 4 s, 8 s, ... capped
 *     at 60 s, each delay then varied by ±20 % so a gateway restart is not met
 *     by every browser at the same instant; no attempt limit by default;
 *   - a JSON `ping` every 30 s while connected, and a dead-connection check: if
 *     nothing at all arrived for two intervals the socket is dropped and
 *     reconnected (a half-open TCP connection never fires `onclose` by itself);
 *   - the `heartbeat` extension is asked for, so the gateway's WebSocket pings
 *     (answered by the browser itself) keep proxies from timing the socket out;
 *   - a handler registry: `client.on(type, fn)` for any message type, several
 *     handlers per type, `"*"` for every message; `on` returns an unsubscribe
 *     function;
 *   - authentication failure is final: `AUTH_FAILED` stops the client (state
 *     "failed", an `auth_failed` lifecycle event) instead of reconnecting in a
 *     loop with a token that will never work.
 *
 * The token is passed to the constructor and kept in memory only; it is sent in
 * the `auth` message, never in the URL.
 *
 * Usage:
 *
 *   const client = new CatsockClient({ url: CatsockClient.defaultUrl(), token });
 *   client.on('conversion', (event) => console.log(event.payload));
 *   client.on('state', (state, detail) => console.log(state, detail));
 *   client.on('auth_failed', (error) => console.log(error.error_code));
 *   client.connect();
 *
 * Lifecycle events (not protocol messages): `state` (state, detail) with state
 * one of idle, connecting, connected, reconnecting, failed, closed;
 * `auth_failed` (the error payload); `disconnected` ({code, reason}).
 */
(function (root) {
  'use strict';

  var DEFAULTS = {
    clientType: 'DASHBOARD',
    extensions: { heartbeat: {} },
    resume: true,
    pingInterval: 30000,
    backoffBase: 2000,
    backoffCap: 60000,
    jitter: 0.2,
    maxAttempts: Infinity,
    random: Math.random,
    WebSocket: null,
  };

  /** Error codes after which reconnecting cannot help. */
  var FATAL_CODES = { AUTH_FAILED: true };

  /**
   * The delay before reconnect attempt `attempt` (1, 2, ...): min(cap, base * 2^(attempt-1))
   * scaled by a factor drawn uniformly from [1 - jitter, 1 + jitter]. As in the Python
   * client (catsock/backoff.py) the cap applies before the jitter: about 2, 4, 8, 16,
   * 32, 60, 60, ... seconds, each ±20 %.
   */
  function backoffDelay(attempt, options) {
    var o = Object.assign({}, DEFAULTS, options || {});
    var exp = Math.max(0, attempt - 1);
    var nominal = Math.min(o.backoffCap, o.backoffBase * Math.pow(2, exp));
    var factor = 1 + o.jitter * (2 * o.random() - 1);
    return Math.round(nominal * factor);
  }

  class CatsockClient {
    /** ws(s)://<this page's host>/ws */
    static defaultUrl(location) {
      var loc = location || root.location;
      var scheme = loc.protocol === 'https:' ? 'wss:' : 'ws:';
      return scheme + '//' + loc.host + '/ws';
    }

    constructor(options) {
      if (!options || !options.token) {
        throw new TypeError('CatsockClient needs a token');
      }
      this.options = Object.assign({}, DEFAULTS, options);
      this.url = this.options.url || CatsockClient.defaultUrl();
      this._token = String(this.options.token);
      this._WebSocket = this.options.WebSocket || root.WebSocket;
      this.ws = null;
      this.state = 'idle';
      this.connectionId = null;
      this.extensions = null;
      this.attempts = 0;
      this.lastError = null;
      this.lastSeq = null;
      this.reconnectTimer = null;
      this.nextRetryAt = null;
      this._pingTimer = null;
      this._lastSeen = 0;
      this._handlers = new Map();
      this._stopped = false;
    }

    /** Register `fn` for a message type, a lifecycle event, or "*"; returns an unsubscribe. */
    on(type, fn) {
      if (typeof fn !== 'function') {
        throw new TypeError('handler must be a function');
      }
      if (!this._handlers.has(type)) {
        this._handlers.set(type, new Set());
      }
      this._handlers.get(type).add(fn);
      return () => this.off(type, fn);
    }

    off(type, fn) {
      var set = this._handlers.get(type);
      if (set) {
        set.delete(fn);
      }
    }

    get connected() {
      return this.state === 'connected';
    }

    connect() {
      this._stopped = false;
      this._clearReconnect();
      this._open();
    }

    /** Close for good: no reconnect. */
    close() {
      this._stopped = true;
      this._clearReconnect();
      this._teardown(1000, 'client closed');
      this._setState('closed');
    }

    /** Send a control message or an envelope; false when not connected. */
    send(message) {
      if (!this.ws || this.state !== 'connected') {
        return false;
      }
      this.ws.send(typeof message === 'string' ? message : JSON.stringify(message));
      return true;
    }

    /** Publish an event in the seed envelope (the token's client type must be allowed to). */
    publish(type, payload, messageId) {
      return this.send({
        version: '1.0',
        type: type,
        timestamp: new Date().toISOString().replace(/\.\d{3}Z$/, 'Z'),
        message_id: messageId || root.crypto.randomUUID(),
        sender: this.options.clientType,
        payload: payload,
      });
    }

    // -- internals -----------------------------------------------------------

    _emit(type) {
      var args = Array.prototype.slice.call(arguments, 1);
      var set = this._handlers.get(type);
      if (!set) {
        return;
      }
      Array.from(set).forEach(function (fn) {
        try {
          fn.apply(null, args);
        } catch (err) {
          // One broken handler must not break the connection or the others.
          if (root.console) {
            root.console.error('catsock handler for ' + type + ' failed', err);
          }
        }
      });
    }

    _setState(state, detail) {
      this.state = state;
      this._emit('state', state, detail || {});
    }

    _open() {
      var ws;
      this._setState(this.attempts === 0 ? 'connecting' : 'reconnecting', {
        attempt: this.attempts,
      });
      try {
        ws = new this._WebSocket(this.url);
      } catch (err) {
        this.lastError = { error_code: 'CONNECT_FAILED', error_message: String(err) };
        this._scheduleReconnect();
        return;
      }
      this.ws = ws;
      ws.onopen = () => {
        if (ws !== this.ws) {
          return;
        }
        var auth = {
          type: 'auth',
          token: this._token,
          client_type: this.options.clientType,
        };
        if (this.options.extensions) {
          auth.extensions = Object.assign({}, this.options.extensions);
          if (this.options.resume) {
            // Back after a drop: ask for what was published meanwhile (docs/delivery.md).
            auth.extensions.resume = this.lastSeq == null ? {} : { since: this.lastSeq };
          }
        }
        ws.send(JSON.stringify(auth));
      };
      ws.onmessage = (event) => {
        if (ws === this.ws) {
          this._receive(event.data);
        }
      };
      ws.onclose = (event) => {
        if (ws === this.ws) {
          this._closed(event.code, event.reason);
        }
      };
      ws.onerror = function () {
        // Always followed by onclose, which decides what to do.
      };
    }

    _receive(data) {
      var message;
      this._lastSeen = Date.now();
      if (typeof data !== 'string') {
        return;
      }
      try {
        message = JSON.parse(data);
      } catch (err) {
        return;
      }
      if (!message || typeof message !== 'object' || typeof message.type !== 'string') {
        return;
      }
      var type = message.type;
      if (type === 'auth_success') {
        this.attempts = 0;
        this.lastError = null;
        this.connectionId = message.connection_id || null;
        this.extensions = message.extensions || null;
        var resume = this.extensions && this.extensions.resume;
        if (this.lastSeq == null && resume && typeof resume.since === 'number') {
          this.lastSeq = resume.since; // the head when we arrived: resume from here
        }
        this._startHeartbeat();
        this._setState('connected', { connectionId: this.connectionId });
      } else if (type === 'auth_failed') {
        this._authFailed({
          error_code: 'AUTH_FAILED',
          error_message: message.reason || 'authentication failed',
        });
      } else if (type === 'error') {
        var payload = message.payload || {};
        this.lastError = payload;
        if (this.state !== 'connected' && FATAL_CODES[payload.error_code]) {
          this._authFailed(payload);
        }
      }
      if (typeof message.seq === 'number') {
        this.lastSeq = message.seq;
      }
      this._emit(type, message);
      this._emit('*', message);
    }

    _authFailed(error) {
      this.lastError = error;
      this._stopped = true;
      this._clearReconnect();
      this._teardown(1000, 'authentication failed');
      this._setState('failed', error);
      this._emit('auth_failed', error);
    }

    _closed(code, reason) {
      this._stopHeartbeat();
      this.ws = null;
      this.connectionId = null;
      this._emit('disconnected', { code: code, reason: reason });
      if (this._stopped) {
        return;
      }
      this._scheduleReconnect();
    }

    _scheduleReconnect() {
      if (this._stopped || this.reconnectTimer !== null) {
        return;
      }
      if (this.attempts >= this.options.maxAttempts) {
        this._setState('failed', {
          error_code: 'GIVE_UP',
          error_message: 'gave up after ' + this.attempts + ' attempts',
        });
        return;
      }
      this.attempts += 1;
      var delay = backoffDelay(this.attempts, this.options);
      this.nextRetryAt = Date.now() + delay;
      this.reconnectTimer = root.setTimeout(() => {
        this.reconnectTimer = null;
        this.nextRetryAt = null;
        this._open();
      }, delay);
      this._setState('reconnecting', { attempt: this.attempts, delay: delay });
    }

    _clearReconnect() {
      if (this.reconnectTimer !== null) {
        root.clearTimeout(this.reconnectTimer);
        this.reconnectTimer = null;
        this.nextRetryAt = null;
      }
    }

    _teardown(code, reason) {
      this._stopHeartbeat();
      var ws = this.ws;
      this.ws = null;
      this.connectionId = null;
      if (ws) {
        ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
        try {
          ws.close(code, reason);
        } catch (err) {
          // Already closed.
        }
      }
    }

    _startHeartbeat() {
      this._stopHeartbeat();
      var interval = this.options.pingInterval;
      this._lastSeen = Date.now();
      this._pingTimer = root.setInterval(() => {
        if (this.state !== 'connected' || !this.ws) {
          return;
        }
        if (Date.now() - this._lastSeen > 2 * interval) {
          // Nothing came back, not even a pong: the connection is dead.
          this._teardown(4000, 'heartbeat timeout');
          this._emit('disconnected', { code: 4000, reason: 'heartbeat timeout' });
          this._scheduleReconnect();
          return;
        }
        this.ws.send(JSON.stringify({ type: 'ping' }));
      }, interval);
    }

    _stopHeartbeat() {
      if (this._pingTimer !== null) {
        root.clearInterval(this._pingTimer);
        this._pingTimer = null;
      }
    }
  }

  CatsockClient.backoffDelay = backoffDelay;
  CatsockClient.DEFAULTS = DEFAULTS;

  root.CatsockClient = CatsockClient;
  if (typeof module !== 'undefined' && module.exports) {
    module.exports = CatsockClient;
  }
})(typeof window !== 'undefined' ? window : globalThis);
