// A classic script (it runs where the module try.js cannot): opened from disk (file://), the
// browser refuses to load try.js and Pyodide as modules, and the page would wait forever.
// Say that the page must be served, and how.
(function () {
  const how = "This page runs Python in your browser and must be served over HTTP; a browser does not " +
    "load its scripts from a file:// address. Serve the built site and open the page there, e.g.:\n\n" +
    "  python3 -m http.server --directory site 8000\n\nthen open http://localhost:8000/try.html";
  function refuse() {
    const status = document.getElementById("vx-status");
    const error = document.getElementById("vx-error");
    if (status) status.textContent = "Not started: the page is not served over HTTP.";
    if (error) {
      error.hidden = false;
      error.textContent = how;
    }
    window.vmxaddrTimings = Object.assign(window.vmxaddrTimings || {}, { error: "not served (file://)" });
  }
  if (location.protocol === "file:") {
    refuse();
    return;
  }
  // Served, but the module failed to load (an old browser, a server without a JavaScript type for .mjs).
  const module = document.querySelector('script[type="module"][src$="try.js"]');
  if (module) {
    module.addEventListener("error", function () {
      const status = document.getElementById("vx-status");
      if (status) status.textContent = "vmxaddr could not start: this browser did not load try/try.js as a module.";
    });
  }
})();
