// The flow list: a virtual list (only the rows in sight are in the DOM),
// paged from the API and kept live by the push channel.

import { flowsPage } from "./api.js";

export const ROW_HEIGHT = 22;
const PAGE = 200;
const OVERSCAN = 10;
const KEEP = 5000; // summaries kept around what is in sight
const SORTED_RELOAD = 1000; // ms between reloads of a sorted list as flows change
const BUILDING_POLL = 250; // ms between list calls while a new filter view is built

function pad(n, width = 2) { return String(n).padStart(width, "0"); }

export function formatTime(seconds) {
  const d = new Date(seconds * 1000);
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

export function formatSize(size) {
  if (size === null || size === undefined) return "";
  if (size < 1024) return `${size} B`;
  if (size < 1024 * 1024) return `${(size / 1024).toFixed(1)} KiB`;
  return `${(size / 1024 / 1024).toFixed(1)} MiB`;
}

const COLUMNS = [
  ["c-time", (f) => formatTime(f.time)],
  ["c-client", (f) => f.client],
  ["c-method", (f) => f.method],
  ["c-host", (f) => f.host],
  ["c-path", (f) => f.path],
  ["c-status", (f) => (f.error ? "error" : f.status ?? (f.live ? "…" : ""))],
  ["c-size", (f) => formatSize(f.size)],
  ["c-duration", (f) => (f.duration === null ? "" : `${Math.round(f.duration)} ms`)],
  ["c-marks", (f) => `${f.intercepted ? "‖" : ""}${f.marked}${f.comment ? "✎" : ""}${f.replay ? "↻" : ""}${f.websocket ? "⇄" : ""}`],
];

export class FlowList {
  constructor(viewport, spacer, { onOpen, onCount, onError, onChecked = () => {} }) {
    this.viewport = viewport;
    this.spacer = spacer;
    this.onOpen = onOpen;
    this.onCount = onCount;
    this.onError = onError;
    this.onChecked = onChecked;
    this.checked = new Set(); // ids of the flows checked (to replay them together)
    this.filter = "";
    this.sort = "seq"; // a summary field (the API's sort key)
    this.order = "asc";
    this.reloadTimer = null; // a sorted list's pending reload
    this.total = 0;
    this.rows = new Map(); // index -> summary
    this.loading = new Set(); // page numbers being fetched
    this.selected = -1;
    this.generation = 0; // bumped on every reset: late pages are dropped
    this.pending = false;
    viewport.addEventListener("scroll", () => this.schedule());
    viewport.addEventListener("click", (e) => {
      const row = e.target.closest(".row");
      if (!row) return;
      // The check box, or a ctrl/cmd-click, checks the row (a shift-click:
      // every row from the selected one); a plain click selects it.
      if (e.target.closest(".c-check") || e.ctrlKey || e.metaKey) this.toggle(Number(row.dataset.index));
      else if (e.shiftKey && this.selected >= 0) this.checkRange(this.selected, Number(row.dataset.index));
      else this.select(Number(row.dataset.index));
    });
    viewport.addEventListener("dblclick", (e) => {
      const row = e.target.closest(".row");
      if (row) this.open();
    });
  }

  async reset(filter) {
    this.filter = filter;
    clearTimeout(this.reloadTimer);
    this.reloadTimer = null;
    this.generation += 1;
    this.rows.clear();
    this.loading.clear();
    this.selected = -1;
    await this.fetchPage(0);
    this.render();
    this.viewport.parentElement.dataset.filter = filter;
  }

  async fetchPage(page) {
    if (this.loading.has(page)) return;
    const generation = this.generation;
    this.loading.add(page);
    try {
      const data = await flowsPage(this.filter, page * PAGE, PAGE, this.sort, this.order);
      if (generation !== this.generation) return;
      this.onError(null);
      if (data.building) {
        // A new filter view is being built: show how far, ask again.
        this.total = 0;
        this.spacer.style.height = "0px";
        this.onCount(0, data.building);
        setTimeout(() => { if (generation === this.generation) this.fetchPage(page); }, BUILDING_POLL);
        return;
      }
      this.setTotal(data.total);
      data.flows.forEach((flow, i) => this.rows.set(data.offset + i, flow));
    } catch (error) {
      if (generation === this.generation) {
        // Nothing to show (a bad filter, say) until the next reset: no retries.
        this.setTotal(0);
        this.rows.clear();
        this.onError(error);
      }
      return;
    } finally {
      if (generation === this.generation) this.loading.delete(page);
    }
    this.schedule();
  }

  setTotal(total) {
    this.total = total;
    this.spacer.style.height = `${total * ROW_HEIGHT}px`;
    this.onCount(total);
  }

  // Sort by a summary field ("seq": arrival order), keeping the filter.
  async sortBy(key, order) {
    this.sort = key;
    this.order = order;
    await this.reset(this.filter);
  }

  // A batch from the push channel.
  apply(event) {
    if (this.sort !== "seq" || this.order !== "asc") {
      // The batch's indexes are in arrival order: reload what is in sight
      // instead, at most once a second.
      this.setTotal(event.total);
      if (this.reloadTimer === null) {
        this.reloadTimer = setTimeout(() => {
          this.reloadTimer = null;
          this.rows.clear();
          this.generation += 1;
          this.loading.clear();
          this.schedule();
        }, SORTED_RELOAD);
      }
      return;
    }
    if (event.reload) {
      const keep = this.selectedFlow();
      this.rows.clear();
      this.generation += 1;
      this.loading.clear();
      this.setTotal(event.total);
      if (keep && this.selected >= event.total) this.selected = event.total - 1;
      this.schedule();
      return;
    }
    const atEnd = this.viewport.scrollTop + this.viewport.clientHeight >= this.total * ROW_HEIGHT - 2;
    this.setTotal(event.total);
    for (const change of event.changes || []) this.rows.set(change.index, change.flow);
    if (atEnd && this.selected < 0) this.viewport.scrollTop = this.total * ROW_HEIGHT;
    this.schedule();
  }

  selectedFlow() { return this.rows.get(this.selected) || null; }

  // Check or uncheck the row at index.
  toggle(index) {
    const flow = this.rows.get(index);
    if (!flow) return;
    if (this.checked.has(flow.id)) this.checked.delete(flow.id);
    else this.checked.add(flow.id);
    this.checkedChanged();
  }

  // Check the rows from one index to another (those fetched).
  checkRange(from, to) {
    for (let index = Math.min(from, to); index <= Math.max(from, to); index++) {
      const flow = this.rows.get(index);
      if (flow) this.checked.add(flow.id);
    }
    this.checkedChanged();
  }

  clearChecked() {
    this.checked.clear();
    this.checkedChanged();
  }

  checkedChanged() {
    this.onChecked(this.checked.size);
    this.render();
  }

  schedule() {
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => { this.pending = false; this.render(); });
  }

  range() {
    const first = Math.max(0, Math.floor(this.viewport.scrollTop / ROW_HEIGHT) - OVERSCAN);
    const count = Math.ceil(this.viewport.clientHeight / ROW_HEIGHT) + 2 * OVERSCAN;
    return [first, Math.min(this.total, first + count)];
  }

  render() {
    const [first, last] = this.range();
    const shown = new Map();
    for (const element of Array.from(this.viewport.querySelectorAll(".row"))) {
      const index = Number(element.dataset.index);
      if (index < first || index >= last) element.remove();
      else shown.set(index, element);
    }
    for (let index = first; index < last; index++) {
      const flow = this.rows.get(index);
      if (!flow) { this.fetchPage(Math.floor(index / PAGE)); continue; }
      let element = shown.get(index);
      if (!element) {
        element = document.createElement("div");
        element.dataset.index = String(index);
        element.style.top = `${index * ROW_HEIGHT}px`;
        const check = document.createElement("span");
        check.className = "c-check";
        check.setAttribute("role", "checkbox");
        element.appendChild(check);
        for (const [name] of COLUMNS) {
          const cell = document.createElement("span");
          cell.className = name;
          element.appendChild(cell);
        }
        this.viewport.appendChild(element);
      }
      element.className = "row";
      element.dataset.id = flow.id;
      element.classList.toggle("selected", index === this.selected);
      element.classList.toggle("intercepted", flow.intercepted);
      element.classList.toggle("failed", Boolean(flow.error));
      const checked = this.checked.has(flow.id);
      element.classList.toggle("checked", checked);
      element.children[0].textContent = checked ? "☑" : "☐";
      element.children[0].setAttribute("aria-checked", String(checked));
      COLUMNS.forEach(([, text], i) => { element.children[i + 1].textContent = text(flow); });
      element.title = flow.error || "";
    }
    this.forget(first, last);
  }

  // Keep memory flat however many flows scroll by.
  forget(first, last) {
    if (this.rows.size <= KEEP) return;
    for (const index of Array.from(this.rows.keys())) {
      if (index < first - KEEP / 2 || index > last + KEEP / 2) this.rows.delete(index);
    }
  }

  select(index) {
    if (this.total === 0) return;
    this.selected = Math.max(0, Math.min(this.total - 1, index));
    const top = this.selected * ROW_HEIGHT;
    if (top < this.viewport.scrollTop) this.viewport.scrollTop = top;
    else if (top + ROW_HEIGHT > this.viewport.scrollTop + this.viewport.clientHeight) {
      this.viewport.scrollTop = top + ROW_HEIGHT - this.viewport.clientHeight;
    }
    this.render();
  }

  open() {
    const flow = this.selectedFlow();
    if (flow) this.onOpen(flow.id);
  }
}
