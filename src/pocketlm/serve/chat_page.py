"""The chat page served at `/`: one self-contained HTML document (inline CSS and JS, no assets).

It talks to /v1/chat/completions with streaming: send, watch the reply stream, stop it, reset
the conversation. Text is inserted with textContent only (never as HTML). Kept in a Python
module so it ships inside the package without extra package data.
"""

CHAT_PAGE_HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>PocketLM chat</title>
<style>
  :root { color-scheme: light dark; --line: #8884; --me: #2563eb22; --bot: #8881; }
  * { box-sizing: border-box; }
  body { margin: 0; font: 15px/1.5 system-ui, sans-serif; display: flex; flex-direction: column;
         height: 100vh; }
  header { display: flex; gap: .5rem; align-items: center; padding: .5rem 1rem;
           border-bottom: 1px solid var(--line); flex-wrap: wrap; }
  header h1 { font-size: 1rem; margin: 0 auto 0 0; }
  header label { font-size: .85rem; }
  header input { width: 5rem; }
  #key { width: 10rem; }
  #messages { flex: 1; overflow-y: auto; padding: 1rem; display: flex; flex-direction: column;
              gap: .75rem; }
  .msg { max-width: 48rem; padding: .5rem .75rem; border-radius: .5rem; white-space: pre-wrap;
         overflow-wrap: anywhere; }
  .msg.user { background: var(--me); align-self: flex-end; }
  .msg.assistant { background: var(--bot); align-self: flex-start; }
  .msg.system, .msg.error { font-size: .85rem; opacity: .8; align-self: center; }
  .msg.error { color: #dc2626; }
  form { display: flex; gap: .5rem; padding: .75rem 1rem; border-top: 1px solid var(--line); }
  textarea { flex: 1; resize: vertical; min-height: 2.6rem; font: inherit; padding: .4rem; }
  button { font: inherit; padding: .3rem .9rem; }
</style>
</head>
<body>
<header>
  <h1>PocketLM chat <span id="model"></span></h1>
  <label>System <input id="system" placeholder="optional" style="width:12rem"></label>
  <label>Temperature <input id="temperature" type="number" min="0" max="2" step="0.1" value="0.7"></label>
  <label>Max tokens <input id="max-tokens" type="number" min="1" step="1" value="256"></label>
  <label>API key <input id="key" type="password" autocomplete="off" placeholder="if required"></label>
  <button id="reset" type="button">Reset</button>
</header>
<main id="messages" aria-live="polite"></main>
<form id="form">
  <textarea id="input" rows="2" placeholder="Message (Enter sends, Shift+Enter for a new line)"></textarea>
  <button id="send" type="submit">Send</button>
  <button id="stop" type="button" disabled>Stop</button>
</form>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
const box = $("messages"), input = $("input"), send = $("send"), stop = $("stop");
let history = [], controller = null, conversation = 0;
$("key").value = sessionStorage.getItem("pocketlm-key") || "";
$("key").addEventListener("change", () => sessionStorage.setItem("pocketlm-key", $("key").value));

function bubble(role, text) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  div.textContent = text;
  box.appendChild(div);
  box.scrollTop = box.scrollHeight;
  return div;
}

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

function busy(on) {
  send.disabled = on;
  stop.disabled = !on;
}

async function errorOf(response) {
  try { return (await response.json()).error; } catch (e) { return { message: response.statusText }; }
}

// Send the conversation; while it does not fit the model's context, leave out the oldest turns
// (a user message and its reply at a time; never the new message) and say how many were dropped.
async function open(history, body) {
  for (let first = 0; ; first += 2) {
    const messages = [];
    const system = $("system").value.trim();
    if (system) messages.push({ role: "system", content: system });
    messages.push(...history.slice(first));
    const response = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), signal: controller.signal,
      body: JSON.stringify({ ...body, messages }),
    });
    if (response.ok) {
      if (first > 0) bubble("system", first + " earlier messages left the context window.");
      return response;
    }
    const error = await errorOf(response);
    if (error.code !== "context_length_exceeded" || first + 2 >= history.length) {
      throw new Error(response.status + ": " + error.message);
    }
  }
}

async function chat(text) {
  const mine = conversation;
  history.push({ role: "user", content: text });
  bubble("user", text);
  const body = {
    stream: true,
    temperature: Number($("temperature").value),
    max_tokens: Number($("max-tokens").value),
  };
  controller = new AbortController();
  busy(true);
  let reply = "", out = null;
  try {
    const response = await open(history, body);
    out = bubble("assistant", "");
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\\n\\n")) >= 0) {
        const event = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        if (!event.startsWith("data: ")) continue;
        const data = event.slice(6);
        if (data === "[DONE]") continue;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
        if (delta && delta.content) {
          reply += delta.content;
          out.textContent = reply;
          box.scrollTop = box.scrollHeight;
        }
      }
    }
  } catch (err) {
    if (err.name !== "AbortError") bubble("error", String(err.message || err));
  } finally {
    controller = null;
    busy(false);
    (out || bubble("assistant", "")).dataset.done = "1";
    if (mine === conversation) history.push({ role: "assistant", content: reply });
    input.focus();
  }
}

$("form").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = input.value;
  if (!text.trim() || controller) return;
  input.value = "";
  chat(text);
});
input.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("form").requestSubmit(); }
});
stop.addEventListener("click", () => { if (controller) controller.abort(); });
$("reset").addEventListener("click", () => {
  if (controller) controller.abort();
  history = [];
  conversation += 1;
  box.replaceChildren();
  bubble("system", "New conversation.");
});
fetch("/v1/models", { headers: headers() }).then((r) => r.ok ? r.json() : null).then((m) => {
  if (m && m.data && m.data[0]) $("model").textContent = "· " + m.data[0].id;
}).catch(() => {});
</script>
</body>
</html>
"""
