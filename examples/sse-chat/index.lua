-- GET / — the chat page: plain HTML and a little inline JavaScript, no build
-- step. The page listens with new EventSource("/events") and posts with
-- fetch("/send"). Messages are put in the page with textContent, never as
-- HTML, so whatever people type shows up as text.
local PAGE = [==[
<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>moonring chat</title>
<style>
  body { font: 16px/1.4 system-ui, sans-serif; max-width: 40rem; margin: 2rem auto; padding: 0 1rem; }
  #status { font-size: .85rem; color: #a00; }
  #status.live { color: #080; }
  #messages { list-style: none; padding: 0; min-height: 10rem; border: 1px solid #ccc;
              border-radius: 4px; padding: .5rem; max-height: 60vh; overflow-y: auto; }
  #messages li { margin: .2rem 0; white-space: pre-wrap; overflow-wrap: anywhere; }
  #messages .name { font-weight: bold; margin-right: .4rem; }
  #messages time { color: #888; font-size: .8rem; margin-right: .4rem; }
  form { display: flex; gap: .5rem; margin-top: .5rem; }
  #text { flex: 1; }
</style>
</head>
<body>
<h1>moonring chat <span id="status">connecting…</span></h1>
<ul id="messages"></ul>
<form id="send">
  <input id="name" name="name" placeholder="name" maxlength="40" size="10" required>
  <input id="text" name="text" placeholder="say something" maxlength="1000" required autocomplete="off">
  <button>Send</button>
</form>
<script>
"use strict";
const list = document.getElementById("messages");
const status = document.getElementById("status");
const form = document.getElementById("send");
const nameInput = document.getElementById("name");
const textInput = document.getElementById("text");
nameInput.value = localStorage.getItem("chat-name") || "";

function show(msg) {
  const li = document.createElement("li");
  li.dataset.id = msg.id;
  const time = document.createElement("time");
  time.textContent = new Date(msg.time * 1000).toLocaleTimeString();
  const name = document.createElement("span");
  name.className = "name";
  name.textContent = msg.name;                  // text, never HTML
  const text = document.createElement("span");
  text.className = "text";
  text.textContent = msg.text;
  li.append(time, name, text);
  const atBottom = list.scrollTop + list.clientHeight >= list.scrollHeight - 4;
  list.append(li);
  if (atBottom) list.scrollTop = list.scrollHeight;
}

// EventSource reconnects by itself and sends Last-Event-ID: the server
// replays only what this page missed.
const events = new EventSource("/events");
events.onopen = () => { status.textContent = "live"; status.className = "live"; };
events.onerror = () => { status.textContent = "reconnecting…"; status.className = ""; };
events.onmessage = (e) => show(JSON.parse(e.data));

form.addEventListener("submit", async (e) => {
  e.preventDefault();
  localStorage.setItem("chat-name", nameInput.value);
  const body = JSON.stringify({ name: nameInput.value, text: textInput.value });
  const res = await fetch("/send", {
    method: "POST", headers: { "content-type": "application/json" }, body,
  });
  if (res.ok) { textInput.value = ""; textInput.focus(); }
  else { status.textContent = (await res.json()).error; status.className = ""; }
});
</script>
</body>
</html>
]==]

return {
  GET = function(req)
    return {
      status = 200,
      headers = { ["content-type"] = "text/html; charset=utf-8" },
      body = PAGE,
    }
  end,
}
