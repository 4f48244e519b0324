// Starts ReDoc on authdb's /redoc page. It is a file rather than an inline script so that the
// page runs under a Content-Security-Policy allowing scripts from 'self' only.
(function () {
  "use strict";
  var root = document.getElementById("redoc");
  Redoc.init(root.getAttribute("data-openapi-url"), {}, root);
})();
