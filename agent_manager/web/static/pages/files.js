// Files: "#/files" picks an agent, "#/files/<agent>/<dir>/<file>…" browses its working directory
// (the agent's working_dir, else its workspace): edit text files, create, upload, rename and delete.
// The server confines every path to that root; this page only builds relative paths.

import { ApiError, api, get } from "../lib/api.js";
import { errorBox, h, setTitle, toast } from "../lib/dom.js";

const enc = (parts) => parts.map(encodeURIComponent).join("/");

function fmtSize(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

export async function render(root, params) {
  const { signal, navigate } = params;
  setTitle("Files");
  const head = h("div", { class: "page-head" }, h("h1", null, "Files"));
  const body = h("div", null, h("p", { class: "muted" }, "Loading…"));
  root.append(head, body);
  let agents;
  try {
    agents = await get("/api/agents", null, { signal });
  } catch (err) {
    if (err.name !== "AbortError") body.replaceChildren(errorBox(err));
    return;
  }
  const agent = params.id;
  const select = h("select", { id: "files-agent", "aria-label": "Agent",
    onChange: (e) => navigate(`/files/${encodeURIComponent(e.target.value)}`) },
  h("option", { value: "", disabled: true, selected: !agent }, "Choose an agent…"),
  agents.map((a) => h("option", { value: a.name, selected: a.name === agent }, a.name)));
  head.append(h("label", { for: "files-agent", class: "visually-hidden" }, "Agent"), select);
  if (!agent) {
    body.replaceChildren(h("p", { class: agents.length ? "muted" : "empty" },
      agents.length ? "Choose an agent to browse its working directory." : "No agents yet."));
    return;
  }
  const parts = (params.parts || []).slice(1); // parts[0] is the agent (params.id)
  let item;
  try {
    item = await get("/api/files", { agent, path: parts.join("/") }, { signal });
  } catch (err) {
    if (err.name !== "AbortError") body.replaceChildren(crumbs(agent, parts), errorBox(err));
    return;
  }
  if (item.type === "dir") body.replaceChildren(crumbs(agent, parts), listing(agent, parts, item, navigate));
  else body.replaceChildren(crumbs(agent, parts), editor(agent, item, signal));
}

function crumbs(agent, parts) {
  const nav = h("nav", { class: "meta", "aria-label": "Path" },
    h("a", { href: `#/files/${encodeURIComponent(agent)}` }, agent));
  parts.forEach((part, i) => {
    nav.append(" / ");
    const last = i === parts.length - 1;
    nav.append(last ? h("span", { "aria-current": "page" }, part)
      : h("a", { href: `#/files/${enc([agent, ...parts.slice(0, i + 1)])}` }, part));
  });
  return nav;
}

function listing(agent, parts, dir, navigate) {
  const rows = dir.entries.map((e) => {
    const target = `#/files/${enc([agent, ...parts, e.name])}`;
    const name = e.type === "symlink" || e.type === "other" ? h("span", { class: "muted" }, `${e.name} (${e.type})`)
      : h("a", { href: target }, e.type === "dir" ? `${e.name}/` : e.name);
    const rel = [...parts, e.name].join("/");
    const rename = h("button", { type: "button", class: "copy", "aria-label": `Rename ${e.name}`, onClick: async () => {
      const to = window.prompt(`New name (or path) for ${e.name}:`, rel);
      if (!to || to.trim() === rel) return;
      try {
        await api("/api/files/move", { method: "POST", query: { agent, path: rel, to: to.trim() } });
        toast(`Renamed to ${to.trim()}`, "ok");
        navigate(`/files/${enc([agent, ...parts])}`);
      } catch (err) {
        toast(err.message, "error");
      }
    } }, "Rename");
    const remove = h("button", { type: "button", class: "copy", "aria-label": `Delete ${e.name}`, onClick: async () => {
      if (!window.confirm(`Delete ${rel}${e.type === "dir" ? " (an empty directory)" : ""}?`)) return;
      try {
        await api("/api/files", { method: "DELETE", query: { agent, path: rel } });
        toast(`Deleted ${e.name}`, "ok");
        navigate(`/files/${enc([agent, ...parts])}`);
      } catch (err) {
        toast(err.message, "error");
      }
    } }, "Delete");
    return h("tr", { "data-name": e.name }, h("td", null, name), h("td", null, e.type),
      h("td", { class: "num" }, e.type === "file" ? fmtSize(e.size) : "—"),
      h("td", { class: "num", "data-label": "modified" }, new Date(e.modified).toLocaleString()),
      h("td", null, h("span", { class: "actions" }, rename, remove)));
  });
  const table = h("div", { class: "table-wrap" }, h("table", { "aria-label": "Directory listing", class: "cards" },
    h("thead", null, h("tr", null, h("th", null, "Name"), h("th", null, "Type"), h("th", null, "Size"),
      h("th", null, "Modified"), h("th", null, h("span", { class: "visually-hidden" }, "Actions")))),
    h("tbody", null, rows.length ? rows : h("tr", null, h("td", { colspan: 5, class: "empty" }, "Empty directory.")))));
  const name = h("input", { type: "text", id: "new-file", placeholder: "notes.md", autocomplete: "off",
    spellcheck: "false", class: "mono" });
  const error = h("div");
  const create = h("form", { class: "actions", "aria-label": "Create a file", onSubmit: async (ev) => {
    ev.preventDefault();
    const rel = name.value.trim().replace(/^\/+/, "");
    if (!rel) return;
    const path = [...parts, rel].join("/");
    try {
      await api("/api/files", { method: "PUT", query: { agent, path }, body: { content: "" } });
      navigate(`/files/${enc([agent, ...path.split("/").filter(Boolean)])}`);
    } catch (err) {
      error.replaceChildren(errorBox(err));
    }
  } }, h("label", { for: "new-file" }, "New file"), name, h("button", { type: "submit", class: "small" }, "Create"));
  const notes = dir.truncated ? h("p", { class: "muted" }, "Only the first entries are shown.") : null;
  const picker = h("input", { type: "file", id: "upload-file", multiple: true });
  const upload = h("form", { class: "actions", "aria-label": "Upload files", onSubmit: async (ev) => {
    ev.preventDefault();
    if (!picker.files.length) return;
    try {
      for (const f of picker.files) {
        const content = await toBase64(f);
        await api("/api/files", { method: "PUT", query: { agent, path: [...parts, f.name].join("/") },
          body: { content, encoding: "base64" } });
      }
      toast(`Uploaded ${picker.files.length} file${picker.files.length === 1 ? "" : "s"}`, "ok");
      navigate(`/files/${enc([agent, ...parts])}`);
    } catch (err) {
      error.replaceChildren(errorBox(err));
    }
  } }, h("label", { for: "upload-file" }, "Files to upload"), picker, h("button", { type: "submit", class: "small" }, "Upload"));
  return h("div", null, h("p", { class: "muted small" }, "Root: ", h("code", null, dir.root)), table, notes,
    h("div", { class: "section-head" }), create, upload, error);
}

function editor(agent, file, signal) {
  const raw = `/api/files?agent=${encodeURIComponent(agent)}&path=${encodeURIComponent(file.path)}&raw=true`;
  const facts = h("span", { "data-testid": "file-facts" },
    `${fmtSize(file.size)} · modified ${new Date(file.modified).toLocaleString()}`);
  const info = h("p", { class: "meta" }, facts, h("a", { href: raw, download: file.path.split("/").pop() }, "Download"));
  if (file.encoding !== "utf-8") {
    return h("div", null, info, h("p", { class: "muted" }, "Binary file: download it to look inside."));
  }
  const text = h("textarea", { id: "file-content", class: "mono", rows: 24, spellcheck: "false",
    "aria-label": `Content of ${file.path}` });
  text.value = file.content;
  const status = h("div", { role: "status", "aria-live": "polite", class: "muted small" });
  const error = h("div");
  const save = h("button", { type: "submit" }, "Save");
  const form = h("form", { class: "form", "aria-label": "Edit file", onSubmit: async (ev) => {
    ev.preventDefault();
    save.disabled = true;
    error.replaceChildren();
    try {
      const saved = await api("/api/files", { method: "PUT", query: { agent, path: file.path },
        body: { content: text.value }, signal });
      status.textContent = `Saved ${fmtSize(saved.size)}.`;
      facts.textContent = `${fmtSize(saved.size)} · modified ${new Date(saved.modified).toLocaleString()}`;
      toast("Saved");
    } catch (err) {
      if (err.name !== "AbortError") error.replaceChildren(errorBox(err instanceof ApiError ? err : String(err)));
    } finally {
      save.disabled = false;
    }
  } }, text, h("div", { class: "actions" }, save, status), error);
  return h("div", null, info, form);
}

function toBase64(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).replace(/^data:[^,]*,/, ""));
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}
