// Projects: the git repositories agents work on, and their open workspaces (branch, run,
// age, files changed). "#/projects/<name>" shows one project. Registering a local path is
// the admin's; anyone may add an https:// repository.

import { del, get, post } from "../lib/api.js";
import { applyErrors, errorBox, field, fmtAgo, h, setTitle, toast } from "../lib/dom.js";

const LINKS = { run: "runs", conversation: "chat", orchestration: "orchestrations", step: "orchestrations" };

export async function render(root, { id, signal, navigate }) {
  setTitle(id ? `Project ${id}` : "Projects");
  if (id) return renderOne(root, id, signal, navigate);
  root.append(h("div", { class: "page-head" }, h("h1", null, "Projects")),
    h("p", { class: "muted" }, "A run, chat or plan on a project works on its own branch; review its changes, "
      + "then merge or discard them. Your checkout is only touched by a merge."));
  const list = h("div", { class: "table-wrap" });
  root.append(addForm(() => refresh()), h("div", { class: "section-head" }, h("h2", null, "All projects")), list);

  async function refresh() {
    try {
      const projects = await get("/api/projects", null, { signal });
      list.replaceChildren(projects.length ? projectsTable(projects)
        : h("p", { class: "muted" }, "No projects yet."));
    } catch (err) {
      if (err.name !== "AbortError") list.replaceChildren(errorBox(err));
    }
  }
  await refresh();
  return undefined;
}

function addForm(onAdded) {
  const rows = {
    name: field({ label: "Name", name: "name", input: h("input", { type: "text", required: true, autocomplete: "off" }) }),
    source: field({ label: "Repository", name: "path", hint: "A local path (admin) or a git URL to clone.",
      input: h("input", { type: "text", required: true, placeholder: "/home/me/src/app or https://…" }) }),
    base: field({ label: "Base branch", name: "base", hint: "Default: the repository's current branch.",
      input: h("input", { type: "text", autocomplete: "off" }) }),
  };
  const summary = h("div", { class: "form-summary" });
  const submit = h("button", { type: "submit" }, "Add project");
  const form = h("form", { class: "form card", novalidate: true, "aria-label": "Add a project", onSubmit },
    summary, h("div", { class: "form-grid" }, rows.name.wrap, rows.source.wrap, rows.base.wrap),
    h("div", { class: "actions" }, submit));

  async function onSubmit(event) {
    event.preventDefault();
    const source = rows.source.input.value.trim();
    const isUrl = /^[a-z]+:\/\//i.test(source) || source.startsWith("git@");
    const body = { name: rows.name.input.value.trim(), [isUrl ? "git_url" : "path"]: source };
    if (rows.base.input.value.trim()) body.base = rows.base.input.value.trim();
    rows.git_url = rows.source;  // errors about git_url show on the same input
    submit.disabled = true;
    try {
      const project = await post("/api/projects", body);
      applyErrors(summary, null, rows);
      toast(`Project ${project.name} added`);
      form.reset();
      onAdded();
    } catch (err) {
      applyErrors(summary, err, rows);
    } finally {
      submit.disabled = false;
    }
  }
  return form;
}

function projectsTable(projects) {
  return h("table", { class: "table", "data-testid": "projects" },
    h("thead", null, h("tr", null, ["Name", "Base", "Open workspaces", "Repository"].map((t) => h("th", null, t)))),
    h("tbody", null, projects.map((p) => h("tr", null,
      h("td", null, h("a", { href: `#/projects/${encodeURIComponent(p.name)}` }, p.name)),
      h("td", { class: "mono" }, p.default_base),
      h("td", null, String(p.open_workspaces)),
      h("td", { class: "mono small" }, p.path || p.git_url)))));
}

async function renderOne(root, name, signal, navigate) {
  let project;
  try {
    project = await get(`/api/projects/${encodeURIComponent(name)}`, null, { signal });
  } catch (err) {
    if (err.name !== "AbortError") root.append(h("h1", null, "Project"), errorBox(err));
    return undefined;
  }
  const remove = h("button", { type: "button", class: "danger", onClick: async () => {
    if (!window.confirm(`Remove project ${project.name}? Its branches and worktrees are deleted; `
      + "your repository is not touched.")) return;
    try {
      await del(`/api/projects/${encodeURIComponent(project.name)}`);
      toast("Project removed");
      navigate("/projects");
    } catch (err) {
      toast(err.message, "error");
    }
  } }, "Remove");
  root.append(h("div", { class: "page-head" }, h("a", { class: "back", href: "#/projects" }, "← Projects"),
    h("h1", null, project.name), h("div", { class: "actions" },
      h("a", { class: "button", href: `#/run?project=${encodeURIComponent(project.name)}` }, "New run"),
      h("a", { class: "button secondary", href: `#/terminal?project=${encodeURIComponent(project.name)}` }, "Terminal"),
      remove)),
  h("p", { class: "muted mono small" }, `${project.path || project.git_url} · base ${project.default_base}`),
  h("div", { class: "section-head" }, h("h2", null, "Open workspaces")));
  const spaces = project.workspaces || [];
  if (!spaces.length) {
    root.append(h("p", { class: "muted" }, "No open workspaces: nothing waits for review."));
    return undefined;
  }
  root.append(h("div", { class: "table-wrap" }, h("table", { class: "table", "data-testid": "workspaces" },
    h("thead", null, h("tr", null, ["Branch", "Of", "Age", "Files changed"].map((t) => h("th", null, t)))),
    h("tbody", null, spaces.map((ws) => h("tr", null,
      h("td", { class: "mono small" }, ws.branch),
      h("td", null, h("a", { href: `#/${LINKS[ws.kind] || "runs"}/${encodeURIComponent(ws.ref)}` },
        ws.kind === "step" ? `step ${ws.step}` : ws.kind)),
      h("td", null, fmtAgo(ws.created_at)),
      h("td", null, `${ws.files_changed} (+${ws.insertions} −${ws.deletions})`)))))));
  return undefined;
}
