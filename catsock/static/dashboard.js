/*
 * The catsock live dashboard (seed 000 FR-4): a feed of conversions and clicks,
 * counters, a messages-per-second chart, connections by client type and
 * highlighted budget / fraud alerts.
 *
 * Everything an event carries is written into the page with textContent or
 * setAttribute, never as HTML: a payload is data from another system.
 *
 * What the dashboard sees depends on its token (docs/protocol.md §8): an
 * unbound DASHBOARD token joins type:DASHBOARD and gets every business event;
 * a token bound to a user joins user:<id> only and gets that affiliate's
 * conversions, clicks, tier rewards and stats.
 */
(function () {
  'use strict';

  var TOKEN_KEY = 'catsock.dashboard.token';
  var FEED_MAX = 200;
  var ALERTS_MAX = 50;
  var CHART_SECONDS = 60;
  var METRICS_URL = '/metrics';
  var METRICS_INTERVAL = 5000;
  var HISTORY_URL = '/api/history?seconds=3600&limit=500';
  /** message_ids remembered to count an event once, live or from history. */
  var SEEN_MAX = 5000;
  /** The gauge of open WebSocket connections, labelled by client type (catsock/metrics.py). */
  var CONNECTION_METRIC = 'catsock_connections';
  var EVENT_TYPES = ['conversion', 'click', 'tier_reward', 'budget_alert', 'fraud_alert', 'stats_update', 'user_online'];
  var ALERT_TYPES = { budget_alert: true, fraud_alert: true };
  var STATE_TEXT = {
    idle: 'not connected',
    connecting: 'connecting…',
    connected: 'connected',
    reconnecting: 'reconnecting…',
    failed: 'refused',
    closed: 'logged out',
  };

  function $(id) {
    return document.getElementById(id);
  }

  /** An element with optional class and text; text always goes through textContent. */
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

  function show(node, visible) {
    node.classList.toggle('hidden', !visible);
  }

  function str(value) {
    if (value === undefined || value === null) {
      return '';
    }
    return typeof value === 'object' ? JSON.stringify(value) : String(value);
  }

  function num(value) {
    var n = Number(value);
    return Number.isFinite(n) ? n : 0;
  }

  function formatNumber(value) {
    return num(value).toLocaleString();
  }

  function timeOf(event) {
    var t = event && typeof event.timestamp === 'string' ? new Date(event.timestamp) : new Date();
    if (Number.isNaN(t.getTime())) {
      t = new Date();
    }
    return t.toLocaleTimeString();
  }

  // -- state -------------------------------------------------------------------

  var dash = {
    client: null,
    counts: { conversion: 0, click: 0, tier_reward: 0, alerts: 0, total: 0 },
    sums: { sales: 0, cost: 0 },
    senders: {},
    rate: new Array(CHART_SECONDS).fill(0),
    rateSecond: Math.floor(Date.now() / 1000),
    peak: 0,
    timers: [],
    drawPending: false,
    metricsAvailable: null,
    gatewaySeen: {},
    seen: new Set(),
    historyLoaded: null,
  };
  // For tests and for poking around in the console; holds no token.
  window.catsockDashboard = dash;

  // -- summaries (plain strings; rendered as text) ---------------------------------

  function summary(event) {
    var p = event.payload && typeof event.payload === 'object' ? event.payload : {};
    switch (event.type) {
      case 'conversion':
        return (
          'pay ' + str(p.pay_id) + ' · ' + (str(p.adware_name) || 'ad ' + str(p.adware_id)) +
          ' · owner ' + (str(p.owner_name) || str(p.owner_id)) +
          ' · sales ' + formatNumber(p.sales) + ' · cost ' + formatNumber(p.cost) +
          ' · ' + str(p.state)
        );
      case 'click':
        return (
          'access ' + str(p.access_id) + ' · ad ' + str(p.adware_id) + ' · owner ' + str(p.owner_id) +
          (p.has_reward ? ' · reward ' + formatNumber(p.reward_amount) : '') +
          (p.ipaddress ? ' · ' + str(p.ipaddress) : '')
        );
      case 'tier_reward':
        return (
          'tier ' + str(p.tier_level) + ' · owner ' + str(p.owner_id) + ' · ad ' + str(p.adware_id) +
          ' · cost ' + formatNumber(p.cost)
        );
      case 'budget_alert':
        return (
          'ad ' + str(p.adware_id) + ' budget at ' + str(p.usage_percentage) + ' % (' +
          formatNumber(p.current_budget) + ' / ' + formatNumber(p.limit) + ')'
        );
      case 'fraud_alert':
        return str(p.fraud_type) + (p.details !== undefined ? ' · ' + str(p.details) : '');
      case 'stats_update':
        return (
          (p.owner_id !== undefined && p.owner_id !== null ? 'owner ' + str(p.owner_id) + ' · ' : '') +
          (p.period ? str(p.period) + ' · ' : '') +
          'clicks ' + formatNumber(p.clicks) + ' · conversions ' + formatNumber(p.conversions) +
          ' · sales ' + formatNumber(p.sales)
        );
      case 'user_online':
        return (
          'user ' + (str(p.user_name) || str(p.user_id)) + (p.online === false ? ' went offline' : ' online')
        );
      default:
        return JSON.stringify(p);
    }
  }

  function eventItem(event) {
    var li = el('li', 'event event-' + event.type);
    li.setAttribute('data-type', event.type);
    if (event.message_id !== undefined) {
      li.setAttribute('data-message-id', str(event.message_id));
    }
    if (ALERT_TYPES[event.type]) {
      li.classList.add('alert');
    }
    var head = el('div', 'event-head');
    head.appendChild(el('time', 'event-time', timeOf(event)));
    head.appendChild(el('span', 'event-type', event.type));
    head.appendChild(el('span', 'event-summary', summary(event)));
    li.appendChild(head);
    var details = el('details', 'event-details');
    details.appendChild(el('summary', null, 'payload'));
    details.appendChild(el('pre', 'event-payload', JSON.stringify(event.payload, null, 2)));
    li.appendChild(details);
    return li;
  }

  function prepend(list, item, max) {
    list.insertBefore(item, list.firstChild);
    while (list.children.length > max) {
      list.removeChild(list.lastChild);
    }
  }

  // -- counters -------------------------------------------------------------------

  function renderCounters() {
    $('count-conversion').textContent = formatNumber(dash.counts.conversion);
    $('count-click').textContent = formatNumber(dash.counts.click);
    $('count-tier_reward').textContent = formatNumber(dash.counts.tier_reward);
    $('count-alerts').textContent = formatNumber(dash.counts.alerts);
    $('count-total').textContent = formatNumber(dash.counts.total);
    $('sum-sales').textContent = formatNumber(dash.sums.sales);
    $('sum-cost').textContent = formatNumber(dash.sums.cost);
  }

  function onEvent(event) {
    var p = event.payload && typeof event.payload === 'object' ? event.payload : {};
    if (dash.counts[event.type] !== undefined) {
      dash.counts[event.type] += 1;
    }
    if (event.type === 'conversion') {
      dash.sums.sales += num(p.sales);
      dash.sums.cost += num(p.cost);
    }
    if (ALERT_TYPES[event.type]) {
      dash.counts.alerts += 1;
      prepend($('alerts'), eventItem(event), ALERTS_MAX);
      show($('alerts-empty'), false);
    }
    prepend($('feed'), eventItem(event), FEED_MAX);
    show($('feed-empty'), false);
    renderCounters();
  }

  // -- messages per second ------------------------------------------------------------

  function advanceRate() {
    var now = Math.floor(Date.now() / 1000);
    var steps = Math.min(now - dash.rateSecond, CHART_SECONDS);
    for (var i = 0; i < steps; i++) {
      dash.rate.shift();
      dash.rate.push(0);
    }
    if (now > dash.rateSecond) {
      dash.rateSecond = now;
    }
  }

  function countMessage() {
    advanceRate();
    dash.rate[CHART_SECONDS - 1] += 1;
    dash.counts.total += 1;
    scheduleDraw();
  }

  /** Redraw at the next frame, at most once a frame however many messages arrive. */
  function scheduleDraw() {
    if (dash.drawPending) {
      return;
    }
    dash.drawPending = true;
    requestAnimationFrame(function () {
      dash.drawPending = false;
      drawChart();
    });
  }

  function drawChart() {
    advanceRate();
    var canvas = $('rate-chart');
    var ratio = window.devicePixelRatio || 1;
    var cssWidth = canvas.clientWidth || 600;
    var cssHeight = canvas.clientHeight || 160;
    if (canvas.width !== Math.round(cssWidth * ratio) || canvas.height !== Math.round(cssHeight * ratio)) {
      canvas.width = Math.round(cssWidth * ratio);
      canvas.height = Math.round(cssHeight * ratio);
    }
    var ctx = canvas.getContext('2d');
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    var styles = getComputedStyle(canvas);
    var fg = styles.getPropertyValue('--chart-bar').trim() || '#2f6fde';
    var grid = styles.getPropertyValue('--chart-grid').trim() || '#d8dde6';
    var text = styles.getPropertyValue('--chart-text').trim() || '#59606b';

    var left = 36;
    var bottom = cssHeight - 18;
    var top = 8;
    var width = cssWidth - left - 6;
    var height = bottom - top;
    // The completed seconds: the current one is still filling up.
    var finished = dash.rate.slice(0, CHART_SECONDS - 1);
    var max = Math.max.apply(null, dash.rate);
    // Four grid steps of 1, 2 or 5 × 10^k messages: the lines fall on whole numbers.
    var scale = 4 * niceStep(Math.max(4, max) / 4);

    ctx.clearRect(0, 0, cssWidth, cssHeight);
    ctx.font = '11px system-ui, sans-serif';
    ctx.lineWidth = 1;
    ctx.strokeStyle = grid;
    ctx.fillStyle = text;
    ctx.textAlign = 'right';
    ctx.textBaseline = 'middle';
    for (var g = 0; g <= 4; g++) {
      var y = Math.round(bottom - (height * g) / 4) + 0.5;
      ctx.beginPath();
      ctx.moveTo(left, y);
      ctx.lineTo(left + width, y);
      ctx.stroke();
      ctx.fillText(String((scale * g) / 4), left - 4, y);
    }
    ctx.textAlign = 'center';
    ctx.textBaseline = 'top';
    ctx.fillText('-60 s', left + 12, bottom + 4);
    ctx.fillText('now', left + width - 10, bottom + 4);

    var slot = width / CHART_SECONDS;
    ctx.fillStyle = fg;
    dash.rate.forEach(function (value, i) {
      if (value <= 0) {
        return;
      }
      var h = (value / scale) * height;
      ctx.fillRect(left + i * slot + 1, bottom - h, Math.max(1, slot - 2), h);
    });

    var current = finished[finished.length - 1] || 0;
    dash.peak = Math.max(dash.peak, max);
    $('rate-now').textContent = String(current);
    $('rate-peak').textContent = String(dash.peak);
  }

  /** The smallest whole 1, 2, 2.5, 5 × 10^k that is >= value (value >= 1). */
  function niceStep(value) {
    var exp = Math.pow(10, Math.floor(Math.log10(value)));
    var steps = exp >= 10 ? [1, 2, 2.5, 5, 10] : [1, 2, 5, 10];
    for (var i = 0; i < steps.length; i++) {
      if (steps[i] * exp >= value) {
        return steps[i] * exp;
      }
    }
    return 10 * exp;
  }

  // -- connections by client type -------------------------------------------------------

  /** Parse Prometheus text for `catsock_connections{client_type="X"} value` lines. */
  function connectionsFromMetrics(text) {
    var found = null;
    text.split('\n').forEach(function (line) {
      if (line.indexOf(CONNECTION_METRIC + '{') !== 0) {
        return;
      }
      var match = /client_type="((?:[^"\\]|\\.)*)"[^}]*\}\s+(\S+)/.exec(line);
      if (match) {
        found = found || {};
        found[match[1]] = (found[match[1]] || 0) + num(match[2]);
      }
    });
    return found;
  }

  /**
   * Gateway-side trouble that no event on this feed shows: events refused from
   * publishers (the seed's clients never read the error) and events retention took
   * before a durable recipient had them. Each rise of the counter since the page
   * loaded becomes one alert, with the command that tells more.
   */
  var GATEWAY_ALERTS = [
    {
      metric: 'catsock_refused_events_total',
      what: 'events refused from publishers',
      more: 'python -m catsock refused',
    },
    {
      metric: 'catsock_events_lost_to_retention_total',
      what: 'events pruned before a durable recipient had them',
      more: 'python -m catsock ledger (detail: retention)',
    },
  ];

  /** A counter family's total and its values by label value, or null when absent. */
  function counterFromMetrics(text, name) {
    var found = null;
    text.split('\n').forEach(function (line) {
      var match = /^([a-z_]+)(?:\{[a-z_]+="((?:[^"\\]|\\.)*)"\})?\s+(\S+)$/.exec(line);
      if (!match || match[1] !== name) {
        return;
      }
      found = found || { total: 0, by: {} };
      found.total += num(match[3]);
      if (match[2] !== undefined) {
        found.by[match[2]] = (found.by[match[2]] || 0) + num(match[3]);
      }
    });
    return found;
  }

  function gatewayAlerts(text) {
    GATEWAY_ALERTS.forEach(function (alert) {
      var counter = counterFromMetrics(text, alert.metric);
      var seen = dash.gatewaySeen[alert.metric] || 0;
      if (counter === null || counter.total <= seen) {
        return;
      }
      dash.gatewaySeen[alert.metric] = counter.total;
      var reasons = Object.keys(counter.by)
        .filter(function (key) { return counter.by[key] > 0; })
        .sort()
        .map(function (key) { return key + ' ' + formatNumber(counter.by[key]); });
      var li = el('li', 'event alert gateway-alert');
      li.setAttribute('data-metric', alert.metric);
      var head = el('div', 'event-head');
      head.appendChild(el('time', 'event-time', new Date().toISOString().slice(11, 19)));
      head.appendChild(el('span', 'event-type', 'gateway'));
      head.appendChild(
        el(
          'span',
          'event-summary',
          formatNumber(counter.total - seen) + ' ' + alert.what +
            (reasons.length ? ' (' + reasons.join(', ') + ')' : '') + ': ' + alert.more
        )
      );
      li.appendChild(head);
      dash.counts.alerts += 1;
      prepend($('alerts'), li, ALERTS_MAX);
      show($('alerts-empty'), false);
      renderCounters();
    });
  }

  function renderConnections(rows, note, title, column) {
    var body = $('connections-body');
    body.replaceChildren();
    Object.keys(rows)
      .sort()
      .forEach(function (key) {
        var tr = el('tr');
        tr.setAttribute('data-client-type', key);
        tr.appendChild(el('td', null, key));
        tr.appendChild(el('td', 'num', formatNumber(rows[key])));
        body.appendChild(tr);
      });
    $('connections-title').textContent = title;
    $('connections-column').textContent = column;
    $('connections-note').textContent = note;
  }

  function pollMetrics() {
    if (dash.metricsAvailable === false) {
      renderSenders();
      return;
    }
    fetch(METRICS_URL, { cache: 'no-store', credentials: 'same-origin' })
      .then(function (response) {
        if (!response.ok) {
          throw new Error('HTTP ' + response.status);
        }
        return response.text();
      })
      .then(function (text) {
        var rows = connectionsFromMetrics(text);
        if (rows === null) {
          throw new Error('no connection gauge');
        }
        dash.metricsAvailable = true;
        gatewayAlerts(text);
        renderConnections(
          rows,
          'open WebSocket connections, from ' + METRICS_URL + ', every ' + METRICS_INTERVAL / 1000 + ' s',
          'Connections by client type',
          'connections'
        );
      })
      .catch(function () {
        dash.metricsAvailable = false;
        renderSenders();
      });
  }

  /** Without /metrics: what this dashboard can count itself, the events by sender type. */
  function renderSenders() {
    renderConnections(
      dash.senders,
      'gateway metrics unavailable: events this dashboard received, by sender client type',
      'Events by sender',
      'events'
    );
  }

  // -- connection state and login ---------------------------------------------------------

  function setStatus(state, detail) {
    var node = $('status');
    var text = STATE_TEXT[state] || state;
    if (state === 'reconnecting' && detail && detail.delay) {
      text = 'reconnecting in ' + Math.max(1, Math.round(detail.delay / 1000)) + ' s (attempt ' + detail.attempt + ')';
    } else if (state === 'reconnecting' && detail && detail.attempt) {
      text = 'reconnecting (attempt ' + detail.attempt + ')…';
    } else if (state === 'failed' && detail && detail.error_code) {
      text = 'refused: ' + detail.error_code;
    }
    node.setAttribute('data-state', state);
    node.textContent = text;
  }

  function loginError(message) {
    var node = $('login-error');
    node.textContent = message;
    show(node, Boolean(message));
  }

  function resetView() {
    dash.counts = { conversion: 0, click: 0, tier_reward: 0, alerts: 0, total: 0 };
    dash.sums = { sales: 0, cost: 0 };
    dash.senders = {};
    dash.rate = new Array(CHART_SECONDS).fill(0);
    dash.peak = 0;
    dash.seen = new Set();
    dash.historyLoaded = null;
    $('feed').replaceChildren();
    $('alerts').replaceChildren();
    show($('feed-empty'), true);
    show($('alerts-empty'), true);
    renderCounters();
  }

  function stopTimers() {
    dash.timers.forEach(function (t) {
      clearInterval(t);
    });
    dash.timers = [];
  }

  function start(token) {
    if (dash.client) {
      dash.client.close();
    }
    loginError('');
    resetView();
    var client = new CatsockClient({ url: CatsockClient.defaultUrl(), token: token, clientType: 'DASHBOARD' });
    dash.client = client;
    // Once per login: after a reconnect the window would count events twice.
    var historyAsked = false;

    client.on('state', function (state, detail) {
      if (client !== dash.client) {
        return;
      }
      setStatus(state, detail);
      if (state === 'connected') {
        show($('login'), false);
        show($('dashboard'), true);
        show($('logout'), true);
        $('identity').textContent = client.connectionId ? client.connectionId : '';
        pollMetrics();
        if (!historyAsked) {
          historyAsked = true;
          loadHistory(token, client);
        }
        // console.js asks the admin endpoints with the same token.
        document.dispatchEvent(new CustomEvent('catsock:connected', { detail: { token: token } }));
      }
    });
    client.on('auth_failed', function (error) {
      if (client !== dash.client) {
        return;
      }
      sessionStorage.removeItem(TOKEN_KEY);
      document.dispatchEvent(new CustomEvent('catsock:logout'));
      stopTimers();
      show($('dashboard'), false);
      show($('logout'), false);
      show($('login'), true);
      $('identity').textContent = '';
      loginError(
        'The gateway refused this token (' + str(error.error_code) + ': ' +
        (str(error.error_message) || 'authentication failed') + '). Check it and try again.'
      );
      $('token').focus();
    });
    client.on('error', function (message) {
      var p = message.payload || {};
      if (client.connected && p.error_code) {
        $('identity').textContent = 'last error: ' + str(p.error_code);
      }
    });
    client.on('*', function (message) {
      if (message.type === 'pong' || message.type === 'auth_success' || message.type === 'error') {
        return;
      }
      if (seen(message)) {
        return;
      }
      countMessage();
      if (typeof message.sender === 'string') {
        dash.senders[message.sender] = (dash.senders[message.sender] || 0) + 1;
        if (dash.metricsAvailable === false) {
          renderSenders();
        }
      }
      if (EVENT_TYPES.indexOf(message.type) >= 0 || message.payload !== undefined) {
        onEvent(message);
      }
    });

    stopTimers();
    dash.timers.push(setInterval(drawChart, 1000));
    dash.timers.push(setInterval(pollMetrics, METRICS_INTERVAL));
    drawChart();
    pollMetrics();
    client.connect();
  }

  // -- history on load -----------------------------------------------------------------

  /** The event log's recent window (GET /api/history): the counters, feed and rate
   *  chart start from it, not from zero at every login. Placed on the chart by the
   *  gateway's clock (``at`` against ``now``), so a browser's own clock does not matter. */
  function loadHistory(token, client) {
    fetch(HISTORY_URL, {
      cache: 'no-store',
      credentials: 'omit',
      headers: { Authorization: 'Bearer ' + token },
    })
      .then(function (response) {
        return response.ok ? response.json() : null;
      })
      .then(function (history) {
        if (!history || client !== dash.client) {
          return;
        }
        advanceRate();
        history.events.forEach(function (event, i) {
          if (seen(event)) {
            return;
          }
          dash.counts.total += 1;
          var ago = Math.floor(num(history.now) - num(history.at[i]));
          if (ago >= 0 && ago < CHART_SECONDS) {
            dash.rate[CHART_SECONDS - 1 - ago] += 1;
          }
          onEvent(event);
        });
        dash.historyLoaded = history.events.length;
        scheduleDraw();
      })
      .catch(function () {
        dash.historyLoaded = 0;
      });
  }

  /** Whether this event was counted already (live or from history); remembers it. */
  function seen(event) {
    var key = event && event.message_id !== undefined ? str(event.sender) + ' ' + str(event.message_id) : null;
    if (key === null) {
      return false;
    }
    if (dash.seen.has(key)) {
      return true;
    }
    if (dash.seen.size >= SEEN_MAX) {
      dash.seen.clear();
    }
    dash.seen.add(key);
    return false;
  }

  function logout() {
    sessionStorage.removeItem(TOKEN_KEY);
    document.dispatchEvent(new CustomEvent('catsock:logout'));
    stopTimers();
    if (dash.client) {
      dash.client.close();
      dash.client = null;
    }
    show($('dashboard'), false);
    show($('logout'), false);
    show($('login'), true);
    $('identity').textContent = '';
    setStatus('idle');
  }

  function init() {
    $('login-form').addEventListener('submit', function (e) {
      e.preventDefault();
      var input = $('token');
      var token = input.value.trim();
      input.value = '';
      if (!token) {
        loginError('Paste a token first.');
        return;
      }
      sessionStorage.setItem(TOKEN_KEY, token);
      start(token);
    });
    $('logout').addEventListener('click', logout);
    renderCounters();
    setStatus('idle');
    var saved = sessionStorage.getItem(TOKEN_KEY);
    if (saved) {
      start(saved);
    }
  }

  if (document.readyState === 'loading') {
    document.addEventListener('DOMContentLoaded', init);
  } else {
    init();
  }
})();
