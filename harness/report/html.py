"""report.html: one self-contained page (inline CSS and JS, no external resources) that reads well offline.

Sections: warnings (measurements the spec allows but a reader should see), per-broker summary (with what was
measured on each broker, e.g. its keepalive window), the brokers x tests matrix (grouped by area), statement
coverage with the OASIS wording, the run with its ten slowest tests, and one detail panel per result (expected vs
received packet, failure text, measurements, packet logs, broker log), opened by clicking a matrix cell. Panels
open through the URL fragment (#r-N) with CSS :target, so a link to one works without JavaScript; the script only
adds filtering, Escape to close, and data-open for tests.
"""

from __future__ import annotations

from collections import defaultdict
from html import escape
from pathlib import Path

from harness.report.model import (
    ERROR, FAILED, FAILING, OUTCOMES, PASSED, SKIPPED, XFAILED, XPASSED, BrokerInfo, Report, Result,
)
from harness.spec import statement

LABELS = {PASSED: "pass", FAILED: "fail", ERROR: "error", SKIPPED: "skip", XFAILED: "xfail", XPASSED: "xpass"}
# Worst first: the outcome a statement gets on a broker when several of its tests ran there.
SEVERITY = (ERROR, FAILED, XPASSED, PASSED, XFAILED, SKIPPED)

CSS = """
:root{--pass:#15803d;--pass-bg:#dcfce7;--fail:#b91c1c;--fail-bg:#fee2e2;--error:#c2410c;--error-bg:#ffedd5;
--skip:#64748b;--skip-bg:#f1f5f9;--xfail:#6d28d9;--xfail-bg:#ede9fe;--xpass:#a16207;--xpass-bg:#fef9c3;
--ink:#0f172a;--muted:#64748b;--line:#e2e8f0;--bg:#f8fafc;--accent:#1e3a8a}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:var(--ink);
background:var(--bg)}
code,pre,.mono{font-family:ui-monospace,"SFMono-Regular","DejaVu Sans Mono",Menlo,Consolas,monospace;font-size:12.5px}
header.top{background:linear-gradient(120deg,#0f172a,#1e3a8a);color:#fff;padding:22px 32px 18px}
header.top h1{margin:0 0 4px;font-size:22px;font-weight:650;letter-spacing:.2px}
header.top .meta{color:#cbd5e1;font-size:12.5px}
header.top .meta span{margin-right:14px;white-space:nowrap}
header.top .totals{margin-top:10px;display:flex;gap:6px;align-items:center;font-size:13px;color:#e2e8f0}
header.top .totals b{font-size:16px;color:#fff}
nav.tabs{display:flex;gap:4px;padding:0 32px;background:#fff;border-bottom:1px solid var(--line);position:sticky;
top:0;z-index:5}
nav.tabs a{padding:11px 14px;color:var(--muted);text-decoration:none;font-weight:550;
border-bottom:2px solid transparent}
nav.tabs a:hover{color:var(--accent);border-bottom-color:var(--accent)}
main{padding:20px 32px 60px;max-width:1600px}
h2{font-size:16px;margin:28px 0 12px;font-weight:650}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(300px,1fr));gap:14px}
.card{background:#fff;border:1px solid var(--line);border-radius:10px;padding:14px 16px;box-shadow:0 1px 2px #0f172a0d}
.card h3{margin:0;font-size:15px}
.card .sub{color:var(--muted);font-size:12.5px;margin:2px 0 10px}
.card .rate{float:right;font-size:20px;font-weight:700}
.bar{display:flex;height:8px;border-radius:4px;overflow:hidden;background:var(--skip-bg);margin:8px 0}
.bar i{display:block}
.counts{display:flex;flex-wrap:wrap;gap:6px;font-size:12px}
.pill{display:inline-block;min-width:46px;padding:1px 8px;border-radius:999px;font-size:11.5px;font-weight:650;
text-align:center;text-decoration:none;letter-spacing:.2px;border:1px solid transparent}
.passed{color:var(--pass);background:var(--pass-bg)} .failed{color:var(--fail);background:var(--fail-bg)}
.error{color:var(--error);background:var(--error-bg)} .skipped{color:var(--skip);background:var(--skip-bg)}
.xfailed{color:var(--xfail);background:var(--xfail-bg)} .xpassed{color:var(--xpass);background:var(--xpass-bg)}
a.pill:hover{border-color:currentColor}
.toolbar{display:flex;gap:14px;align-items:center;flex-wrap:wrap;margin:0 0 10px}
.toolbar input[type=search]{padding:6px 10px;border:1px solid var(--line);border-radius:6px;min-width:280px;
font:inherit}
.legend{display:flex;gap:6px;margin-left:auto}
table{border-collapse:separate;border-spacing:0;background:#fff;border:1px solid var(--line);border-radius:10px;
width:100%}
thead th:first-child{border-top-left-radius:10px} thead th:last-child{border-top-right-radius:10px}
tbody tr:last-child td{border-bottom:0}
th,td{padding:6px 10px;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}
thead th{background:#f1f5f9;font-size:12px;text-transform:uppercase;letter-spacing:.4px;color:#334155}
tbody tr:hover td{background:#f8fafc}
tr.area td{background:#eef2ff;font-weight:650;color:var(--accent);font-size:12.5px}
td.cell,th.cell{text-align:center;width:1%;white-space:nowrap}
td.test .mono{word-break:break-all}
.ver{display:inline-block;font-size:11px;color:#334155;background:#e2e8f0;border-radius:4px;padding:0 5px;
margin-left:6px}
.muted{color:var(--muted)}
.stmt-text{display:-webkit-box;-webkit-line-clamp:2;-webkit-box-orient:vertical;overflow:hidden;max-width:760px}
.detail{display:none;position:fixed;inset:0;background:#0f172a8c;z-index:20;padding:4vh 3vw;overflow:auto}
.detail:target,.detail.open{display:block}
.panel{background:#fff;border-radius:12px;max-width:1180px;margin:0 auto;box-shadow:0 20px 50px #0f172a55}
.panel>header{display:flex;gap:12px;align-items:center;padding:14px 20px;border-bottom:1px solid var(--line)}
.panel>header h3{margin:0;font-size:15px;flex:1;word-break:break-all}
.panel>header a.close{text-decoration:none;color:var(--muted);font-size:22px;line-height:1}
.panel .body{padding:14px 20px 20px}
.facts{display:grid;grid-template-columns:max-content 1fr;gap:2px 16px;font-size:13px;margin-bottom:10px}
.facts dt{color:var(--muted)}
.facts dd{margin:0}
.reason{border-left:3px solid var(--fail);background:#fff7f7;padding:8px 12px;margin:8px 0 12px;white-space:pre-wrap}
.reason.skipped,.reason.xfailed{border-color:var(--skip);background:var(--bg)}
.versus{display:grid;grid-template-columns:1fr 1fr;gap:12px;margin:10px 0}
.versus div{border:1px solid var(--line);border-radius:8px;padding:8px 12px}
.versus h4{margin:0 0 6px;font-size:12px;text-transform:uppercase;color:var(--muted)}
.versus .exp{border-color:#86efac;background:#f0fdf4} .versus .act{border-color:#fca5a5;background:#fef2f2}
.versus code{display:block;white-space:pre-wrap;word-break:break-word}
pre{background:#0f172a;color:#e2e8f0;padding:10px 12px;border-radius:8px;overflow:auto;max-height:420px;
margin:6px 0 12px}
pre .in{color:#93c5fd} pre .out{color:#cbd5e1} pre .bad{color:#fca5a5}
details{margin:6px 0} summary{cursor:pointer;font-weight:600}
.warning{border-left:3px solid var(--xpass);background:var(--xpass-bg);padding:8px 12px;margin:8px 0;color:#713f12}
a.warn{margin-left:4px;color:var(--xpass);font-weight:700;text-decoration:none}
table.small{width:auto;margin:6px 0 12px} table.small td,table.small th{padding:3px 10px;font-size:12.5px}
.empty{padding:30px;text-align:center;color:var(--muted)}
"""

JS = """
(function(){
  function sync(){
    document.querySelectorAll('.detail.open').forEach(function(d){d.classList.remove('open')});
    var id=location.hash.slice(1), el=id&&document.getElementById(id);
    if(el&&el.classList.contains('detail')){el.classList.add('open');document.body.dataset.open=id;}
    else{delete document.body.dataset.open;}
  }
  window.addEventListener('hashchange',sync);
  document.addEventListener('keydown',function(e){
    if(e.key==='Escape'&&document.body.dataset.open){location.hash='close';}});
  document.querySelectorAll('.detail').forEach(function(d){d.addEventListener('click',function(e){
    if(e.target===d){location.hash='close';}});});
  var q=document.getElementById('q'), only=document.getElementById('only');
  function filter(){
    var text=(q.value||'').toLowerCase(), bad=only.checked;
    document.querySelectorAll('#matrix tbody tr.row').forEach(function(tr){
      var show=(!text||tr.dataset.search.indexOf(text)>=0)&&(!bad||tr.dataset.problem==='1');
      tr.hidden=!show;
    });
    document.querySelectorAll('#matrix tbody tr.area').forEach(function(tr){
      var next=tr.nextElementSibling, any=false;
      while(next&&next.classList.contains('row')){if(!next.hidden){any=true;}next=next.nextElementSibling;}
      tr.hidden=!any;
    });
  }
  if(q){q.addEventListener('input',filter);only.addEventListener('change',filter);}
  sync();
  document.documentElement.dataset.ready='1';
})();
"""


def render(report: Report) -> str:
    ids = {id(r): f"r-{n}" for n, r in enumerate(report.results)}
    counts = report.counts()
    title = f"MQTT conformance report — {', '.join(b.id for b in report.brokers) or 'no brokers'}"
    parts = [
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width,initial-scale=1'>",
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body>",
        _header(report, counts),
        "<nav class='tabs'>" + ("<a href='#warnings'>Warnings</a>" if _warned(report) else "")
        + "<a href='#brokers'>Brokers</a><a href='#matrix'>Matrix</a>"
        + ("<a href='#devices'>Devices</a>" if report.devices else "")
        + "<a href='#statements'>Statements</a><a href='#run'>Run</a></nav><main>",
        _warnings(report, ids),
        _brokers(report),
        _matrix(report, ids),
        _devices(report, ids),
        _statements(report, ids),
        _run(report, ids),
        "</main>",
        "".join(_detail(report, r, ids[id(r)]) for r in report.results),
        f"<script>{JS}</script></body></html>\n",
    ]
    return "\n".join(parts)


def write(report: Report, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(render(report), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------------- sections

def _pill(outcome: str, href: str | None = None, title: str = "") -> str:
    tip = f" title='{escape(title)}'" if title else ""
    if href:
        return f"<a class='pill {outcome}' href='#{href}'{tip}>{LABELS[outcome]}</a>"
    return f"<span class='pill {outcome}'{tip}>{LABELS[outcome]}</span>"


def _header(report: Report, counts: dict[str, int]) -> str:
    run = report.run
    facts = [f"run {run.id}", f"started {run.started}", f"{run.duration:.1f} s", f"mqtt-harness {run.harness_version}",
             f"host {run.host}", f"Python {run.python}", f"pytest {run.pytest}"]
    if run.workers:
        facts.append(f"{run.workers} workers")
    facts.append(f"reruns: {run.rerun_plugin} (up to {run.max_reruns})" if run.rerun_plugin else "no reruns")
    if run.merged_from:
        facts.append(f"merged from {len(run.merged_from)} runs")
    total = " ".join(_count(o, counts[o]) for o in OUTCOMES if counts[o])
    warned = len(_warned(report))
    if warned:
        total += f" <a class='pill xpassed' href='#warnings'>{warned} with warnings</a>"
    return ("<header class='top'><h1>MQTT conformance report</h1><div class='meta'>"
            + "".join(f"<span>{escape(f)}</span>" for f in facts)
            + f"</div><div class='totals'><b>{len(report.results)}</b> results {total}</div></header>")


def _count(outcome: str, n: int) -> str:
    return f"<span class='pill {outcome}'>{n} {outcome}</span>"


def _bar(counts: dict[str, int]) -> str:
    total = sum(counts.values()) or 1
    colors = {PASSED: "var(--pass)", FAILED: "var(--fail)", ERROR: "var(--error)", XPASSED: "var(--xpass)",
              XFAILED: "var(--xfail)", SKIPPED: "#cbd5e1"}
    return "<div class='bar'>" + "".join(
        f"<i style='width:{100 * counts[o] / total:.2f}%;background:{colors[o]}' title='{counts[o]} {o}'></i>"
        for o in OUTCOMES if counts[o]) + "</div>"


def _brokers(report: Report) -> str:
    cards = []
    measured_all = report.measured()
    for broker in report.brokers:
        counts = report.counts(r for r in report.results if r.broker == broker.id)
        ran = counts[PASSED] + counts[FAILED] + counts[ERROR] + counts[XPASSED]
        rate = f"{100 * counts[PASSED] / ran:.0f}%" if ran else "–"
        what = " · ".join(x for x in (broker.product, f"version {broker.version}" if broker.version else "") if x)
        urls = "<br>".join(f"{escape(kind)}: <span class='mono'>{escape(', '.join(u))}</span>"
                           for kind, u in broker.urls.items())
        caps = broker.capabilities
        cap_text = ", ".join(f"{k}={v}" for k, v in caps.items() if v not in (None, ())) if caps else ""
        notes = "".join(f"<div class='muted'>{escape(n)}</div>" for n in broker.notes)
        measured = _measured(measured_all.get(broker.id, {}))
        cards.append(
            f"<div class='card'><span class='rate' title='passed of the tests that ran'>{rate}</span>"
            f"<h3>{escape(broker.display_name or broker.name)} <span class='ver'>{escape(broker.backend)}</span></h3>"
            f"<div class='sub'>{escape(broker.id)}{' · ' + escape(what) if what else ''}</div>"
            f"{_bar(counts)}<div class='counts'>"
            + "".join(_count(o, counts[o]) for o in OUTCOMES if counts[o])
            + f"</div>{measured}<details><summary class='muted'>listeners, capabilities</summary>"
            f"<div class='muted'>{urls}</div>"
            f"<div class='muted'>capabilities ({escape(broker.capabilities_source or 'unknown')}): "
            f"{escape(cap_text)}</div>{notes}</details></div>")
    body = "".join(cards) or "<div class='empty'>No broker ran a test.</div>"
    return f"<section id='brokers'><h2>Brokers</h2><div class='cards'>{body}</div></section>"


def _matrix(report: Report, ids: dict[int, str]) -> str:
    brokers = [b.id for b in report.brokers]
    rows: dict[str, dict[tuple[str, str], dict[str, Result]]] = defaultdict(lambda: defaultdict(dict))
    for result in report.results:
        if result.device is None:  # device tests have their own matrix (devices x tests)
            rows[result.area][(result.test, result.mqtt_version or "")][result.broker or ""] = result
    if not rows:
        if report.devices:
            return ""
        return "<section id='matrix'><h2>Matrix</h2><div class='empty'>No results.</div></section>"
    columns = brokers + ([""] if any("" in row for area in rows.values() for row in area.values()) else [])
    head = "".join(f"<th class='cell'>{escape(b or 'collection')}</th>" for b in columns)
    body = []
    for area in sorted(rows):
        body.append(f"<tr class='area'><td colspan='{len(columns) + 1}'>{escape(_area_name(area))}</td></tr>")
        for (test, version), by_broker in sorted(rows[area].items()):
            cells = []
            problem = False
            for b in columns:
                result = by_broker.get(b)
                if result is None:
                    cells.append("<td class='cell muted'>·</td>")
                    continue
                # "only problems" shows warned rows too: a warning is there to be looked at
                problem |= result.outcome in FAILING or result.outcome == XPASSED or bool(_warn_mark(result, ""))
                cells.append(f"<td class='cell'>{_pill(result.outcome, ids[id(result)], result.reason)}"
                             f"{_warn_mark(result, ids[id(result)])}</td>")
            name = test.split("::", 1)[-1]
            ver = f"<span class='ver'>MQTT {escape(version)}</span>" if version else ""
            search = escape(f"{test} {version} {' '.join(r.outcome for r in by_broker.values())}".lower())
            body.append(f"<tr class='row' data-search='{search}' data-problem='{int(problem)}'>"
                        f"<td class='test'><span class='mono'>{escape(name)}</span>{ver}</td>{''.join(cells)}</tr>")
    legend = "".join(_pill(o) for o in OUTCOMES)
    return (f"<section id='matrix'><h2>Matrix</h2><div class='toolbar'>"
            "<input id='q' type='search' placeholder='Filter tests (name, version, outcome)'>"
            "<label><input id='only' type='checkbox'> only problems</label>"
            f"<div class='legend'>{legend}</div></div>"
            f"<table><thead><tr><th>Test</th>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></section>")


def _devices(report: Report, ids: dict[int, str]) -> str:
    """Device cards (the banner each device announced) and the devices x tests matrix."""
    if not report.devices:
        return ""
    cards = []
    for device in report.devices:
        counts = report.counts(r for r in report.results if r.device == device.id)
        b = device.banner
        what = " · ".join(f"{k} {b[k]}" for k in ("fw", "idf", "esp_mqtt", "chip", "mac", "libmosquitto") if b.get(k))
        bugs = (f"<div class='muted'>seeded bugs: {escape(', '.join(device.bugs))}</div>" if device.bugs else "")
        cards.append(f"<div class='card'><h3>{escape(device.id)} <span class='ver'>{escape(device.platform)}</span></h3>"
                     f"<div class='sub mono'>{escape(device.port)}</div><div class='muted'>{escape(what)}</div>"
                     f"<div class='muted'>reset reason at first contact: {escape(str(b.get('reset_reason', '?')))}"
                     f"</div>{bugs}{_bar(counts)}<div class='counts'>"
                     + "".join(_count(o, counts[o]) for o in OUTCOMES if counts[o]) + "</div></div>")
    columns = [d.id for d in report.devices]
    rows: dict[tuple[str, str], dict[str, Result]] = defaultdict(dict)
    for result in report.results:
        if result.device is not None:
            rows[(result.test, result.broker or "")][result.device] = result
    body = []
    for (test, broker), by_device in sorted(rows.items()):
        cells = "".join(f"<td class='cell'>{_pill(r.outcome, ids[id(r)], r.reason)}</td>" if (r := by_device.get(d))
                        else "<td class='cell muted'>·</td>" for d in columns)
        problem = any(r.outcome in FAILING or r.outcome == XPASSED for r in by_device.values())
        search = escape(f"{test} {broker} {' '.join(r.outcome for r in by_device.values())}".lower())
        body.append(f"<tr class='row' data-search='{search}' data-problem='{int(problem)}'><td class='test'>"
                    f"<span class='mono'>{escape(test.split('::', 1)[-1])}</span>"
                    f"<span class='ver'>via {escape(broker)}</span></td>{cells}</tr>")
    head = "".join(f"<th class='cell'>{escape(d)}</th>" for d in columns)
    return (f"<section id='devices'><h2>Devices</h2><div class='cards'>{''.join(cards)}</div>"
            f"<table><thead><tr><th>Device test</th>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
            "</section>")


def _area_name(area: str) -> str:
    return area.removeprefix("test_").replace("_", " ")


def _statement_text(sid: str, version: str | None) -> tuple[str, str]:
    if sid.startswith("§"):
        return sid[1:], "(a spec section: the rule it states has no tagged normative statement)"
    try:
        stmt = statement(sid, version)
    except LookupError:
        return "", "(not in the catalogue)"
    return stmt.section, stmt.body_text or stmt.text


def _statements(report: Report, ids: dict[int, str]) -> str:
    brokers = [b.id for b in report.brokers]
    cited: dict[tuple[str, str], dict[str, list[Result]]] = defaultdict(lambda: defaultdict(list))
    for result in report.results:
        for sid in result.statements:
            cited[(sid, result.mqtt_version or "")][result.broker or ""].append(result)
    if not cited:
        return ("<section id='statements'><h2>Statement coverage</h2>"
                "<div class='empty'>No test cited an OASIS statement (mark tests with @pytest.mark.spec).</div>"
                "</section>")
    head = "".join(f"<th class='cell'>{escape(b)}</th>" for b in brokers)
    rows = []
    for (sid, version), by_broker in sorted(cited.items(), key=lambda kv: (_id_key(kv[0][0]), kv[0][1])):
        section, text = _statement_text(sid, version or None)
        cells = []
        for b in brokers:
            results = by_broker.get(b, [])
            if not results:
                cells.append("<td class='cell muted'>·</td>")
                continue
            worst = min(results, key=lambda r: SEVERITY.index(r.outcome))
            tip = "; ".join(f"{r.test.split('::', 1)[-1]}: {r.outcome}" for r in results)
            cells.append(f"<td class='cell'>{_pill(worst.outcome, ids[id(worst)], tip)}</td>")
        ver = f"<span class='ver'>MQTT {escape(version)}</span>" if version else ""
        tests = len({r.test for rs in by_broker.values() for r in rs})
        rows.append(f"<tr><td class='mono' style='white-space:nowrap'>{escape(sid)}{ver}</td>"
                    f"<td class='muted'>{escape(section)}</td><td><div class='stmt-text' title='{escape(text)}'>"
                    f"{escape(text)}</div></td><td class='cell'>{tests}</td>{''.join(cells)}</tr>")
    return (f"<section id='statements'><h2>Statement coverage <span class='muted'>({len(cited)} statements "
            "exercised)</span></h2><table><thead><tr><th>Statement</th><th>Section</th><th>Text (OASIS)</th>"
            f"<th class='cell'>Tests</th>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></section>")


def _id_key(sid: str) -> tuple:
    numbers = sid.removeprefix("MQTT-").replace("-", ".").split(".")
    return tuple(int(n) if n.isdigit() else 0 for n in numbers)


def _run(report: Report, ids: dict[int, str]) -> str:
    run = report.run
    rows = [("Run id", run.id), ("Started", run.started), ("Finished", run.finished),
            ("Duration", f"{run.duration:.1f} s"), ("Harness", run.harness_version), ("Host", run.host),
            ("Platform", run.platform), ("Python", run.python), ("pytest", run.pytest),
            ("Arguments", " ".join(run.args) or "(none)"), ("xdist workers", str(run.workers or "none")),
            ("Reruns", f"{run.rerun_plugin}, up to {run.max_reruns} per test" if run.rerun_plugin else
             "none: every result is a first attempt")]
    merged = "".join(f"<li><span class='mono'>{escape(m['file'])}</span>: run {escape(m['run'])} "
                     f"({escape(m['started'])})</li>" for m in run.merged_from)
    facts = "".join(f"<dt>{escape(k)}</dt><dd class='mono'>{escape(v)}</dd>" for k, v in rows)
    return (f"<section id='run'><h2>Run</h2><div class='card'><dl class='facts'>{facts}</dl>"
            + (f"<div>Merged from:<ul>{merged}</ul></div>" if merged else "") + "</div>"
            + _slowest(report, ids) + "</section>")


def _slowest(report: Report, ids: dict[int, str]) -> str:
    slow = report.slowest()
    if not slow:
        return ""
    rows = "".join(
        f"<tr><td class='cell mono'>{r.duration:.2f} s</td><td class='cell'>{_pill(r.outcome, ids[id(r)])}</td>"
        f"<td class='mono'>{escape(r.test)}</td><td>{escape(r.broker or '')}"
        f"{'/' + escape(r.device) if r.device else ''}</td><td>{escape(r.mqtt_version or '—')}</td></tr>"
        for r in slow)
    return (f"<h2 id='slowest'>The {len(slow)} slowest tests <span class='muted'>(test body; setup and teardown "
            "excluded)</span></h2><table><thead><tr><th class='cell'>Duration</th><th class='cell'>Outcome</th>"
            f"<th>Test</th><th>Broker</th><th>MQTT</th></tr></thead><tbody>{rows}</tbody></table>")


# ------------------------------------------------------------------------------------------------- measurements

def _warned(report: Report) -> list[Result]:
    return [r for r in report.results if any(m.warning for m in r.measurements)]


def _warn_mark(result: Result, anchor: str) -> str:
    warnings = [m.warning for m in result.measurements if m.warning]
    if not warnings:
        return ""
    return f"<a class='warn' href='#{anchor}' title='{escape(' / '.join(warnings))}'>&#9888;</a>"


def _quantity(value: float, unit: str) -> str:
    return f"{value:.3g} {unit}" if abs(value) < 100 else f"{value:.0f} {unit}"


def _measured(by_name: dict[str, dict]) -> str:
    """A broker card's lines: each measurement's range over the results (and samples) that measured it."""
    lines = []
    for name, m in sorted(by_name.items()):
        span = _span(m["min"], m["max"], m["unit"])
        if m["min_ratio"] is not None:
            span += f" = {_span(m['min_ratio'], m['max_ratio'], '×')} {escape(', '.join(m['ratio_of']))}"
        warn = (f"<div class='warning'>&#9888; {m['warnings']} of {m['count']} results warn: see "
                "<a href='#warnings'>Warnings</a></div>" if m["warnings"] else "")
        lines.append(f"<div class='measured'><b>{escape(name.replace('_', ' '))}</b>: {span} "
                     f"<span class='muted'>({m['count']} result{'s' if m['count'] != 1 else ''})</span>{warn}</div>")
    return "".join(lines)


def _span(low: float, high: float, unit: str) -> str:
    digits = 3 if unit == "×" else 2  # 1.499x must not read as 1.50x
    text = f"{low:.{digits}f}" if round(low, digits) == round(high, digits) else f"{low:.{digits}f}–{high:.{digits}f}"
    return escape(f"{text} {unit}" if unit != "×" else f"{text}×")


def _measurements(result: Result) -> str:
    if not result.measurements:
        return ""
    rows = []
    for m in result.measurements:
        ratio = f"{m.ratio:.3f}× {m.ratio_of}" if m.ratio is not None else ""
        samples = ", ".join(f"{v:.2f}" for v in m.samples)
        rows.append(f"<tr><td class='mono'>{escape(m.name)}</td><td class='mono'>{escape(_quantity(m.value, m.unit))}"
                    f"</td><td>{escape(ratio)}</td><td class='muted'>{escape(m.label)}"
                    + (f"<br>samples ({escape(m.unit)}): {escape(samples)}" if samples else "") + "</td></tr>")
    warnings = "".join(f"<div class='warning'>&#9888; {escape(m.warning)}</div>" for m in result.measurements
                       if m.warning)
    return ("<details open><summary>Measurements</summary>" + warnings
            + "<table class='small'><thead><tr><th>Measured</th><th>Value</th><th>Multiple</th><th>What</th></tr>"
            f"</thead><tbody>{''.join(rows)}</tbody></table></details>")


def _warnings(report: Report, ids: dict[int, str]) -> str:
    warned = _warned(report)
    if not warned:
        return ""
    items = []
    for r in warned:
        version = f" [MQTT {r.mqtt_version}]" if r.mqtt_version else ""
        for m in r.measurements:
            if m.warning:
                items.append(f"<li>{_pill(r.outcome, ids[id(r)])} <b>{escape(r.broker or '')}</b> "
                             f"<span class='mono'>{escape(r.test.split('::', 1)[-1])}</span>{escape(version)}: "
                             f"{escape(m.warning)}</li>")
    many = f"{len(warned)} result{'s' if len(warned) != 1 else ''}"
    return (f"<section id='warnings'><h2>Warnings <span class='muted'>({many}: allowed by the spec, "
            "so not failures, but worth a look)</span></h2><div class='card warning'><ul>"
            f"{''.join(items)}</ul></div></section>")


def _packets(packets: list[dict], client: str) -> str:
    """One line per packet: time, who (the client's own name and its connection number: `sub#2` is the
    subscriber's second connection), direction, the packet."""
    lines = []
    for p in packets:
        arrow, cls = ("<-", "in") if p["dir"] == "in" else ("->", "out")
        what = p["packet"] or f"UNDECODABLE {p.get('raw', '')[:96]} ({p['error']})"
        cls = "bad" if p["packet"] is None else cls
        lines.append(f"<span class='{cls}'>{p['t']:10.6f} {escape(client)}#{p['conn']} {arrow} {escape(what)}</span>")
    return "\n".join(lines) or "(no packets)"


def _detail(report: Report, result: Result, anchor: str) -> str:
    broker: BrokerInfo | None = report.broker(result.broker) if result.broker else None
    art = result.artifacts
    facts = [("Test", result.test), ("Broker", f"{broker.name} ({broker.backend})" if broker else "—"),
             *([("Device", result.device)] if result.device else []),
             ("MQTT version", result.mqtt_version or "—"), ("Area", _area_name(result.area)),
             ("Duration", f"{result.duration:.3f} s"), ("Node id", result.nodeid)]
    if result.reruns:
        facts.append(("Reruns", f"{result.reruns} (this is the last attempt)"))
    parts = ["<dl class='facts'>" + "".join(f"<dt>{escape(k)}</dt><dd class='mono'>{escape(v)}</dd>"
                                             for k, v in facts) + "</dl>"]
    if result.reason:
        parts.append(f"<div class='reason {result.outcome}'>{escape(result.reason)}</div>")
    if result.statements:
        items = "".join(f"<li><span class='mono'>{escape(s)}</span> — "
                        f"{escape(_statement_text(s, result.mqtt_version)[1])}</li>" for s in result.statements)
        parts.append(f"<details open><summary>Statements</summary><ul>{items}</ul></details>")
    parts.append(_measurements(result))
    if art.expected:
        actual = "\n".join(art.actual) or "(nothing)"
        parts.append(f"<div class='versus'><div class='exp'><h4>Expected</h4><code>{escape(art.expected)}</code></div>"
                     f"<div class='act'><h4>Received</h4><code class='lines'>{escape(actual)}</code></div></div>")
    if art.failure:
        parts.append(f"<details open><summary>Failure</summary><pre>{escape(art.failure)}</pre></details>")
    opened = " open" if result.outcome in FAILING or result.outcome == XFAILED else ""
    for client in art.clients:
        title = f"Packet log of {client.name} ({client.client_id}, MQTT {client.mqtt_version}, {client.url})"
        parts.append(f"<details{opened} class='packets' data-client='{escape(client.name)}'><summary>"
                     f"{escape(title)}</summary><pre>{_packets(client.packets, client.name)}</pre></details>")
    if result.device:
        shown = " open" if result.outcome in FAILING else ""
        parts.append(f"<details{shown}><summary>Events of device {escape(result.device)}</summary><pre>"
                     f"{escape(chr(10).join(art.device_events) or '(none)')}</pre></details>")
        parts.append(f"<details{shown}><summary>Log of device {escape(result.device)} during the test</summary>"
                     f"<pre>{escape(art.device_log or '(nothing)')}</pre></details>")
    if art.broker_log:
        parts.append(f"<details open><summary>Broker log during the test</summary><pre>{escape(art.broker_log)}</pre>"
                     "</details>")
    version = f" · MQTT {result.mqtt_version}" if result.mqtt_version else ""
    where = f" on {broker.id}" if broker else ""
    return (f"<section class='detail' id='{anchor}' role='dialog' aria-label='{escape(result.test)}'>"
            f"<div class='panel'><header>{_pill(result.outcome)}<h3>{escape(result.test.split('::', 1)[-1])}"
            f"<span class='muted' style='font-weight:400'>{escape(where + version)}</span></h3>"
            f"<a class='close' href='#close' title='Close (Esc)'>×</a></header>"
            f"<div class='body'>{''.join(parts)}</div></div></section>")
