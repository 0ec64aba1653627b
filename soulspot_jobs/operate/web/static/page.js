// Live updates of the operators' page: the server sends the sections that changed as
// server-sent events ("sections": {"breakers": "<html>", ...}); this swaps them in, keeps the
// history panels the operator opened, and counts times down (or up) between updates.
"use strict";

(function () {
  const body = document.body;
  // Server clock minus this browser's, so countdowns follow the server's time.
  let offset = Number(body.dataset.serverNow) - Date.now();

  function describe(ms) {
    const seconds = Math.round(Math.abs(ms) / 1000);
    const pad = (n) => String(n).padStart(2, "0");
    if (seconds < 120) return seconds + " s";
    if (seconds < 3600) return Math.floor(seconds / 60) + " min " + pad(seconds % 60) + " s";
    if (seconds < 172800) return Math.floor(seconds / 3600) + " h " + pad(Math.floor(seconds / 60) % 60) + " min";
    return Math.round(seconds / 86400) + " days";
  }

  function tick() {
    const now = Date.now() + offset;
    for (const element of document.querySelectorAll("time.countdown[data-at]")) {
      const left = Number(element.dataset.at) - now;
      element.textContent = left > 500 ? "in " + describe(left) : "now";
    }
    for (const element of document.querySelectorAll("time.since[data-at]")) {
      element.textContent = describe(now - Number(element.dataset.at)) + " ago";
    }
  }

  function swap(id, html) {
    const section = document.getElementById(id);
    if (!section || section.contains(document.activeElement) && document.activeElement.tagName === "INPUT") {
      return false;  // the operator is typing in it: keep it until the next change
    }
    const open = new Set(
      Array.from(section.querySelectorAll("details[open]"), (details) => details.id)
    );
    section.innerHTML = html;
    for (const details of section.querySelectorAll("details[id]")) {
      if (open.has(details.id)) details.open = true;
    }
    return true;
  }

  function connect() {
    const live = document.getElementById("live");
    const source = new EventSource(body.dataset.events);
    source.addEventListener("sections", (event) => {
      const update = JSON.parse(event.data);
      offset = update.taken_at - Date.now();
      for (const [id, html] of Object.entries(update.sections)) swap(id, html);
      tick();
      live.textContent = "live";
      live.className = "live on";
      body.dataset.updatedAt = String(update.taken_at);
    });
    source.addEventListener("error", () => {
      live.textContent = "reconnecting";
      live.className = "live off";
    });
  }

  tick();
  setInterval(tick, 500);
  if (window.EventSource) connect();
})();
