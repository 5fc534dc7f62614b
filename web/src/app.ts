// The Rakhsh web UI: a small single-page app over the same REST API (and watch streams) the
// CLI uses. Every value from the API reaches the page as text (textContent, attributes set
// one by one): nothing is ever parsed as HTML.
import RFB from "@novnc/novnc";
import { Terminal } from "@xterm/xterm";
import "@xterm/xterm/css/xterm.css";
import "./style.css";

const GV = "/apis/virtualization.rakhsh.io/v1alpha1";
const API_VERSION = "virtualization.rakhsh.io/v1alpha1";

// ---- a tiny element helper -------------------------------------------------------------

type Child = Node | string | number | null | undefined | false;
type Attrs = { [k: string]: string | boolean | number | ((ev: any) => void) | undefined };

function h(tag: string, attrs: Attrs = {}, ...children: (Child | Child[])[]): HTMLElement {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === false) continue;
    if (typeof v === "function") el.addEventListener(k.replace(/^on/, ""), v as EventListener);
    else if (k === "class") el.className = String(v);
    else if (v === true) el.setAttribute(k, "");
    else el.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function clear(el: Element) {
  while (el.firstChild) el.removeChild(el.firstChild);
}

// ---- the API ---------------------------------------------------------------------------

interface SessionInfo {
  loggedIn: boolean;
  user?: string;
  method?: string;
  csrfToken?: string;
  methods: string[];
}

let session: SessionInfo = { loggedIn: false, methods: [] };

// who is what the API says of the logged-in identity (whoami): its roles decide which actions
// the pages offer. The API decides in the end; this only keeps a Viewer from buttons that
// would be refused.
interface WhoAmI {
  name: string;
  user?: string;
  admin?: boolean;
  clusterRole?: string;
  projects?: Record<string, string>;
}
let who: WhoAmI | null = null;

async function loadWho() {
  try {
    who = await api("GET", "/identity/v1alpha1/whoami");
  } catch (_) {
    who = null; // unknown: every action is offered, and the API answers
  }
}

// clusterRead says the identity may read cluster objects such as nodes (the operator pages);
// clusterAdmin that it may change them.
function clusterRead(): boolean {
  return !!who && (!!who.admin || who.clusterRole === "ClusterAdmin" || who.clusterRole === "ClusterViewer");
}
function clusterAdmin(): boolean {
  return !!who && (!!who.admin || who.clusterRole === "ClusterAdmin");
}

// canWrite says the identity may change VMs of the current project and open their consoles.
function canWrite(): boolean {
  if (!who) return true;
  if (who.admin || who.clusterRole === "ClusterAdmin") return true;
  const role = who.projects?.[project];
  return role === "User" || role === "Admin";
}

export class APIError extends Error {
  constructor(public code: number, message: string, public reason = "") {
    super(message);
  }
}

async function errorOf(resp: Response): Promise<APIError> {
  const text = await resp.text();
  try {
    const st = JSON.parse(text);
    if (st && typeof st.message === "string") return new APIError(resp.status, st.message, st.reason || "");
  } catch (_) {
    /* not a Status */
  }
  return new APIError(resp.status, `${resp.status} ${resp.statusText}: ${text.slice(0, 500)}`);
}

async function api(method: string, path: string, body?: unknown, contentType = "application/json"): Promise<any> {
  const headers: Record<string, string> = { Accept: "application/json" };
  if (method !== "GET" && session.csrfToken) headers["X-CSRF-Token"] = session.csrfToken;
  if (body !== undefined) headers["Content-Type"] = contentType;
  const resp = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
  });
  if (resp.status === 401 && !path.startsWith("/ui/")) {
    session = { loggedIn: false, methods: session.methods };
    who = null;
    go("#/login");
  }
  if (!resp.ok) throw await errorOf(resp);
  const ct = resp.headers.get("Content-Type") || "";
  return ct.includes("json") ? resp.json() : resp.text();
}

function nsPath(resource: string, name = "", sub = ""): string {
  let p = `${GV}/namespaces/${encodeURIComponent(project)}/${resource}`;
  if (name) p += "/" + encodeURIComponent(name);
  if (sub) p += "/" + sub;
  return p;
}

// Watch keeps a list of objects current: one list, then one watch stream from its
// resourceVersion, resumed from the last version seen when it ends, and listed again when
// the server no longer has that version (410). It never polls.
class Watch {
  items = new Map<string, any>();
  private ctl = new AbortController();
  private rv = "";
  private stopped = false;
  constructor(private path: string, private query: string, private onChange: (w: Watch) => void, private onError: (e: Error) => void) {
    this.run();
  }
  stop() {
    this.stopped = true;
    this.ctl.abort();
  }
  private async list() {
    const l = await api("GET", `${this.path}?${this.query}`);
    this.items.clear();
    for (const o of l.items || []) this.items.set(o.metadata.name, o);
    this.rv = l.metadata?.resourceVersion || "";
    this.onChange(this);
  }
  private async run() {
    let delay = 500;
    while (!this.stopped) {
      try {
        if (!this.rv) await this.list();
        await this.stream();
        delay = 500;
      } catch (e: any) {
        if (this.stopped) return;
        if (e instanceof APIError && e.code === 410) {
          this.rv = "";
          continue;
        }
        this.onError(e);
        if (e instanceof APIError && (e.code === 401 || e.code === 403)) return;
      }
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 10000);
    }
  }
  private async stream() {
    const q = (this.query ? this.query + "&" : "") + `watch=true&resourceVersion=${encodeURIComponent(this.rv)}`;
    const resp = await fetch(`${this.path}?${q}`, { credentials: "same-origin", signal: this.ctl.signal, headers: { Accept: "application/json" } });
    if (!resp.ok) throw await errorOf(resp);
    const reader = resp.body!.getReader();
    const dec = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buf += dec.decode(value, { stream: true });
      let i;
      let changed = false;
      while ((i = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, i).trim();
        buf = buf.slice(i + 1);
        if (!line) continue;
        const ev = JSON.parse(line);
        const o = ev.object || {};
        if (ev.type === "ERROR") {
          if (o.code === 410) throw new APIError(410, o.message || "expired");
          throw new APIError(o.code || 500, o.message || "watch error");
        }
        if (o.metadata?.resourceVersion) this.rv = o.metadata.resourceVersion;
        if (ev.type === "BOOKMARK") continue;
        if (ev.type === "DELETED") this.items.delete(o.metadata.name);
        else this.items.set(o.metadata.name, o);
        changed = true;
      }
      if (changed) this.onChange(this);
    }
  }
}

// ---- state, routing and the frame --------------------------------------------------------

let project = localStorage.getItem("rakhsh.project") || "default";
let cleanups: (() => void)[] = [];
const root = () => document.getElementById("app")!;

function go(hash: string) {
  if (location.hash === hash) route();
  else location.hash = hash;
}

function onCleanup(f: () => void) {
  cleanups.push(f);
}

function errorBox(e: unknown): HTMLElement {
  const msg = e instanceof Error ? e.message : String(e);
  return h("div", { class: "error", role: "alert" }, msg);
}

function age(ts?: string): string {
  if (!ts) return "";
  const s = Math.max(0, Math.floor((Date.now() - Date.parse(ts)) / 1000));
  if (s < 120) return `${s}s`;
  if (s < 7200) return `${Math.floor(s / 60)}m`;
  if (s < 172800) return `${Math.floor(s / 3600)}h`;
  return `${Math.floor(s / 86400)}d`;
}

async function frame(active: string, content: HTMLElement): Promise<void> {
  const sel = h("select", { id: "project", "aria-label": "Project" }) as HTMLSelectElement;
  sel.append(h("option", { value: project }, project));
  sel.addEventListener("change", () => {
    project = sel.value;
    localStorage.setItem("rakhsh.project", project);
    go("#/vms");
  });
  api("GET", `${GV}/projects`)
    .then((l) => {
      clear(sel);
      const names = (l.items || []).map((p: any) => p.metadata.name as string);
      if (!names.includes(project)) names.unshift(project);
      for (const n of names) {
        const o = h("option", { value: n }, n) as HTMLOptionElement;
        o.selected = n === project;
        sel.append(o);
      }
    })
    .catch(() => {
      /* a user who may not list projects keeps the one typed */
    });
  const link = (href: string, text: string, key: string) => h("a", { href, class: active === key ? "active" : "", "aria-current": active === key ? "page" : undefined }, text);
  const logout = h("button", { type: "button", id: "logout" }, "Log out");
  logout.addEventListener("click", async () => {
    try {
      await api("POST", "/ui/logout");
    } catch (_) {
      /* the session is gone either way */
    }
    session = { loggedIn: false, methods: session.methods };
    who = null;
    go("#/login");
  });
  const r = root();
  clear(r);
  r.append(
    h(
      "header",
      { class: "top" },
      h("span", { class: "brand" }, "Rakhsh"),
      sel,
      h(
        "nav",
        { "aria-label": "Main" },
        link("#/vms", "Virtual machines", "vms"),
        " ",
        link("#/project-images", "Images", "project-images"),
        " ",
        link("#/disks", "Disks", "disks"),
        ...(canWrite() ? [" ", link("#/create", "Create VM", "create")] : []),
        ...(clusterRead() ? operatorPages.flatMap((pg) => [" ", link(`#/${pg.key}`, pg.title, pg.key)]) : []),
        ...(clusterAdmin() ? [" ", link("#/audit", "Audit log", "audit")] : []),
      ),
      h("span", { class: "spacer" }),
      h("span", { id: "user" }, session.user || ""),
      logout,
    ),
    h("main", {}, content),
  );
}

async function route() {
  for (const f of cleanups) f();
  cleanups = [];
  if (!session.loggedIn) {
    session = await (await fetch("/ui/session", { credentials: "same-origin" })).json();
  }
  const hash = location.hash || "#/vms";
  const ticket = new URLSearchParams(hash.replace(/^#\/?login\??/, "")).get("ticket");
  if (hash.startsWith("#/login") && ticket) {
    history.replaceState(null, "", "#/login");
    return loginWith({ method: "ticket", ticket });
  }
  if (!session.loggedIn) return loginPage();
  if (!who) await loadWho();
  const parts = hash.replace(/^#\//, "").split("/").map(decodeURIComponent);
  if (parts[0] === "vms" && parts[1] && parts[2] === "console") return consolePage(parts[1]);
  if (parts[0] === "vms" && parts[1] && parts[2] === "vnc") return vncPage(parts[1]);
  if (parts[0] === "vms" && parts[1]) return vmPage(parts[1]);
  if (parts[0] === "create") return createPage();
  if (parts[0] === "nodes") return nodesPage();
  if (parts[0] === "project-images") return imagesPage();
  if (parts[0] === "disks") return disksPage();
  if (parts[0] === "audit") return auditPage();
  const op = operatorPages.find((pg) => pg.key === parts[0]);
  if (op && op.columns) return clusterListPage(op);
  if (parts[0] === "login") return go("#/vms");
  return vmListPage();
}

// ---- login --------------------------------------------------------------------------------

async function loginWith(body: Record<string, string>, out?: HTMLElement) {
  try {
    const resp = await fetch("/ui/login", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body), credentials: "same-origin" });
    if (!resp.ok) throw await errorOf(resp);
    session = await resp.json();
    who = null;
    await loadWho();
    go("#/vms");
  } catch (e) {
    if (!out) {
      loginPage();
      out = document.getElementById("login-error")!;
    }
    clear(out);
    out.append(errorBox(e));
  }
}

function loginPage() {
  const out = h("div", { id: "login-error" });
  const token = h("input", { id: "token", type: "password", autocomplete: "off", required: true }) as HTMLInputElement;
  const tokenForm = h(
    "form",
    { "aria-label": "Log in with an API token" },
    h("label", { for: "token" }, "API token"),
    token,
    h("div", { class: "hint" }, "The token of your account (an administrator finds the admin token in the data directory, admin.token)."),
    h("div", { class: "actions" }, h("button", { type: "submit", class: "primary", id: "login" }, "Log in with the token")),
  );
  tokenForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    loginWith({ method: "token", token: token.value.trim() }, out);
  });
  const card = h("div", { class: "card login", role: "region", "aria-labelledby": "login-title" }, h("h1", { id: "login-title" }, "Log in to Rakhsh"));
  let first: HTMLElement = token;
  if (session.methods.includes("oidc")) {
    // The organisation's single sign-on: the server sends the browser to the issuer and back.
    const sso = h("a", { class: "button primary", id: "login-oidc", href: "/ui/oidc/login" }, "Log in with single sign-on");
    card.append(
      h("div", { class: "actions", "aria-label": "Log in at your organisation's identity provider" }, sso),
      h("h2", { class: "login-or" }, session.methods.includes("password") ? "Or with a user name and password" : "Or with an API token"),
    );
    first = sso;
  }
  if (session.methods.includes("password")) {
    const user = h("input", { id: "username", type: "text", autocomplete: "username", required: true }) as HTMLInputElement;
    const pass = h("input", { id: "password", type: "password", autocomplete: "current-password", required: true }) as HTMLInputElement;
    const passForm = h(
      "form",
      { "aria-label": "Log in with your user name and password" },
      h("label", { for: "username" }, "User name"),
      user,
      h("label", { for: "password" }, "Password"),
      pass,
      h("div", { class: "actions" }, h("button", { type: "submit", class: "primary", id: "login-password" }, "Log in")),
    );
    passForm.addEventListener("submit", (ev) => {
      ev.preventDefault();
      loginWith({ method: "password", username: user.value.trim(), password: pass.value }, out);
    });
    card.append(passForm, h("h2", { class: "login-or" }, "Or with an API token"));
    if (first === token) first = user;
  }
  card.append(tokenForm, out);
  const r = root();
  clear(r);
  r.append(card);
  first.focus();
}

// ---- the VM list ---------------------------------------------------------------------------

function phaseCell(v: any): HTMLElement {
  const p = v.status?.phase || "Pending";
  return h("span", { class: `phase phase-${p}`, "data-phase": p }, p);
}

function vmListPage() {
  const body = h("tbody");
  const status = h("div");
  const phases = h("ul", { class: "phase-counts", id: "vm-phases", "aria-label": "Virtual machines by phase" });
  const quotaBox = h("div", { id: "quota" });
  const overview = h("section", { class: "overview", "aria-label": "Overview" }, phases, quotaBox);
  const content = h(
    "div",
    {},
    h("h1", {}, "Virtual machines"),
    canWrite()
      ? h("div", { class: "actions" }, h("a", { href: "#/create", class: "button" }, "Create VM"))
      : h("div", { class: "hint", id: "read-only" }, `You have read access to project ${project}: creating VMs, actions and consoles need the User role.`),
    overview,
    status,
    h(
      "table",
      { class: "vms", id: "vm-list" },
      h("thead", {}, h("tr", {}, ...["Name", "Phase", "Cores", "Memory", "Node", "IP address", "Age"].map((c) => h("th", { scope: "col" }, c)))),
      body,
    ),
  );
  frame("vms", content);
  const render = (w: Watch) => {
    clear(status);
    clear(body);
    const vms = [...w.items.values()].sort((a, b) => a.metadata.name.localeCompare(b.metadata.name));
    if (vms.length === 0) body.append(h("tr", {}, h("td", { colspan: "7" }, "No virtual machines in this project yet.")));
    for (const v of vms) {
      body.append(
        h(
          "tr",
          { "data-vm": v.metadata.name },
          h("td", {}, h("a", { href: `#/vms/${encodeURIComponent(v.metadata.name)}` }, v.metadata.name)),
          h("td", {}, phaseCell(v)),
          h("td", {}, String(v.spec?.cpu?.cores ?? "")),
          h("td", {}, v.spec?.memory?.size || ""),
          h("td", { class: "node" }, v.status?.nodeName || ""),
          h("td", { class: "ip" }, v.status?.ipAddress || ""),
          h("td", {}, age(v.metadata.creationTimestamp)),
        ),
      );
    }
  };
  const w = new Watch(
    nsPath("virtualmachines"),
    "",
    (w) => {
      render(w);
      renderPhases(phases, [...w.items.values()]);
    },
    (e) => {
      clear(status);
      status.append(errorBox(e));
    },
  );
  onCleanup(() => w.stop());
  // The project's quota and what it uses, live (the project controller keeps status.used).
  const pw = new Watch(
    `${GV}/projects`,
    `fieldSelector=${encodeURIComponent("metadata.name=" + project)}`,
    (pw) => renderQuota(quotaBox, pw.items.get(project)),
    (e) => {
      clear(quotaBox);
      quotaBox.append(errorBox(e));
    },
  );
  onCleanup(() => pw.stop());
}

// renderPhases shows how many of the VMs are in each phase (Running first).
function renderPhases(ul: HTMLElement, vms: any[]) {
  clear(ul);
  const n = new Map<string, number>();
  for (const v of vms) n.set(v.status?.phase || "Pending", (n.get(v.status?.phase || "Pending") || 0) + 1);
  const order = ["Running", "Starting", "Migrating", "Pause", "Pending", "Stopping", "Stopped", "Degraded", "Terminating"];
  const keys = [...n.keys()].sort((a, b) => (order.indexOf(a) + 1 || 99) - (order.indexOf(b) + 1 || 99) || a.localeCompare(b));
  ul.append(h("li", { "data-phase": "all" }, h("strong", {}, String(vms.length)), " VMs"));
  for (const k of keys) ul.append(h("li", { "data-phase": k }, h("strong", { class: `phase phase-${k}` }, String(n.get(k))), ` ${k}`));
}

// A quota line: what is used and the limit (undefined: no limit), in the unit of fmt.
interface QuotaLine {
  key: string;
  label: string;
  used: number;
  limit?: number;
  fmt: (n: number) => string;
}

const fmtCount = (n: number) => String(n);
const fmtBytes = (n: number) => humanBytes(`${n}`);

// quotaLines reads a Project's spec.quota and status.used (plus, when given, what a new VM
// would add) as comparable numbers.
function quotaLines(p: any, add?: { cores: number; memory: number; disk: number }): QuotaLine[] {
  const q = p?.spec?.quota || {};
  const u = p?.status?.used || {};
  const lim = (v: any, bytes = false) => (v === undefined || v === null || v === "" ? undefined : bytes ? bytesOf(String(v)) : Number(v));
  return [
    { key: "cores", label: "Cores", used: Number(u.cores || 0) + (add?.cores || 0), limit: lim(q.cores), fmt: fmtCount },
    { key: "memory", label: "Memory", used: bytesOf(u.memory) + (add?.memory || 0), limit: lim(q.memory, true), fmt: fmtBytes },
    { key: "disk", label: "Disk", used: bytesOf(u.disk) + (add?.disk || 0), limit: lim(q.disk, true), fmt: fmtBytes },
    { key: "virtualMachines", label: "Virtual machines", used: Number(u.virtualMachines || 0) + (add ? 1 : 0), limit: lim(q.virtualMachines), fmt: fmtCount },
    ...(add ? [] : [{ key: "images", label: "Images", used: Number(u.images || 0), limit: lim(q.images), fmt: fmtCount }]),
  ];
}

// renderQuota shows the project's usage against its quota: a meter per limited resource.
function renderQuota(box: HTMLElement, p: any) {
  clear(box);
  if (!p) return;
  const rows = quotaLines(p).map((l) =>
    h(
      "tr",
      { "data-quota": l.key },
      h("th", { scope: "row" }, l.label),
      h("td", {}, l.limit === undefined ? `${l.fmt(l.used)} (no limit)` : `${l.fmt(l.used)} of ${l.fmt(l.limit)}`),
      h("td", {}, l.limit === undefined ? "" : h("meter", { min: "0", max: String(l.limit || 1), value: String(Math.min(l.used, l.limit)), high: String(0.9 * l.limit), "aria-label": `${l.label}: ${l.fmt(l.used)} of ${l.fmt(l.limit)}` })),
    ),
  );
  box.append(h("table", { class: "quota", "aria-label": `Usage of project ${p.metadata.name} against its quota` }, h("tbody", {}, ...rows)));
}

// ---- the project's images: list and upload from the browser --------------------------------

// imagesPage lists the project's VirtualImages live, and uploads a file from the browser as a
// new one: the image is created with an Upload data source, its upload URL (single use) comes
// through the same watch, and the file goes there (same origin) with a progress bar.
function imagesPage() {
  const body = h("tbody");
  const out = h("div", { id: "image-result" });
  const waiters = new Map<string, (o: any) => void>(); // image name -> called on each change
  let form: HTMLElement | null = null;
  if (canWrite()) {
    const name = h("input", { id: "img-name", type: "text", required: true, pattern: "[a-z0-9]([-a-z0-9]*[a-z0-9])?", autocomplete: "off" }) as HTMLInputElement;
    const file = h("input", { id: "img-file", type: "file", required: true }) as HTMLInputElement;
    const bar = h("progress", { id: "img-progress", max: "100", value: "0", "aria-label": "Upload progress" }) as HTMLProgressElement;
    const pct = h("span", { id: "img-progress-text", "aria-live": "polite" }, "");
    form = h(
      "form",
      { "aria-label": "Upload an image", id: "img-form" },
      h("h2", {}, "Upload an image"),
      h("label", { for: "img-name" }, "Name"),
      name,
      h("label", { for: "img-file" }, "File (qcow2, raw, vmdk, vdi, vhdx or ISO; gz or xz compressed too)"),
      file,
      h("div", { class: "actions" }, h("button", { type: "submit", class: "primary", id: "img-upload" }, "Upload"), bar, pct),
    );
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      clear(out);
      const f = file.files?.[0];
      if (!f) return;
      const n = name.value.trim();
      try {
        const ready = new Promise<string>((resolve) =>
          waiters.set(n, (o) => {
            const u = o.status?.imageUploadURLs?.external || o.status?.imageUploadURLs?.inCluster;
            if (u) resolve(u);
          }),
        );
        await api("POST", nsPath("virtualimages"), { apiVersion: API_VERSION, kind: "VirtualImage", metadata: { name: n }, spec: { storage: "ContainerRegistry", dataSource: { type: "Upload" } } });
        const url = await Promise.race([
          ready,
          new Promise<string>((_, reject) => setTimeout(() => reject(new Error(`image ${n} got no upload URL within a minute: see its conditions`)), 60000)),
        ]);
        waiters.delete(n);
        const path = new URL(url, location.href).pathname;
        const shown = (p: number) => {
          bar.value = p;
          pct.textContent = `${p} %`;
        };
        const send = async (resume: boolean) => {
          clear(out);
          try {
            await resumeUpload(path, f, shown, resume);
            out.append(h("div", { class: "notice", role: "status" }, `Uploaded ${f.name} as image ${n}; it is checked and converted now.`));
          } catch (e) {
            out.append(errorBox(e));
            if (e instanceof ConnectionBroke) {
              // The server keeps what arrived for a few minutes: the rest can still be sent.
              out.append(h("button", { type: "button", id: "img-resume", onclick: () => send(true) }, "Resume the upload"));
            }
          }
        };
        await send(false);
      } catch (e) {
        waiters.delete(n);
        out.append(errorBox(e));
      }
    });
  }
  let importForm: HTMLElement | null = null;
  if (canWrite()) {
    const name = h("input", { id: "imp-name", type: "text", required: true, pattern: "[a-z0-9]([-a-z0-9]*[a-z0-9])?", autocomplete: "off" }) as HTMLInputElement;
    const url = h("input", { id: "imp-url", type: "url", required: true, placeholder: "https://…/disk.qcow2" }) as HTMLInputElement;
    importForm = h(
      "form",
      { "aria-label": "Import an image from a URL", id: "imp-form" },
      h("h2", {}, "Import an image from a URL"),
      h("label", { for: "imp-name" }, "Name"),
      name,
      h("label", { for: "imp-url" }, "URL (http or https; the server fetches it and shows the progress in the table)"),
      url,
      h("div", { class: "actions" }, h("button", { type: "submit", class: "primary", id: "imp-start" }, "Import")),
    );
    importForm.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      clear(out);
      const n = name.value.trim();
      try {
        await api("POST", nsPath("virtualimages"), {
          apiVersion: API_VERSION,
          kind: "VirtualImage",
          metadata: { name: n },
          spec: { storage: "ContainerRegistry", dataSource: { type: "HTTP", http: { url: url.value.trim() } } },
        });
        out.append(h("div", { class: "notice", role: "status" }, `Image ${n} is being imported: its progress is in the table.`));
      } catch (e) {
        out.append(errorBox(e));
      }
    });
  }
  frame(
    "project-images",
    h(
      "div",
      {},
      h("h1", {}, `Images of project ${project}`),
      out,
      h("table", { class: "vms", id: "image-list" }, h("thead", {}, h("tr", {}, ...["Name", "Phase", "Progress", "Format", "Size", "Age"].map((c) => h("th", { scope: "col" }, c)))), body),
      form,
      importForm,
    ),
  );
  const render = (w: Watch) => {
    clear(body);
    const items = [...w.items.values()].sort((a, b) => a.metadata.name.localeCompare(b.metadata.name));
    if (items.length === 0) body.append(h("tr", {}, h("td", { colspan: "6" }, "No images in this project yet.")));
    for (const o of items) {
      waiters.get(o.metadata.name)?.(o);
      const p = o.status?.phase || "Pending";
      body.append(
        h(
          "tr",
          { "data-image": o.metadata.name },
          h("td", {}, o.metadata.name),
          h("td", {}, h("span", { class: `phase phase-${p}`, "data-phase": p }, p)),
          h("td", {}, o.status?.progress || ""),
          h("td", {}, o.status?.format || ""),
          h("td", {}, o.status?.size?.unpacked || o.status?.size?.stored || ""),
          h("td", {}, age(o.metadata.creationTimestamp)),
        ),
      );
    }
  };
  const w = new Watch(nsPath("virtualimages"), "", render, (e) => {
    clear(out);
    out.append(errorBox(e));
  });
  onCleanup(() => w.stop());
}

// disksPage lists the project's disks, live, with the VMs they are attached to. A User grows a
// disk (spec.persistentVolumeClaim.size; a running VM sees the new size at once) and attaches
// a disk to a VM or detaches it (a VirtualMachineBlockDeviceAttachment: hot-plugged into a
// running VM, docs/hotplug.md).
function disksPage() {
  const body = h("tbody");
  const out = h("div", { id: "disk-result" });
  frame(
    "disks",
    h(
      "div",
      {},
      h("h1", {}, `Disks of project ${project}`),
      out,
      h(
        "table",
        { class: "vms", id: "disk-list" },
        h("thead", {}, h("tr", {}, ...["Name", "Phase", "Progress", "Size", "Storage class", "Attached to", "Age", "Actions"].map((c) => h("th", { scope: "col" }, c)))),
        body,
      ),
    ),
  );
  const report = (e: unknown, ok?: string) => {
    clear(out);
    out.append(ok ? h("div", { class: "notice", role: "status" }, ok) : errorBox(e));
  };
  let disks: Watch | null = null;
  let bdas: Watch | null = null;
  let vms: Watch | null = null;
  const attachmentsOf = (disk: string) =>
    [...(bdas?.items.values() || [])].filter((b) => b.spec?.blockDeviceRef?.kind === "VirtualDisk" && b.spec?.blockDeviceRef?.name === disk && !b.metadata.deletionTimestamp);
  const inSpecOf = (disk: string) =>
    [...(vms?.items.values() || [])].filter((v) => (v.spec?.blockDeviceRefs || []).some((r: any) => r.kind === "VirtualDisk" && r.name === disk)).map((v) => v.metadata.name as string);
  const resize = async (d: any) => {
    const cur = d.spec?.persistentVolumeClaim?.size || d.status?.capacity || "";
    const size = await promptDialog(`Grow disk ${d.metadata.name}`, "New size (for example 20Gi). A disk only grows; the guest sees the new size at once, its file system is grown inside the guest.", cur, "Resize");
    if (!size || size === cur) return;
    try {
      await api("PATCH", nsPath("virtualdisks", d.metadata.name), { spec: { persistentVolumeClaim: { size } } }, "application/merge-patch+json");
      report(null, `Disk ${d.metadata.name} grows to ${size}.`);
    } catch (e) {
      report(e);
    }
  };
  const attach = async (d: any) => {
    const names = [...(vms?.items.values() || [])].map((v) => v.metadata.name as string).sort();
    if (names.length === 0) return report(new Error("the project has no virtual machine to attach the disk to"));
    const vm = await promptDialog(`Attach disk ${d.metadata.name}`, "To which virtual machine? A running one gets the disk at once (hot-plug).", names[0], "Attach", names);
    if (!vm) return;
    try {
      await api("POST", nsPath("virtualmachineblockdeviceattachments"), {
        apiVersion: API_VERSION,
        kind: "VirtualMachineBlockDeviceAttachment",
        metadata: { generateName: `${d.metadata.name}-` },
        spec: { virtualMachineName: vm, blockDeviceRef: { kind: "VirtualDisk", name: d.metadata.name } },
      });
      report(null, `Disk ${d.metadata.name} is being attached to ${vm}.`);
    } catch (e) {
      report(e);
    }
  };
  const detach = async (b: any) => {
    const ok = await confirmDialog(
      `Detach disk ${b.spec.blockDeviceRef.name} from ${b.spec.virtualMachineName}?`,
      "A running guest loses the disk at once: unmount it inside the guest first.",
      "Detach",
    );
    if (!ok) return;
    try {
      await api("DELETE", nsPath("virtualmachineblockdeviceattachments", b.metadata.name));
      report(null, `Disk ${b.spec.blockDeviceRef.name} is being detached from ${b.spec.virtualMachineName}.`);
    } catch (e) {
      report(e);
    }
  };
  const render = () => {
    if (!disks) return;
    clear(body);
    const items = [...disks.items.values()].sort((a, b) => a.metadata.name.localeCompare(b.metadata.name));
    if (items.length === 0) body.append(h("tr", {}, h("td", { colspan: "8" }, "No disks in this project yet.")));
    for (const d of items) {
      const n = d.metadata.name as string;
      const p = d.status?.phase || "Pending";
      const att = attachmentsOf(n);
      const on = new Set<string>(inSpecOf(n));
      for (const a of d.status?.attachedToVirtualMachines || []) on.add(a.name);
      for (const b of att) on.add(b.spec.virtualMachineName);
      const actions = h("td", { class: "row-actions" });
      if (canWrite()) {
        actions.append(h("button", { type: "button", id: `disk-resize-${n}`, onclick: () => resize(d) }, "Resize"));
        for (const b of att) actions.append(" ", h("button", { type: "button", id: `disk-detach-${n}`, onclick: () => detach(b) }, `Detach from ${b.spec.virtualMachineName}`));
        if (on.size === 0) actions.append(" ", h("button", { type: "button", id: `disk-attach-${n}`, onclick: () => attach(d) }, "Attach…"));
      }
      body.append(
        h(
          "tr",
          { "data-disk": n },
          h("td", {}, n),
          h("td", {}, h("span", { class: `phase phase-${p}`, "data-phase": p }, p)),
          h("td", {}, d.status?.progress || ""),
          h("td", { "data-size": d.status?.capacity || "" }, humanBytes(d.status?.capacity || d.spec?.persistentVolumeClaim?.size)),
          h("td", {}, d.status?.storageClassName || d.spec?.persistentVolumeClaim?.storageClassName || ""),
          h(
            "td",
            { "data-attached": [...on].sort().join(",") },
            [...on]
              .sort()
              .map((vm) => {
                const b = att.find((x) => x.spec.virtualMachineName === vm);
                const ph = b?.status?.phase || (b ? "Pending" : "");
                return ph && ph !== "Attached" ? `${vm} (attachment ${ph})` : vm;
              })
              .join(", "),
          ),
          h("td", {}, age(d.metadata.creationTimestamp)),
          actions,
        ),
      );
    }
  };
  const fail = (e: Error) => report(e);
  disks = new Watch(nsPath("virtualdisks"), "", render, fail);
  bdas = new Watch(nsPath("virtualmachineblockdeviceattachments"), "", render, fail);
  vms = new Watch(nsPath("virtualmachines"), "", render, fail);
  onCleanup(() => {
    disks?.stop();
    bdas?.stop();
    vms?.stop();
  });
}

// promptDialog asks for one value: typed, or picked from choices when given. It resolves to
// the value, or null when cancelled.
function promptDialog(question: string, detail: string, value: string, action: string, choices?: string[]): Promise<string | null> {
  const field = (
    choices
      ? h("select", { id: "prompt-value", "aria-label": question }, ...choices.map((c) => h("option", { value: c }, c)))
      : h("input", { id: "prompt-value", type: "text", value, "aria-label": question, autocomplete: "off" })
  ) as HTMLInputElement | HTMLSelectElement;
  if (choices) field.value = value;
  const shown = modal<string | null>("prompt", question, null, (done) => {
    const form = h(
      "form",
      { method: "dialog" },
      h("p", {}, detail),
      field,
      h(
        "div",
        { class: "actions" },
        h("button", { type: "submit", class: "primary", id: "prompt-ok" }, action),
        h("button", { type: "button", id: "prompt-cancel", onclick: () => done(null) }, "Cancel"),
      ),
    );
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      done(field.value.trim());
    });
    return [form];
  });
  field.focus();
  return shown;
}

// ConnectionBroke is an upload whose connection broke: the server keeps what arrived for a
// while, and the rest can be sent (resumeUpload).
class ConnectionBroke extends Error {}

// uploadFile sends a file, from byte offset on, to an upload path of this server (PUT, with
// the session's CSRF token; a Content-Range when it resumes), reporting whole percents of the
// whole file. It resolves true when the server stored the image, false when it took the piece
// and waits for more; it rejects with the server's message, or ConnectionBroke.
function uploadFile(path: string, f: File, offset: number, progress: (pct: number) => void): Promise<boolean> {
  return new Promise((resolve, reject) => {
    const x = new XMLHttpRequest();
    x.open("PUT", path);
    if (session.csrfToken) x.setRequestHeader("X-CSRF-Token", session.csrfToken);
    if (offset > 0) x.setRequestHeader("Content-Range", `bytes ${offset}-${f.size - 1}/${f.size}`);
    x.upload.onprogress = (ev) => {
      if (ev.lengthComputable && f.size > 0) progress(Math.floor((100 * (offset + ev.loaded)) / f.size));
    };
    x.onload = () => {
      if (x.status === 200) {
        progress(100);
        resolve(true);
        return;
      }
      if (x.status === 202) {
        resolve(false);
        return;
      }
      let msg = `${x.status} ${x.statusText}`;
      try {
        msg = JSON.parse(x.responseText).message || msg;
      } catch (_) {
        msg = x.responseText.trim() || msg;
      }
      reject(new APIError(x.status, msg));
    };
    x.onerror = () => reject(new ConnectionBroke("the upload failed: the connection broke"));
    x.send(offset > 0 ? f.slice(offset) : f);
  });
}

// uploadOffset asks the server how much of the upload at path it has taken (HEAD).
async function uploadOffset(path: string): Promise<number> {
  const r = await fetch(path, { method: "HEAD", credentials: "same-origin" });
  const off = Number(r.headers.get("Upload-Offset"));
  if (!r.ok || !Number.isInteger(off)) throw new Error(`the upload cannot be resumed: the server ${r.ok ? "does not say where it stands" : "no longer waits for it (" + r.status + ")"}`);
  return off;
}

// resumeUpload sends f to path, and when the connection breaks (or a piece was taken but more
// is wanted) asks where the upload stands and sends the rest, up to four times with a doubling
// pause; resume starts with that question.
async function resumeUpload(path: string, f: File, progress: (pct: number) => void, resume = false): Promise<void> {
  let pause = 1000;
  for (let attempt = 1; ; attempt++) {
    const offset = resume || attempt > 1 ? await uploadOffset(path) : 0;
    if (offset > 0 && offset === f.size) {
      // All of it arrived; the answer was lost. The image's phase in the table tells the rest.
      progress(100);
      return;
    }
    try {
      if (await uploadFile(path, f, offset, progress)) return;
      if (attempt >= 8) throw new Error("the server keeps asking for more of the file than was sent");
    } catch (e) {
      if (!(e instanceof ConnectionBroke) && !(e instanceof APIError && e.code === 409)) throw e;
      if (attempt >= 4) throw e;
    }
    await new Promise((r) => setTimeout(r, pause));
    pause *= 2;
  }
}

// ---- operator pages ------------------------------------------------------------------------

// An operator page: a live table of one cluster-scoped kind (nodes have a page of their own,
// with actions).
interface OperatorPage {
  key: string;
  title: string;
  resource?: string;
  columns?: [string, (o: any) => string][];
  // kind and spec: what a ClusterAdmin's New button starts from (a working example to adapt).
  kind?: string;
  spec?: any;
}

const quota = (q: any) =>
  q ? [q.cores !== undefined ? `${q.cores} cores` : "", q.memory ? `${q.memory} memory` : "", q.disk ? `${q.disk} disk` : "", q.virtualMachines !== undefined ? `${q.virtualMachines} VMs` : ""].filter(Boolean).join(", ") : "";

const operatorPages: OperatorPage[] = [
  { key: "nodes", title: "Nodes" },
  {
    key: "classes",
    title: "Classes",
    resource: "virtualmachineclasses",
    columns: [
      ["Phase", (o) => o.status?.phase || ""],
      ["CPU", (o) => [o.spec?.cpu?.type, o.spec?.cpu?.model].filter(Boolean).join(" ")],
      ["Sizing policies", (o) => (o.spec?.sizingPolicies || []).map(policyText).join("; ")],
      ["Nodes", (o) => (o.status?.availableNodes || []).join(", ")],
    ],
    kind: "VirtualMachineClass",
    spec: { cpu: { type: "Host" }, sizingPolicies: [{ cores: { min: 1, max: 4 }, memory: { min: "1Gi", max: "8Gi" }, coreFractions: [100] }] },
  },
  {
    key: "images",
    title: "Cluster images",
    resource: "clustervirtualimages",
    columns: [
      ["Phase", (o) => o.status?.phase || ""],
      ["Progress", (o) => o.status?.progress || ""],
      ["Format", (o) => o.status?.format || ""],
      ["Size", (o) => o.status?.size?.unpacked || o.status?.size?.stored || ""],
    ],
    kind: "ClusterVirtualImage",
    spec: { dataSource: { type: "HTTP", http: { url: "https://images.example.org/image.qcow2" } } },
  },
  {
    key: "networks",
    title: "Networks",
    resource: "clusternetworks",
    columns: [
      ["Phase", (o) => o.status?.phase || ""],
      ["Type", (o) => o.spec?.type || ""],
      ["Subnet", (o) => o.spec?.subnet || o.spec?.bridge || ""],
      ["Addresses in use", (o) => String(o.status?.allocatedIPs ?? "")],
    ],
    kind: "ClusterNetwork",
    spec: { type: "NAT", subnet: "10.80.0.0/24" },
  },
  {
    key: "storageclasses",
    title: "Storage classes",
    resource: "storageclasses",
    columns: [
      ["Type", (o) => o.spec?.type || ""],
      ["Path", (o) => o.spec?.local?.path || o.spec?.shared?.path || ""],
      ["Default", (o) => (o.metadata?.annotations?.["storageclass.kubernetes.io/is-default-class"] === "true" ? "yes" : "")],
    ],
    kind: "StorageClass",
    spec: { type: "Shared", shared: { path: "/srv/rakhsh-shared" } },
  },
  {
    key: "projects",
    title: "Projects",
    resource: "projects",
    columns: [
      ["Phase", (o) => o.status?.phase || ""],
      ["Quota", (o) => quota(o.spec?.quota)],
      ["Used", (o) => quota(o.status?.used)],
      ["Members", (o) => (o.spec?.members || []).map((m: any) => `${m.name} (${m.role})`).join(", ")],
    ],
    kind: "Project",
    spec: { quota: { cores: 16, memory: "64Gi", disk: "1Ti", virtualMachines: 10 }, members: [{ name: "user:someone", role: "User" }] },
  },
  {
    key: "backuptargets",
    title: "Backup targets",
    resource: "backuptargets",
    columns: [
      ["Type", (o) => o.spec?.type || ""],
      ["Path", (o) => o.spec?.directory?.path || ""],
    ],
    kind: "BackupTarget",
    spec: { type: "Directory", directory: { path: "/srv/rakhsh-backups" } },
  },
];

// clusterListPage is an operator page's live table: the name, then its columns.
function clusterListPage(pg: OperatorPage) {
  const body = h("tbody");
  const out = h("div");
  const cols = pg.columns || [];
  frame(
    pg.key,
    h(
      "div",
      {},
      h("h1", {}, pg.title),
      ...(clusterAdmin() && pg.kind
        ? [h("div", { class: "actions" }, h("button", { type: "button", id: `${pg.key}-new`, class: "primary", onclick: () => void createObject(pg, out) }, `New ${pg.kind}`))]
        : []),
      out,
      h("table", { class: "vms", id: `${pg.key}-list` }, h("thead", {}, h("tr", {}, ...["Name", ...cols.map((c) => c[0]), ...(clusterAdmin() ? ["Actions"] : [])].map((c) => h("th", { scope: "col" }, c)))), body),
    ),
  );
  const render = (w: Watch) => {
    clear(body);
    const items = [...w.items.values()].sort((a, b) => a.metadata.name.localeCompare(b.metadata.name));
    if (items.length === 0) body.append(h("tr", {}, h("td", { colspan: String(cols.length + 1) }, "None yet.")));
    for (const o of items) {
      const edit = clusterAdmin()
        ? [h("td", { class: "row-actions" }, h("button", { type: "button", class: "edit", "aria-label": `Edit ${o.metadata.name}`, onclick: () => void editObject(pg, o.metadata.name, out) }, "Edit"))]
        : [];
      body.append(h("tr", { "data-name": o.metadata.name }, h("td", {}, o.metadata.name), ...cols.map(([, f]) => h("td", {}, f(o))), ...edit));
    }
  };
  const w = new Watch(`${GV}/${pg.resource}`, "", render, (e) => {
    clear(out);
    out.append(errorBox(e));
  });
  onCleanup(() => w.stop());
}

// editObject lets a ClusterAdmin change a cluster object as JSON: its labels, annotations and
// spec (the rest of metadata and the status are the server's). The save is a PUT with the
// resourceVersion read, so a change made meanwhile by someone else is refused, not lost; the
// server's message is shown in the dialog, which stays open to fix the text.
async function editObject(pg: OperatorPage, name: string, out: HTMLElement) {
  let obj: any;
  try {
    obj = await api("GET", `${GV}/${pg.resource}/${encodeURIComponent(name)}`);
  } catch (e) {
    clear(out);
    out.append(errorBox(e));
    return;
  }
  const m = obj.metadata || {};
  const editable = { metadata: { labels: m.labels || {}, annotations: m.annotations || {} }, spec: obj.spec };
  const saved = await modal<boolean>("edit-dialog", `Edit ${pg.resource}/${name}`, false, (done) => {
    const { text, err, parse } = jsonEditor("edit", editable, "The object as JSON");
    const save = async () => {
      const v = parse();
      if (v === undefined) return;
      const url = `${GV}/${pg.resource}/${encodeURIComponent(name)}`;
      const put = (base: any) => api("PUT", url, { ...base, metadata: { ...base.metadata, labels: v.metadata?.labels, annotations: v.metadata?.annotations }, spec: v.spec });
      // What the editor started from: a conflict with a change of anything else (the status
      // the controllers keep writing) is not a conflict with the user's edit.
      const edited = (o: any) => JSON.stringify([o.metadata?.labels || {}, o.metadata?.annotations || {}, o.spec]);
      try {
        try {
          await put(obj);
        } catch (e) {
          if (!(e instanceof APIError) || e.code !== 409) throw e;
          const cur = await api("GET", url);
          if (edited(cur) !== edited(obj)) {
            throw new APIError(409, `${name} was changed by someone else since this editor opened it: cancel, and edit it again to see the change.`, "Conflict");
          }
          obj = cur;
          await put(cur);
        }
        done(true);
      } catch (e) {
        err.append(errorBox(e));
      }
    };
    return [
      h("p", { class: "hint" }, "Labels, annotations and spec; the server checks the change as it checks rakhsh apply."),
      text,
      err,
      h("div", { class: "actions" }, h("button", { type: "button", id: "edit-save", class: "primary", onclick: () => void save() }, "Save"), h("button", { type: "button", id: "edit-cancel", onclick: () => done(false) }, "Cancel")),
    ];
  });
  if (saved) {
    clear(out);
    out.append(h("div", { class: "notice", role: "status" }, `${name} saved.`));
  }
}

// jsonEditor is a dialog's JSON text area (ID-json) holding value, and its error box
// (ID-error); parse clears the box and returns the text as one JSON object, or shows why it
// is not one and returns undefined.
function jsonEditor(id: string, value: any, label: string) {
  const text = h("textarea", { id: `${id}-json`, rows: "18", spellcheck: "false", "aria-label": label }) as HTMLTextAreaElement;
  text.value = JSON.stringify(value, null, 2);
  text.style.maxWidth = "none";
  const err = h("div", { id: `${id}-error`, role: "alert" });
  const parse = (): any => {
    clear(err);
    let v: any;
    try {
      v = JSON.parse(text.value);
    } catch (e) {
      err.append(errorBox(new Error(`Not valid JSON: ${(e as Error).message}`)));
      return undefined;
    }
    if (v === null || typeof v !== "object" || Array.isArray(v)) {
      err.append(errorBox(new Error("Not an object: the text must be one JSON object")));
      return undefined;
    }
    return v;
  };
  return { text, err, parse };
}

// createObject lets a ClusterAdmin make a new cluster object from JSON, starting from a working
// example of the kind. The server checks it as it checks rakhsh apply; its message is shown in
// the dialog, which stays open to fix the text. The new object appears in the live table.
async function createObject(pg: OperatorPage, out: HTMLElement) {
  const example = { apiVersion: API_VERSION, kind: pg.kind, metadata: { name: "", labels: {}, annotations: {} }, spec: pg.spec };
  const created = await modal<string>("create-dialog", `New ${pg.kind}`, "", (done) => {
    const { text, err, parse } = jsonEditor("create", example, `The new ${pg.kind} as JSON`);
    const create = async () => {
      const v = parse();
      if (v === undefined) return;
      try {
        const o = await api("POST", `${GV}/${pg.resource}`, { ...v, apiVersion: v.apiVersion ?? API_VERSION, kind: v.kind ?? pg.kind });
        done(o?.metadata?.name || v.metadata?.name || "");
      } catch (e) {
        err.append(errorBox(e));
      }
    };
    return [
      h("p", { class: "hint" }, `An example to adapt: give it a name and change the spec (see the operator docs of ${pg.kind}). The server checks it as it checks rakhsh apply.`),
      text,
      err,
      h("div", { class: "actions" }, h("button", { type: "button", id: "create-save", class: "primary", onclick: () => void create() }, "Create"), h("button", { type: "button", id: "create-cancel", onclick: () => done("") }, "Cancel")),
    ];
  });
  if (created) {
    clear(out);
    out.append(h("div", { class: "notice", role: "status" }, `${pg.kind} ${created} created.`));
  }
}

// ---- nodes (operators) ---------------------------------------------------------------------

function condition(o: any, type: string): any {
  return (o.status?.conditions || []).find((c: any) => c.type === type);
}

// nodesPage lists the hosts, live: phase, accelerator, what is allocated of what VMs may use,
// and whether new VMs may go there; a ClusterAdmin cordons a node or puts it in maintenance
// (its VMs are moved off by the control plane, docs/nodes.md).
function nodesPage() {
  const body = h("tbody");
  const out = h("div", { id: "node-result" });
  const content = h(
    "div",
    {},
    h("h1", {}, "Nodes"),
    out,
    h(
      "table",
      { class: "vms", id: "node-list" },
      h("thead", {}, h("tr", {}, ...["Name", "Phase", "Accelerator", "QEMU", "vCPUs allocated", "Memory allocated", "Scheduling", ""].map((c) => h("th", { scope: "col" }, c)))),
      body,
    ),
  );
  frame("nodes", content);
  const patch = async (name: string, spec: Record<string, unknown>, label: string) => {
    clear(out);
    try {
      await api("PATCH", `${GV}/nodes/${encodeURIComponent(name)}`, { spec }, "application/merge-patch+json");
      out.append(h("div", { class: "notice", role: "status" }, `${label}: done.`));
    } catch (e) {
      out.append(errorBox(e));
    }
  };
  const render = (w: Watch) => {
    clear(body);
    const nodes = [...w.items.values()].sort((a, b) => a.metadata.name.localeCompare(b.metadata.name));
    if (nodes.length === 0) body.append(h("tr", {}, h("td", { colspan: "8" }, "No nodes have joined yet.")));
    for (const n of nodes) {
      const name = n.metadata.name as string;
      const st = n.status || {};
      const maint = condition(n, "Maintenance");
      const sched = n.spec?.maintenance ? `maintenance${maint?.reason ? " (" + maint.reason + ")" : ""}` : n.spec?.unschedulable ? "cordoned" : "schedulable";
      const actions: HTMLElement[] = [];
      if (clusterAdmin()) {
        const id = (a: string) => `node-${a}-${name}`;
        actions.push(
          n.spec?.unschedulable
            ? h("button", { type: "button", id: id("uncordon"), onclick: () => patch(name, { unschedulable: null }, `Uncordon ${name}`) }, "Uncordon")
            : h("button", { type: "button", id: id("cordon"), onclick: () => patch(name, { unschedulable: true }, `Cordon ${name}`) }, "Cordon"),
          n.spec?.maintenance
            ? h("button", { type: "button", id: id("maintenance-off"), onclick: () => patch(name, { maintenance: null }, `End maintenance of ${name}`) }, "End maintenance")
            : h(
                "button",
                {
                  type: "button",
                  id: id("maintenance-on"),
                  class: "danger",
                  onclick: async () => {
                    const ok = await confirmDialog(
                      `Put ${name} in maintenance?`,
                      "New VMs stay off it, and the VMs running there are moved away: live-migrated, or stopped and started elsewhere, as each VM's policy says.",
                      "Start maintenance",
                    );
                    if (ok) patch(name, { maintenance: true }, `Maintenance of ${name}`);
                  },
                },
                "Maintenance",
              ),
        );
      }
      const alloc = st.allocated || {};
      const able = st.allocatable || {};
      body.append(
        h(
          "tr",
          { "data-node": name },
          h("td", {}, name),
          h("td", {}, h("span", { class: `phase phase-${st.phase || "Unknown"}`, "data-phase": st.phase || "" }, st.phase || "Unknown")),
          h("td", {}, st.accelerator || ""),
          h("td", {}, st.qemuVersion || ""),
          h("td", {}, able.cpu !== undefined ? `${alloc.cpu ?? 0} of ${able.cpu}` : ""),
          h("td", {}, able.memory ? `${humanBytes(alloc.memory)} of ${humanBytes(able.memory)}` : ""),
          h("td", { class: "scheduling", "data-scheduling": sched }, sched),
          h("td", { class: "row-actions" }, ...actions),
        ),
      );
    }
  };
  const w = new Watch(`${GV}/nodes`, "", render, (e) => {
    clear(out);
    out.append(errorBox(e));
  });
  onCleanup(() => w.stop());
}

// ---- one VM --------------------------------------------------------------------------------

function confirmDialog(question: string, detail: string, action: string): Promise<boolean> {
  return modal("confirm", question, false, (done) => [
    h("p", {}, detail),
    h(
      "div",
      { class: "actions" },
      h("button", { type: "button", class: "danger", id: "confirm-yes", onclick: () => done(true) }, action),
      h("button", { type: "button", id: "confirm-no", onclick: () => done(false) }, "Cancel"),
    ),
  ]);
}

// modal shows a modal dialog (id, titled) with the body content made for its done, and
// resolves to what done is given, or cancelled when it is dismissed (Escape).
function modal<T>(id: string, title: string, cancelled: T, content: (done: (v: T) => void) => Node[]): Promise<T> {
  return new Promise((resolve) => {
    const done = (v: T) => {
      dlg.close();
      dlg.remove();
      resolve(v);
    };
    const dlg = h("dialog", { "aria-labelledby": `${id}-title`, id }, h("h2", { id: `${id}-title` }, title), ...content(done)) as HTMLDialogElement;
    dlg.addEventListener("cancel", () => done(cancelled));
    document.body.append(dlg);
    dlg.showModal();
  });
}

// askName asks for a name in a modal dialog: the name entered, or null when cancelled.
function askName(id: string, title: string, detail: string, action: string): Promise<string | null> {
  return modal<string | null>(id, title, null, (done) => {
    const input = h("input", { id: `${id}-name`, type: "text", required: "", pattern: "[a-z0-9]([-a-z0-9]*[a-z0-9])?", autocomplete: "off" }) as HTMLInputElement;
    const submit = (e: Event) => {
      e.preventDefault();
      if (input.reportValidity()) done(input.value.trim());
    };
    return [
      h("p", {}, detail),
      h(
        "form",
        { onsubmit: submit },
        h("label", { for: `${id}-name` }, "Name"),
        input,
        h("div", { class: "actions" }, h("button", { type: "submit", id: `${id}-yes` }, action), h("button", { type: "button", id: `${id}-no`, onclick: () => done(null) }, "Cancel")),
      ),
    ];
  });
}

// snapshotVM takes a VirtualMachineSnapshot of the VM (consistent: the guest agent freezes a
// running guest's filesystems).
async function snapshotVM(name: string) {
  const body = {
    apiVersion: API_VERSION,
    kind: "VirtualMachineSnapshot",
    metadata: { generateName: `${name}-snapshot-` },
    spec: { virtualMachineName: name },
  };
  return api("POST", nsPath("virtualmachinesnapshots"), body);
}

// cloneVM makes the VM's clone named to (its disks are named to-DISK), as `rakhsh vm clone`.
async function cloneVM(name: string, to: string) {
  const body = {
    apiVersion: API_VERSION,
    kind: "VirtualMachineOperation",
    metadata: { generateName: `${name}-clone-` },
    spec: {
      type: "Clone",
      virtualMachineName: name,
      clone: { mode: "Strict", nameReplacement: [{ from: { kind: "VirtualMachine", name }, to }], customization: { namePrefix: `${to}-` } },
    },
  };
  return api("POST", nsPath("virtualmachineoperations"), body);
}

async function operation(name: string, type: string, force = false) {
  const body: any = {
    apiVersion: API_VERSION,
    kind: "VirtualMachineOperation",
    metadata: { generateName: `${name}-${type.toLowerCase()}-` },
    spec: { type, virtualMachineName: name },
  };
  if (force) body.spec.force = true;
  return api("POST", nsPath("virtualmachineoperations"), body);
}

// setPaused sets or removes the VM's paused annotation (pause has no operation type).
async function setPaused(name: string, paused: boolean) {
  const annotations = { "virtualization.rakhsh.io/paused": paused ? "true" : null };
  return api("PATCH", nsPath("virtualmachines", name), { metadata: { annotations } }, "application/merge-patch+json");
}

function kv(pairs: [string, string | undefined][]): HTMLElement {
  return h("dl", { class: "kv" }, ...pairs.filter(([, v]) => v !== undefined && v !== "").flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v!)]));
}

function vmPage(name: string) {
  const out = h("div", { id: "action-result" });
  const view = h("div");
  const events = h("tbody");
  const act = async (label: string, f: () => Promise<any>, confirm?: [string, string]) => {
    if (confirm && !(await confirmDialog(`${label} ${name}?`, confirm[0], confirm[1]))) return;
    clear(out);
    try {
      const r = await f();
      out.append(h("div", { class: "notice", role: "status" }, r?.metadata?.name ? `${label}: operation ${r.metadata.name} created.` : `${label}: done.`));
    } catch (e) {
      out.append(errorBox(e));
    }
  };
  const button = (id: string, label: string, f: () => void, cls = "") => h("button", { type: "button", id, class: cls, onclick: f }, label);
  const actions = h(
    "div",
    { class: "actions", role: "group", "aria-label": "Actions" },
    button("vm-start", "Start", () => act("Start", () => operation(name, "Start"))),
    button("vm-stop", "Stop", () => act("Stop", () => operation(name, "Stop"))),
    button("vm-pause", "Pause", () => act("Pause", () => setPaused(name, true))),
    button("vm-resume", "Resume", () => act("Resume", () => setPaused(name, false))),
    button("vm-hibernate", "Hibernate", () => act("Hibernate", () => operation(name, "Hibernate"), ["The guest's memory is saved on its node and the VM stops; Start resumes it where it was.", "Hibernate"])),
    button("vm-migrate", "Migrate", () => act("Migrate", () => operation(name, "Evict"), ["The running VM moves to another node chosen by the scheduler, without stopping.", "Migrate"])),
    button("vm-snapshot", "Snapshot", () => act("Snapshot", () => snapshotVM(name))),
    button("vm-clone", "Clone", async () => {
      const to = await askName("clone", `Clone ${name}`, "A new virtual machine whose disks are linked clones of a snapshot of this one's (made at once), with a new MAC and a new IP address.", "Clone");
      if (to) await act("Clone", () => cloneVM(name, to));
    }),
    button("vm-restart", "Restart", () => act("Restart", () => operation(name, "Restart"), ["The guest is rebooted; unsaved work in it may be lost.", "Restart"])),
    button("vm-force-stop", "Force stop", () => act("Force stop", () => operation(name, "Stop", true), ["The VM is powered off at once, like pulling the plug: unsaved data in the guest is lost.", "Force stop"]), "danger"),
    button(
      "vm-delete",
      "Delete",
      () =>
        act(
          "Delete",
          async () => {
            await api("DELETE", nsPath("virtualmachines", name));
            go("#/vms");
          },
          ["The VM is stopped and deleted. Its disks stay and can be deleted separately.", "Delete"],
        ),
      "danger",
    ),
    h("a", { href: `#/vms/${encodeURIComponent(name)}/console`, class: "button", id: "vm-console" }, "Serial console"),
    h("a", { href: `#/vms/${encodeURIComponent(name)}/vnc`, class: "button", id: "vm-vnc" }, "Graphical console"),
  );
  const offered = canWrite() ? actions : h("div", { class: "hint", id: "read-only" }, `You have read access to project ${project}: actions and consoles need the User role.`);
  const metrics = metricsSection(name);
  frame("vms", h("div", {}, h("h1", {}, "Virtual machine ", h("span", { id: "vm-name" }, name)), offered, out, view, metrics, h("h2", {}, "Events"), h("table", { id: "events" }, h("thead", {}, h("tr", {}, ...["Type", "Reason", "Message", "Count", "Last seen"].map((c) => h("th", { scope: "col" }, c)))), events)));
  const render = (w: Watch) => {
    clear(view);
    const v = w.items.get(name);
    if (!v) {
      view.append(h("div", { class: "notice" }, `VirtualMachine ${name} does not exist (or not any more).`));
      return;
    }
    const s = v.status || {};
    const annotations = Object.entries(v.metadata.annotations || {}).map(([k, val]) => `${k}: ${val}`);
    view.append(
      h(
        "div",
        { class: "card" },
        h("h2", {}, "Status"),
        kv([
          ["Phase", s.phase || "Pending"],
          ["Node", s.nodeName],
          ["IP address", s.ipAddress],
          ["Guest OS", s.guestOSInfo?.prettyName],
          ["Created", v.metadata.creationTimestamp],
        ]),
        h("h2", {}, "Spec"),
        kv([
          ["Class", v.spec?.virtualMachineClassName],
          ["Cores", String(v.spec?.cpu?.cores ?? "")],
          ["Core fraction", v.spec?.cpu?.coreFraction],
          ["Memory", v.spec?.memory?.size],
          ["Run policy", v.spec?.runPolicy],
          ["Disks", (v.spec?.blockDeviceRefs || []).map((b: any) => `${b.kind}/${b.name}`).join(", ")],
          ["OS type", v.spec?.osType],
          ["Boot loader", v.spec?.bootloader],
        ]),
        annotations.length ? h("h2", {}, "Annotations") : null,
        annotations.length ? h("ul", { id: "annotations" }, ...annotations.map((a) => h("li", {}, a))) : null,
        h("h2", {}, "Conditions"),
        h(
          "table",
          { id: "conditions" },
          h("thead", {}, h("tr", {}, ...["Type", "Status", "Reason", "Message"].map((c) => h("th", { scope: "col" }, c)))),
          h("tbody", {}, ...(s.conditions || []).map((c: any) => h("tr", {}, h("td", {}, c.type), h("td", {}, c.status), h("td", {}, c.reason || ""), h("td", {}, c.message || "")))),
        ),
      ),
    );
  };
  const showErr = (e: Error) => {
    clear(out);
    out.append(errorBox(e));
  };
  const w = new Watch(nsPath("virtualmachines"), `fieldSelector=${encodeURIComponent("metadata.name=" + name)}`, render, showErr);
  const renderEvents = (ew: Watch) => {
    clear(events);
    const list = [...ew.items.values()].sort((a, b) => Date.parse(b.lastTimestamp || b.metadata.creationTimestamp) - Date.parse(a.lastTimestamp || a.metadata.creationTimestamp));
    for (const e of list.slice(0, 50)) events.append(h("tr", {}, h("td", {}, e.type || "Normal"), h("td", {}, e.reason || ""), h("td", {}, e.message || ""), h("td", {}, String(e.count || 1)), h("td", {}, age(e.lastTimestamp || e.metadata.creationTimestamp))));
  };
  const ew = new Watch(nsPath("events"), `fieldSelector=${encodeURIComponent(`involvedObject.kind=VirtualMachine,involvedObject.name=${name}`)}`, renderEvents, showErr);
  onCleanup(() => {
    w.stop();
    ew.stop();
  });
}

// ---- the audit log (ClusterAdmin) ----------------------------------------------------------

// auditPage shows the newest lines of this API server's audit log, filtered by user, project
// and time, newest first; Refresh reads them again.
function auditPage() {
  const field = (id: string, label: string, attrs: Record<string, string> = {}) => {
    const input = h("input", { id, ...attrs }) as HTMLInputElement;
    return [input, h("div", {}, h("label", { for: id }, label), input)] as const;
  };
  const [user, userBox] = field("audit-user", "User");
  const [proj, projBox] = field("audit-project", "Project");
  const [since, sinceBox] = field("audit-since", "Since (e.g. 2026-12-05T06:00:00Z)");
  const [limit, limitBox] = field("audit-limit", "Lines", { type: "number", min: "1", max: "5000", value: "200" });
  const body = h("tbody");
  const out = h("div", { id: "audit-result", role: "status" });
  const load = async () => {
    clear(out);
    const q = new URLSearchParams({ limit: limit.value || "200" });
    if (user.value) q.set("user", user.value);
    if (proj.value) q.set("project", proj.value);
    if (since.value) q.set("since", since.value);
    try {
      const l = await api("GET", "/identity/v1alpha1/audit?" + q.toString());
      clear(body);
      for (const e of l.items) {
        const obj = [e.resource, e.project ? `${e.project}/${e.name || ""}` : e.name, e.subresource ? `(${e.subresource})` : ""].filter(Boolean).join(" ");
        body.append(h("tr", {}, h("td", { class: "nowrap" }, String(e.time).replace("T", " ").replace(/\.\d+Z$/, "Z")), h("td", {}, e.identity), h("td", {}, e.source), h("td", {}, e.verb), h("td", {}, obj), h("td", { class: e.code >= 400 ? "code-refused" : "" }, String(e.code)), h("td", { class: "hint" }, e.requestID || "")));
      }
      out.append(h("div", { class: "hint" }, `${l.items.length} lines of the audit log of ${l.server}, newest first.`));
    } catch (e) {
      clear(body);
      out.append(errorBox(e));
    }
  };
  const form = h("form", { class: "filters", id: "audit-filters" }, userBox, projBox, sinceBox, limitBox, h("button", { type: "submit", id: "audit-load", class: "primary" }, "Refresh"));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    void load();
  });
  frame(
    "audit",
    h(
      "div",
      {},
      h("h1", {}, "Audit log"),
      h("p", { class: "hint" }, "Every change made by a person, console session, login and token of this API server (each server of a cluster keeps its own log)."),
      form,
      out,
      h("table", { id: "audit" }, h("thead", {}, h("tr", {}, ...["Time", "Identity", "Source", "Verb", "Object", "Code", "Request"].map((c) => h("th", { scope: "col" }, c)))), body),
    ),
  );
  void load();
}

// ---- metrics charts ------------------------------------------------------------------------

const chartTitles: Record<string, string> = {
  cpu: "CPU",
  memory: "Memory (QEMU resident)",
  diskRead: "Disk read",
  diskWrite: "Disk write",
  networkReceive: "Network received",
  networkTransmit: "Network sent",
};

function metricText(v: number, unit: string): string {
  if (unit === "cores") return `${v.toFixed(v < 0.1 ? 3 : 2)} cores`;
  const per = unit === "bytes/s" ? "/s" : "";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (Math.abs(v) >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v.toFixed(i === 0 ? 0 : 1)} ${units[i]}${per}`;
}

// chart draws one series as an SVG line over the range [end-range, end].
function chart(s: { name: string; unit: string; points: [number, number][] }, end: number, range: number): HTMLElement {
  const W = 320, H = 90;
  const ns = "http://www.w3.org/2000/svg";
  const title = chartTitles[s.name] || s.name;
  const last = s.points.length ? s.points[s.points.length - 1][1] : undefined;
  const peak = s.points.reduce((m, p) => Math.max(m, p[1]), 0);
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("role", "img");
  const summary = last === undefined ? `${title}: no samples in this range` : `${title}: now ${metricText(last, s.unit)}, peak ${metricText(peak, s.unit)}`;
  svg.setAttribute("aria-label", summary);
  const frameRect = document.createElementNS(ns, "rect");
  frameRect.setAttribute("x", "0");
  frameRect.setAttribute("y", "0");
  frameRect.setAttribute("width", String(W));
  frameRect.setAttribute("height", String(H));
  frameRect.setAttribute("class", "chart-bg");
  svg.append(frameRect);
  if (s.points.length) {
    const top = peak > 0 ? peak * 1.1 : 1;
    const xy = s.points.map(([t, v]) => [((t - (end - range)) / range) * W, H - (v / top) * (H - 4) - 2]);
    const line = document.createElementNS(ns, "polyline");
    line.setAttribute("points", xy.map(([x, y]) => `${x.toFixed(1)},${y.toFixed(1)}`).join(" "));
    line.setAttribute("class", "chart-line");
    svg.append(line);
    // The last sample as a mark, so that a series of one point shows too.
    const [lx, ly] = xy[xy.length - 1];
    const dot = document.createElementNS(ns, "rect");
    dot.setAttribute("x", (lx - 2).toFixed(1));
    dot.setAttribute("y", (ly - 2).toFixed(1));
    dot.setAttribute("width", "4");
    dot.setAttribute("height", "4");
    dot.setAttribute("class", "chart-dot");
    svg.append(dot);
  }
  return h(
    "figure",
    { class: "chart", "data-series": s.name },
    h("figcaption", {}, h("strong", {}, title), " ", h("span", { class: "chart-now" }, last === undefined ? "no data" : metricText(last, s.unit)), last === undefined ? null : h("span", { class: "hint" }, ` · peak ${metricText(peak, s.unit)}`)),
    svg as unknown as HTMLElement,
  );
}

// metricsSection shows a VM's CPU, memory, disk and network charts from the metrics
// subresource (Prometheus behind the API server), refreshed every 30 s.
function metricsSection(name: string): HTMLElement {
  const charts = h("div", { class: "charts", id: "vm-charts", "aria-live": "polite" });
  const ranges: [string, string][] = [["15m", "Last 15 minutes"], ["1h", "Last hour"], ["6h", "Last 6 hours"], ["24h", "Last day"], ["168h", "Last week"]];
  const select = h("select", { id: "metrics-range" }, ...ranges.map(([v, l]) => h("option", { value: v }, l))) as HTMLSelectElement;
  const load = async () => {
    try {
      const m = await api("GET", nsPath("virtualmachines", name, "metrics") + "?range=" + encodeURIComponent(select.value));
      clear(charts);
      charts.append(...m.series.map((s: any) => chart(s, m.end, m.rangeSeconds)));
    } catch (e) {
      clear(charts);
      charts.append(errorBox(e));
    }
  };
  select.addEventListener("change", load);
  const timer = window.setInterval(load, 30000);
  onCleanup(() => window.clearInterval(timer));
  void load();
  return h("div", { class: "card" }, h("h2", {}, "Metrics"), h("label", { for: "metrics-range" }, "Time range"), select, charts);
}

// ---- the serial console --------------------------------------------------------------------

function consolePage(name: string) {
  const status = h("div", { role: "status" }, "Connecting…");
  const box = h("div", { class: "term", id: "console", role: "application", "aria-label": `Serial console of ${name}` });
  frame("vms", h("div", {}, h("h1", {}, "Serial console of ", h("a", { href: `#/vms/${encodeURIComponent(name)}` }, name)), status, box));
  const term = new Terminal({ convertEol: false, scrollback: 5000, fontSize: 14, cursorBlink: true });
  term.open(box);
  // The terminal's text (scrollback included), for copying and for tests.
  (box as any).rakhshText = () => {
    const b = term.buffer.active;
    const lines: string[] = [];
    for (let i = 0; i < b.length; i++) lines.push(b.getLine(i)?.translateToString(true) || "");
    return lines.join("\n");
  };
  let ws: WebSocket | null = null;
  let closed = false;
  const enc = new TextEncoder();
  term.onData((d) => ws?.readyState === WebSocket.OPEN && ws.send(enc.encode(d)));
  onCleanup(() => {
    closed = true;
    ws?.close();
    term.dispose();
  });
  // What the guest printed before (the kept log's tail), then the live console.
  api("GET", nsPath("virtualmachines", name, "log") + "?limitBytes=65536")
    .then((text: string) => {
      if (closed) return;
      if (text) term.write(text.replace(/\r?\n/g, "\r\n"));
    })
    .catch(() => {
      /* no log yet: the live console follows */
    })
    .finally(() => {
      if (closed) return;
      const proto = location.protocol === "https:" ? "wss:" : "ws:";
      ws = new WebSocket(`${proto}//${location.host}${nsPath("virtualmachines", name, "console")}`, ["binary"]);
      ws.binaryType = "arraybuffer";
      ws.onopen = () => {
        status.textContent = "Connected. Type to talk to the guest's serial console.";
        term.focus();
      };
      ws.onmessage = (ev) => term.write(new Uint8Array(ev.data as ArrayBuffer));
      ws.onclose = (ev) => {
        if (closed) return;
        status.textContent = `Disconnected${ev.reason ? ": " + ev.reason : ""} (the VM may not be running). Open the page again to reconnect.`;
      };
    });
}

// ---- the graphical console ----------------------------------------------------------------

// keysymOf maps a character to an X11 keysym, as RFB key events carry them.
function keysymOf(ch: string): number {
  if (ch === "\n") return 0xff0d; // Return
  if (ch === "\t") return 0xff09; // Tab
  const c = ch.codePointAt(0)!;
  return c < 0x100 ? c : 0x01000000 | c;
}

function vncPage(name: string) {
  const status = h("div", { role: "status", id: "vnc-status" }, "Connecting…");
  const screen = h("div", { class: "vnc", id: "vnc", role: "application", "aria-label": `Graphical console of ${name}` });
  const paste = h("textarea", { id: "vnc-paste", rows: "2", spellcheck: "false" }) as HTMLTextAreaElement;
  let rfb: any = null;
  const cad = h("button", { type: "button", id: "vnc-cad", onclick: () => rfb?.sendCtrlAltDel() }, "Ctrl-Alt-Del");
  const typeIt = h("button", { type: "button", id: "vnc-type", onclick: () => {
    for (const ch of paste.value) rfb?.sendKey(keysymOf(ch), null);
    paste.value = "";
    rfb?.focus();
  } }, "Type text");
  const full = h("button", { type: "button", id: "vnc-full", onclick: () => screen.requestFullscreen?.() }, "Full screen");
  frame(
    "vms",
    h(
      "div",
      {},
      h("h1", {}, "Graphical console of ", h("a", { href: `#/vms/${encodeURIComponent(name)}` }, name)),
      h("div", { class: "actions", role: "group", "aria-label": "Console keys" }, cad, full),
      status,
      screen,
      h("label", { for: "vnc-paste" }, "Text to type into the VM (sent as keystrokes)"),
      paste,
      h("div", { class: "actions" }, typeIt),
    ),
  );
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  rfb = new RFB(screen, `${proto}//${location.host}${nsPath("virtualmachines", name, "vnc")}`, { wsProtocols: ["binary"] });
  rfb.scaleViewport = true;
  rfb.addEventListener("connect", () => {
    status.textContent = "Connected.";
  });
  rfb.addEventListener("disconnect", (e: any) => {
    status.textContent = e.detail?.clean ? "Disconnected." : "The connection was refused or lost (the VM may not be running). Open the page again to reconnect.";
  });
  onCleanup(() => rfb.disconnect());
}

// ---- the create wizard -----------------------------------------------------------------------

const UNITS: Record<string, number> = { "": 1, m: 1e-3, Ki: 1024, Mi: 1024 ** 2, Gi: 1024 ** 3, Ti: 1024 ** 4, Pi: 1024 ** 5, Ei: 1024 ** 6, k: 1e3, K: 1e3, M: 1e6, G: 1e9, T: 1e12, P: 1e15, E: 1e18 };

// humanBytes shows a memory quantity in the largest binary unit that keeps it at least 1
// ("24683756Ki" is "23.5 GiB").
function humanBytes(q: string | undefined): string {
  const b = bytesOf(q);
  if (!q || b <= 0) return q || "0";
  const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  let i = 0;
  let v = b;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${Number.isInteger(v) ? v : v.toFixed(1)} ${units[i]}`;
}

function bytesOf(q: string | undefined): number {
  if (!q) return 0;
  const m = /^([0-9.]+)\s*([KMGTPE]i?|k|m)?$/.exec(q.trim());
  return m ? parseFloat(m[1]) * (UNITS[m[2] || ""] ?? 1) : 0;
}

function policyText(p: any): string {
  const parts: string[] = [];
  if (p.cores) parts.push(`cores ${p.cores.min}–${p.cores.max}${p.cores.step ? " step " + p.cores.step : ""}`);
  if (p.memory) {
    const m = p.memory;
    if (m.min || m.max) parts.push(`memory ${m.min || "any"}–${m.max || "any"}${m.step ? " step " + m.step : ""}`);
    if (m.perCore) parts.push(`per core ${m.perCore.min || "any"}–${m.perCore.max || "any"}`);
  }
  if (p.coreFractions?.length) parts.push(`core fractions ${p.coreFractions.map((f: number) => f + "%").join(", ")}`);
  return parts.join("; ");
}

function toYAML(v: any, indent = ""): string {
  if (Array.isArray(v)) return v.map((x) => `${indent}- ${toYAML(x, indent + "  ").trimStart()}`).join("\n");
  if (v && typeof v === "object") {
    return Object.entries(v)
      .map(([k, x]) => {
        if (x && typeof x === "object") return `${indent}${k}:\n${toYAML(x, indent + "  ")}`;
        return `${indent}${k}: ${toYAML(x, indent)}`;
      })
      .join("\n");
  }
  if (typeof v === "string") return v.includes("\n") ? "|\n" + v.split("\n").map((l) => indent + "  " + l).join("\n") : JSON.stringify(v);
  return String(v);
}

function createPage() {
  const field = (id: string, label: string, control: HTMLElement, hint = "") => h("div", {}, h("label", { for: id }, label), control, hint ? h("div", { class: "hint", id: `${id}-hint` }, hint) : null);
  const name = h("input", { id: "c-name", required: true, pattern: "[a-z0-9]([-a-z0-9]*[a-z0-9])?", maxlength: "50", autocomplete: "off" }) as HTMLInputElement;
  const image = h("select", { id: "c-image", required: true }) as HTMLSelectElement;
  const cls = h("select", { id: "c-class" }) as HTMLSelectElement;
  const policy = h("div", { class: "hint", id: "c-policy" });
  const cores = h("select", { id: "c-cores" }) as HTMLSelectElement;
  const fraction = h("select", { id: "c-fraction" }) as HTMLSelectElement;
  const memory = h("input", { id: "c-memory", type: "number", min: "64", step: "64", value: "512" }) as HTMLInputElement;
  const disk = h("input", { id: "c-disk", type: "number", min: "1", max: "4096", value: "10" }) as HTMLInputElement;
  const network = h("select", { id: "c-network" }) as HTMLSelectElement;
  const os = h("select", { id: "c-os" }, h("option", { value: "Linux" }, "Linux or other (cloud-init)"), h("option", { value: "Windows" }, "Windows (sysprep answer file)")) as HTMLSelectElement;
  const firmware = h("select", { id: "c-firmware" }, h("option", { value: "BIOS" }, "BIOS"), h("option", { value: "EFI" }, "UEFI"), h("option", { value: "EFIWithSecureBoot" }, "UEFI with Secure Boot (and a vTPM for Windows)")) as HTMLSelectElement;
  const userData = h("textarea", { id: "c-userdata", spellcheck: "false" }) as HTMLTextAreaElement;
  const sshKey = h("input", { id: "c-sshkey", autocomplete: "off", placeholder: "ssh-ed25519 AAAA… user@host" }) as HTMLInputElement;
  const secrets = h("datalist", { id: "c-sysprep-list" });
  const sysprep = h("input", { id: "c-sysprep", autocomplete: "off", list: "c-sysprep-list", pattern: "[a-z0-9]([-.a-z0-9]*[a-z0-9])?", placeholder: "win11-unattend" }) as HTMLInputElement;
  const linuxFields = h("div", { id: "c-linux" });
  const windowsFields = h("div", { id: "c-windows", hidden: "" });
  const cost = h("div", { id: "c-quota", "aria-live": "polite" });
  let proj: any = undefined; // the Project: undefined while it is read, null if it could not be
  let firmwareChosen = false; // the user picked the firmware: a change of OS keeps it
  const yaml = h("pre", { class: "yaml", id: "c-yaml" });
  const out = h("div", { id: "create-result" });
  const submit = h("button", { type: "submit", class: "primary", id: "c-create" }, "Create");
  const classes = new Map<string, any>();
  const form = h(
    "form",
    { class: "card", "aria-labelledby": "create-title" },
    h("h1", { id: "create-title" }, "Create a virtual machine"),
    field("c-name", "Name", name, "Lower case letters, digits and '-'."),
    field("c-image", "Image", image),
    field("c-class", "Class", cls),
    policy,
    field("c-cores", "Cores", cores),
    field("c-fraction", "Core fraction", fraction, "The share of each core the VM is guaranteed."),
    field("c-memory", "Memory (MiB)", memory, " "),
    field("c-disk", "Disk size (GiB)", disk),
    field("c-network", "Network", network),
    field("c-os", "Operating system", os),
    field("c-firmware", "Firmware", firmware),
    linuxFields,
    windowsFields,
    h("h2", {}, "Against the project's quota"),
    cost,
    h("h2", {}, "Equivalent manifest"),
    yaml,
    h("div", { class: "actions" }, submit, h("button", { type: "button", id: "c-copy", onclick: () => navigator.clipboard?.writeText(yaml.textContent || "") }, "Copy YAML")),
    out,
  );
  linuxFields.append(
    field("c-userdata", "Cloud-init user data", userData, "Optional, e.g. a #cloud-config document."),
    field("c-sshkey", "SSH public key", sshKey, "Added to cloud-init's ssh_authorized_keys."),
  );
  windowsFields.append(
    field("c-sysprep", "Sysprep answer file (a Secret of the project)", sysprep, "Optional: the name of a Secret holding unattend.xml and/or autounattend.xml, given to Windows on a removable drive at each start (see the Windows docs). Without one, Windows asks its setup questions on the console."),
    secrets,
  );
  frame("create", form);

  const showOS = () => {
    const win = os.value === "Windows";
    linuxFields.hidden = win;
    windowsFields.hidden = !win;
    if (!firmwareChosen) firmware.value = win ? "EFIWithSecureBoot" : "BIOS";
    update();
  };
  // renderCost shows what the VM adds to the project's usage, against its quota, as the
  // server will count it (cores, memory, the root disk's size, one VM).
  const renderCost = () => {
    clear(cost);
    if (proj === undefined) {
      cost.append(h("div", { class: "hint" }, "Reading the project's quota…"));
      return;
    }
    if (!proj) {
      cost.append(h("div", { class: "hint" }, "The project's quota could not be read."));
      return;
    }
    const add = { cores: parseInt(cores.value || "1", 10), memory: parseInt(memory.value || "0", 10) * 2 ** 20, disk: parseInt(disk.value || "0", 10) * 2 ** 30 };
    const lines = quotaLines(proj, add);
    const over = lines.filter((l) => l.limit !== undefined && l.used > l.limit);
    cost.append(
      h(
        "ul",
        { class: "quota-cost" },
        ...lines.map((l) => h("li", { "data-quota": l.key, class: l.limit !== undefined && l.used > l.limit ? "over" : "" }, `${l.label}: ${l.fmt(l.used)} with this VM, ${l.limit === undefined ? "no limit" : "of " + l.fmt(l.limit)}`)),
      ),
    );
    if (over.length) cost.append(h("div", { class: "error", id: "c-quota-over" }, `Over the project's quota (${over.map((l) => l.label.toLowerCase()).join(", ")}): the server will refuse this VM. Choose less, or ask an operator for more.`));
  };

  const currentPolicy = () => {
    const c = classes.get(cls.value);
    const ps: any[] = c?.spec?.sizingPolicies || [];
    const n = parseInt(cores.value || "1", 10);
    return ps.find((p) => !p.cores || (n >= p.cores.min && n <= p.cores.max));
  };
  const fillSizing = () => {
    const c = classes.get(cls.value);
    const ps: any[] = c?.spec?.sizingPolicies || [];
    clear(policy);
    if (c) policy.append(ps.length ? "Sizing policy: " + ps.map(policyText).join(" | ") : "This class has no sizing policy.");
    const keep = cores.value;
    clear(cores);
    const values = new Set<number>();
    for (const p of ps) {
      if (!p.cores) continue;
      for (let n = p.cores.min; n <= p.cores.max; n += p.cores.step || 1) values.add(n);
    }
    if (values.size === 0) for (const n of [1, 2, 4, 8, 16]) values.add(n);
    for (const n of [...values].sort((a, b) => a - b)) cores.append(h("option", { value: String(n) }, String(n)));
    if ([...values].map(String).includes(keep)) cores.value = keep;
    fillFraction();
  };
  const fillFraction = () => {
    const p = currentPolicy();
    clear(fraction);
    const fr: number[] = p?.coreFractions?.length ? p.coreFractions : [100];
    for (const f of fr) fraction.append(h("option", { value: `${f}%` }, `${f}%`));
    const def = p?.defaultCoreFraction;
    if (def && fr.map((f) => `${f}%`).includes(def)) fraction.value = def;
    else fraction.value = `${fr[fr.length - 1]}%`;
    const m = p?.memory;
    const n = parseInt(cores.value || "1", 10);
    let lo = bytesOf(m?.min) / 2 ** 20 || 64;
    let hi = bytesOf(m?.max) / 2 ** 20 || 1024 * 1024;
    if (m?.perCore?.min) lo = Math.max(lo, (bytesOf(m.perCore.min) / 2 ** 20) * n);
    if (m?.perCore?.max) hi = Math.min(hi, (bytesOf(m.perCore.max) / 2 ** 20) * n);
    memory.min = String(lo);
    memory.max = String(hi);
    memory.step = m?.step ? String(bytesOf(m.step) / 2 ** 20) : "1";
    const hint = document.getElementById("c-memory-hint");
    if (hint) hint.textContent = `Allowed: ${lo}–${hi} MiB${m?.step ? ", in steps of " + memory.step + " MiB" : ""}.`;
    const cur = parseInt(memory.value || "0", 10);
    if (cur < lo) memory.value = String(lo);
    if (cur > hi) memory.value = String(hi);
    update();
  };
  const cloudInit = () => {
    let ud = userData.value;
    const key = sshKey.value.trim();
    if (key) {
      if (!ud.trim()) ud = "#cloud-config\n";
      if (!ud.endsWith("\n")) ud += "\n";
      ud += `ssh_authorized_keys:\n  - ${JSON.stringify(key)}\n`;
    }
    return ud;
  };
  const manifests = () => {
    const [kind, imgName = ""] = image.value.split("/");
    const n = name.value;
    const diskObj: any = {
      apiVersion: API_VERSION,
      kind: "VirtualDisk",
      metadata: { name: `${n}-root`, namespace: project },
      spec: { persistentVolumeClaim: { size: `${disk.value}Gi` }, dataSource: { type: "ObjectRef", objectRef: { kind, name: imgName } } },
    };
    const spec: any = {
      cpu: { cores: parseInt(cores.value || "1", 10), coreFraction: fraction.value },
      memory: { size: `${memory.value}Mi` },
      blockDeviceRefs: [{ kind: "VirtualDisk", name: `${n}-root` }],
    };
    if (cls.value) spec.virtualMachineClassName = cls.value;
    if (network.value) spec.networks = [{ type: "ClusterNetwork", name: network.value }];
    if (firmware.value !== "BIOS") spec.bootloader = firmware.value;
    if (os.value === "Windows") {
      spec.osType = "Windows";
      if (sysprep.value.trim()) spec.provisioning = { type: "SysprepRef", sysprepRef: { kind: "Secret", name: sysprep.value.trim() } };
    } else {
      const ud = cloudInit();
      if (ud.trim()) spec.provisioning = { type: "UserData", userData: ud };
    }
    const vm = { apiVersion: API_VERSION, kind: "VirtualMachine", metadata: { name: n, namespace: project }, spec };
    return [diskObj, vm];
  };
  const update = () => {
    yaml.textContent = manifests().map((m) => toYAML(m)).join("\n---\n");
    renderCost();
  };
  cls.addEventListener("change", fillSizing);
  cores.addEventListener("change", fillFraction);
  os.addEventListener("change", showOS);
  firmware.addEventListener("change", () => (firmwareChosen = true));
  for (const el of [name, image, fraction, memory, disk, network, firmware, userData, sshKey, sysprep]) el.addEventListener("input", update);
  // Only a project's Admins may list its Secrets: for them the names are offered (read
  // once, when Windows is first chosen); others type the name.
  let secretsRead = false;
  os.addEventListener("change", () => {
    if (os.value !== "Windows" || secretsRead || !(who?.admin || who?.clusterRole === "ClusterAdmin" || who?.projects?.[project] === "Admin")) return;
    secretsRead = true;
    api("GET", nsPath("secrets"))
      .then((l) => {
        for (const sec of l.items || []) if (/sysprep|^Opaque$/.test(sec.type || "")) secrets.append(h("option", { value: sec.metadata.name }));
      })
      .catch(() => undefined);
  });
  api("GET", `${GV}/projects/${encodeURIComponent(project)}`)
    .then((p) => {
      proj = p;
      update();
    })
    .catch(() => {
      proj = null;
      update();
    });

  Promise.all([
    api("GET", `${GV}/clustervirtualimages`).catch(() => ({ items: [] })),
    api("GET", nsPath("virtualimages")).catch(() => ({ items: [] })),
    api("GET", `${GV}/virtualmachineclasses`).catch(() => ({ items: [] })),
    api("GET", `${GV}/clusternetworks`).catch(() => ({ items: [] })),
  ]).then(([cvis, vis, vmcs, nets]) => {
    for (const i of cvis.items || []) image.append(h("option", { value: `ClusterVirtualImage/${i.metadata.name}` }, `${i.metadata.name} (cluster image${i.status?.phase ? ", " + i.status.phase : ""})`));
    for (const i of vis.items || []) image.append(h("option", { value: `VirtualImage/${i.metadata.name}` }, `${i.metadata.name} (project image${i.status?.phase ? ", " + i.status.phase : ""})`));
    if (!image.options.length) image.append(h("option", { value: "" }, "No images: ask an operator to publish one"));
    let def = "";
    for (const c of vmcs.items || []) {
      classes.set(c.metadata.name, c);
      if (c.metadata.annotations?.["virtualmachineclass.virtualization.rakhsh.io/is-default-class"] === "true") def = c.metadata.name;
      cls.append(h("option", { value: c.metadata.name }, c.metadata.name));
    }
    if (!classes.size) cls.append(h("option", { value: "" }, "(the cluster's default)"));
    if (def) cls.value = def;
    network.append(h("option", { value: "" }, "Default network"));
    for (const n of nets.items || []) network.append(h("option", { value: n.metadata.name }, `${n.metadata.name}${n.spec?.type ? " (" + n.spec.type + ")" : ""}`));
    fillSizing();
  });

  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    clear(out);
    const [d, vm] = manifests();
    (submit as HTMLButtonElement).disabled = true;
    let diskMade = false;
    try {
      await api("POST", nsPath("virtualdisks"), d);
      diskMade = true;
      await api("POST", nsPath("virtualmachines"), vm);
      go(`#/vms/${encodeURIComponent(vm.metadata.name)}`);
    } catch (e) {
      out.append(errorBox(e));
      if (diskMade) await api("DELETE", nsPath("virtualdisks", d.metadata.name)).catch(() => undefined);
    } finally {
      (submit as HTMLButtonElement).disabled = false;
    }
  });
  update();
}

window.addEventListener("hashchange", () => route());
// app.js is a module that may finish loading after DOMContentLoaded (noVNC awaits a codec
// probe at load), so start at once when the document is ready.
if (document.readyState === "loading") window.addEventListener("DOMContentLoaded", () => route());
else route();
