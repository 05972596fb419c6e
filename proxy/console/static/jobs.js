// Jobs: the extraction queue's states, dead letters with their error, retry and purge.
import { api, state } from "/console/api.js";
import { attempt, field, go, h, say, show, table, when } from "/console/ui.js";

const STATES = ["", "queued", "failed", "running", "waiting_key", "dead", "done"];

export async function jobsPage(root, params) {
  if (!state.scope.admin) {
    show(root, h("h1", { text: "Jobs" }), h("p", { class: "muted",
      text: "The job queue is for the admin key: its rows may quote any user's exchange." }));
    return;
  }
  const listed = await api("GET", "/v1/memories/jobs", {
    query: { state: params.state, limit: 100 } });
  const rerender = () => jobsPage(root, params);
  const stats = listed.stats;
  const filter = h("select", { name: "state" },
    STATES.map((s) => h("option", { value: s, text: s || "every state" })));
  filter.value = params.state || "";
  filter.addEventListener("change", () => go("jobs", { state: filter.value }));
  const act = async (label, work) => {
    const done = await attempt(work);
    if (done) { await rerender(); say(label(done)); }
  };
  const rows = listed.data.map((job) => ({
    attrs: { "data-job": job.id, "data-state": job.state },
    cells: [
      String(job.id), job.state, job.user_id || "–", String(job.attempts), when(job.created_at),
      when(job.state === "done" || job.state === "dead" ? job.finished_at : job.run_after),
      job.facts === null ? "–" : String(job.facts),
      h("span", { class: "memory-text", text: job.last_error || "" }),
      job.state === "dead" || job.state === "waiting_key" || job.last_error
        ? h("button", { type: "button", class: "plain", text: "Retry",
                        "aria-label": `Retry job ${job.id}`,
                        onclick: () => act((d) => `${d.retried} job queued again.`,
                          () => api("POST", "/v1/memories/jobs/retry", { body: { ids: [job.id] } })) })
        : "",
    ],
  }));
  show(root,
    h("h1", { text: "Jobs" }),
    h("p", { class: "muted", text: `Extraction: ${listed.extraction}.` }),
    h("ul", { class: "stats", "aria-label": "Jobs by state" },
      ["queued", "failed", "running", "waiting_key", "dead", "done"].map((s) =>
        h("li", { "data-stat": s, text: `${s.replace("_", " ")}: ${stats[s]}` })),
      h("li", { text: `oldest unfinished: ${Math.round(stats.lag_seconds)} s` })),
    h("div", { class: "row" }, field("Show", filter),
      h("button", { type: "button", text: "Retry every dead job", disabled: !stats.dead,
        onclick: () => act((d) => `${d.retried} dead jobs queued again.`,
          () => api("POST", "/v1/memories/jobs/retry", { body: { dead: true } })) }),
      h("button", { type: "button", class: "danger", text: "Purge done",
        onclick: () => confirm("Delete every finished (done) job row?") && act(
          (d) => `${d.purged} done jobs purged.`,
          () => api("POST", "/v1/memories/jobs/purge", { body: { states: ["done"] } })) }),
      h("button", { type: "button", class: "danger", text: "Purge dead",
        onclick: () => confirm("Delete every dead job (their exchanges are lost)?") && act(
          (d) => `${d.purged} dead jobs purged.`,
          () => api("POST", "/v1/memories/jobs/purge", { body: { states: ["dead"] } })) })),
    rows.length ? table(`${rows.length} newest jobs`, [["Id", "num"], ["State"], ["User"],
      ["Tries", "num"], ["Created"], ["Next / finished"], ["Facts", "num"], ["Last error"],
      [""]], rows) : h("p", { class: "muted", text: "No jobs." }));
}
