// workpool dashboard: re-fetch each live part of the page every 2 s (server-rendered HTML),
// unless the reader is typing in a form inside it.
"use strict";
function refresh(part) {
  if (part.contains(document.activeElement) && document.activeElement.tagName === "INPUT") {
    return;
  }
  fetch(part.dataset.live, {credentials: "same-origin", cache: "no-store"})
    .then(function (reply) { return reply.ok ? reply.text() : null; })
    .then(function (html) { if (html !== null) { part.innerHTML = html; } })
    .catch(function () { /* the next round tries again */ });
}
document.addEventListener("DOMContentLoaded", function () {
  var parts = document.querySelectorAll("[data-live]");
  setInterval(function () { parts.forEach(refresh); }, 2000);
});
