// Accessible tabs (WAI-ARIA tabs pattern: arrow keys move between tabs, one tab stop) for the run page's
// panels. `tabs([{id, label, panel}], {onSelect})` → {el, select(id), selected()}; panels stay in the DOM
// (hidden), so a panel's state (open <details>, scroll) survives switching.

import { h } from "./dom.js";

let count = 0;

export function tabs(items, { label = "Views", onSelect = () => {} } = {}) {
  const prefix = `tabs${++count}`;
  let current = items[0]?.id;
  const buttons = new Map();
  const panels = new Map();
  const list = h("div", { class: "tab-list", role: "tablist", "aria-label": label });
  const body = h("div", { class: "tab-panels" });
  const select = (id, { focus = false } = {}) => {
    if (!buttons.has(id)) return;
    current = id;
    for (const [key, button] of buttons) {
      const on = key === id;
      button.setAttribute("aria-selected", String(on));
      button.tabIndex = on ? 0 : -1;
      panels.get(key).hidden = !on;
    }
    if (focus) buttons.get(id).focus();
    onSelect(id);
  };
  const ids = () => [...buttons.keys()];
  for (const item of items) {
    const button = h("button", { type: "button", role: "tab", id: `${prefix}-${item.id}-tab`,
      "aria-controls": `${prefix}-${item.id}`, class: "tab", onclick: () => select(item.id),
      onkeydown: (event) => {
        const order = ids();
        const at = order.indexOf(item.id);
        const next = { ArrowRight: at + 1, ArrowLeft: at - 1, Home: 0, End: order.length - 1 }[event.key];
        if (next === undefined) return;
        event.preventDefault();
        select(order[(next + order.length) % order.length], { focus: true });
      } }, item.label);
    const panel = h("div", { role: "tabpanel", id: `${prefix}-${item.id}`, class: "tab-panel",
      "aria-labelledby": `${prefix}-${item.id}-tab`, tabindex: "0" }, item.panel);
    buttons.set(item.id, button);
    panels.set(item.id, panel);
    list.append(button);
    body.append(panel);
  }
  const el = h("div", { class: "tabs" }, list, body);
  // Initial state without calling onSelect (the page is still being built).
  for (const [key, button] of buttons) {
    button.setAttribute("aria-selected", String(key === current));
    button.tabIndex = key === current ? 0 : -1;
    panels.get(key).hidden = key !== current;
  }
  return { el, select, selected: () => current };
}
