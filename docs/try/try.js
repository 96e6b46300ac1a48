// The in-browser page (docs/try.md): vmxaddr itself, under Pyodide, from files this site ships.
// docs/tools/build_site.py puts the Pyodide runtime in try/pyodide/ and vmxaddr in try/vmxaddr.zip.
import { loadPyodide } from "./pyodide/pyodide.mjs";

const here = new URL("./", import.meta.url);
const $ = (id) => document.getElementById(id);
// Read by tests/test_site.py: milliseconds since the page's navigation started (performance.now()).
const timings = (window.vmxaddrTimings = {});
let answer = null;
let rulePages = {};
let answers = 0;

function status(text) {
  $("vx-status").textContent = text;
}

window.vmxaddrForm = () => JSON.stringify(form());

function form() {
  const data = {};
  for (const el of $("vx-form").elements) {
    if (el.name) data[el.name] = el.type === "checkbox" ? (el.checked ? "on" : "") : el.value;
  }
  return data;
}

function ruleLink(rule) {
  const page = rulePages[rule];
  const code = document.createElement("span");
  code.className = "vx-rule";
  code.textContent = `[${rule}]`;
  if (!page) return code;
  const a = document.createElement("a");
  a.href = page;
  a.appendChild(code);
  return a;
}

function show(result) {
  answers += 1;
  $("vx-answer").dataset.count = String(answers);
  $("vx-error").hidden = result.ok;
  $("vx-answer").hidden = !result.ok;
  if (!result.ok) {
    $("vx-error").textContent = result.error + (result.command ? `\n\n${result.command}` : "");
    $("vx-answer").dataset.state = "error";
    return;
  }
  $("vx-ea").textContent = result.effective_address ?? "—";
  $("vx-la").textContent = result.linear_address ?? "—";
  $("vx-info").textContent = result.instruction_info;
  $("vx-qual").textContent = result.exit_qualification;
  $("vx-ext-row").hidden = result.extended_info === null;
  $("vx-ext").textContent = result.extended_info ?? "";
  const o = result.outcome;
  $("vx-outcome").textContent = o.verdict + (o.reason ? `: ${o.reason}` : "") + (o.rule ? ` [${o.rule}]` : "");
  $("vx-outcome").className = `vx-${o.kind}`;
  $("vx-command").textContent = result.command;
  $("vx-decode").textContent = result.decode;
  // The pictures are SVG that vmxaddr.pictures wrote, every text in it escaped.
  $("vx-field").innerHTML = result.field_svg;
  $("vx-flow").innerHTML = result.flow_svg;
  readable($("vx-field"));
  readable($("vx-flow"));
  showBytes(result.bytes_breakdown ? result.bytes_breakdown.bytes : undefined);
  const steps = $("vx-steps");
  steps.replaceChildren();
  const items = result.steps.map((s) => [s.rule, s.text, s.title, s.source]);
  if (o.reason && o.rule) items.push([o.rule, `${o.verdict}: ${o.reason}`, o.title, ""]);
  for (const [rule, text, title, source] of items) {
    const li = document.createElement("li");
    li.appendChild(ruleLink(rule));
    li.appendChild(document.createTextNode(` ${text}`));
    if (title) {
      const src = document.createElement("span");
      src.className = "vx-source";
      src.textContent = title + (source ? ` — ${source}` : "");
      li.appendChild(src);
    }
    steps.appendChild(li);
  }
  $("vx-answer").dataset.state = "answered";
}

// A picture is never shrunk: shown at its own size, or larger when its smallest text is under
// 10 px (as docs/tools/site_pictures.py does for the pages' pictures); its box scrolls sideways.
function readable(box) {
  const svg = box.querySelector("svg");
  if (!svg) return;
  const sizes = [...svg.querySelectorAll("[font-size]")].map((e) => parseFloat(e.getAttribute("font-size")));
  const scale = Math.max(1, 10 / Math.min(10, ...sizes.filter((n) => n > 0)));
  for (const dim of ["width", "height"]) {
    const v = parseFloat(svg.getAttribute(dim));
    if (v > 0) svg.setAttribute(dim, String(Math.ceil(v * scale)));
  }
}

// The bytes taken apart (issue 25 item 2): vmxaddr.web's answer carries them as
// result.bytes_breakdown.bytes = [{offset, hex, role, name, note, fields: [{name, bits, value, meaning}]}];
// shown as a table (the links to the exit-information fields are in the decode text beside it).
function showBytes(rows) {
  const box = $("vx-bytes-box");
  if (!box) return;
  const body = $("vx-bytes-rows");
  body.replaceChildren();
  box.hidden = !Array.isArray(rows) || rows.length === 0;
  if (box.hidden) return;
  for (const row of rows) {
    const tr = document.createElement("tr");
    const fields = (row.fields || []).map((f) => `${f.name} = ${f.meaning ?? f.value}`).join("; ");
    const note = [row.name, row.note].filter((t) => t).join(": ");
    for (const text of [String(row.offset ?? ""), row.hex ?? "", row.role ?? "", fields, note]) {
      const td = document.createElement("td");
      td.textContent = text;
      tr.appendChild(td);
    }
    body.appendChild(tr);
  }
}


function compute() {
  if (!answer) return;
  const started = performance.now();
  const asked = JSON.stringify(form());
  const result = JSON.parse(answer(asked));
  show(result);
  $("vx-answer").dataset.form = asked;  // which form this answer is for (tests wait on it)
  const ms = performance.now() - started;
  if (timings.firstAnswer === undefined) timings.firstAnswer = performance.now();
  timings.lastCompute = ms;
  status(`Computed by vmxaddr in your browser (${ms.toFixed(0)} ms; Python started in ${(timings.ready / 1000).toFixed(1)} s).`);
}

async function boot() {
  // vmxaddr and the rule map download while Python starts.
  const files = Promise.all([
    fetch(new URL("vmxaddr.zip", here)).then((r) => {
      if (!r.ok) throw new Error(`vmxaddr.zip: HTTP ${r.status}`);
      return r.arrayBuffer();
    }),
    fetch(new URL("rules.json", here)).then((r) => (r.ok ? r.json() : {})),
  ]);
  const pyodide = await loadPyodide({ indexURL: new URL("pyodide/", here).href });
  timings.pyodide = performance.now();
  const [zip, rules] = await files;
  rulePages = rules;
  pyodide.unpackArchive(zip, "zip", { extractDir: "/home/pyodide/vmxaddr-site" });
  pyodide.runPython("import sys; sys.path.insert(0, '/home/pyodide/vmxaddr-site')");
  const web = pyodide.pyimport("vmxaddr.web");
  answer = web.answer;
  const guardOn = pyodide.pyimport("vmxaddr.decode").capstone_guard_on();
  if (!guardOn) {
    $("vx-guard").hidden = false;
    $("vx-guard").textContent =
      "The capstone guard is off: capstone, the independent decoder that the command line checks " +
      "every operand form against, cannot run in the browser, so vmxaddr's own decoder answers alone here.";
  }
  const select = $("vx-model");
  for (const [name, summary] of JSON.parse(web.models())) {
    if (name === "sdm") continue;
    const opt = document.createElement("option");
    opt.value = name;
    opt.textContent = name;
    opt.title = summary;
    select.appendChild(opt);
  }
  const wanted = new URLSearchParams(location.search).get("model");
  if (wanted) select.value = wanted;
  timings.ready = performance.now();
  $("vx-go").disabled = false;
  compute();
}

// A case in the address (try.html?bytes=0f7845d8&mode=32&registers=ebp%3D0x1000): the docs'
// worked examples link here with theirs.
function fromAddress() {
  const params = new URLSearchParams(location.search);
  if (!params.has("bytes")) return;
  for (const el of $("vx-form").elements) {
    if (!el.name) continue;
    if (el.type === "checkbox") el.checked = params.get(el.name) === "on";
    else if (params.has(el.name)) el.value = params.get(el.name);
    else if (el.tagName === "TEXTAREA" || el.type === "text") el.value = "";  // not the example's defaults
  }
}

fromAddress();
$("vx-form").addEventListener("submit", (e) => {
  e.preventDefault();
  compute();
});
for (const id of ["vx-mode", "vx-cpl", "vx-cpu-mode", "vx-model", "vx-exit-qual", "vx-apx"]) {
  $(id).addEventListener("change", compute);
}
boot().catch((err) => {
  timings.error = String(err);
  status(`vmxaddr could not start in this browser: ${err}`);
});
