// Users (admin only): create users and their tokens (shown once), mark them trusted or not,
// rotate tokens, delete users, and read the audit log of who changed what.

import { del, get, patch, post } from "../lib/api.js";
import { applyErrors, errorBox, field, h, setTitle, toast } from "../lib/dom.js";

export async function render(root, { signal }) {
  setTitle("Users");
  root.append(h("div", { class: "page-head" }, h("h1", null, "Users")));
  let me;
  try {
    me = await get("/api/users/me", null, { signal });
  } catch (err) {
    if (err.name !== "AbortError") root.append(errorBox(err));
    return;
  }
  if (!me.admin) {
    root.append(h("p", null, `You are signed in as ${me.name} (${me.trusted ? "trusted" : "untrusted"}). `,
      "Only the admin manages users."));
    return;
  }
  const tokenBox = h("div", { "aria-live": "polite" });
  const table = h("div", { class: "table-wrap" });
  const audit = h("div", { class: "table-wrap" });
  root.append(createForm(tokenBox, () => refresh()), tokenBox,
    h("div", { class: "section-head" }, h("h2", null, "Accounts")), table,
    h("div", { class: "section-head" }, h("h2", null, "Audit log")), audit);

  function showToken(user) {
    const code = h("code", { "data-testid": "new-token", class: "mono" }, user.token);
    tokenBox.replaceChildren(h("div", { class: "alert", role: "status" },
      `Token for ${user.name} — shown only now; hand it over safely: `, code, " ",
      h("button", { type: "button", class: "small secondary",
        onClick: () => navigator.clipboard?.writeText(user.token).then(() => toast("Copied")) }, "Copy")));
  }

  async function refresh() {
    try {
      const [users, log] = await Promise.all([get("/api/users", null, { signal }),
        get("/api/audit", { limit: 50 }, { signal })]);
      table.replaceChildren(usersTable(users));
      audit.replaceChildren(auditTable(log.items));
    } catch (err) {
      if (err.name !== "AbortError") table.replaceChildren(errorBox(err));
    }
  }

  function usersTable(users) {
    const rows = users.map((u) => {
      const trusted = h("input", { type: "checkbox", checked: u.trusted, "aria-label": `${u.name} is trusted`,
        onChange: async (e) => {
          try {
            await patch(`/api/users/${u.id}`, { trusted: e.target.checked });
            refresh();
          } catch (err) {
            toast(err.message, "error");
          }
        } });
      const rotate = h("button", { type: "button", class: "small secondary", onClick: async () => {
        if (!window.confirm(`Give ${u.name} a new token? The old one stops working at once.`)) return;
        try {
          showToken(await post(`/api/users/${u.id}/token`));
          refresh();
        } catch (err) {
          toast(err.message, "error");
        }
      } }, "New token");
      const remove = h("button", { type: "button", class: "small danger", onClick: async () => {
        if (!window.confirm(`Delete user ${u.name}? Their token stops working at once.`)) return;
        try {
          await del(`/api/users/${u.id}`);
          refresh();
        } catch (err) {
          toast(err.message, "error");
        }
      } }, "Delete");
      return h("tr", { "data-user": u.name }, h("td", null, u.name),
        h("td", { "data-label": "trusted" }, trusted),
        h("td", null, u.admin ? "admin" : "user"),
        h("td", { class: "num", "data-label": "created" }, new Date(u.created_at).toLocaleString()),
        h("td", null, h("div", { class: "actions" }, rotate, remove)));
    });
    return h("table", { "aria-label": "Users", class: "cards" }, h("thead", null, h("tr", null, h("th", null, "Name"),
      h("th", null, "Trusted"), h("th", null, "Role"), h("th", null, "Created"), h("th", null, "Actions"))),
    h("tbody", null, rows.length ? rows : h("tr", null, h("td", { colspan: 5, class: "empty" }, "No users yet."))));
  }

  await refresh();
}

function createForm(tokenBox, done) {
  const rows = {
    name: field({ label: "Name", name: "name", input: h("input", { type: "text", required: true, autocomplete: "off" }),
      hint: "Letters, digits, '.', '_' or '-'." }),
    trusted: field({ label: "Trusted", name: "trusted", input: h("input", { type: "checkbox" }),
      hint: "Untrusted users' runs always go to an isolated backend (sandbox or Daytona)." }),
    admin: field({ label: "Admin", name: "admin", input: h("input", { type: "checkbox" }) }),
  };
  const summary = h("div");
  const form = h("form", { class: "form card", "aria-label": "New user", novalidate: true, onSubmit: async (ev) => {
    ev.preventDefault();
    if (!rows.name.input.value.trim()) { // our own message, not the browser's bubble
      rows.name.setError("Required: the name the user is known by.");
      rows.name.input.focus();
      return;
    }
    try {
      const user = await post("/api/users", { name: rows.name.input.value.trim(), trusted: rows.trusted.input.checked,
        admin: rows.admin.input.checked });
      applyErrors(summary, null, rows);
      rows.name.input.value = "";
      tokenBox.replaceChildren(h("div", { class: "alert", role: "status" },
        `Token for ${user.name} — shown only now; hand it over safely: `,
        h("code", { "data-testid": "new-token", class: "mono" }, user.token)));
      done();
    } catch (err) {
      applyErrors(summary, err, rows);
    }
  } }, h("div", { class: "form-grid" }, rows.name.wrap, rows.trusted.wrap, rows.admin.wrap), summary,
  h("div", { class: "actions" }, h("button", { type: "submit" }, "Create user")));
  return form;
}

function auditTable(items) {
  const rows = items.map((e) => h("tr", null, h("td", { class: "num" }, new Date(e.at).toLocaleString()),
    h("td", { class: "nowrap" }, e.actor), h("td", { class: "mono nowrap" }, e.action),
    h("td", { class: "mono" }, e.target || "—"),
    h("td", { class: "mono small" }, JSON.stringify(e.details))));
  return h("table", { "aria-label": "Audit log", class: "cards audit" }, h("thead", null, h("tr", null, h("th", null, "When"),
    h("th", null, "Who"), h("th", null, "Action"), h("th", null, "Target"), h("th", null, "Details"))),
  h("tbody", null, rows.length ? rows : h("tr", null, h("td", { colspan: 5, class: "empty" }, "Nothing yet."))));
}
