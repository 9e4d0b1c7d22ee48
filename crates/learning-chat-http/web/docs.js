// Swagger UI over this server's /openapi.json. The document is fetched here rather than by
// Swagger UI so its `servers` can be set to wherever this page is served from: behind a proxy
// at a sub-path (e.g. /chat/docs), "Try it out" must call /chat/api/..., not /api/....
(function () {
  'use strict';
  var base = new URL('.', window.location.href).href.replace(/\/$/, '');
  var root = document.getElementById('swagger-ui');
  fetch('openapi.json', { headers: { 'Accept': 'application/json' } })
    .then(function (response) {
      if (!response.ok) { throw new Error('HTTP ' + response.status); }
      return response.json();
    })
    .then(function (spec) {
      spec.servers = [{ url: base, description: 'this server' }];
      root.textContent = '';
      window.ui = window.SwaggerUIBundle({
        spec: spec,
        domNode: root,
        deepLinking: false,
        // No badge: it would call a validator on another origin.
        validatorUrl: null,
        presets: [window.SwaggerUIBundle.presets.apis],
        layout: 'BaseLayout',
        defaultModelsExpandDepth: 0
      });
    })
    .catch(function (error) {
      root.textContent = 'The API description could not be loaded (' + error.message + ').';
    });
}());
