// ragcore console: the one script (progressive enhancement; every page reads without it).
// While a task runs, its page swaps in a fresh progress bar every second, and reloads once the
// task has finished, to show its result. Part of ragcore, under the repository's licence.
"use strict";
(function () {
  function poll() {
    var bar = document.getElementById("progress");
    if (!bar || !bar.dataset.poll) return;
    fetch(bar.dataset.poll, { credentials: "same-origin", headers: { Accept: "text/html" } })
      .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
      .then(function (html) {
        var next = new DOMParser().parseFromString(html, "text/html").getElementById("progress");
        if (!next) return;
        bar.replaceWith(next);
        if (next.dataset.poll) setTimeout(poll, 1000);
        else window.location.reload();
      })
      .catch(function () { setTimeout(poll, 3000); });
  }
  setTimeout(poll, 1000);
})();
