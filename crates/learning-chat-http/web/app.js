// The learner's chat page. Plain JS, no build step: served as is from the binary.
// Every URL is relative so the page works at any sub-path behind a proxy (e.g. /chat/).
(function () {
  'use strict';

  var KEY_STORAGE = 'learning-chat.api-key';
  var CONVERSATION_STORAGE = 'learning-chat.conversation';
  // A random id for this browser, kept across visits: sent as X-Learner-Id so per-learner limits
  // apply (and keys that require a learner id accept the page). Opaque; the server hashes it.
  var LEARNER_STORAGE = 'learning-chat.learner-id';
  // Beyond this many overload retries in a row the learner decides (the Send button).
  var MAX_RETRIES = 8;

  var el = function (id) { return document.getElementById(id); };
  var ui = {
    tutor: el('tutor'),
    tutorDescription: el('tutor-description'),
    messages: el('messages'),
    emptyHint: el('empty-hint'),
    status: el('status'),
    form: el('ask-form'),
    message: el('message'),
    send: el('send'),
    newConversation: el('new-conversation'),
    deleteConversation: el('delete-conversation'),
    offline: el('offline-banner'),
    auth: el('auth'),
    authReason: el('auth-reason'),
    authForm: el('auth-form'),
    apiKey: el('api-key'),
    forgetKey: el('forget-key')
  };

  var state = {
    agents: [],
    conversationId: null,
    conversationAgent: null,
    busy: false,
    // null: not tried yet; false once the server answered 404/405 for the stream endpoint.
    streaming: null
  };

  function storage() {
    try { return window.sessionStorage; } catch (e) { return null; }
  }

  function apiKey() {
    var s = storage();
    return s ? s.getItem(KEY_STORAGE) : null;
  }

  function randomId() {
    if (window.crypto && window.crypto.randomUUID) { return window.crypto.randomUUID(); }
    var bytes = new Uint8Array(16);
    window.crypto.getRandomValues(bytes);
    return Array.prototype.map.call(bytes, function (b) {
      return ('0' + b.toString(16)).slice(-2);
    }).join('');
  }

  // Without local storage (private mode, blocked): one id for as long as the page is open.
  var pageLearnerId = null;

  function learnerId() {
    var s = null;
    try { s = window.localStorage; } catch (e) { s = null; }
    var id = null;
    try { id = s ? s.getItem(LEARNER_STORAGE) : null; } catch (e) { id = null; }
    if (!id) {
      id = pageLearnerId || randomId();
      try { if (s) { s.setItem(LEARNER_STORAGE, id); } } catch (e) { /* kept for the page */ }
    }
    pageLearnerId = id;
    return id;
  }

  function headers(extra) {
    var h = { 'Accept': 'application/json', 'X-Learner-Id': learnerId() };
    var key = apiKey();
    if (key) { h['Authorization'] = 'Bearer ' + key; }
    Object.keys(extra || {}).forEach(function (k) { h[k] = extra[k]; });
    return h;
  }

  function setStatus(text) { ui.status.textContent = text || ''; }

  function agentById(id) {
    for (var i = 0; i < state.agents.length; i++) {
      if (state.agents[i].id === id) { return state.agents[i]; }
    }
    return null;
  }

  function renderMarkdown(target, text) {
    if (window.marked && window.DOMPurify) {
      target.innerHTML = window.DOMPurify.sanitize(window.marked.parse(text, { gfm: true }));
    } else {
      target.textContent = text;
    }
  }

  // Reads an error answer's JSON body ({"error": {"code", "message"}}), tolerating others.
  function readError(response) {
    return response.text().then(function (body) {
      try {
        var parsed = JSON.parse(body);
        if (parsed && parsed.error) { return parsed.error; }
      } catch (e) { /* not JSON: fall through */ }
      return { code: 'http_' + response.status, message: body || response.statusText };
    });
  }

  function showOffline(model) {
    if (model && model.indexOf('offline-simulated') === 0) { ui.offline.hidden = false; }
  }

  function showAuth(reason) {
    ui.auth.hidden = false;
    ui.authReason.textContent = reason;
    ui.apiKey.focus();
  }

  function setConversation(id, agent) {
    state.conversationId = id || null;
    state.conversationAgent = id ? agent : null;
    ui.deleteConversation.disabled = !state.conversationId;
    var s = storage();
    if (!s) { return; }
    if (state.conversationId) {
      s.setItem(CONVERSATION_STORAGE, JSON.stringify({ id: id, agent: agent }));
    } else {
      s.removeItem(CONVERSATION_STORAGE);
    }
  }

  function clearMessages() {
    ui.messages.textContent = '';
    ui.emptyHint.hidden = false;
  }

  function addMessage(role, text) {
    ui.emptyHint.hidden = true;
    var item = document.createElement('li');
    item.className = 'msg ' + (role === 'user' ? 'question' : 'answer');
    var who = document.createElement('p');
    who.className = 'who';
    var agent = agentById(ui.tutor.value);
    who.textContent = role === 'user' ? 'You' : (agent ? agent.name : 'Tutor');
    var body = document.createElement('div');
    body.className = 'body';
    var meta = document.createElement('p');
    meta.className = 'meta';
    item.appendChild(who);
    item.appendChild(body);
    item.appendChild(meta);
    ui.messages.appendChild(item);
    if (role === 'user') { body.textContent = text; } else if (text) { renderMarkdown(body, text); }
    item.scrollIntoView({ block: 'end' });
    return { item: item, body: body, meta: meta };
  }

  function finishAnswer(view, answer) {
    renderMarkdown(view.body, answer.response);
    view.item.classList.remove('pending');
    view.meta.textContent = '';
    if (answer.cached) {
      var badge = document.createElement('span');
      badge.className = 'badge cached-marker';
      badge.textContent = 'from cache';
      view.meta.appendChild(badge);
    }
    var time = document.createElement('span');
    time.className = 'answer-time';
    time.textContent = 'answered in ' + answer.latency_ms + ' ms';
    view.meta.appendChild(time);
    showOffline(answer.model);
    if (answer.conversation_id) {
      setConversation(answer.conversation_id, answer.agent_id);
      if (answer.turn) { addFeedback(view, answer.conversation_id, answer.turn); }
    }
  }

  // Thumbs under an answer: the learner says whether it helped (a second press replaces the
  // first). Kept with the conversation; teachers compare tutoring policies by them.
  function addFeedback(view, conversationId, turn) {
    var group = document.createElement('span');
    group.className = 'feedback';
    group.setAttribute('role', 'group');
    group.setAttribute('aria-label', 'Was this answer helpful?');
    var buttons = [['up', '\uD83D\uDC4D', 'Helpful'], ['down', '\uD83D\uDC4E', 'Not helpful']];
    buttons.forEach(function (spec) {
      var button = document.createElement('button');
      button.type = 'button';
      button.className = 'thumb secondary thumb-' + spec[0];
      button.textContent = spec[1];
      button.setAttribute('aria-label', spec[2]);
      button.setAttribute('aria-pressed', 'false');
      button.addEventListener('click', function () {
        sendFeedback(group, conversationId, turn, spec[0]);
      });
      group.appendChild(button);
    });
    view.meta.appendChild(group);
  }

  function sendFeedback(group, conversationId, turn, rating) {
    var path = 'api/v1/conversations/' + encodeURIComponent(conversationId) + '/feedback';
    post(path, { turn: turn, rating: rating }, 'application/json').then(function (response) {
      if (!response.ok) {
        return readError(response).then(function (error) {
          setStatus('Your feedback was not saved: ' + (error.message || response.status));
        });
      }
      Array.prototype.forEach.call(group.querySelectorAll('.thumb'), function (button) {
        var chosen = button.classList.contains('thumb-' + rating);
        button.setAttribute('aria-pressed', chosen ? 'true' : 'false');
      });
      group.classList.add('rated');
      setStatus('Thanks for your feedback.');
      return null;
    }).catch(function () {
      setStatus('Your feedback was not saved: the server cannot be reached.');
    });
  }

  function failAnswer(view, text) {
    view.item.classList.remove('pending');
    view.item.classList.add('failed');
    view.body.textContent = '';
    var p = document.createElement('p');
    p.className = 'error-text';
    p.textContent = text;
    view.body.appendChild(p);
    view.meta.textContent = '';
  }

  // What the learner reads for an error they can act on.
  function explain(status, error) {
    if (error.code === 'blocked') {
      return 'This question was blocked: ' + error.message + '. Try asking it another way.';
    }
    if (status === 401 || status === 403) {
      return 'The API key was refused: ' + error.message;
    }
    if (error.code === 'unknown_conversation') {
      return 'This conversation no longer exists (deleted or expired). Ask again to start a new one.';
    }
    return error.message || ('The request failed (HTTP ' + status + ').');
  }

  // Parses Server-Sent Events from the stream endpoint: `delta`, then `done` or `error`.
  function readStream(response, view) {
    var reader = response.body.getReader();
    var decoder = new TextDecoder();
    var buffer = '';
    var text = '';
    var outcome = null;
    var scheduled = false;
    function paint() {
      scheduled = false;
      if (!outcome) { renderMarkdown(view.body, text); }
    }
    function handle(block) {
      var event = 'message';
      var data = [];
      block.split('\n').forEach(function (line) {
        if (line === '' || line.charAt(0) === ':') { return; }
        var colon = line.indexOf(':');
        var field = colon < 0 ? line : line.slice(0, colon);
        var value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
        if (field === 'event') { event = value; } else if (field === 'data') { data.push(value); }
      });
      if (!data.length) { return; }
      var payload;
      try { payload = JSON.parse(data.join('\n')); } catch (e) { return; }
      if (event === 'delta' && typeof payload.text === 'string') {
        text += payload.text;
        if (!scheduled) { scheduled = true; window.requestAnimationFrame(paint); }
      } else if (event === 'done') {
        payload.response = payload.response || text;
        outcome = { ok: true, answer: payload };
      } else if (event === 'error') {
        outcome = { ok: false, error: payload.error || {} };
      }
    }
    function pump() {
      return reader.read().then(function (chunk) {
        if (chunk.done) {
          return outcome || { ok: false, error: { message: 'the answer was cut off; please ask again' } };
        }
        buffer += decoder.decode(chunk.value, { stream: true }).replace(/\r\n?/g, '\n');
        var end;
        while ((end = buffer.indexOf('\n\n')) >= 0) {
          handle(buffer.slice(0, end));
          buffer = buffer.slice(end + 2);
        }
        return outcome || pump();
      });
    }
    return pump();
  }

  function post(path, body, accept) {
    return fetch(path, {
      method: 'POST',
      headers: headers({ 'Content-Type': 'application/json', 'Accept': accept }),
      body: JSON.stringify(body)
    });
  }

  // One try: the stream endpoint when the server has it, the JSON endpoint otherwise.
  // Resolves to {ok, answer} or {ok: false, status, error, retryAfter}.
  function attempt(agent, body, view) {
    var base = 'api/v1/agents/' + encodeURIComponent(agent);
    var viaJson = function () {
      return post(base, body, 'application/json').then(function (response) {
        if (response.ok) {
          return response.json().then(function (answer) { return { ok: true, answer: answer }; });
        }
        return failure(response);
      });
    };
    if (state.streaming === false) { return viaJson(); }
    return post(base + '/stream', body, 'text/event-stream').then(function (response) {
      var type = response.headers.get('Content-Type') || '';
      if (response.ok && type.indexOf('text/event-stream') === 0) {
        state.streaming = true;
        return readStream(response, view);
      }
      if (response.status === 405 || response.status === 404) {
        return readError(response).then(function (error) {
          // A plain "no such endpoint": this server has no streaming; an unknown agent or
          // conversation is a real answer.
          if (response.status === 405 || error.code === 'not_found') {
            state.streaming = false;
            return viaJson();
          }
          return { ok: false, status: response.status, error: error, retryAfter: null };
        });
      }
      return failure(response);
    });
  }

  function failure(response) {
    var retryAfter = parseInt(response.headers.get('Retry-After') || '', 10);
    return readError(response).then(function (error) {
      return {
        ok: false,
        status: response.status,
        error: error,
        retryAfter: isNaN(retryAfter) ? null : Math.max(1, retryAfter)
      };
    });
  }

  function countdown(view, seconds, done) {
    var left = seconds;
    var tick = function () {
      var text = left > 0 ? 'The tutors are busy, retrying in ' + left + ' s…' : 'Retrying…';
      view.body.textContent = text;
      setStatus(text);
      if (left <= 0) { done(); return; }
      left -= 1;
      window.setTimeout(tick, 1000);
    };
    view.item.classList.add('pending', 'retrying');
    tick();
  }

  function ask(text) {
    var agent = ui.tutor.value;
    if (!agent || state.busy) { return; }
    if (state.conversationId && state.conversationAgent !== agent) { setConversation(null); }
    state.busy = true;
    ui.send.disabled = true;
    addMessage('user', text);
    var view = addMessage('model', '');
    view.item.classList.add('pending');
    view.body.textContent = 'Thinking…';
    setStatus('Waiting for the tutor…');
    var body = { message: text };
    if (state.conversationId) { body.conversation_id = state.conversationId; }
    var retries = 0;
    var finish = function () {
      state.busy = false;
      ui.send.disabled = false;
    };
    var run = function () {
      view.item.classList.remove('retrying');
      attempt(agent, body, view).then(function (result) {
        if (result.ok) {
          finishAnswer(view, result.answer);
          setStatus('Answer received.');
          finish();
          return;
        }
        var overloaded = result.status === 503 || result.status === 429 || result.status === 409;
        if (overloaded && result.retryAfter && retries < MAX_RETRIES) {
          retries += 1;
          countdown(view, result.retryAfter, run);
          return;
        }
        if (result.status === 401 || result.status === 403) {
          showAuth(explain(result.status, result.error));
        }
        if (result.error && result.error.code === 'unknown_conversation') { setConversation(null); }
        var why = explain(result.status, result.error || {});
        failAnswer(view, why);
        setStatus(why);
        finish();
      }).catch(function () {
        failAnswer(view, 'The server cannot be reached. Check your connection and try again.');
        setStatus('The server cannot be reached.');
        finish();
      });
    };
    run();
  }

  function loadAgents() {
    return fetch('api/v1/agents', { headers: headers() }).then(function (response) {
      if (response.status === 401 || response.status === 403) {
        return readError(response).then(function (error) {
          ui.tutor.innerHTML = '<option value="">Enter an API key first</option>';
          showAuth(explain(response.status, error));
        });
      }
      if (!response.ok) {
        return readError(response).then(function (error) { setStatus(error.message); });
      }
      return response.json().then(function (list) {
        ui.auth.hidden = !apiKey();
        state.agents = list.agents || [];
        ui.tutor.textContent = '';
        state.agents.forEach(function (agent) {
          var option = document.createElement('option');
          option.value = agent.id;
          option.textContent = agent.name;
          ui.tutor.appendChild(option);
        });
        describeTutor();
        return restoreConversation();
      });
    }).catch(function () { setStatus('The server cannot be reached.'); });
  }

  function describeTutor() {
    var agent = agentById(ui.tutor.value);
    ui.tutorDescription.textContent = agent ? agent.description : '';
  }

  // After a reload in the same tab: show the conversation that was open.
  function restoreConversation() {
    var s = storage();
    var saved = null;
    try { saved = s && JSON.parse(s.getItem(CONVERSATION_STORAGE) || 'null'); } catch (e) { saved = null; }
    if (!saved || !saved.id || !agentById(saved.agent)) { return null; }
    return fetch('api/v1/conversations/' + encodeURIComponent(saved.id), { headers: headers() })
      .then(function (response) {
        if (!response.ok) { setConversation(null); return; }
        return response.json().then(function (conversation) {
          ui.tutor.value = conversation.agent_id;
          describeTutor();
          setConversation(conversation.id, conversation.agent_id);
          clearMessages();
          conversation.turns.forEach(function (turn) {
            var view = addMessage(turn.role === 'user' ? 'user' : 'model', turn.text);
            if (turn.role !== 'user') { showOffline(turn.model); }
            return view;
          });
        });
      });
  }

  function newConversation(announce) {
    setConversation(null);
    clearMessages();
    if (announce) { setStatus(announce); }
    ui.message.focus();
  }

  function deleteConversation() {
    var id = state.conversationId;
    if (!id || state.busy) { return; }
    ui.deleteConversation.disabled = true;
    fetch('api/v1/conversations/' + encodeURIComponent(id), { method: 'DELETE', headers: headers() })
      .then(function (response) {
        if (response.status === 204 || response.status === 404) {
          newConversation('Conversation deleted.');
          return;
        }
        ui.deleteConversation.disabled = false;
        return readError(response).then(function (error) { setStatus(explain(response.status, error)); });
      })
      .catch(function () {
        ui.deleteConversation.disabled = false;
        setStatus('The server cannot be reached.');
      });
  }

  function checkReady() {
    fetch('ready', { headers: { 'Accept': 'application/json' } })
      .then(function (response) { return response.json(); })
      .then(function (ready) {
        if (ready && ready.provider === 'offline-simulated') { ui.offline.hidden = false; }
      })
      .catch(function () { /* the chat itself reports an unreachable server */ });
  }

  ui.form.addEventListener('submit', function (event) {
    event.preventDefault();
    var text = ui.message.value.trim();
    if (!text) { ui.message.focus(); return; }
    if (state.busy) { return; }
    ui.message.value = '';
    ask(text);
  });

  // Enter sends, Shift+Enter starts a new line (as in every chat).
  ui.message.addEventListener('keydown', function (event) {
    if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      ui.form.requestSubmit();
    }
  });

  ui.tutor.addEventListener('change', function () {
    describeTutor();
    if (state.conversationId || ui.messages.children.length) {
      var agent = agentById(ui.tutor.value);
      newConversation('New conversation with ' + (agent ? agent.name : 'the tutor') + '.');
    }
  });

  ui.newConversation.addEventListener('click', function () {
    if (!state.busy) { newConversation('New conversation started.'); }
  });
  ui.deleteConversation.addEventListener('click', deleteConversation);

  ui.authForm.addEventListener('submit', function (event) {
    event.preventDefault();
    var s = storage();
    var key = ui.apiKey.value.trim();
    if (s && key) { s.setItem(KEY_STORAGE, key); }
    ui.apiKey.value = '';
    setStatus('Key saved for this tab.');
    loadAgents();
  });
  ui.forgetKey.addEventListener('click', function () {
    var s = storage();
    if (s) { s.removeItem(KEY_STORAGE); }
    setStatus('Key forgotten.');
  });

  // Streaming when this server's API description has the stream endpoint: no failed request
  // to find out. Without the description the first question tries it (404/405: JSON).
  fetch('openapi.json', { headers: { 'Accept': 'application/json' } })
    .then(function (response) { return response.ok ? response.json() : null; })
    .then(function (doc) {
      if (doc && doc.paths && state.streaming === null) {
        state.streaming = Object.prototype.hasOwnProperty.call(doc.paths, '/api/v1/agents/{agent_id}/stream');
      }
    })
    .catch(function () { /* the first question finds out */ });
  checkReady();
  loadAgents();
}());
