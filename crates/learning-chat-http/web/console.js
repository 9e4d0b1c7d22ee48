// The teacher/admin console. Plain JS, no build step, served as is from the binary.
// Every URL is relative, so the console works at any sub-path behind a proxy (/chat/console).
// No inline styles or scripts (strict CSP): the chart is SVG built with DOM calls, coloured by
// classes in console.css.
//
// Each section of the page is one entry of SECTIONS (its tab, whether it needs an admin key,
// and the function that loads it): a new section is a <section id="section-NAME"> in
// console.html and one entry here.
(function () {
  'use strict';

  var KEY_STORAGE = 'learning-chat.console-key';
  var SVG = 'http://www.w3.org/2000/svg';

  var el = function (id) { return document.getElementById(id); };
  var state = { me: null, classes: [], agents: [], cursor: null, section: null, keys: [] };

  // ---------------------------------------------------------------- helpers

  function storage() {
    try { return window.sessionStorage; } catch (e) { return null; }
  }

  function key() {
    var s = storage();
    return s ? s.getItem(KEY_STORAGE) : null;
  }

  function setStatus(text) { el('status').textContent = text || ''; }

  // One API call: JSON in, JSON out; a non-2xx answer rejects with the service's message.
  function api(method, path, body) {
    var headers = { 'Accept': 'application/json' };
    var k = key();
    if (k) { headers['Authorization'] = 'Bearer ' + k; }
    var init = { method: method, headers: headers };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    return fetch(path, init).then(function (response) {
      return response.text().then(function (text) {
        var data = null;
        try { data = text ? JSON.parse(text) : null; } catch (e) { data = null; }
        if (!response.ok) {
          var message = data && data.error ? data.error.message : 'HTTP ' + response.status;
          var error = new Error(message);
          error.status = response.status;
          throw error;
        }
        return data;
      });
    });
  }

  function node(tag, text, className) {
    var n = document.createElement(tag);
    if (text !== undefined && text !== null) { n.textContent = String(text); }
    if (className) { n.className = className; }
    return n;
  }

  function cell(row, text, numeric) {
    var td = node('td', text, numeric ? 'num' : '');
    row.appendChild(td);
    return td;
  }

  function clear(n) { while (n.firstChild) { n.removeChild(n.firstChild); } }

  function usd(value) { return '$' + Number(value || 0).toFixed(value >= 1 ? 2 : 4); }
  function percent(value) { return Math.round(Number(value || 0) * 100) + '%'; }
  function short(id) { return id ? id.slice(0, 10) + (id.length > 10 ? '…' : '') : '—'; }
  function when(rfc3339) { return rfc3339 ? rfc3339.replace('T', ' ').slice(0, 16) : '—'; }
  function className(keyId) {
    for (var i = 0; i < state.classes.length; i++) {
      if (state.classes[i].key_id === keyId) { return state.classes[i].name; }
    }
    return keyId || '—';
  }

  function fail(error) {
    setStatus('Error: ' + error.message);
  }

  // ---------------------------------------------------------------- sign-in and sections

  var SECTIONS = [
    { id: 'classes', title: 'Classes', admin: false, load: loadClasses },
    { id: 'conversations', title: 'Conversations', admin: false, load: loadConversations },
    // Shown to whoever the service lets read the results (`experiments` of /admin/me).
    { id: 'experiments', title: 'Experiments', admin: false, load: loadExperiments,
      shown: function () { return state.me.experiments; } },
    { id: 'keys', title: 'Keys', admin: true, load: loadKeys },
    { id: 'rights', title: 'Data rights', admin: true, load: function () { return Promise.resolve(); } },
    { id: 'audit', title: 'Audit log', admin: true, load: loadAudit }
  ];

  function visibleSections() {
    var admin = state.me && state.me.role === 'admin';
    return SECTIONS.filter(function (s) {
      return (admin || !s.admin) && (!s.shown || s.shown());
    });
  }

  function buildTabs() {
    var tabs = el('tabs');
    clear(tabs);
    visibleSections().forEach(function (section) {
      var li = node('li');
      var button = node('button', section.title);
      button.type = 'button';
      button.id = 'tab-' + section.id;
      button.setAttribute('aria-controls', 'section-' + section.id);
      button.addEventListener('click', function () { show(section.id); });
      li.appendChild(button);
      tabs.appendChild(li);
    });
  }

  function show(id) {
    state.section = id;
    SECTIONS.forEach(function (section) {
      var panel = el('section-' + section.id);
      var tab = el('tab-' + section.id);
      var active = section.id === id;
      panel.hidden = !active;
      if (tab) {
        if (active) { tab.setAttribute('aria-current', 'page'); } else { tab.removeAttribute('aria-current'); }
      }
    });
    var section = SECTIONS.filter(function (s) { return s.id === id; })[0];
    setStatus('Loading ' + section.title.toLowerCase() + '…');
    return section.load().then(function () { setStatus(''); }, fail);
  }

  function signIn(secret) {
    var s = storage();
    if (s) { s.setItem(KEY_STORAGE, secret); }
    setStatus('Signing in…');
    return api('GET', 'api/v1/admin/me').then(function (me) {
      state.me = me;
      el('signin').hidden = true;
      el('signed-in').hidden = false;
      el('who').textContent = 'Signed in as ' + me.name + ' (' + me.role + ', ' + me.key_id + ')';
      buildTabs();
      return Promise.all([
        api('GET', 'api/v1/admin/classes'),
        api('GET', 'api/v1/agents')
      ]);
    }).then(function (loaded) {
      state.classes = loaded[0].classes;
      state.agents = loaded[1].agents;
      fillClassPickers();
      return show('classes');
    }).catch(function (error) {
      if (s) { s.removeItem(KEY_STORAGE); }
      setStatus(error.status === 403 || error.status === 401
        ? 'This key cannot open the console: ' + error.message
        : 'Error: ' + error.message);
    });
  }

  function signOut() {
    var s = storage();
    if (s) { s.removeItem(KEY_STORAGE); }
    state.me = null;
    el('signed-in').hidden = true;
    el('signin').hidden = false;
    SECTIONS.forEach(function (section) { el('section-' + section.id).hidden = true; });
    el('console-key').value = '';
    setStatus('Signed out.');
    el('console-key').focus();
  }

  function fillClassPickers() {
    var chart = el('chart-class');
    var filter = el('filter-class');
    clear(chart);
    while (filter.options.length > 1) { filter.remove(1); }
    filter.options[0].textContent = state.me.role === 'admin' ? 'Every class' : 'All my classes';
    state.classes.forEach(function (c) {
      chart.appendChild(new Option(c.name, c.key_id));
      filter.appendChild(new Option(c.name, c.key_id));
    });
    var agents = el('filter-agent');
    while (agents.options.length > 1) { agents.remove(1); }
    state.agents.forEach(function (a) { agents.appendChild(new Option(a.name, a.id)); });
  }

  // ---------------------------------------------------------------- classes

  function loadClasses() {
    return api('GET', 'api/v1/admin/classes').then(function (list) {
      state.classes = list.classes;
      var body = el('classes-table').tBodies[0];
      clear(body);
      list.classes.forEach(function (c) {
        var row = node('tr');
        var name = node('th', c.name + (c.revoked ? ' (revoked)' : ''));
        name.scope = 'row';
        row.appendChild(name);
        cell(row, c.today.requests, true);
        cell(row, c.today.learners, true);
        cell(row, c.today.input_tokens + c.today.output_tokens, true);
        cell(row, usd(c.today.cost_usd), true);
        cell(row, percent(c.today.cache_hit_rate), true);
        cell(row, c.last_30_days.requests, true);
        cell(row, usd(c.last_30_days.cost_usd), true);
        row.appendChild(policyCell(c));
        body.appendChild(row);
      });
      if (!list.classes.length) {
        var empty = node('tr');
        var td = cell(empty, 'No classes yet.');
        td.colSpan = 9;
        body.appendChild(empty);
        return null;
      }
      return loadChart();
    });
  }

  var POLICIES = [
    ['', 'Agent default'],
    ['socratic', 'Socratic (questions)'],
    ['hints', 'Hints'],
    ['full', 'Full answers']
  ];

  // A class's answer policy: a select and its Save, a form of its own per row.
  function policyCell(c) {
    var td = node('td');
    var form = node('form', null, 'row policy-form');
    form.dataset.class = c.key_id;
    var id = 'policy-' + c.key_id;
    var label = node('label', 'Answer policy of ' + c.name, 'visually-hidden');
    label.htmlFor = id;
    var select = node('select');
    select.id = id;
    POLICIES.forEach(function (p) { select.appendChild(new Option(p[1], p[0])); });
    var current = c.policy || '';
    // A policy pinned to a version (socratic@1) is shown as it is, to keep or change.
    if (!POLICIES.some(function (p) { return p[0] === current; })) {
      select.appendChild(new Option(current, current));
    }
    select.value = current;
    var button = node('button', 'Save', 'secondary');
    button.type = 'submit';
    button.appendChild(node('span', ' the policy of ' + c.name, 'visually-hidden'));
    form.appendChild(label);
    form.appendChild(select);
    form.appendChild(button);
    form.addEventListener('submit', function (event) {
      event.preventDefault();
      button.disabled = true;
      api('PUT', 'api/v1/admin/classes/' + encodeURIComponent(c.key_id) + '/policy',
        { policy: select.value || null })
        .then(function (saved) {
          c.policy = saved.policy;
          button.disabled = false;
          setStatus('Answer policy of ' + c.name + ': ' +
            (saved.resolved || 'each tutor\'s own') + '.');
        }).catch(function (error) { button.disabled = false; fail(error); });
    });
    td.appendChild(form);
    return td;
  }

  function metricOf(day, metric) {
    if (metric === 'tokens') { return day.input_tokens + day.output_tokens; }
    return Number(day[metric] || 0);
  }

  function loadChart() {
    var classId = el('chart-class').value || (state.classes[0] && state.classes[0].key_id);
    if (!classId) { return Promise.resolve(); }
    return api('GET', 'api/v1/admin/classes/' + encodeURIComponent(classId) + '/usage?days=30')
      .then(function (usage) {
        state.usage = usage;
        drawChart();
        var body = el('days-table').tBodies[0];
        clear(body);
        usage.days.forEach(function (d) {
          var row = node('tr');
          var day = node('th', d.day);
          day.scope = 'row';
          row.appendChild(day);
          cell(row, d.requests, true);
          cell(row, d.learners, true);
          cell(row, d.input_tokens + d.output_tokens, true);
          cell(row, usd(d.cost_usd), true);
          cell(row, percent(d.cache_hit_rate), true);
          body.appendChild(row);
        });
        var top = el('top-questions');
        clear(top);
        if (!usage.top_questions.length) {
          top.appendChild(node('li', 'No stored conversations this week.'));
        }
        usage.top_questions.forEach(function (q) {
          var li = node('li', q.text + ' ');
          li.appendChild(node('span', '(' + q.count + '×)', 'count'));
          top.appendChild(li);
        });
      });
  }

  function svg(tag, attrs, text) {
    var n = document.createElementNS(SVG, tag);
    Object.keys(attrs).forEach(function (k) { n.setAttribute(k, attrs[k]); });
    if (text !== undefined) { n.textContent = text; }
    return n;
  }

  // A line chart of one metric over the days: a point on every day with traffic.
  function drawChart() {
    var usage = state.usage;
    var metric = el('chart-metric').value;
    var label = el('chart-metric').options[el('chart-metric').selectedIndex].text;
    var days = usage.days;
    var values = days.map(function (d) { return metricOf(d, metric); });
    var max = Math.max.apply(null, values.concat([metric === 'cache_hit_rate' ? 1 : 1e-9]));
    var W = 900, H = 240, left = 64, right = 16, top = 12, bottom = 36;
    var x = function (i) { return left + (days.length < 2 ? 0 : i * (W - left - right) / (days.length - 1)); };
    var y = function (v) { return top + (H - top - bottom) * (1 - v / max); };
    var chart = svg('svg', {
      viewBox: '0 0 ' + W + ' ' + H, role: 'img',
      'aria-label': label + ' per day for ' + usage.name + ', last ' + days.length + ' days'
    });
    [0, 0.5, 1].forEach(function (f) {
      var v = max * f;
      chart.appendChild(svg('line', { x1: left, x2: W - right, y1: y(v), y2: y(v), 'class': 'grid' }));
      var text = metric === 'cost_usd' ? usd(v) : metric === 'cache_hit_rate' ? percent(v)
        : String(Math.round(v));
      chart.appendChild(svg('text', { x: left - 6, y: y(v) + 4, 'text-anchor': 'end', 'class': 'label' }, text));
    });
    chart.appendChild(svg('line', { x1: left, x2: W - right, y1: H - bottom, y2: H - bottom, 'class': 'axis' }));
    var ticks = [[0, 'start'], [Math.floor((days.length - 1) / 2), 'middle'], [days.length - 1, 'end']];
    ticks.forEach(function (tick) {
      var i = tick[0];
      if (days[i]) {
        chart.appendChild(svg('text', { x: x(i), y: H - bottom + 20, 'text-anchor': tick[1], 'class': 'label' },
          days[i].day.slice(5)));
      }
    });
    var path = values.map(function (v, i) { return (i ? 'L' : 'M') + x(i).toFixed(1) + ' ' + y(v).toFixed(1); }).join(' ');
    chart.appendChild(svg('path', { d: path, 'class': 'line' }));
    values.forEach(function (v, i) {
      if (days[i].requests > 0) {
        var point = svg('circle', { cx: x(i), cy: y(v), r: 4, 'class': 'point', 'data-day': days[i].day });
        point.appendChild(svg('title', {}, days[i].day + ': ' + v));
        chart.appendChild(point);
      }
    });
    var holder = el('chart');
    clear(holder);
    holder.appendChild(chart);
    var total = values.reduce(function (a, b) { return a + b; }, 0);
    var busy = days.filter(function (d) { return d.requests > 0; }).length;
    el('chart-caption').textContent = label + ' per day, ' + usage.name + ': ' +
      busy + (busy === 1 ? ' day' : ' days') + ' with traffic' +
      (metric === 'requests' ? ', ' + total + ' questions' : '') + '.';
  }

  // ---------------------------------------------------------------- conversations

  function conversationQuery() {
    var q = [];
    var add = function (name, value) { if (value) { q.push(name + '=' + encodeURIComponent(value)); } };
    add('class', el('filter-class').value);
    add('agent', el('filter-agent').value);
    add('learner', el('filter-learner').value.trim());
    add('flagged', el('filter-flagged').value);
    var since = el('filter-since').value;
    if (since) { add('since', since + 'T00:00:00Z'); }
    add('limit', '25');
    return q;
  }

  function loadConversations(more) {
    var q = conversationQuery();
    if (more && state.cursor) { q.push('cursor=' + encodeURIComponent(state.cursor)); }
    return api('GET', 'api/v1/admin/conversations?' + q.join('&')).then(function (page) {
      var body = el('conversations-table').tBodies[0];
      if (!more) { clear(body); }
      page.conversations.forEach(function (c) {
        var row = node('tr');
        cell(row, when(c.updated_at));
        cell(row, className(c.class));
        cell(row, short(c.learner));
        cell(row, c.agent_id);
        cell(row, c.first_question);
        cell(row, c.turns, true);
        cell(row, c.flags ? c.flags + (c.unreviewed_flags ? ' (' + c.unreviewed_flags + ' to review)' : ' (reviewed)') : '—');
        var open = node('button', 'Open', 'secondary');
        open.type = 'button';
        open.setAttribute('aria-label', 'Open the conversation “' + c.first_question.slice(0, 40) + '”');
        open.dataset.id = c.id;
        open.addEventListener('click', function () { openTranscript(c.id).catch(fail); });
        cell(row, '').appendChild(open);
        body.appendChild(row);
      });
      if (!body.rows.length) {
        var empty = node('tr');
        cell(empty, 'No conversations match.').colSpan = 8;
        body.appendChild(empty);
      }
      state.cursor = page.next_cursor || null;
      el('more-conversations').hidden = !state.cursor;
    });
  }

  function openTranscript(id) {
    setStatus('Opening the transcript…');
    return api('GET', 'api/v1/admin/conversations/' + encodeURIComponent(id)).then(function (t) {
      var panel = el('transcript');
      el('transcript-meta').textContent = className(t.class) + ' · learner ' + short(t.learner) +
        ' · ' + t.agent_id + ' · started ' + when(t.created_at) + ' · ' + t.flag_list.length + ' flag(s)';
      var list = el('transcript-turns');
      clear(list);
      t.transcript.forEach(function (turn, i) {
        var li = node('li', null, 'msg ' + (turn.role === 'user' ? 'question' : 'answer'));
        li.appendChild(node('p', turn.role === 'user' ? 'Learner' : 'Tutor', 'who'));
        li.appendChild(node('div', turn.text, 'body'));
        li.appendChild(node('p', when(turn.at), 'meta'));
        if (turn.role !== 'user') { li.appendChild(ratingForm(t, id, Math.floor(i / 2) + 1)); }
        list.appendChild(li);
        // A flag names its exchange (1 for the first question): shown after that exchange's
        // question (prompt flags) or answer (the others).
        var exchange = Math.floor(i / 2) + 1;
        t.flag_list.filter(function (f) {
          var onQuestion = f.source === 'prompt' || f.source === 'moderation';
          return f.turn === exchange && (turn.role === 'user') === onQuestion;
        }).forEach(function (f) { list.appendChild(flagItem(f, id)); });
      });
      // Flags of no stored exchange (turn 0 or beyond the transcript) at the end.
      var last = Math.ceil(t.transcript.length / 2);
      t.flag_list.filter(function (f) { return f.turn < 1 || f.turn > last; })
        .forEach(function (f) { list.appendChild(flagItem(f, id)); });
      panel.hidden = false;
      panel.focus();
      setStatus('');
    });
  }

  // A teacher's 1-5 rating of the answer of exchange `turn`, beside the learner's thumbs.
  function ratingForm(t, conversationId, turn) {
    var of = function (rater) {
      return t.ratings.filter(function (r) { return r.turn === turn && r.rater === rater; })[0];
    };
    var learner = of('learner');
    var teacher = of('teacher');
    var form = node('form', null, 'row rating');
    if (learner) {
      form.appendChild(node('span', 'Learner: ' + (learner.rating === 'up' ? 'helpful' : 'not helpful') +
        (learner.comment ? ' (“' + learner.comment + '”)' : ''), 'help'));
    }
    var id = 'rate-' + turn;
    var label = node('label', 'Your rating of answer ' + turn);
    label.htmlFor = id;
    var select = node('select');
    select.id = id;
    select.appendChild(new Option('Not rated', ''));
    ['1 – poor', '2', '3', '4', '5 – excellent'].forEach(function (text, n) {
      select.appendChild(new Option(text, String(n + 1)));
    });
    select.value = teacher ? teacher.rating : '';
    var button = node('button', 'Rate', 'secondary');
    button.type = 'submit';
    form.appendChild(label);
    form.appendChild(select);
    form.appendChild(button);
    form.addEventListener('submit', function (event) {
      event.preventDefault();
      if (!select.value) { setStatus('Choose a rating from 1 to 5 first.'); return; }
      button.disabled = true;
      api('POST', 'api/v1/admin/conversations/' + encodeURIComponent(conversationId) + '/feedback',
        { turn: turn, rating: Number(select.value) })
        .then(function (saved) {
          return openTranscript(conversationId).then(function () {
            setStatus('Answer ' + turn + ' rated ' + saved.rating + ' of 5.');
          });
        }).catch(function (error) { button.disabled = false; fail(error); });
    });
    return form;
  }

  function flagItem(f, conversationId) {
    var li = node('li', null, 'flag' + (f.review ? ' reviewed' : ''));
    li.dataset.flag = f.id;
    li.appendChild(node('p', 'Flag: ' + f.category + ' (' + f.score + ', ' + f.source + ')', 'who'));
    if (f.review) {
      li.appendChild(node('p', 'Reviewed by ' + f.review.by + ' on ' + when(f.review.at) +
        (f.review.note ? ': ' + f.review.note : '')));
      return li;
    }
    var form = node('form', null, 'row');
    var noteId = 'note-' + f.id;
    var label = node('label', 'Review note');
    label.htmlFor = noteId;
    var note = node('textarea');
    note.id = noteId;
    note.maxLength = 2000;
    var button = node('button', 'Mark reviewed');
    button.type = 'submit';
    form.appendChild(label);
    form.appendChild(note);
    form.appendChild(button);
    form.addEventListener('submit', function (event) {
      event.preventDefault();
      button.disabled = true;
      api('POST', 'api/v1/admin/flags/' + encodeURIComponent(f.id) + '/review', { note: note.value })
        .then(function () {
          setStatus('Flag marked reviewed.');
          return openTranscript(conversationId);
        }).catch(function (error) { button.disabled = false; fail(error); });
    });
    li.appendChild(form);
    return li;
  }

  // ---------------------------------------------------------------- experiments

  function points(value) {
    return (value >= 0 ? '+' : '−') + Math.abs(value * 100).toFixed(1);
  }

  function differenceText(d) {
    if (!d) { return '—'; }
    return points(d.difference) + ' pts (' + points(d.low) + ' to ' + points(d.high) + ')' +
      (d.significant ? ', unlikely chance' : '');
  }

  function maybe(value, show) { return value === null || value === undefined ? '—' : show(value); }

  function loadExperiments() {
    return api('GET', 'api/v1/admin/experiments').then(function (list) {
      var box = el('experiments-list');
      clear(box);
      if (!list.experiments.length) {
        box.appendChild(node('p', 'No experiments are configured.'));
        return;
      }
      list.experiments.forEach(function (e) {
        var headingId = 'experiment-' + e.name;
        var heading = node('h3', e.name);
        heading.id = headingId;
        box.appendChild(heading);
        box.appendChild(node('p', (e.running ? 'Running' : 'Not running') + ' · tutors ' +
          e.agents.join(', ') + ' · by ' + e.unit + ' · ' + when(e.start) + ' to ' + when(e.end), 'help'));
        var wrap = node('div', null, 'table-wrap');
        wrap.setAttribute('role', 'region');
        wrap.tabIndex = 0;
        wrap.setAttribute('aria-label', 'Experiment ' + e.name + ' (scrolls sideways)');
        var table = node('table', null, 'experiment');
        table.setAttribute('aria-labelledby', headingId);
        var head = node('tr');
        ['Variant', 'Policy', 'Weight', 'Conversations', 'Follow-up rate', 'Turns per conversation',
          'Thumbs up', 'Thumbs down', 'Thumbs-up rate', 'Tokens per conversation',
          'Cost per conversation', 'Difference from control (95% interval)'].forEach(function (h) {
          var th = node('th', h);
          th.scope = 'col';
          head.appendChild(th);
        });
        table.appendChild(node('thead')).appendChild(head);
        var body = table.appendChild(node('tbody'));
        e.variants.forEach(function (v, i) {
          var row = node('tr');
          var name = node('th', v.name + (i === 0 ? ' (control)' : ''));
          name.scope = 'row';
          row.appendChild(name);
          cell(row, v.policy);
          cell(row, v.weight, true);
          cell(row, v.conversations, true);
          cell(row, maybe(v.follow_up_rate, percent), true);
          cell(row, maybe(v.turns_per_conversation, function (x) { return x.toFixed(1); }), true);
          cell(row, v.thumbs_up, true);
          cell(row, v.thumbs_down, true);
          cell(row, maybe(v.thumbs_up_rate, percent), true);
          cell(row, maybe(v.tokens_per_conversation, function (x) { return Math.round(x); }), true);
          cell(row, maybe(v.cost_per_conversation_usd, usd), true);
          cell(row, i === 0 ? 'control' : differenceText(v.vs_control));
          body.appendChild(row);
        });
        wrap.appendChild(table);
        box.appendChild(wrap);
      });
    });
  }

  // ---------------------------------------------------------------- keys

  function limitsText(l) {
    var parts = [];
    if (l.rpm) { parts.push(l.rpm + '/min'); }
    if (l.tokens_per_day) { parts.push(l.tokens_per_day + ' tokens/day'); }
    if (l.concurrency) { parts.push(l.concurrency + ' at once'); }
    if (l.learner_rpm) { parts.push(l.learner_rpm + '/min per learner'); }
    if (l.learner_tokens_per_day) { parts.push(l.learner_tokens_per_day + ' tokens/day per learner'); }
    return parts.length ? parts.join(', ') : 'none';
  }

  function loadKeys() {
    return api('GET', 'api/v1/admin/keys').then(function (list) {
      state.keys = list.keys;
      var body = el('keys-table').tBodies[0];
      clear(body);
      list.keys.forEach(function (k) {
        var row = node('tr', null, k.revoked_at ? 'revoked' : '');
        row.dataset.key = k.id;
        var name = node('th', k.name);
        name.scope = 'row';
        row.appendChild(name);
        cell(row, k.id);
        cell(row, k.role + (k.classes.length ? ' (' + k.classes.join(', ') + ')' : ''));
        cell(row, limitsText(k.limits));
        cell(row, k.weight, true);
        cell(row, when(k.last_used_at));
        cell(row, k.revoked_at ? 'revoked ' + when(k.revoked_at) : (k.legal_hold ? 'active, legal hold' : 'active'));
        var actions = cell(row, '');
        if (!k.revoked_at) {
          var edit = node('button', 'Edit', 'secondary');
          edit.type = 'button';
          edit.setAttribute('aria-label', 'Edit ' + k.name);
          edit.addEventListener('click', function () { editKey(k); });
          var revoke = node('button', 'Revoke', 'danger');
          revoke.type = 'button';
          revoke.className = 'danger revoke';
          revoke.setAttribute('aria-label', 'Revoke ' + k.name);
          revoke.addEventListener('click', function () { askRevoke(k); });
          actions.appendChild(edit);
          actions.appendChild(revoke);
        }
        body.appendChild(row);
      });
    });
  }

  function numberOf(id) { return Math.max(0, parseInt(el(id).value, 10) || 0); }

  function keyFormBody() {
    var retention = el('key-retention').value.trim();
    return {
      name: el('key-name').value.trim(),
      classes: el('key-classes').value.split(',').map(function (s) { return s.trim(); })
        .filter(function (s) { return s; }),
      limits: {
        rpm: numberOf('key-rpm'),
        tokens_per_day: numberOf('key-tokens'),
        concurrency: numberOf('key-concurrency'),
        learner_rpm: numberOf('key-learner-rpm'),
        learner_tokens_per_day: numberOf('key-learner-tokens')
      },
      weight: Math.max(1, numberOf('key-weight')),
      retention_days: retention === '' ? null : Math.max(0, parseInt(retention, 10) || 0),
      legal_hold: el('key-hold').checked
    };
  }

  function resetKeyForm() {
    el('key-form').reset();
    el('key-edit-id').value = '';
    el('key-role').disabled = false;
    el('key-form-title').textContent = 'Create a key';
    el('key-submit').textContent = 'Create key';
    el('key-cancel').hidden = true;
  }

  function editKey(k) {
    el('key-edit-id').value = k.id;
    el('key-name').value = k.name;
    el('key-role').value = k.role;
    el('key-role').disabled = true;
    el('key-classes').value = k.classes.join(', ');
    el('key-rpm').value = k.limits.rpm;
    el('key-tokens').value = k.limits.tokens_per_day;
    el('key-concurrency').value = k.limits.concurrency;
    el('key-learner-rpm').value = k.limits.learner_rpm;
    el('key-learner-tokens').value = k.limits.learner_tokens_per_day;
    el('key-weight').value = k.weight;
    el('key-retention').value = k.retention_days === undefined ? '' : k.retention_days;
    el('key-hold').checked = k.legal_hold;
    el('key-form-title').textContent = 'Edit ' + k.name;
    el('key-submit').textContent = 'Save changes';
    el('key-cancel').hidden = false;
    el('key-name').focus();
  }

  function submitKey(event) {
    event.preventDefault();
    var id = el('key-edit-id').value;
    var body = keyFormBody();
    var call;
    if (id) {
      call = api('PATCH', 'api/v1/admin/keys/' + encodeURIComponent(id), body).then(function (k) {
        setStatus('Saved ' + k.name + '.');
      });
    } else {
      body.role = el('key-role').value;
      if (body.retention_days === null) { delete body.retention_days; }
      call = api('POST', 'api/v1/admin/keys', body).then(function (created) {
        var box = el('new-secret');
        clear(box);
        box.appendChild(node('p', 'Key ' + created.key.name + ' (' + created.key.id +
          ') created. Copy its secret now: it is shown this once only.'));
        var code = node('code', created.secret);
        code.id = 'new-secret-value';
        box.appendChild(code);
        box.hidden = false;
        setStatus('Key created.');
      });
    }
    call.then(function () { resetKeyForm(); return loadKeys(); }).catch(fail);
  }

  function askRevoke(k) {
    state.revoking = k;
    el('revoke-confirm-text').textContent = k.name + ' (' + k.id + ') will be refused by every ' +
      'server within seconds. This cannot be undone.';
    el('revoke-confirm').hidden = false;
    el('revoke-no').focus();
  }

  function revoke() {
    var k = state.revoking;
    el('revoke-confirm').hidden = true;
    api('DELETE', 'api/v1/admin/keys/' + encodeURIComponent(k.id)).then(function () {
      setStatus('Revoked ' + k.name + '.');
      return loadKeys();
    }).catch(fail);
  }

  // ---------------------------------------------------------------- data rights

  function learnerPath(suffix) {
    var id = el('rights-learner').value.trim();
    return 'api/v1/admin/learners/' + encodeURIComponent(id) + suffix +
      (el('rights-hashed').checked ? '?hashed=true' : '');
  }

  function exportLearner(event) {
    event.preventDefault();
    setStatus('Exporting…');
    api('GET', learnerPath('/export')).then(function (data) {
      var json = JSON.stringify(data, null, 2);
      el('rights-summary').textContent = 'Export of ' + data.learner_id + ': ' +
        data.conversations.length + ' conversation(s), ' + data.flags.length + ' flag(s), ' +
        data.usage.length + ' usage row(s).';
      el('rights-json').textContent = json;
      var link = el('rights-download');
      if (link.href.indexOf('blob:') === 0) { URL.revokeObjectURL(link.href); }
      link.href = URL.createObjectURL(new Blob([json], { type: 'application/json' }));
      link.hidden = false;
      el('rights-result').hidden = false;
      setStatus('Exported.');
    }).catch(fail);
  }

  function askErase() {
    var id = el('rights-learner').value.trim();
    if (!id) { setStatus('Enter a learner id first.'); el('rights-learner').focus(); return; }
    el('erase-confirm-text').textContent = 'Everything stored about ' + id + ' (conversations, ' +
      'turns, flags, usage) will be erased from the database, the shared cache and every ' +
      'server. This cannot be undone.';
    el('erase-confirm').hidden = false;
    el('erase-no').focus();
  }

  function erase() {
    el('erase-confirm').hidden = true;
    setStatus('Erasing…');
    api('DELETE', learnerPath('')).then(function (erased) {
      el('rights-summary').textContent = 'Erased: ' + erased.conversations + ' conversation(s), ' +
        erased.flags + ' flag(s), ' + erased.usage_rows + ' usage row(s).';
      el('rights-json').textContent = '';
      el('rights-download').hidden = true;
      el('rights-result').hidden = false;
      setStatus('Erased.');
    }).catch(fail);
  }

  // ---------------------------------------------------------------- audit log

  function loadAudit() {
    return api('GET', 'api/v1/admin/audit?limit=100').then(function (page) {
      var body = el('audit-table').tBodies[0];
      clear(body);
      page.entries.forEach(function (e) {
        var row = node('tr');
        cell(row, when(e.at));
        cell(row, e.actor);
        cell(row, e.action);
        cell(row, e.subject);
        cell(row, e.detail);
        body.appendChild(row);
      });
    });
  }

  // ---------------------------------------------------------------- wiring

  el('signin-form').addEventListener('submit', function (event) {
    event.preventDefault();
    var secret = el('console-key').value.trim();
    if (secret) { signIn(secret); }
  });
  el('signout').addEventListener('click', signOut);
  el('chart-class').addEventListener('change', function () { loadChart().catch(fail); });
  el('chart-metric').addEventListener('change', function () { if (state.usage) { drawChart(); } });
  el('conversation-filter').addEventListener('submit', function (event) {
    event.preventDefault();
    el('transcript').hidden = true;
    loadConversations(false).catch(fail);
  });
  el('more-conversations').addEventListener('click', function () { loadConversations(true).catch(fail); });
  el('key-form').addEventListener('submit', submitKey);
  el('key-cancel').addEventListener('click', resetKeyForm);
  el('revoke-yes').addEventListener('click', revoke);
  el('revoke-no').addEventListener('click', function () { el('revoke-confirm').hidden = true; });
  el('rights-form').addEventListener('submit', exportLearner);
  el('rights-erase').addEventListener('click', askErase);
  el('erase-yes').addEventListener('click', erase);
  el('erase-no').addEventListener('click', function () { el('erase-confirm').hidden = true; });

  if (key()) { signIn(key()); }
}());
