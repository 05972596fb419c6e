// Users: find by id prefix, memory counts, last activity, paging; the admin's tenant switch.
import { api, state } from "/console/api.js";
import { field, go, h, link, show, table, when } from "/console/ui.js";

export async function usersPage(root, params) {
  const scope = state.scope;
  if (scope.user_id) {  // a key bound to one user sees that user only
    go("user", { id: scope.user_id, tenant: scope.tenant });
    return;
  }
  const tenant = params.tenant || scope.tenant || "default";
  const listed = await api("GET", "/v1/users", {
    query: { tenant, prefix: params.prefix, order: params.order, limit: params.limit || 50,
             cursor: params.cursor },
  });
  const prefix = h("input", { name: "prefix", value: params.prefix || "", type: "search",
                              autocomplete: "off" });
  const order = h("select", { name: "order" },
    h("option", { value: "id", text: "user id" }),
    h("option", { value: "recent", text: "latest activity" }));
  order.value = params.order || "id";
  const controls = [field("User id starts with", prefix), field("Order by", order)];
  let tenantInput = null;
  if (scope.admin) {
    tenantInput = h("select", { name: "tenant" },
      [...new Set([tenant, ...listed.tenants])].sort().map((t) => h("option", { value: t, text: t })));
    tenantInput.value = tenant;
    controls.unshift(field("Tenant", tenantInput));
  }
  const form = h("form", { class: "row", role: "search", onsubmit: (event) => {
    event.preventDefault();
    go("users", { tenant: tenantInput ? tenantInput.value : undefined, prefix: prefix.value,
                  order: order.value });
  } }, controls, h("button", { type: "submit", text: "Find" }));
  if (tenantInput) tenantInput.addEventListener("change", () => form.requestSubmit());

  const rows = listed.data.map((user) => ({
    attrs: { "data-user": user.user_id },
    cells: [
      link("user", { id: user.user_id, tenant: user.tenant }, user.user_id),
      String(user.memories), String(user.superseded), when(user.last_activity),
    ],
  }));
  const paging = h("div", { class: "row" },
    params.cursor ? h("button", { type: "button", class: "plain", text: "First page",
      onclick: () => go("users", { ...params, cursor: undefined }) }) : null,
    listed.next_cursor ? h("button", { type: "button", class: "plain", text: "Next page",
      onclick: () => go("users", { ...params, tenant, cursor: listed.next_cursor }) }) : null);
  show(root,
    h("h1", { text: "Users" + (scope.admin ? " · tenant " + tenant : "") }),
    form,
    rows.length ? table(`${rows.length} user${rows.length === 1 ? "" : "s"} on this page`,
      [["User"], ["Memories", "num"], ["Superseded", "num"], ["Last activity"]], rows)
      : h("p", { class: "muted", text: "No user with memories matches." }),
    paging,
  );
}
