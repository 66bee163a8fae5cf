// The web UI's page: the filter and intercept boxes, the flow list, the
// flow view, the push channel and the keyboard.

import { getIntercept, importFile, query, replayFlows, replayMatching, setIntercept } from "./api.js";
import { FlowList } from "./list.js";
import { renderFlow } from "./view.js";

const $ = (id) => document.getElementById(id);

function showError(input, error) {
  const box = $("filter-error");
  input.classList.toggle("invalid", Boolean(error));
  if (!error) { box.textContent = ""; return; }
  const column = error.body && error.body.column;
  box.textContent = column ? `${error.message} at column ${column}` : error.message;
  box.dataset.column = column || "";
}

let events = null;

function listen(list) {
  if (events) events.close();
  events = new EventSource(`/api/events${query({ filter: list.filter })}`);
  events.addEventListener("open", () => { $("status").textContent = "● live"; });
  events.addEventListener("error", () => { $("status").textContent = "○ reconnecting"; });
  events.addEventListener("flows", (e) => {
    list.apply(JSON.parse(e.data));
    const view = $("view");
    if (!view.hidden) {
      const changed = (JSON.parse(e.data).changes || []).some((c) => c.flow.id === view.dataset.id);
      if (changed) renderFlow(view, view.dataset.id, () => list.render()).catch(() => {});
    }
  });
}

// Click a column's header: sort by it, again: the other way; a third
// time: back to arrival order.
function sortable(list) {
  $("head").addEventListener("click", async (e) => {
    const cell = e.target.closest("[data-sort]");
    if (!cell) return;
    const key = cell.dataset.sort;
    let order = "asc";
    if (list.sort === key) order = list.order === "asc" ? "desc" : null;
    await list.sortBy(order ? key : "seq", order || "asc");
    for (const other of $("head").querySelectorAll("[data-sort]")) {
      other.dataset.order = other.dataset.sort === list.sort ? list.order : "";
    }
  });
}

function notice(text, error = false) {
  const box = $("notice");
  box.textContent = text;
  box.classList.toggle("error", error);
}

function replayed(answer) {
  const skipped = answer.skipped.length ? `, ${answer.skipped.length} skipped (${answer.skipped[0].reason})` : "";
  return `replaying ${answer.queued} flows${skipped}`;
}

// Replay the checked flows, or every flow the filter matches (confirmed);
// load a flow file or HAR file.
function actions(list) {
  const checked = $("replay-checked");
  list.onChecked = (count) => {
    checked.textContent = count ? `Replay ${count} checked` : "Replay checked";
    checked.disabled = count === 0;
  };
  checked.addEventListener("click", async () => {
    try {
      notice(replayed(await replayFlows(Array.from(list.checked))));
      list.clearChecked();
    } catch (error) { notice(error.message, true); }
  });
  $("replay-matching").addEventListener("click", async () => {
    const what = list.filter ? `the ${list.total} flows matching ${list.filter}` : `all ${list.total} flows`;
    if (!confirm(`Replay ${what}?`)) return;
    try { notice(replayed(await replayMatching(list.filter))); } catch (error) { notice(error.message, true); }
  });
  const input = $("import-file");
  input.addEventListener("change", async () => {
    const file = input.files[0];
    if (!file) return;
    notice(`loading ${file.name}…`);
    try {
      const answer = await importFile(file);
      const skipped = answer.skipped ? `, ${answer.skipped} skipped (${answer.errors[0]})` : "";
      notice(`loaded ${answer.loaded} flows from ${file.name}${skipped}`, Boolean(answer.skipped));
    } catch (error) {
      notice(error.message, true);
    }
    input.value = "";
  });
}

function exportLinks(filter) {
  $("export-har").href = `/api/export.har${query({ filter })}`;
  $("export-flows").href = `/api/export.jsonl${query({ filter })}`;
}

async function main() {
  const list = new FlowList($("viewport"), $("spacer"), {
    onOpen: (id) => renderFlow($("view"), id, () => list.render()).catch((e) => alert(e.message)),
    onCount: (total, building) => { $("count").textContent = building ? `building filter: ${building.read} of ${building.of}` : `${total} flows`; },
    onError: (error) => showError($("filter"), error),
  });
  window.twistproxy = { list }; // for the browser tests and the curious
  sortable(list);
  actions(list);
  const filter = $("filter");
  let timer = null;
  filter.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(async () => {
      await list.reset(filter.value.trim());
      if (!filter.classList.contains("invalid")) { listen(list); exportLinks(list.filter); }
    }, 250);
  });
  const intercept = $("intercept");
  intercept.addEventListener("keydown", async (e) => {
    if (e.key !== "Enter") return;
    try {
      await setIntercept(intercept.value);
      showError(intercept, null);
      intercept.dataset.active = intercept.value.trim();
    } catch (error) {
      showError(intercept, error);
    }
  });
  intercept.value = (await getIntercept()).filter;
  document.addEventListener("keydown", (e) => {
    if (e.target instanceof HTMLInputElement || e.target instanceof HTMLTextAreaElement) return;
    if (e.key === "ArrowDown" || e.key === "j") { list.select(list.selected + 1); e.preventDefault(); }
    else if (e.key === "ArrowUp" || e.key === "k") { list.select(list.selected - 1); e.preventDefault(); }
    else if (e.key === "Enter") { list.open(); e.preventDefault(); }
    else if (e.key === " ") { list.toggle(list.selected); e.preventDefault(); }
    else if (e.key === "Escape") { $("view").hidden = true; }
  });
  await list.reset("");
  listen(list);
  document.body.dataset.ready = "yes";
}

main();
