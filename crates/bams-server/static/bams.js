// BAMS web UI: the small amount of script the server-rendered pages need. The same file runs
// in the browser against the server's own origin and inside the Cockpit plugin, where every
// request goes through the Cockpit bridge to the server's unix socket (Cockpit's CSP forbids a
// fetch to port 4848). No inline script, no eval: both Content-Security-Policies forbid them.
(function () {
  "use strict";

  const cockpit = window.cockpit;
  const inCockpit = typeof cockpit !== "undefined";
  const FRAGMENT = { "X-Bams-Fragment": "1" };

  function meta(name) {
    const m = document.querySelector('meta[name="' + name + '"]');
    return m ? m.getAttribute("content") : "";
  }
  const socketPath = meta("bams-socket") || "/run/bams/api.sock";

  // ---- transport: fetch on the server's origin, or cockpit.http over the unix socket ----

  function request(method, url, body, headers) {
    const h = Object.assign({ Accept: "application/json" }, headers || {});
    const csrf = meta("csrf-token");
    if (csrf && method !== "GET" && method !== "HEAD") h["X-CSRF-Token"] = csrf;
    if (body !== undefined && body !== null) h["Content-Type"] = "application/json";
    const text = body === undefined || body === null ? undefined : JSON.stringify(body);
    if (!inCockpit) {
      return fetch(url, { method: method, headers: h, body: text, credentials: "same-origin", redirect: "manual" })
        .then(function (r) {
          return r.text().then(function (t) { return { status: r.status || 0, text: t, type: r.headers.get("Content-Type") || "" }; });
        })
        .catch(function (e) { return { status: 0, text: String(e), type: "" }; });
    }
    return new Promise(function (resolve) {
      let status = 200;
      let type = "";
      const req = cockpit.http(socketPath).request({ method: method, path: url, headers: h, body: text || "" });
      req.response(function (s, hdrs) {
        status = s;
        type = (hdrs && (hdrs["Content-Type"] || hdrs["content-type"])) || "";
      });
      req.then(function (data) { resolve({ status: status, text: data, type: type }); })
        .catch(function (ex, data) { resolve({ status: (ex && ex.status) || 0, text: data || (ex && ex.message) || "", type: "application/json" }); });
    });
  }

  function parseJson(text) {
    try { return JSON.parse(text); } catch (e) { return null; }
  }

  function errorMessage(res) {
    const body = parseJson(res.text);
    if (body && body.error) return body.error;
    if (res.status === 0) return { code: "unreachable", message: "the server did not answer" };
    return { code: "error", message: "HTTP " + res.status };
  }

  function loginAgain() {
    if (inCockpit) return;
    const here = window.location.pathname + window.location.search;
    window.location.assign("/login?next=" + encodeURIComponent(here));
  }

  // Server-Sent Events: EventSource in a browser; in Cockpit the same text/event-stream
  // through cockpit.http(...).stream(), parsed here.
  function follow(url, handlers) {
    if (!inCockpit) {
      const es = new EventSource(url);
      Object.keys(handlers).forEach(function (name) {
        es.addEventListener(name, function (ev) { handlers[name](ev.data); });
      });
      es.addEventListener("end", function () { es.close(); });
      es.onerror = function () {
        if (es.readyState === EventSource.CLOSED && handlers.error) handlers.error();
      };
      return { close: function () { es.close(); } };
    }
    let buffer = "";
    const req = cockpit.http(socketPath).request({ method: "GET", path: url, headers: { Accept: "text/event-stream" }, body: "" });
    req.stream(function (chunk) {
      buffer += chunk;
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        let name = "message";
        const data = [];
        block.split("\n").forEach(function (line) {
          if (line.indexOf("event:") === 0) name = line.slice(6).trim();
          else if (line.indexOf("data:") === 0) data.push(line.slice(5).replace(/^ /, ""));
        });
        if (handlers[name]) handlers[name](data.join("\n"));
      }
    });
    req.catch(function () { if (handlers.error) handlers.error(); });
    return { close: function () { req.close(); } };
  }

  // ---- page loading: full pages in a browser, fragments in Cockpit and for refreshes ----

  const content = function () { return document.getElementById("content"); };
  let lastPath = null;
  let followers = [];

  // In Cockpit the whole page is asked for, so the navigation and the name of the user come
  // from the server too (each filtered by the caller's role); only its parts are used.
  function adopt(main, html) {
    if (!inCockpit) {
      main.innerHTML = html;
      return;
    }
    const doc = new DOMParser().parseFromString(html, "text/html");
    const fresh = doc.getElementById("content") || doc.querySelector("main");
    main.innerHTML = fresh ? fresh.innerHTML : doc.body.innerHTML;
    const nav = doc.querySelector(".sidebar .nav");
    const mine = document.querySelector(".sidebar .nav");
    if (nav && mine) mine.innerHTML = nav.innerHTML;
    const who = doc.querySelector(".whoami");
    const slot = document.querySelector("[data-whoami]");
    if (who && slot) {
      slot.innerHTML = who.innerHTML;
      slot.querySelectorAll("[data-logout]").forEach(function (b) { b.remove(); });
    }
  }

  function loadFragment(path, push) {
    followers.forEach(function (f) { f.close(); });
    followers = [];
    const headers = inCockpit ? { Accept: "text/html" } : Object.assign({ Accept: "text/html" }, FRAGMENT);
    return request("GET", path, null, headers).then(function (res) {
      if (res.status === 401) return loginAgain();
      const main = content();
      if (!main) return;
      if (res.type.indexOf("text/html") === 0) {
        adopt(main, res.text);
      } else {
        const err = errorMessage(res);
        main.innerHTML = "";
        const h = document.createElement("h1");
        h.textContent = res.status === 403 ? "Not allowed" : "Error";
        const p = document.createElement("p");
        p.className = "alert bad";
        p.textContent = err.message;
        main.append(h, p);
      }
      const h1 = main.querySelector("h1");
      if (h1) document.title = h1.textContent + " · BAMS";
      if (push && inCockpit) {
        lastPath = path;
        const cut = path.indexOf("?");
        const options = {};
        if (cut >= 0) new URLSearchParams(path.slice(cut + 1)).forEach(function (v, k) { options[k] = v; });
        cockpit.location.go(cut >= 0 ? path.slice(0, cut) : path, options);
      }
      markNav(path);
      init(main);
    });
  }

  function markNav(path) {
    document.querySelectorAll(".nav a").forEach(function (a) {
      const href = a.getAttribute("href");
      const current = path === href || path.indexOf(href + "/") === 0 || path.indexOf(href + "?") === 0;
      if (current) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
    });
  }

  function currentPath() {
    if (!inCockpit) return window.location.pathname + window.location.search;
    const p = "/" + cockpit.location.path.join("/");
    const q = Object.keys(cockpit.location.options).map(function (k) {
      return encodeURIComponent(k) + "=" + encodeURIComponent(cockpit.location.options[k]);
    }).join("&");
    return (p === "/" ? "/dashboard" : p) + (q ? "?" + q : "");
  }

  // ---- actions: buttons and forms that call the JSON API ----

  function substitute(template, data) {
    return template.replace(/\{([a-z_]+)\}/g, function (_, k) { return data && data[k] !== undefined ? encodeURIComponent(data[k]) : ""; });
  }

  function afterSuccess(el, data) {
    const then = el.getAttribute("data-then") || "reload";
    if (then === "reload") return loadFragment(currentPath(), false);
    if (then.indexOf("go:") === 0) {
      const to = substitute(then.slice(3), data);
      if (inCockpit) return loadFragment(to, true);
      window.location.assign(to);
      return;
    }
    if (then.indexOf("show:") === 0) {
      const target = document.querySelector(then.slice(5));
      if (!target) return;
      target.querySelectorAll("[data-field]").forEach(function (f) {
        const v = data ? data[f.getAttribute("data-field")] : "";
        f.textContent = v === undefined || v === null ? "" : typeof v === "object" ? JSON.stringify(v, null, 2) : String(v);
      });
      target.classList.remove("hidden");
      const focus = target.querySelector("[data-field]");
      if (focus) focus.focus();
    }
  }

  function showStatus(el, err) {
    const region = el.closest("[data-status-region]") || document.getElementById("status");
    if (!region) return;
    region.className = err ? "alert bad" : "alert ok";
    region.textContent = err ? err.message : "";
  }

  function typedConfirm(el) {
    const expected = el.getAttribute("data-confirm-value");
    const text = el.getAttribute("data-confirm");
    if (!text) return Promise.resolve(true);
    return new Promise(function (resolve) {
      const d = document.createElement("dialog");
      d.setAttribute("aria-labelledby", "confirm-title");
      const form = document.createElement("form");
      form.method = "dialog";
      form.className = "stack";
      const title = document.createElement("h2");
      title.id = "confirm-title";
      title.textContent = text;
      form.append(title);
      let input = null;
      if (expected) {
        const field = document.createElement("div");
        field.className = "field";
        const label = document.createElement("label");
        label.htmlFor = "confirm-input";
        label.append("Type ");
        const code = document.createElement("code");
        code.textContent = expected;
        label.append(code, " to confirm");
        input = document.createElement("input");
        input.id = "confirm-input";
        input.autocomplete = "off";
        field.append(label, input);
        form.append(field);
      }
      const row = document.createElement("div");
      row.className = "toolbar";
      const cancel = document.createElement("button");
      cancel.value = "cancel";
      cancel.textContent = "Cancel";
      const ok = document.createElement("button");
      ok.value = "ok";
      ok.className = "danger";
      ok.textContent = el.textContent.trim() || "Confirm";
      ok.id = "confirm-ok";
      if (input) {
        ok.disabled = true;
        input.addEventListener("input", function () { ok.disabled = input.value !== expected; });
      }
      row.append(cancel, ok);
      form.append(row);
      d.append(form);
      document.body.append(d);
      d.addEventListener("close", function () {
        resolve(d.returnValue === "ok");
        d.remove();
        el.focus();
      });
      d.showModal();
      (input || cancel).focus();
    });
  }

  function runAction(el) {
    const spec = (el.getAttribute("data-action") || "").split(" ");
    const method = spec[0];
    const url = spec[1];
    const bodyAttr = el.getAttribute("data-body");
    const body = bodyAttr ? parseJson(bodyAttr) : (method === "GET" || method === "DELETE" ? null : {});
    return typedConfirm(el).then(function (go) {
      if (!go) return;
      el.disabled = true;
      return request(method, url, body).then(function (res) {
        el.disabled = false;
        if (res.status === 401) return loginAgain();
        if (res.status >= 200 && res.status < 300) {
          showStatus(el, null);
          return afterSuccess(el, parseJson(res.text));
        }
        showStatus(el, errorMessage(res));
      });
    });
  }

  function setPath(obj, path, value) {
    const parts = path.split(".");
    let o = obj;
    for (let i = 0; i < parts.length - 1; i++) {
      if (typeof o[parts[i]] !== "object" || o[parts[i]] === null) o[parts[i]] = {};
      o = o[parts[i]];
    }
    o[parts[parts.length - 1]] = value;
  }

  function clearErrors(form) {
    form.querySelectorAll("[data-error-for]").forEach(function (e) { e.textContent = ""; });
    form.querySelectorAll("[aria-invalid]").forEach(function (e) { e.removeAttribute("aria-invalid"); });
    const alert = form.querySelector(".alert");
    if (alert) { alert.textContent = ""; alert.className = "alert"; }
  }

  function fieldError(form, name, message) {
    const slot = form.querySelector('[data-error-for="' + name + '"]');
    const input = form.querySelector('[name="' + name + '"]');
    if (!slot || !input) return false;
    slot.textContent = message;
    input.setAttribute("aria-invalid", "true");
    input.focus();
    return true;
  }

  function formBody(form) {
    const out = {};
    let bad = null;
    Array.prototype.forEach.call(form.elements, function (el) {
      if (!el.name || el.disabled || el.type === "submit" || el.type === "button") return;
      const kind = el.getAttribute("data-kind") || "string";
      let v;
      if (el.type === "checkbox") v = el.checked;
      else if (el.type === "radio") { if (!el.checked) return; v = el.value; }
      else v = el.value;
      if (kind !== "bool" && el.type !== "checkbox" && v === "" && !el.hasAttribute("data-keep-empty")) return;
      if (kind === "int") {
        v = Number(v);
        if (!Number.isInteger(v)) bad = bad || [el.name, "a whole number, please"];
      } else if (kind === "lines") {
        v = v.split("\n").map(function (s) { return s.trim(); }).filter(function (s) { return s.length > 0; });
      } else if (kind === "keyed") {
        // "pool:3" sets {"pool": 3}: one select chooses which field is sent.
        const cut = v.indexOf(":");
        const n = Number(v.slice(cut + 1));
        setPath(out, v.slice(0, cut), Number.isInteger(n) ? n : v.slice(cut + 1));
        return;
      } else if (kind === "json") {
        const parsed = parseJson(v);
        if (parsed === null) bad = bad || [el.name, "not valid JSON"];
        v = parsed;
      }
      setPath(out, el.name, v);
    });
    return { body: out, bad: bad };
  }

  function submitForm(form, submitter) {
    // A second submit button (Preview / Do it) says which with its name and value, and may
    // ask for a confirmation of its own.
    const confirmed = submitter && submitter.hasAttribute("data-confirm") ? typedConfirm(submitter) : Promise.resolve(true);
    return confirmed.then(function (go) { if (go) return submitChecked(form, submitter); });
  }

  function submitChecked(form, submitter) {
    clearErrors(form);
    const spec = form.getAttribute("data-api").split(" ");
    const built = formBody(form);
    if (submitter && submitter.name) {
      const v = submitter.value;
      setPath(built.body, submitter.name, v === "true" ? true : v === "false" ? false : v);
    }
    const then = submitter && submitter.getAttribute("data-then");
    if (then) form.setAttribute("data-then", then);
    // A field named in the route ("/volumes/{barcode}/label") goes into the URL, not the body.
    spec[1] = spec[1].replace(/\{([a-z_]+)\}/g, function (_, k) {
      const v = built.body[k];
      delete built.body[k];
      return encodeURIComponent(v === undefined ? "" : v);
    });
    if (built.bad) {
      fieldError(form, built.bad[0], built.bad[1]);
      return Promise.resolve();
    }
    const submit = form.querySelector('[type="submit"]');
    if (submit) submit.disabled = true;
    return request(spec[0], spec[1], built.body).then(function (res) {
      if (submit) submit.disabled = false;
      if (res.status === 401 && !form.hasAttribute("data-login")) return loginAgain();
      if (res.status >= 200 && res.status < 300) return afterSuccess(form, parseJson(res.text));
      const err = errorMessage(res);
      const field = err.details && err.details.field;
      if (field && fieldError(form, field, err.message)) return;
      const alert = form.querySelector(".alert");
      if (alert) { alert.className = "alert bad"; alert.textContent = err.message; alert.focus(); }
    });
  }

  // ---- live parts: run logs, progress, service logs, lazy trees, local times ----

  function followLog(pre) {
    const url = pre.getAttribute("data-follow");
    const status = document.querySelector("[data-run-status]");
    const h = follow(url, {
      log: function (data) {
        const text = parseJson(data);
        const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
        pre.append(document.createTextNode(typeof text === "string" ? text : data));
        if (atEnd) pre.scrollTop = pre.scrollHeight;
      },
      progress: function (data) {
        const p = parseJson(data) || {};
        document.querySelectorAll("[data-progress]").forEach(function (el) {
          const v = p[el.getAttribute("data-progress")];
          if (v !== undefined && v !== null) el.textContent = String(v);
        });
      },
      end: function (data) {
        const end = parseJson(data) || {};
        if (status) {
          status.textContent = end.status || "ended";
          status.className = "badge " + (end.status || "");
        }
        pre.setAttribute("data-ended", end.status || "ended");
        const done = document.querySelector("[data-when-ended]");
        if (done) done.classList.remove("hidden");
        document.querySelectorAll("[data-while-running]").forEach(function (e) { e.classList.add("hidden"); });
      },
      error: function () { pre.setAttribute("data-stream-error", "1"); },
    });
    followers.push(h);
  }

  function followEntries(pre) {
    const h = follow(pre.getAttribute("data-follow-entries"), {
      entry: function (data) {
        const e = parseJson(data) || {};
        const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
        pre.append(document.createTextNode((e.time || "") + " " + (e.message || "") + "\n"));
        if (atEnd) pre.scrollTop = pre.scrollHeight;
      },
    });
    followers.push(h);
  }

  function toggleDir(button) {
    const li = button.closest("li");
    const open = button.getAttribute("aria-expanded") === "true";
    const existing = li.querySelector(":scope > ul");
    if (open) {
      button.setAttribute("aria-expanded", "false");
      if (existing) existing.classList.add("hidden");
      return;
    }
    button.setAttribute("aria-expanded", "true");
    if (existing) { existing.classList.remove("hidden"); return; }
    const ul = document.createElement("ul");
    ul.className = "tree";
    ul.setAttribute("aria-busy", "true");
    li.append(ul);
    return request("GET", button.getAttribute("data-load"), null, Object.assign({ Accept: "text/html" }, FRAGMENT)).then(function (res) {
      ul.removeAttribute("aria-busy");
      if (res.status === 401) return loginAgain();
      if (res.status !== 200) { ul.textContent = errorMessage(res).message; return; }
      ul.innerHTML = res.text;
      init(ul);
    });
  }

  function loadMore(button) {
    const li = button.closest("li");
    button.disabled = true;
    return request("GET", button.getAttribute("data-more"), null, Object.assign({ Accept: "text/html" }, FRAGMENT)).then(function (res) {
      if (res.status !== 200) { button.disabled = false; return; }
      const tmp = document.createElement("ul");
      tmp.innerHTML = res.text;
      const parent = li.parentNode;
      Array.prototype.slice.call(tmp.children).forEach(function (c) { parent.insertBefore(c, li); });
      li.remove();
      init(parent);
    });
  }

  function localTimes(root) {
    root.querySelectorAll("time[datetime]").forEach(function (t) {
      if (t.hasAttribute("data-local")) return;
      const d = new Date(t.getAttribute("datetime"));
      if (isNaN(d.getTime())) return;
      t.setAttribute("title", t.getAttribute("datetime"));
      t.textContent = d.toLocaleString();
      t.setAttribute("data-local", "1");
    });
  }

  let refreshTimer = null;
  function init(root) {
    localTimes(root);
    root.querySelectorAll("pre[data-follow]").forEach(followLog);
    root.querySelectorAll("pre[data-follow-entries]").forEach(followEntries);
    const refresh = root.querySelector("[data-refresh]");
    if (refreshTimer) { clearTimeout(refreshTimer); refreshTimer = null; }
    if (refresh) {
      const secs = Math.max(2, Number(refresh.getAttribute("data-refresh")) || 10);
      refreshTimer = setTimeout(function () {
        if (document.visibilityState === "visible" && !document.querySelector("dialog[open]")) {
          loadFragment(currentPath(), false);
        } else {
          init(root);
        }
      }, secs * 1000);
    }
  }

  // A cron field's next due times, from the scheduler itself, while one types.
  let previewTimer = null;
  function preview(input) {
    const list = document.querySelector(input.getAttribute("data-preview"));
    const tzInput = document.querySelector(input.getAttribute("data-preview-tz"));
    if (!list) return;
    clearTimeout(previewTimer);
    previewTimer = setTimeout(function () {
      list.textContent = "";
      if (!input.value.trim()) return;
      const url = "/api/v1/schedules/preview?cron=" + encodeURIComponent(input.value.trim()) +
        "&timezone=" + encodeURIComponent(tzInput ? tzInput.value.trim() : "UTC");
      request("GET", url, null).then(function (res) {
        const body = parseJson(res.text) || {};
        if (res.status !== 200) {
          const li = document.createElement("li");
          li.className = "field-error";
          li.textContent = errorMessage(res).message;
          list.append(li);
          return;
        }
        (body.next || []).forEach(function (t) {
          const li = document.createElement("li");
          const time = document.createElement("time");
          time.setAttribute("datetime", t);
          time.textContent = t;
          li.append(time);
          list.append(li);
        });
        localTimes(list);
      });
    }, 300);
  }

  document.addEventListener("input", function (ev) {
    const t = ev.target;
    if (t instanceof HTMLInputElement && t.hasAttribute("data-preview")) preview(t);
    if (t instanceof HTMLInputElement && t.id && document.querySelector('[data-preview-tz="#' + t.id + '"]')) {
      preview(document.querySelector('[data-preview-tz="#' + t.id + '"]'));
    }
  });

  // ---- one set of listeners for the whole document ----

  document.addEventListener("click", function (ev) {
    const target = ev.target instanceof Element ? ev.target : null;
    if (!target) return;
    const action = target.closest("button[data-action]");
    if (action) { ev.preventDefault(); runAction(action); return; }
    const dir = target.closest("button[data-load]");
    if (dir) { ev.preventDefault(); toggleDir(dir); return; }
    const more = target.closest("button[data-more]");
    if (more) { ev.preventDefault(); loadMore(more); return; }
    const copy = target.closest("button[data-copy]");
    if (copy) {
      const src = document.querySelector(copy.getAttribute("data-copy"));
      if (src && navigator.clipboard) navigator.clipboard.writeText(src.textContent.trim()).then(function () { copy.textContent = "Copied"; });
      return;
    }
    const logout = target.closest("button[data-logout]");
    if (logout) {
      ev.preventDefault();
      request("POST", "/api/v1/auth/logout", {}).then(function () { window.location.assign("/login"); });
      return;
    }
    if (inCockpit) {
      const a = target.closest("a[href]");
      const href = a && a.getAttribute("href");
      if (a && href.charAt(0) === "/" && !a.hasAttribute("download") && !a.hasAttribute("data-download")) {
        ev.preventDefault();
        loadFragment(href, true);
      } else if (a && a.hasAttribute("data-download")) {
        ev.preventDefault();
        cockpitDownload(href, a.getAttribute("data-download"));
      }
    }
  });

  // A disk image chosen in a file field goes up as the raw request body, streamed by the
  // browser (never read into the page). Cockpit's channel cannot carry a file: there the
  // form says to use the web UI or curl instead.
  function uploadFile(form) {
    const input = form.querySelector('input[type="file"]');
    const alert = form.querySelector(".alert");
    const say = function (cls, text) { if (alert) { alert.className = "alert " + cls; alert.textContent = text; alert.focus(); } };
    if (inCockpit) return say("bad", "Uploads go through the web UI on port 4848 or curl, not through Cockpit.");
    if (!input || !input.files || !input.files.length) return say("bad", "Choose a disk image file first.");
    const h = { "Content-Type": "application/octet-stream" };
    const csrf = meta("csrf-token");
    if (csrf) h["X-CSRF-Token"] = csrf;
    const submit = form.querySelector('[type="submit"]');
    if (submit) submit.disabled = true;
    say("", "Uploading " + input.files[0].name + "…");
    return fetch(form.getAttribute("data-upload"), { method: "POST", body: input.files[0], headers: h, credentials: "same-origin" })
      .then(function (r) { return r.text().then(function (t) { return { status: r.status, text: t }; }); })
      .catch(function (e) { return { status: 0, text: String(e) }; })
      .then(function (res) {
        if (submit) submit.disabled = false;
        if (res.status === 401) return loginAgain();
        if (res.status >= 200 && res.status < 300) return afterSuccess(form, parseJson(res.text));
        say("bad", errorMessage(res).message);
      });
  }

  document.addEventListener("submit", function (ev) {
    const form = ev.target;
    if (form instanceof HTMLFormElement && form.hasAttribute("data-upload")) {
      ev.preventDefault();
      uploadFile(form);
    } else if (form instanceof HTMLFormElement && form.hasAttribute("data-api")) {
      ev.preventDefault();
      submitForm(form, ev.submitter || null);
    } else if (form instanceof HTMLFormElement && form.hasAttribute("data-get") && inCockpit) {
      ev.preventDefault();
      const q = new URLSearchParams(new FormData(form)).toString();
      loadFragment(form.getAttribute("action") + (q ? "?" + q : ""), true);
    }
  });

  // A download in Cockpit: an external channel streams the socket's answer to the browser.
  function cockpitDownload(path, filename) {
    const opts = {
      payload: "http-stream2", unix: socketPath, method: "GET", path: path, binary: "raw",
      external: { "content-disposition": 'attachment; filename="' + (filename || "download").replace(/"/g, "") + '"' },
    };
    const q = window.btoa(JSON.stringify(opts));
    window.location.href = "/cockpit/channel/" + cockpit.transport.csrf_token + "?" + q;
  }

  function start() {
    if (inCockpit) {
      cockpit.transport.wait(function () {
        lastPath = currentPath();
        loadFragment(lastPath, false);
        cockpit.addEventListener("locationchanged", function () {
          // A change this script made has been loaded already.
          const now = currentPath();
          if (now === lastPath) return;
          lastPath = now;
          loadFragment(now, false);
        });
      });
      return;
    }
    const login = document.querySelector("form[data-login]");
    if (login) login.setAttribute("data-then", "go:" + safeNext());
    const main = content();
    if (main) init(main);
  }

  // Only a path on this server, never another origin (`//host` or `/\host`).
  function safeNext() {
    const next = new URLSearchParams(window.location.search).get("next") || "/dashboard";
    return /^\/(?![\/\\])/.test(next) ? next.replace(/\{/g, "") : "/dashboard";
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
