// Small DOM helpers. Every text from the API is set with textContent, never parsed as HTML.
export function h(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "text") node.textContent = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

let fieldCount = 0;

export function field(label, input) {
  const id = input.id || ("field-" + (++fieldCount));
  input.id = id;
  return h("div", { class: "field" }, h("label", { for: id, text: label }), input);
}

export function table(caption, columns, rows) {
  // columns: [label, class?]; rows: arrays of cells (Node or text), labelled for phones.
  return h("div", { class: "table" }, h("table", {},
    h("caption", { text: caption }),
    h("thead", {}, h("tr", {}, columns.map(([label, cls]) =>
      h("th", { scope: "col", class: cls, text: label })))),
    h("tbody", {}, rows.map((row) => {
      const cells = row.cells || row;
      return h("tr", row.attrs || {}, cells.map((cell, i) =>
        h("td", { "data-label": columns[i][0], class: columns[i][1] }, cell)));
    }))));
}

export function when(ts) {
  if (!ts) return "–";
  return new Date(ts * 1000).toISOString().replace("T", " ").slice(0, 19) + " UTC";
}

export function score(value) {
  return value === null || value === undefined ? "–" : Number(value).toFixed(6);
}

export function say(message, error = false) {
  const status = document.getElementById("status");
  status.className = error ? "error" : "";
  status.textContent = message || "";
}

export async function attempt(work) {
  try { return await work(); } catch (error) { say(error.message, true); return undefined; }
}

export function link(route, params, text) {
  return h("a", { href: href(route, params), text });
}

export function href(route, params) {
  const query = new URLSearchParams();
  for (const [name, value] of Object.entries(params || {})) if (value) query.set(name, value);
  const rest = query.toString();
  return "#/" + route + (rest ? "?" + rest : "");
}

export function go(route, params) { location.hash = href(route, params).slice(1); }


export function show(parent, ...children) {
  // replaceChildren would render a null or false child as text.
  parent.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
}
