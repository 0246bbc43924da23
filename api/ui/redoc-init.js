// Starts ReDoc on /redoc (a served file: the page's CSP allows no inline script).
"use strict";
Redoc.init("/openapi.json", {}, document.getElementById("redoc"));
