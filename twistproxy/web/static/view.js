// The flow view: one flow's request, response, timings, TLS, error and
// WebSocket messages, and what can be done with it. Everything from the
// flow is put in the page as text (textContent), never as markup.

import { act, changeFlow, content, contentUrl, deleteFlow, duplicateFlow, exportCommand, flowDetail, highlight } from "./api.js";
import { formatSize, formatTime } from "./list.js";

const VIEW_LIMIT = 1024 * 1024; // bodies larger than this are offered as a download
const DECODE_LIMIT = 8 * 1024 * 1024; // the API decodes no more than this (api.py DECODE_LIMIT)
const HEX_LIMIT = 64 * 1024;

function el(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    else element.setAttribute(name, value);
  }
  for (const child of children) {
    if (child !== null && child !== undefined) element.append(child);
  }
  return element;
}

function table(rows) {
  return el("table", {}, ...rows.filter(([, v]) => v !== null && v !== undefined && v !== "")
    .map(([name, value]) => el("tr", {}, el("td", {}, name), el("td", {}, String(value)))));
}

function ms(start, end) {
  return start && end ? `${((end - start) * 1000).toFixed(1)} ms` : null;
}

export function hexdump(bytes) {
  const lines = [];
  for (let offset = 0; offset < Math.min(bytes.length, HEX_LIMIT); offset += 16) {
    const chunk = bytes.subarray(offset, offset + 16);
    const hex = Array.from(chunk, (b) => b.toString(16).padStart(2, "0")).join(" ");
    const text = Array.from(chunk, (b) => (b >= 32 && b < 127 ? String.fromCharCode(b) : ".")).join("");
    lines.push(`${offset.toString(16).padStart(8, "0")}  ${hex.padEnd(48)}  ${text}`);
  }
  if (bytes.length > HEX_LIMIT) lines.push(`… ${bytes.length - HEX_LIMIT} more bytes`);
  return lines.join("\n");
}

function kind(contentType) {
  const type = (contentType || "").split(";")[0].trim().toLowerCase();
  if (type === "application/json" || type.endsWith("+json")) return "json";
  if (type.startsWith("image/")) return "image";
  if (type.startsWith("text/") || /(xml|javascript|ecmascript|x-www-form-urlencoded)$/.test(type)) return "text";
  return "binary";
}

async function bodyView(flow, side, body) {
  const box = el("div", { class: "body" });
  if (!body.captured) {
    box.append(el("p", {}, body.size ? `${formatSize(body.size)}, not recorded (streamed)` : "no body"));
    return box;
  }
  if (body.size === 0) { box.append(el("p", {}, "no body")); return box; }
  const download = el("a", { href: `${contentUrl(flow.id, side)}?download=1` }, "download");
  if (body.size > VIEW_LIMIT) {
    box.append(el("p", {}, `too large to show (${formatSize(body.size)}): `, download));
    return box;
  }
  let bytes;
  try {
    bytes = await content(flow.id, side);
  } catch (error) {
    box.append(el("p", { class: "error" }, error.message));
    return box;
  }
  const type = kind(body.content_type);
  const coding = !body.content_encoding ? ""
    : bytes.decoded ? ` decoded from ${body.content_encoding}`
    : ` as sent: ${body.content_encoding} did not decode (invalid, or over ${formatSize(DECODE_LIMIT)} decoded)`;
  const info = `${formatSize(bytes.length)}${coding}${body.truncated ? ", truncated" : ""} `;
  box.append(el("p", {}, info, download));
  if (type === "image") {
    const url = URL.createObjectURL(new Blob([bytes], { type: body.content_type.split(";")[0] }));
    box.append(el("img", { src: url, alt: `${side} image` }));
  } else if (type === "json") {
    let text = new TextDecoder("utf-8").decode(bytes);
    try { text = JSON.stringify(JSON.parse(text), null, 2); } catch { /* shown as it is */ }
    box.append(el("pre", { class: "body-json" }, text));
  } else if (type === "text") {
    box.append(await textView(flow, side, bytes));
  } else {
    box.append(el("pre", { class: "body-hex" }, hexdump(bytes)));
  }
  return box;
}

// HTML, XML, CSS and JavaScript come highlighted from the API as
// [class, text] tokens: each becomes a text node or a span's textContent,
// never markup. Other text (or a body the API does not highlight) is plain.
async function textView(flow, side, bytes) {
  let answer = { language: null };
  try {
    answer = await highlight(flow.id, side);
  } catch { /* shown as plain text */ }
  if (!answer.language) {
    return el("pre", { class: "body-text", title: answer.reason || "" }, new TextDecoder("utf-8").decode(bytes));
  }
  const pre = el("pre", { class: "body-code", "data-language": answer.language });
  const tokens = document.createDocumentFragment();
  for (const [name, text] of answer.tokens) {
    if (name) {
      const span = document.createElement("span");
      span.className = `hl-${name}`;
      span.textContent = text;
      tokens.append(span);
    } else {
      tokens.append(document.createTextNode(text));
    }
  }
  pre.append(tokens);
  if (!answer.complete) pre.title = "highlighted in part (too many tokens)";
  return pre;
}

function headersText(headers) {
  return headers.map(([name, value]) => `${name}: ${value}`).join("\n");
}

function parseHeaders(text) {
  return text.split("\n").filter((line) => line.trim()).map((line) => {
    const colon = line.indexOf(":");
    if (colon < 1) throw new Error(`not a header line: ${line}`);
    return [line.slice(0, colon).trim(), line.slice(colon + 1).trim()];
  });
}

// An editor of a request or response: of a held flow ("Save and resume"),
// or of one that is not live (a stored or duplicated flow, to replay).
function editor(flow, side, refresh) {
  const message = flow[side];
  const held = flow.live && flow.intercepted;
  const prefix = side === "request" ? "edit" : "edit-response";
  const first = side === "request"
    ? [el("input", { id: "edit-method", value: message.method, size: "8", "aria-label": "method" }),
      el("input", { id: "edit-url", value: message.url, size: "60", "aria-label": "URL" })]
    : [el("input", { id: "edit-status", value: String(message.status_code), size: "4", "aria-label": "status" }),
      el("input", { id: "edit-reason", value: message.reason, size: "30", "aria-label": "reason" })];
  const headers = el("textarea", { id: `${prefix}-headers`, rows: "8" });
  headers.value = headersText(message.headers);
  const body = el("textarea", { id: `${prefix}-body`, rows: "6" });
  const error = el("div", { class: "error" });
  let bodyLoaded = false;
  let typed = false;
  body.addEventListener("input", () => { typed = true; });
  if (message.body.captured && message.body.size && message.body.size <= VIEW_LIMIT) {
    content(flow.id, side).then((bytes) => {
      if (!typed) body.value = new TextDecoder("utf-8").decode(bytes);
      bodyLoaded = true;
      body.dataset.loaded = "yes";
    });
  } else {
    body.dataset.loaded = "yes";
  }
  const save = async (then) => {
    try {
      const edit = side === "request"
        ? { method: first[0].value, url: first[1].value }
        : { status_code: first[0].value, reason: first[1].value };
      edit.headers = parseHeaders(headers.value);
      if (bodyLoaded || body.value) edit.content = body.value;
      await changeFlow(flow.id, { [side]: edit });
      if (then) await act(flow.id, then);
      refresh();
    } catch (e) {
      error.textContent = e.message;
    }
  };
  const buttons = held
    ? [el("button", { id: "save-resume", onclick: () => save("resume") }, "Save and resume"),
      el("button", { id: "save", onclick: () => save(null) }, "Save")]
    : [el("button", { id: `save-${side}`, onclick: () => save(null) }, `Save the ${side}`)];
  return el("div", { class: `edit${held ? " held" : ""}`, "data-side": side },
    el("p", {}, held ? `This ${side} is held. Edit it, then resume it or kill it.` : `Edit the ${side}.`),
    el("div", {}, first[0], " ", first[1]),
    el("label", {}, "Headers (Name: value, one a line)", headers),
    el("label", {}, "Body (text)", body),
    el("div", { class: "actions" }, ...buttons),
    error);
}

function certificateRows(cert) {
  if (!cert) return [];
  const date = (seconds) => new Date(seconds * 1000).toISOString();
  return [
    ["certificate subject", cert.subject],
    ["issuer", cert.issuer],
    ["names", [...cert.dns_names, ...cert.ip_addresses].join(", ")],
    ["valid", `${date(cert.not_before)} to ${date(cert.not_after)}`],
    ["serial", cert.serial],
    ["SHA-256", cert.sha256],
  ];
}

function connection(name, conn, id) {
  const facts = table([
    ["address", conn.address ? conn.address.join(":") : null],
    ["peer", conn.peername ? conn.peername.join(":") : null],
    ["local", conn.sockname ? conn.sockname.join(":") : null],
    ["TLS", conn.tls ? `${conn.tls_version || "yes"}` : "no"],
    ["SNI", conn.sni], ["ALPN", conn.alpn],
    ...certificateRows(conn.certificate),
    ["connected", conn.timestamp_start ? formatTime(conn.timestamp_start) : null],
    ["error", conn.error],
  ]);
  facts.id = id;
  return [el("h3", {}, name), facts];
}

export async function renderFlow(container, id, onChanged) {
  const flow = await flowDetail(id);
  const refresh = () => renderFlow(container, id, onChanged).then(onChanged);
  const request = flow.request;
  const response = flow.response;
  const actions = el("div", { class: "actions" });
  const button = (label, handler, enabled = true) => {
    const b = el("button", { onclick: async () => {
      try { await handler(); refresh(); } catch (e) { alert(e.message); }
    } }, label);
    b.disabled = !enabled;
    actions.append(b);
  };
  button("Resume", () => act(id, "resume"), flow.intercepted);
  button("Kill", () => act(id, "kill"), flow.live);
  button("Replay", () => act(id, "replay"), !flow.live);
  button(flow.marked ? "Unmark" : "Mark", () => changeFlow(id, { marked: flow.marked ? "" : "●" }));
  button("Comment", async () => {
    const text = prompt("Comment", flow.comment);
    if (text !== null) await changeFlow(id, { comment: text });
  });
  button("Delete", async () => { await deleteFlow(id); container.hidden = true; }, !flow.live);
  actions.append(el("button", { id: "duplicate", onclick: async () => {
    try {
      const copy = await duplicateFlow(id);
      await renderFlow(container, copy.id, onChanged);
      onChanged();
    } catch (e) { alert(e.message); }
  } }, "Duplicate"));
  // A flow that is not live can be edited (then replayed, say).
  const editors = el("div", { id: "editors" });
  const edit = el("button", { id: "edit", onclick: () => {
    if (editors.childElementCount) { editors.replaceChildren(); return; }
    editors.replaceChildren(...["request", "response"].filter((side) => flow[side]).map((side) => editor(flow, side, refresh)));
  } }, "Edit");
  edit.disabled = flow.live || !request;
  actions.append(edit);
  // Export as a command: shown under the buttons (and copied, where the
  // browser lets the page write the clipboard).
  const command = el("pre", { id: "export-command", class: "command" });
  command.hidden = true;
  for (const format of ["curl", "httpie"]) {
    actions.append(el("button", { class: `export-${format}`, onclick: async () => {
      try {
        command.textContent = (await exportCommand(id, format)).command;
        command.classList.remove("error");
        navigator.clipboard?.writeText(command.textContent).catch(() => {});
      } catch (e) {
        command.textContent = e.message;
        command.classList.add("error");
      }
      command.hidden = false;
      command.dataset.format = format;
    } }, format));
  }
  actions.append(el("a", { href: `/api/flows/${encodeURIComponent(id)}/export/raw`, download: "" }, "raw"));
  const parts = [
    el("h2", {}, request ? `${request.method} ${request.url}` : "(no request)"),
    el("p", {}, response ? `${response.status_code} ${response.reason}` : flow.error ? "" : "waiting for the response",
      flow.intercepted ? " — held" : "", flow.comment ? ` — ${flow.comment}` : ""),
    actions,
    command,
    editors,
  ];
  if (flow.error) parts.push(el("p", { class: "error" }, `error: ${flow.error.msg}`));
  if (request) {
    parts.push(el("h3", {}, "Request"));
    if (flow.intercepted && !response) parts.push(editor(flow, "request", refresh));
    parts.push(table([["version", request.http_version], ...request.headers]));
    parts.push(await bodyView(flow, "request", request.body));
  }
  if (response) {
    parts.push(el("h3", {}, "Response"));
    if (flow.intercepted) parts.push(editor(flow, "response", refresh));
    parts.push(table([["status", `${response.status_code} ${response.reason}`],
      ["version", response.http_version], ...response.headers]));
    parts.push(await bodyView(flow, "response", response.body));
  }
  if (flow.websocket) {
    const ws = flow.websocket;
    parts.push(el("h3", {}, `WebSocket: ${ws.count} messages${ws.close_code ? `, closed ${ws.close_code} ${ws.close_reason || ""}` : ""}`));
    parts.push(el("table", { class: "ws" }, ...ws.messages.map((m) => el("tr", {},
      el("td", {}, m.from_client ? "→" : "←"),
      el("td", {}, formatTime(m.timestamp)),
      el("td", {}, `${m.text ? m.content : `binary, ${m.size} bytes (base64: ${m.content})`}${m.dropped ? " (dropped)" : ""}${m.injected ? " (injected)" : ""}`)))));
  }
  parts.push(el("h3", {}, "Timings"));
  parts.push(table([
    ["created", formatTime(flow.timestamp_created)],
    ["request", request ? ms(request.timestamp_start, request.timestamp_end) : null],
    ["waiting", request && response ? ms(request.timestamp_end, response.timestamp_start) : null],
    ["response", response ? ms(response.timestamp_start, response.timestamp_end) : null],
    ["total", request && response ? ms(request.timestamp_start, response.timestamp_end) : null],
  ]));
  parts.push(...connection("Client connection", flow.client_conn, "client-conn"));
  parts.push(...connection("Server connection", flow.server_conn, "server-conn"));
  container.replaceChildren(...parts);
  container.hidden = false;
  container.dataset.id = id;
}
