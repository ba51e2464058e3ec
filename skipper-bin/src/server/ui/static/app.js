// Skipper's dashboard script: the pages work without it; with it they are live.
//  - body[data-live="all"]: listen to /events (the server's event stream) and re-render the
//    page's #live region when something happens (fetch the page again, swap the region),
//    keeping what the user changed in its forms.
//  - body[data-live="deploy:<id>"]: list the deployment's steps from /deploys/<id>/events as
//    they happen; on "done", re-render the region to show the outcome. A live view never
//    stalls: while the stream is quiet (a proxy that buffers, a connection lost without an
//    error) the region is re-rendered from the server every few seconds.
//  - form[data-confirm] (or its submit button's): ask first. form[data-fetch]: submit without leaving the page, then
//    show the page the server answered with. form[data-busy]: say what is happening.
//  - button[data-copy]: copy a field (the webhook URL).
// Everything the server sends is put in as text or as the server's own escaped HTML.
"use strict";
(function () {
  const status = document.getElementById("live-status");
  function showLive(on) {
    if (!status) return;
    status.hidden = false;
    status.textContent = on ? "● live" : "○ reconnecting…";
    status.classList.toggle("off", !on);
  }

  // Swap #live with the same region of `html` (a whole page the server rendered).
  function swap(html, keep) {
    const doc = new DOMParser().parseFromString(html, "text/html");
    const fresh = doc.getElementById("live");
    const here = document.getElementById("live");
    if (!fresh || !here) return false;
    const focused = document.activeElement && document.activeElement.id;
    // What the user changed in a form (a tag chosen, a field typed in) survives the update.
    const changed = [];
    for (const el of keep ? here.querySelectorAll("input[id], select[id], textarea[id]") : []) {
      if (el.type === "hidden") continue;
      if (el.type === "checkbox" || el.type === "radio") {
        if (el.checked !== el.defaultChecked) changed.push([el.id, "checked", el.checked]);
      } else if (el instanceof HTMLSelectElement) {
        const initial = Array.from(el.options).find((o) => o.defaultSelected) || el.options[0];
        if (initial && el.value !== initial.value) changed.push([el.id, "value", el.value]);
      } else if (el.value !== el.defaultValue) {
        changed.push([el.id, "value", el.value]);
      }
    }
    here.replaceWith(fresh);
    for (const [id, prop, v] of changed) {
      const el = document.getElementById(id);
      if (!el) continue;
      if (el instanceof HTMLSelectElement && !Array.from(el.options).some((o) => o.value === v)) continue;
      el[prop] = v;
    }
    if (doc.title) document.title = doc.title;
    const live = doc.body.dataset.live;
    if (live !== undefined && live !== document.body.dataset.live) {
      document.body.dataset.live = live;
      connect();
    }
    if (focused) {
      const again = document.getElementById(focused);
      if (again) again.focus();
    }
    return true;
  }

  let refreshing = null;
  let again = false;
  function refresh() {
    if (refreshing) { again = true; return; }
    refreshing = fetch(location.href, { headers: { "x-skipper-refresh": "1" }, credentials: "same-origin" })
      .then((r) => (r.redirected && new URL(r.url).pathname === "/login" ? (location.href = r.url, "") : r.text()))
      .then((html) => { if (html) swap(html, true); })
      .catch(() => {})
      .finally(() => {
        refreshing = null;
        if (again) { again = false; setTimeout(refresh, 300); }
      });
  }
  let timer = null;
  function soon() {
    clearTimeout(timer);
    timer = setTimeout(refresh, 250);
  }

  function stepItem(s) {
    const li = document.createElement("li");
    li.dataset.n = String(s.n);
    li.className = "step-" + s.status;
    const name = document.createElement("span");
    name.className = "step";
    name.textContent = s.step;
    const badge = document.createElement("span");
    badge.className = "badge " + s.status;
    badge.textContent = s.status;
    const msg = document.createElement("span");
    msg.className = "msg";
    msg.textContent = s.message;
    li.append(name, " ", badge, " ", msg);
    return li;
  }

  let source = null;
  let heard = Date.now();
  let watchdog = null;
  function connect() {
    if (source) { source.close(); source = null; }
    clearInterval(watchdog);
    watchdog = null;
    const live = document.body.dataset.live || "";
    if (!live) return;
    if (live.startsWith("deploy:")) {
      // Quiet for 5 s: ask the server for the page as it is now (the outcome included).
      heard = Date.now();
      watchdog = setInterval(() => {
        if (Date.now() - heard >= 5000) { heard = Date.now(); refresh(); }
      }, 1000);
    }
    if (!window.EventSource) return;
    if (live === "all") {
      source = new EventSource("/events");
      for (const kind of ["deploy.started", "deploy.finished", "event", "instance", "lagged"]) {
        source.addEventListener(kind, soon);
      }
    } else if (live.startsWith("deploy:")) {
      const id = live.slice("deploy:".length);
      source = new EventSource("/deploys/" + encodeURIComponent(id) + "/events");
      source.addEventListener("step", (e) => {
        heard = Date.now();
        const s = JSON.parse(e.data);
        const list = document.getElementById("steps");
        if (!list) return;
        const item = stepItem(s);
        const old = list.querySelector('li[data-n="' + s.n + '"]');
        if (old) old.replaceWith(item); else list.append(item);
      });
      source.addEventListener("done", () => {
        source.close();
        source = null;
        refresh();
      });
    }
    source.onopen = () => showLive(true);
    source.onerror = () => showLive(false);
  }

  document.addEventListener("submit", (e) => {
    const form = e.target;
    if (!(form instanceof HTMLFormElement)) return;
    const ask = (e.submitter && e.submitter.dataset.confirm) || form.dataset.confirm;
    if (ask && !window.confirm(ask)) {
      e.preventDefault();
      return;
    }
    const button = form.querySelector("button[type=submit]");
    if (form.dataset.busy) {
      const note = document.createElement("p");
      note.className = "muted busy";
      note.textContent = form.dataset.busy;
      form.append(note);
      if (button) setTimeout(() => { button.disabled = true; }, 0);
    }
    if (!("fetch" in form.dataset)) return;
    e.preventDefault();
    if (button) button.disabled = true;
    fetch(form.action, {
      method: "POST",
      body: new URLSearchParams(new FormData(form)),
      credentials: "same-origin",
    })
      .then((r) => {
        const path = new URL(r.url).pathname;
        if (r.redirected && path !== location.pathname) { location.href = r.url; return null; }
        return r.text();
      })
      .then((html) => { if (html !== null && !swap(html, false)) location.reload(); })
      .catch(() => location.reload());
  });

  // button[data-copy=<id>]: copy that field's value.
  document.addEventListener("click", (e) => {
    const button = e.target instanceof Element ? e.target.closest("button[data-copy]") : null;
    if (!button) return;
    const field = document.getElementById(button.dataset.copy);
    if (!field) return;
    const done = () => {
      button.textContent = "Copied";
      setTimeout(() => { button.textContent = "Copy"; }, 2000);
    };
    field.select();
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(field.value).then(done, () => { document.execCommand("copy"); done(); });
    } else {
      document.execCommand("copy");
      done();
    }
  });

  connect();
  window.addEventListener("pageshow", (e) => { if (e.persisted) connect(); });
})();
