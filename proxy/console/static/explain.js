// Explain: a message as if the user sent it → exactly what would be injected, and why;
// then the recent chat injections (ids and scores) this proxy made.
import { api, state } from "/console/api.js";
import { attempt, field, h, link, score, show, table, when } from "/console/ui.js";

export async function explainPage(root, params) {
  const scope = state.scope;
  const user = h("input", { name: "user", value: scope.user_id || params.user || "",
                            autocomplete: "off", required: true, readonly: !!scope.user_id });
  const tenant = h("input", { name: "tenant", value: params.tenant || scope.tenant || "",
                              placeholder: "default", autocomplete: "off" });
  const message = h("textarea", { name: "message", required: true });
  const model = h("input", { name: "model", autocomplete: "off",
                             placeholder: "the chat's model (tokenizer), optional" });
  const result = h("div", { id: "explain-result" });
  const recent = h("div", { id: "recent-injections" });
  const form = h("form", { onsubmit: async (event) => {
    event.preventDefault();
    const body = { user_id: user.value.trim(), message: message.value };
    if (scope.admin && tenant.value.trim()) body.tenant = tenant.value.trim();
    if (model.value.trim()) body.model = model.value.trim();
    const explained = await attempt(() => api("POST", "/v1/memories/explain", { body }));
    if (explained) showExplanation(result, explained);
    await showRecent(recent, body.user_id, body.tenant);
  } },
  h("div", { class: "row" }, field("User id", user),
    scope.admin ? field("Tenant", tenant) : null, field("Model", model)),
  field("Message, as if the user sent it", message),
  h("div", { class: "row" }, h("button", { type: "submit", text: "Explain" })));
  show(root, h("h1", { text: "Explain" }),
    h("p", { class: "muted", text: "Runs the chat path's own retrieval (nothing is sent " +
      "upstream, nothing recorded): the block a chat request would get, and each memory's " +
      "scores. Score is the cosine and rank score the fused score, as the search API " +
      "reports them." }),
    form, result, h("h2", { text: "Recent injections" }), recent);
  await showRecent(recent, params.user, params.tenant);
}

function showExplanation(result, e) {
  const budget = e.budget;
  const summary = h("ul", { class: "stats" },
    h("li", { text: `${e.injected.length} injected` }),
    h("li", { text: `${budget.used_tokens} / ${budget.max_tokens} tokens (${budget.counted_with})` }),
    h("li", { text: `block ≈ ${e.block_tokens} tokens` }),
    h("li", { text: `${e.memories} memories looked at` }),
    h("li", { text: e.gating ? `gated (more than ${e.settings.core_when_at_most})`
      : "all ranked (a small profile)" }),
    h("li", { text: `top_k ${e.settings.top_k}, min_score ${e.settings.min_score}` }),
    // The days the question asks about ("last week": read against today in retrieval.timezone).
    ...e.time_asked.spans.map((s) => h("li", { class: "time-asked", text:
      `“${s.said}”: ${s.from === s.to ? s.from : `${s.from} to ${s.to}`}` +
      (e.time_asked.dates_first ? ", its memories first" : ", its memories lifted") })));
  const rows = e.candidates.map((c) => ({
    attrs: { "data-memory-id": c.memory.id, "data-outcome": c.outcome },
    cells: [
      h("span", { class: "outcome-" + c.outcome, text: c.outcome.replace("_", " ") }),
      h("span", { class: "memory-text", text: c.memory.memory }),
      h("span", { class: "score", text: score(c.score) }),
      h("span", { class: "keyword", text: score(c.keyword_score) }),
      h("span", { class: "rank", text: score(c.rank_score) }),
      c.tokens === null ? "–" : String(c.tokens),
      c.reason,
    ],
  }));
  show(result,
    h("h2", { text: "What would be injected" }), summary,
    e.block ? h("pre", { id: "block", text: e.block })
      : h("p", { class: "muted", text: "Nothing would be injected." }),
    rows.length ? table(`Candidates for “${e.query}”`, [["Outcome"], ["Memory"],
      ["Score (cosine)", "num"], ["Keyword (BM25)", "num"], ["Rank score", "num"],
      ["Tokens", "num"], ["Why"]], rows) : null);
}

async function showRecent(recent, user, tenant) {
  const query = { user_id: user || undefined, tenant: state.scope.admin ? tenant : undefined,
                  limit: 20 };
  const found = await attempt(() => api("GET", "/v1/memories/injections", { query }));
  if (!found) return;
  if (!found.data.length) {
    show(recent, h("p", { class: "muted", text: found.size
      ? "No chat request injected anything yet (this replica, since it started)."
      : "The ring of recent injections is off (retrieval.recent_injections: 0)." }));
    return;
  }
  show(recent, table(`Last ${found.data.length} chat retrievals on this replica`,
    [["When"], ["User"], ["Model"], ["Injected (id: score / rank score)"], ["Tokens", "num"],
     ["ms", "num"]],
    found.data.map((r) => [
      when(r.at),
      link("user", { id: r.user_id, tenant: r.tenant }, r.user_id),
      r.model || "–",
      h("div", {}, r.injected.length ? r.injected.map((m) => h("div", { class: "tag",
        text: `${m.id.slice(0, 8)}: ${score(m.score)} / ${score(m.rank_score)}` }))
        : "nothing", r.query ? h("div", { class: "muted", text: "“" + r.query + "”" }) : null,
        r.late ? h("div", { class: "outcome-gated", text: "late: forwarded without" }) : null),
      `${r.used_tokens} / ${r.max_tokens}`,
      r.duration_ms.toFixed(1),
    ])));
}
