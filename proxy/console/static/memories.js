// One user's memories: newest first, paging, filters, hybrid search ranked as injection
// ranks, edit, history, delete, export, forget.
import { api, state } from "/console/api.js";
import { attempt, field, go, h, href, say, score, show, table, when } from "/console/ui.js";

function owner(params) {
  return { user_id: params.id, tenant: state.scope.admin ? params.tenant : undefined };
}

function filtersOf(params) {
  if (!params.meta) return undefined;
  return JSON.parse(params.meta);  // checked before it is put in the URL
}

export async function userPage(root, params) {
  if (!params.id) { go("users"); return; }
  const who = owner(params);
  const searching = Boolean(params.q);
  let listed;
  if (searching) {
    listed = await api("POST", "/v1/memories/search", { body: {
      ...who, query: params.q, limit: 100, filters: filtersOf(params) || null,
      agent_id: params.agent || null, session_id: params.session || null,
      include_superseded: params.superseded === "1" } });
  } else {
    listed = await api("GET", "/v1/memories", { query: {
      ...who, agent_id: params.agent, session_id: params.session, filters: params.meta,
      include_superseded: params.superseded === "1" ? "true" : undefined,
      limit: 50, cursor: params.cursor } });
  }
  const rerender = () => userPage(root, params);
  const columns = [["Memory"], ["Created"], ["Updated"]];
  if (searching) columns.push(["Score (cosine)", "num"], ["Rank score", "num"]);
  columns.push(["Actions"]);
  const rows = listed.data.map((memory) => memoryRow(memory, searching, rerender));
  const tenant = params.tenant || state.scope.tenant || "default";
  show(root,
    h("h1", { text: "Memories of " + params.id }),
    h("p", { class: "muted" }, "Tenant " + tenant + " · ",
      h("a", { href: href("explain", { user: params.id, tenant: params.tenant }),
               text: "Explain a message for this user" })),
    filterForm(params),
    rows.length
      ? table(searching ? `${rows.length} found for “${params.q}”, ranked as injection ranks`
        : `${rows.length} memories on this page, newest first`, columns, rows)
      : h("p", { class: "muted", text: searching ? "Nothing found." : "No memories." }),
    !searching && listed.next_cursor ? h("div", { class: "row" },
      h("button", { type: "button", class: "plain", text: "Next page",
        onclick: () => go("user", { ...params, cursor: listed.next_cursor }) })) : null,
    userActions(params, who),
  );
}

function filterForm(params) {
  const input = (name, value, type = "text") =>
    h("input", { name, value: value || "", type, autocomplete: "off" });
  const q = input("q", params.q, "search");
  const agent = input("agent", params.agent);
  const session = input("session", params.session);
  const meta = input("meta", params.meta);
  meta.placeholder = '{"topic": "work"}';
  const superseded = h("input", { type: "checkbox", name: "superseded",
                                  checked: params.superseded === "1" });
  return h("form", { class: "row", role: "search", onsubmit: (event) => {
    event.preventDefault();
    if (meta.value.trim()) {
      try { JSON.parse(meta.value); } catch (_) {
        say("Metadata filter must be JSON, e.g. {\"topic\": \"work\"}", true);
        meta.focus();
        return;
      }
    }
    go("user", { id: params.id, tenant: params.tenant, q: q.value.trim(), agent: agent.value,
                 session: session.value, meta: meta.value.trim(),
                 superseded: superseded.checked ? "1" : "" });
  } },
  field("Search (keywords + meaning)", q), field("Agent", agent), field("Session", session),
  field("Metadata filter (JSON)", meta),
  h("div", { class: "field" }, h("label", {}, superseded, " include superseded")),
  h("button", { type: "submit", text: "Apply" }),
  h("button", { type: "button", class: "plain", text: "Clear",
                onclick: () => go("user", { id: params.id, tenant: params.tenant }) }));
}

function tags(memory) {
  const out = [];
  if (memory.agent_id) out.push("agent " + memory.agent_id);
  if (memory.session_id) out.push("session " + memory.session_id);
  out.push(memory.source);
  if (memory.superseded_by) out.push("superseded");
  const meta = Object.keys(memory.metadata || {}).length ? JSON.stringify(memory.metadata) : "";
  return h("div", {}, out.map((t) => h("span", { class: "tag", text: t })),
    meta ? h("span", { class: "tag", text: meta }) : null);
}

function memoryRow(memory, searching, rerender) {
  const detail = h("div", { class: "detail" });
  const text = h("div", { class: "memory-text", text: memory.memory });
  const cells = [h("div", {}, text, tags(memory), detail), when(memory.created_at),
                 when(memory.updated_at)];
  if (searching) cells.push(score(memory.score), score(memory.rank_score));
  cells.push(h("div", { class: "actions" },
    h("button", { type: "button", class: "plain", text: "Edit", "aria-label": "Edit memory",
                  onclick: () => editor(memory, detail, rerender) }),
    h("button", { type: "button", class: "plain", text: "History",
                  "aria-label": "History of memory", onclick: () => history(memory, detail) }),
    h("button", { type: "button", class: "danger", text: "Delete", "aria-label": "Delete memory",
                  onclick: () => remove(memory, rerender) })));
  return { attrs: { "data-memory-id": memory.id }, cells };
}

function editor(memory, detail, rerender) {
  const text = h("textarea", { name: "text" });
  text.value = memory.memory;
  const meta = h("textarea", { name: "metadata" });
  meta.value = JSON.stringify(memory.metadata || {}, null, 2);
  const form = h("form", { class: "editor", onsubmit: async (event) => {
    event.preventDefault();
    let wanted;
    try { wanted = JSON.parse(meta.value || "{}"); } catch (_) { wanted = null; }
    if (!wanted || typeof wanted !== "object" || Array.isArray(wanted)) {
      say("Metadata must be a JSON object", true);
      meta.focus();
      return;
    }
    const body = {};
    if (text.value.trim() !== memory.memory) body.text = text.value;
    // A merge patch: keys no longer there are sent as null (removed).
    const patch = { ...wanted };
    for (const key of Object.keys(memory.metadata || {})) if (!(key in wanted)) patch[key] = null;
    if (JSON.stringify(wanted) !== JSON.stringify(memory.metadata || {})) body.metadata = patch;
    if (!Object.keys(body).length) { show(detail); return; }
    const changed = await attempt(() => api("PATCH", "/v1/memories/" +
      encodeURIComponent(memory.id), { body }));
    if (changed) { await rerender(); say("Memory saved."); }
  } },
  field("Text", text), field("Metadata (JSON object)", meta),
  h("div", { class: "row" }, h("button", { type: "submit", text: "Save" }),
    h("button", { type: "button", class: "plain", text: "Cancel",
                  onclick: () => show(detail) })));
  show(detail, form);
  text.focus();
}

async function history(memory, detail) {
  const found = await attempt(() => api("GET", "/v1/memories/" +
    encodeURIComponent(memory.id) + "/history"));
  if (!found) return;
  show(detail, table("History of this memory", [["Event"], ["When"], ["Actor"],
    ["Old text"], ["New text"]], found.data.map((event) => ({
      attrs: { "data-event": event.event },
      cells: [event.event, when(event.created_at), event.actor, event.old_text ?? "–",
              event.new_text ?? "–"],
    }))));
}

async function remove(memory, rerender) {
  if (!confirm("Delete this memory?\n\n" + memory.memory)) return;
  const done = await attempt(() => api("DELETE", "/v1/memories/" + encodeURIComponent(memory.id)));
  if (done) { await rerender(); say("Memory deleted."); }
}

function userActions(params, who) {
  const confirmInput = h("input", { name: "confirm", autocomplete: "off" });
  const exportButton = h("button", { type: "button", class: "plain", text: "Export (JSON lines)",
    onclick: async () => {
      const response = await attempt(() => api("GET", "/v1/users/" +
        encodeURIComponent(params.id) + "/export", { query: { tenant: who.tenant }, raw: true }));
      if (!response) return;
      const url = URL.createObjectURL(await response.blob());
      const a = h("a", { href: url, download: params.id.replace(/[^\w.-]+/g, "_") + ".jsonl" });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
      say("Export downloaded.");
    } });
  const forget = h("form", { class: "row", onsubmit: async (event) => {
    event.preventDefault();
    if (confirmInput.value !== params.id) {
      say("Type the user id exactly to confirm.", true);
      confirmInput.focus();
      return;
    }
    const done = await attempt(() => api("DELETE", "/v1/users/" + encodeURIComponent(params.id),
      { query: { tenant: who.tenant } }));
    if (done) {
      say(`Forgot ${params.id}: ${done.deleted.memories} memories, ${done.deleted.history} ` +
          `history rows, ${done.deleted.jobs} jobs.`);
      go("users", { tenant: params.tenant });
    }
  } }, field(`Type “${params.id}” to confirm`, confirmInput),
  h("button", { type: "submit", class: "danger", text: "Forget this user" }));
  return h("section", { "aria-labelledby": "user-actions" },
    h("h2", { id: "user-actions", text: "Export or forget" }),
    h("div", { class: "row" }, exportButton),
    h("p", { class: "muted", text: "Forgetting deletes every memory, its history and the " +
      "user's pending jobs. It cannot be undone." }),
    forget);
}
