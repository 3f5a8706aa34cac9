// The homework form: names the specificity elements still empty as the therapist types (the server checks again).
"use strict";

(function () {
  const form = document.querySelector(".homework-form");
  if (!form) return;
  const live = form.querySelector(".live-missing");
  const fields = form.dataset.specificity.split(" ");

  function update() {
    const missing = [];
    for (const field of fields) {
      const input = form.querySelector("#f-" + field);
      const filled = input && input.value.trim() !== "";
      const mark = form.querySelector('.spec-mark[data-for="' + field + '"]');
      if (mark) mark.textContent = filled ? "✓" : "";
      if (!filled) missing.push(live.dataset["name" + field.split("_").map((w) => w[0].toUpperCase() + w.slice(1)).join("")]);
    }
    live.textContent = missing.length ? live.dataset.label + " " + missing.join(", ") : live.dataset.complete;
  }

  form.addEventListener("input", update);
  update();
})();
