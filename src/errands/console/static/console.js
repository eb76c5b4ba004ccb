// Refreshes live parts of a page: an element with data-refresh="URL" has its content replaced
// by what URL answers, every 15 seconds while the page is visible. Pages read fine without it.
"use strict";
const REFRESH_MS = 15000;

async function refresh(element) {
  const response = await fetch(element.dataset.refresh, { credentials: "same-origin" });
  if (response.ok) {
    element.innerHTML = await response.text();
  }
}

document.addEventListener("DOMContentLoaded", () => {
  for (const element of document.querySelectorAll("[data-refresh]")) {
    setInterval(() => {
      if (document.visibilityState === "visible") {
        refresh(element).catch(() => {});
      }
    }, REFRESH_MS);
  }
});
