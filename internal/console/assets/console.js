// refresher console: the overview updates itself; "select all" on the dead letters.
"use strict";
(function () {
  var live = document.getElementById("live");
  if (live) {
    var every = parseInt(live.getAttribute("data-refresh-ms"), 10) || 5000;
    var src = live.getAttribute("data-src");
    var busy = false;
    setInterval(function () {
      if (busy || document.hidden) return;
      busy = true;
      fetch(src, { credentials: "same-origin", headers: { "Accept": "text/html" } })
        .then(function (r) {
          // Signed out meanwhile (a redirect to the sign-in page): reload to show it.
          if (r.redirected) { location.reload(); throw new Error("signed out"); }
          if (!r.ok) throw new Error(r.status);
          return r.text();
        })
        .then(function (html) { live.innerHTML = html; live.setAttribute("data-updated", String(Date.now())); })
        .catch(function () { live.setAttribute("data-stale", "true"); })
        .finally(function () { busy = false; });
    }, every);
  }
  var all = document.getElementById("all");
  if (all) {
    all.addEventListener("change", function () {
      document.querySelectorAll('input[name="seq"]').forEach(function (b) { b.checked = all.checked; });
    });
  }
})();
