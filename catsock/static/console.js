/*
 * The operator's console (issue 15): recipients and their lag, the ledger,
 * refused events, live connections, tokens and the audit trail, from the
 * /api/admin/* endpoints (docs/http-api.md, "Admin").
 *
 * Shown only when the logged-in token is an admin one (a DASHBOARD token bound
 * to no user): the page asks /api/admin/recipients and shows the console only
 * on a 200; an affiliate's token gets 403 and sees its feed alone. The token
 * travels in the Authorization header of each request, never in a cookie, so
 * no other site can make the browser act for the operator (CSRF).
 *
 * Everything from the gateway, payloads above all, is written with textContent,
 * never as HTML.
 */
(function () {
  'use strict';

  var REFRESH_INTERVAL = 5000;
  var LIST_LIMIT = 200;

  var state = {
    token: null,
    view: 'recipients',
    timer: null,
    recipients: [],
    sortKey: 'lag_seconds',
    sortDescending: true,
    threshold: 60,
  };
  // For tests and for poking around; holds no token.
  var visible = { admin: false, checked: false, refreshes: 0 };
  window.catsockConsole = visible;

  function $(id) {
    return document.getElementById(id);
  }

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) {
      node.className = className;
    }
    if (text !== undefined && text !== null) {
      node.textContent = String(text);
    }
    return node;
  }

  function show(node, on) {
    node.classList.toggle('hidden', !on);
  }

  function cell(row, text, className) {
    var td = el('td', className || '', text === null || text === undefined ? '' : text);
    row.appendChild(td);
    return td;
  }

  function shortTime(iso) {
    return typeof iso === 'string' ? iso.replace('T', ' ').replace('Z', '') : '';
  }

  function message(text, bad) {
    var node = $('console-message');
    node.textContent = text;
    node.classList.toggle('bad', Boolean(bad));
  }

  /** One admin request; resolves with {status, body}. */
  function api(method, path, body) {
    var init = {
      method: method,
      cache: 'no-store',
      credentials: 'omit',
      headers: { Authorization: 'Bearer ' + state.token },
    };
    if (body !== undefined) {
      init.headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    return fetch(path, init).then(function (response) {
      return response.json().then(
        function (json) { return { status: response.status, body: json }; },
        function () { return { status: response.status, body: {} }; }
      );
    });
  }

  function failed(what, reply) {
    var b = reply.body || {};
    message(what + ' failed: ' + (b.error_code || reply.status) + ': ' + (b.error_message || ''), true);
  }

  // -- recipients ------------------------------------------------------------------------

  function sortRecipients(rows) {
    var key = state.sortKey;
    var sign = state.sortDescending ? -1 : 1;
    return rows.slice().sort(function (a, b) {
      var x = a[key];
      var y = b[key];
      if (x === y) {
        return a.identity < b.identity ? -1 : 1;
      }
      if (x === null || x === undefined) {
        return 1;
      }
      if (y === null || y === undefined) {
        return -1;
      }
      return (x < y ? -1 : 1) * sign;
    });
  }

  function renderRecipients() {
    var body = $('recipients-body');
    body.replaceChildren();
    sortRecipients(state.recipients).forEach(function (r) {
      var tr = el('tr', r.lagging ? 'lagging' : '');
      tr.setAttribute('data-identity', r.identity);
      tr.setAttribute('data-lagging', r.lagging ? 'true' : 'false');
      cell(tr, r.identity);
      cell(tr, r.client_type + (r.user_id ? ' (user ' + r.user_id + ')' : ''));
      cell(tr, r.online ? 'online' : 'offline', r.online ? 'online' : 'offline');
      cell(tr, r.connections);
      cell(tr, r.cursor);
      cell(tr, (r.lag_capped ? '≥ ' : '') + r.lag_events, 'lag-events');
      cell(tr, r.lag_seconds === null ? '—' : r.lag_seconds.toFixed(1), 'lag-seconds');
      cell(tr, shortTime(r.last_ack_at) || '—');
      cell(tr, r.redelivered);
      body.appendChild(tr);
    });
    lagAlerts();
  }

  /** A recipient past the threshold is an alert in the dashboard's alert list, until it is not. */
  function lagAlerts() {
    var list = $('alerts');
    var lagging = {};
    state.recipients.forEach(function (r) {
      if (r.lagging) {
        lagging[r.identity] = r;
      }
    });
    Array.prototype.slice.call(list.querySelectorAll('li.lag-alert')).forEach(function (li) {
      if (!lagging[li.getAttribute('data-identity')]) {
        li.remove();
      }
    });
    Object.keys(lagging).forEach(function (identity) {
      var r = lagging[identity];
      var li = list.querySelector('li.lag-alert[data-identity="' + CSS.escape(identity) + '"]');
      if (!li) {
        li = el('li', 'event alert gateway-alert lag-alert');
        li.setAttribute('data-identity', identity);
        list.insertBefore(li, list.firstChild);
      }
      li.replaceChildren();
      var head = el('div', 'event-head');
      head.appendChild(el('time', 'event-time', new Date().toISOString().slice(11, 19)));
      head.appendChild(el('span', 'event-type', 'lag'));
      head.appendChild(el('span', 'event-summary',
        identity + ' is ' + r.lag_events + ' events (' + Math.round(r.lag_seconds) + ' s) behind' +
        (r.online ? '' : ', offline')));
      li.appendChild(head);
    });
    if (Object.keys(lagging).length) {
      show($('alerts-empty'), false);
    } else if (!list.children.length) {
      show($('alerts-empty'), true);
    }
  }

  function loadRecipients() {
    return api('GET', '/api/admin/recipients?limit=' + LIST_LIMIT).then(function (reply) {
      if (reply.status !== 200) {
        failed('Recipients', reply);
        return reply;
      }
      state.recipients = reply.body.recipients;
      state.threshold = reply.body.threshold_seconds;
      $('lag-threshold').textContent = String(state.threshold);
      renderRecipients();
      return reply;
    });
  }

  // -- the ledger --------------------------------------------------------------------------

  function searchLedger(messageId, recipient) {
    var query = '?message_id=' + encodeURIComponent(messageId);
    if (recipient) {
      query += '&recipient=' + encodeURIComponent(recipient);
    }
    api('GET', '/api/admin/ledger' + query).then(function (reply) {
      var out = $('ledger-result');
      out.replaceChildren();
      if (reply.status !== 200) {
        failed('Ledger search', reply);
        return;
      }
      var b = reply.body;
      b.refusals.forEach(function (line) {
        out.appendChild(el('p', 'ledger-refusal', line));
      });
      if (!b.events.length) {
        out.appendChild(el('p', 'ledger-none muted',
          'No event with message_id ' + messageId + ' in the log' +
          (b.refusals.length ? ': it was refused (above).' : ': never accepted, or pruned.')));
      }
      b.events.forEach(function (story) {
        var section = el('div', 'ledger-story');
        section.setAttribute('data-seq', story.event.seq);
        story.lines.forEach(function (line) {
          section.appendChild(el('p', 'ledger-line', line));
        });
        Object.keys(story.recipients).forEach(function (name) {
          var box = el('div', 'ledger-recipient');
          box.setAttribute('data-recipient', name);
          box.appendChild(el('h3', '', name));
          var ol = el('ol', 'timeline');
          story.recipients[name].forEach(function (fact) {
            ol.appendChild(el('li', 'fact', fact));
          });
          box.appendChild(ol);
          section.appendChild(box);
        });
        out.appendChild(section);
      });
      message('');
    });
  }

  // -- refused events ------------------------------------------------------------------------

  function loadRefused() {
    return api('GET', '/api/admin/refused?limit=' + LIST_LIMIT).then(function (reply) {
      if (reply.status !== 200) {
        failed('Refused events', reply);
        return;
      }
      var body = $('refused-body');
      body.replaceChildren();
      reply.body.refused.forEach(function (r) {
        var tr = el('tr');
        tr.setAttribute('data-id', r.id);
        cell(tr, r.id);
        cell(tr, shortTime(r.at));
        cell(tr, r.reason + ': ' + r.detail, 'reason');
        cell(tr, (r.identity || '?') + ' (' + (r.connection_id || r.transport) + ')');
        cell(tr, r.type);
        cell(tr, r.message_id);
        var payload = cell(tr, '', 'payload');
        payload.appendChild(el('pre', '', r.body === null ? '(not kept)' : r.body));
        cell(tr, r.retried_at ? shortTime(r.retried_at) + ': ' + r.retry_result +
          (r.retry_seq !== null ? ' as seq ' + r.retry_seq : '') : '', 'retried');
        var action = cell(tr, '');
        if (r.body !== null) {
          var button = el('button', 'retry', 'Retry');
          button.type = 'button';
          button.addEventListener('click', function () {
            button.disabled = true;
            api('POST', '/api/admin/refused/retry', { id: r.id }).then(function (answer) {
              if (answer.status === 202) {
                message('Refused event ' + r.id + ': ' +
                  (answer.body.duplicate ? 'a duplicate of seq ' : 'accepted as seq ') + answer.body.seq);
              } else {
                failed('Retry of refused event ' + r.id, answer);
              }
              loadRefused();
            });
          });
          action.appendChild(button);
        }
        body.appendChild(tr);
      });
    });
  }

  // -- connections ----------------------------------------------------------------------------

  function loadConnections() {
    return api('GET', '/api/admin/connections?limit=' + LIST_LIMIT).then(function (reply) {
      if (reply.status !== 200) {
        failed('Connections', reply);
        return;
      }
      $('connections-summary').textContent = reply.body.total + ' WebSocket connections, ' +
        reply.body.long_polls + ' long-polls waiting';
      var body = $('live-connections-body');
      body.replaceChildren();
      reply.body.connections.forEach(function (c) {
        var tr = el('tr', c.closing ? 'closing' : '');
        tr.setAttribute('data-connection-id', c.id);
        tr.setAttribute('data-identity', c.identity || '');
        cell(tr, c.id);
        cell(tr, c.identity || '(not authenticated)');
        cell(tr, c.client_type + (c.user_id ? ' (user ' + c.user_id + ')' : ''));
        cell(tr, c.remote);
        cell(tr, shortTime(c.connected_at));
        cell(tr, c.queued);
        cell(tr, c.transport);
        var action = cell(tr, '');
        var reason = el('input', 'close-reason');
        reason.type = 'text';
        reason.placeholder = 'reason';
        reason.setAttribute('aria-label', 'reason for closing ' + c.id);
        var button = el('button', 'close-connection', 'Close');
        button.type = 'button';
        button.addEventListener('click', function () {
          button.disabled = true;
          api('POST', '/api/admin/connections/close', { id: c.id, reason: reason.value })
            .then(function (answer) {
              if (answer.status === 200) {
                message('Closed ' + c.id + ': ' + answer.body.reason);
              } else {
                failed('Closing ' + c.id, answer);
              }
              loadConnections();
            });
        });
        action.appendChild(reason);
        action.appendChild(button);
        body.appendChild(tr);
      });
    });
  }

  // -- tokens ----------------------------------------------------------------------------------

  function loadTokens() {
    return api('GET', '/api/admin/tokens?limit=' + LIST_LIMIT).then(function (reply) {
      if (reply.status !== 200) {
        failed('Tokens', reply);
        return;
      }
      var body = $('tokens-body');
      body.replaceChildren();
      reply.body.tokens.forEach(function (t) {
        var tr = el('tr', t.revoked_at ? 'revoked' : '');
        tr.setAttribute('data-name', t.name);
        cell(tr, t.name + (t.admin ? ' (admin)' : ''));
        cell(tr, t.client_type + (t.publish_only ? ', publish only' : ''));
        cell(tr, t.user_id || '');
        cell(tr, shortTime(t.created_at));
        cell(tr, shortTime(t.revoked_at), 'revoked-at');
        cell(tr, t.connections);
        var action = cell(tr, '');
        if (!t.revoked_at) {
          var button = el('button', 'revoke', 'Revoke');
          button.type = 'button';
          button.addEventListener('click', function () {
            button.disabled = true;
            api('POST', '/api/admin/tokens/revoke', { name: t.name }).then(function (answer) {
              if (answer.status === 200) {
                message('Revoked ' + t.name + '; ' + answer.body.connections_closed + ' connection(s) closed');
              } else {
                failed('Revoking ' + t.name, answer);
              }
              loadTokens();
            });
          });
          action.appendChild(button);
        }
        body.appendChild(tr);
      });
    });
  }

  function createToken() {
    var body = {
      name: $('token-name').value.trim(),
      client_type: $('token-type').value.trim(),
      user_id: $('token-user').value.trim() || null,
    };
    api('POST', '/api/admin/tokens', body).then(function (reply) {
      if (reply.status !== 201) {
        show($('token-created'), false);
        failed('Creating token ' + body.name, reply);
        return;
      }
      $('token-created-name').textContent = reply.body.name;
      $('token-created-value').textContent = reply.body.token;
      show($('token-created'), true);
      $('token-name').value = '';
      message('Created ' + reply.body.name + ': copy the token now, it is not shown again');
      loadTokens();
    });
  }

  // -- the audit trail --------------------------------------------------------------------------

  function loadAudit() {
    return api('GET', '/api/admin/audit?limit=' + LIST_LIMIT).then(function (reply) {
      if (reply.status !== 200) {
        failed('Audit', reply);
        return;
      }
      var body = $('audit-body');
      body.replaceChildren();
      reply.body.audit.forEach(function (a) {
        var tr = el('tr');
        [shortTime(a.at), a.actor, a.remote, a.action, a.target, a.detail, a.result].forEach(
          function (text) { cell(tr, text); }
        );
        body.appendChild(tr);
      });
    });
  }

  // -- views and refresh ------------------------------------------------------------------------

  var LOADERS = {
    recipients: loadRecipients,
    refused: loadRefused,
    connections: loadConnections,
    tokens: loadTokens,
    audit: loadAudit,
  };

  function select(view) {
    state.view = view;
    Array.prototype.forEach.call(document.querySelectorAll('.console-tabs [data-view]'), function (b) {
      b.setAttribute('aria-selected', b.getAttribute('data-view') === view ? 'true' : 'false');
    });
    Array.prototype.forEach.call(document.querySelectorAll('.console-view'), function (v) {
      show(v, v.id === 'view-' + view);
    });
    message('');
    refresh();
  }

  function refresh() {
    if (!state.token) {
      return;
    }
    visible.refreshes += 1;
    // Recipients always: their lag raises alerts whichever view is open.
    var pending = [loadRecipients()];
    if (state.view !== 'recipients' && LOADERS[state.view]) {
      pending.push(LOADERS[state.view]());
    }
    Promise.all(pending).catch(function () {
      message('the gateway did not answer', true);
    });
  }

  function stop() {
    state.token = null;
    visible.admin = false;
    if (state.timer) {
      clearInterval(state.timer);
      state.timer = null;
    }
    show($('console'), false);
    $('console').removeAttribute('data-access');
    Array.prototype.slice.call(document.querySelectorAll('#alerts li.lag-alert')).forEach(function (li) {
      li.remove();
    });
  }

  function started(token) {
    stop();
    visible.checked = false;
    state.token = token;
    loadRecipients().then(function (reply) {
      if (state.token !== token) {
        return;
      }
      visible.checked = true;
      $('console').setAttribute('data-access', reply.status === 200 ? 'admin' : 'denied');
      if (reply.status !== 200) {
        // Not an admin token (403): the feed alone, as before.
        state.token = null;
        message('');
        return;
      }
      visible.admin = true;
      show($('console'), true);
      select(state.view);
      state.timer = setInterval(refresh, REFRESH_INTERVAL);
    }).catch(function () {
      state.token = null;
    });
  }

  function init() {
    Array.prototype.forEach.call(document.querySelectorAll('.console-tabs [data-view]'), function (b) {
      b.addEventListener('click', function () {
        select(b.getAttribute('data-view'));
      });
    });
    Array.prototype.forEach.call(document.querySelectorAll('#recipients th[data-sort]'), function (th) {
      th.addEventListener('click', function () {
        var key = th.getAttribute('data-sort');
        state.sortDescending = state.sortKey === key ? !state.sortDescending : key !== 'identity';
        state.sortKey = key;
        renderRecipients();
      });
    });
    $('ledger-form').addEventListener('submit', function (e) {
      e.preventDefault();
      var id = $('ledger-message-id').value.trim();
      if (id) {
        searchLedger(id, $('ledger-recipient').value.trim());
      }
    });
    $('token-form').addEventListener('submit', function (e) {
      e.preventDefault();
      createToken();
    });
    document.addEventListener('catsock:connected', function (e) {
      started(e.detail.token);
    });
    document.addEventListener('catsock:logout', stop);
  }

  if (document.readyState === 'loading') {
    document.addEventListener('DOMContentLoaded', init);
  } else {
    init();
  }
})();
