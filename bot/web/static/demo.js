// The try-it page: two panes polling their outbox and posting messages; no framework, no build step.
"use strict";

(function () {
  const strings = document.getElementById("strings").dataset;
  const status = document.getElementById("status");
  const clock = document.getElementById("clock");
  const panes = {};

  function uuid() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    return Date.now().toString(16) + Math.random().toString(16).slice(2);
  }

  async function post(path, body) {
    const response = await fetch(path, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body || {}),
      credentials: "same-origin",
    });
    if (!response.ok) throw new Error(String(response.status));
    return response.json();
  }

  // Text with links made clickable, built from text nodes (never innerHTML: messages hold people's words).
  function linkified(text) {
    const fragment = document.createDocumentFragment();
    const pattern = /https?:\/\/[^\s]+/g;
    let last = 0;
    let match;
    while ((match = pattern.exec(text)) !== null) {
      fragment.append(text.slice(last, match.index));
      const link = document.createElement("a");
      link.href = match[0];
      link.textContent = match[0];
      link.target = "_blank";
      link.rel = "noopener";
      fragment.append(link);
      last = match.index + match[0].length;
    }
    fragment.append(text.slice(last));
    return fragment;
  }

  function scrollDown(pane) {
    pane.list.scrollTop = pane.list.scrollHeight;
  }

  function addMine(pane, text) {
    const item = document.createElement("li");
    item.className = "mine";
    const who = document.createElement("span");
    who.className = "visually-hidden";
    who.textContent = strings.you + ": ";
    item.append(who, text);
    pane.list.append(item);
    scrollDown(pane);
  }

  function addMessage(pane, message) {
    const item = document.createElement("li");
    item.className = "theirs kind-" + message.kind;
    item.dataset.id = message.id;
    const body = document.createElement("div");
    body.className = "text";
    body.append(linkified(message.text));
    item.append(body);
    if (message.options.length) {
      const group = document.createElement("div");
      group.className = "options" + (message.kind === "scale" ? " scale" : "");
      group.setAttribute("role", "group");
      for (const option of message.options) {
        const button = document.createElement("button");
        button.type = "button";
        button.textContent = option.label;
        button.addEventListener("click", () => {
          for (const other of group.querySelectorAll("button")) other.disabled = true;
          send(pane, option.value, option.label);
        });
        group.append(button);
      }
      item.append(group);
    }
    // An invite in the therapist pane: one click sends "/start CODE" from the client pane.
    const invite = pane.name === "therapist" && /\/start ([A-Z0-9]{8})\b/.exec(message.text);
    if (invite) {
      const use = document.createElement("button");
      use.type = "button";
      use.className = "use-code";
      use.textContent = strings.useCode.replace("{code}", invite[1]);
      use.addEventListener("click", () => {
        use.disabled = true;
        send(panes.client, "/start " + invite[1]);
      });
      item.append(use);
    }
    pane.list.append(item);
    scrollDown(pane);
  }

  async function poll(pane) {
    try {
      const response = await fetch(
        "/demo/messages?pane=" + pane.name + "&after=" + pane.after,
        { credentials: "same-origin" },
      );
      if (response.ok) {
        const data = await response.json();
        for (const message of data.messages) {
          pane.after = Math.max(pane.after, message.id);
          addMessage(pane, message);
        }
        clock.textContent = data.clock;
      }
    } catch (error) {
      // The service restarting: keep polling.
    }
    pane.timer = setTimeout(() => poll(pane), 700);
  }

  async function send(pane, text, shown) {
    if (!text.trim()) return;
    addMine(pane, shown || text);
    try {
      await post("/demo/send", { pane: pane.name, text: text, id: uuid() });
    } catch (error) {
      status.textContent = strings.failed;
      return;
    }
    clearTimeout(pane.timer);
    poll(pane);
    const other = pane.name === "therapist" ? panes.client : panes.therapist;
    clearTimeout(other.timer);
    poll(other);
  }

  for (const section of document.querySelectorAll(".pane")) {
    const pane = {
      name: section.dataset.pane,
      list: section.querySelector(".messages"),
      input: section.querySelector("textarea"),
      after: 0,
      timer: null,
    };
    panes[pane.name] = pane;
    section.querySelector("form").addEventListener("submit", (event) => {
      event.preventDefault();
      const text = pane.input.value;
      pane.input.value = "";
      send(pane, text);
    });
    // Enter sends; Shift+Enter starts a new line (for a one-message /homework with "field: value" lines).
    pane.input.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        section.querySelector("form").requestSubmit();
      }
    });
  }

  async function control(path, button) {
    button.disabled = true;
    try {
      const data = await post(path);
      status.textContent = data.status;
      clock.textContent = data.clock;
    } catch (error) {
      status.textContent = strings.failed;
    } finally {
      button.disabled = false;
    }
    for (const pane of Object.values(panes)) {
      clearTimeout(pane.timer);
      poll(pane);
    }
  }

  const sweepButton = document.getElementById("sweep");
  const skipButton = document.getElementById("skip");
  sweepButton.addEventListener("click", () => control("/demo/sweep", sweepButton));
  skipButton.addEventListener("click", () => control("/demo/skip", skipButton));

  for (const pane of Object.values(panes)) poll(pane);
})();
