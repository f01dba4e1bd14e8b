// Follows a run while its page is open: long-polls the run's events and reloads the page when
// something new is recorded. Without this script the page still works (its Refresh link).
// If the reader is typing a decision, the page is not reloaded under them: a note says it changed.
(function () {
  "use strict";
  var box = document.getElementById("run");
  if (!box || box.dataset.terminal === "true") { return; }
  var run = box.dataset.run;
  var after = parseInt(box.dataset.after || "0", 10);
  var note = document.getElementById("live-note");
  var failures = 0;
  var typing = false;

  document.querySelectorAll("form.decision").forEach(function (form) {
    form.addEventListener("input", function () { typing = true; });
  });

  function changed() {
    if (typing) {
      if (note) {
        note.textContent = "The run has moved on since this page was loaded. ";
        var link = document.createElement("a");
        link.href = window.location.pathname;
        link.textContent = "Reload";
        note.appendChild(link);
        note.classList.add("changed");
      }
      return;
    }
    window.location.reload();
  }

  function poll() {
    var url = "/ui/runs/" + encodeURIComponent(run) + "/events?after=" + after + "&wait=25";
    fetch(url, { credentials: "same-origin", headers: { "Accept": "application/json" }, redirect: "error" })
      .then(function (response) {
        if (!response.ok) { throw new Error("status " + response.status); }
        return response.json();
      })
      .then(function (body) {
        failures = 0;
        if (body.events && body.events.length) {
          after = body.next;
          changed();
          if (!typing) { return; }
        }
        if (["succeeded", "failed", "rejected", "cancelled", "timed_out"].indexOf(body.status) >= 0) { return; }
        window.setTimeout(poll, 250);
      })
      .catch(function () {
        failures += 1;
        if (failures < 20) { window.setTimeout(poll, Math.min(30000, 1000 * failures)); }
      });
  }

  poll();
}());
