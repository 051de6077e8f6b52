// drover ui: follows a live page. The element with a non-empty
// data-live attribute is replaced by each `update` server-sent event (HTML
// the server rendered and escaped); `end` means the thing followed is
// finished; `problem` says why the last refresh failed (shown as text).
(function () {
  "use strict";
  var live = document.querySelector("[data-live]");
  if (!live || !live.getAttribute("data-live") || !window.EventSource) {
    return;
  }
  var status = document.createElement("p");
  status.id = "live-status";
  live.parentNode.insertBefore(status, live);
  function say(state, text) {
    status.setAttribute("data-state", state);
    status.className = "live-" + state;
    status.textContent = text;
  }
  say("connecting", "connecting…");
  var source = new EventSource(live.getAttribute("data-live"));
  var updates = 0;
  source.addEventListener("update", function (e) {
    live.innerHTML = e.data;
    updates += 1;
    live.setAttribute("data-updates", String(updates));
    say("live", "live: updated " + new Date().toLocaleTimeString());
  });
  source.addEventListener("problem", function (e) {
    say("problem", "cannot refresh: " + e.data);
  });
  source.addEventListener("end", function () {
    source.close();
    say("finished", "finished");
  });
  source.onerror = function () {
    if (source.readyState !== EventSource.CLOSED) {
      say("reconnecting", "connection lost; reconnecting…");
    }
  };
})();
