"""report.html: parsed (html.parser) for its structure, links and labels, and in a real headless Chromium: it
renders offline, the matrix is there, and a failure's detail panel opens from its matrix cell (URL fragment)."""

from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from harness.report import html
from harness.report.model import Artifacts, BrokerInfo, ClientLog, Measurement, Report, Result, RunInfo

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / "profile"
    profile.mkdir(exist_ok=True)
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True,
                          timeout=90)


@pytest.fixture
def report_file(tmp_path) -> Path:
    log = ClientLog("sub", "mh-1-1", "mqtt://127.0.0.1:1883", "5", [
        {"t": 0.0, "dir": "out", "conn": 1, "packet": "SUBSCRIBE(pid=1, 'mh/x/a'/q1)", "error": None},
        {"t": 0.001, "dir": "in", "conn": 1, "packet": "PUBLISH(topic='mh/x/a', qos=0)", "error": None}])
    results = [
        Result("suites/test_publish.py::test_qos1_delivery", "n1", "test_publish", "mosquitto-docker", "5", "failed",
               ["MQTT-3.3.2-3"], 0.2, "ExpectationFailed: sub: expected PUBLISH(qos=1)",
               artifacts=Artifacts([log], "New client connected\n", "PUBLISH(topic='mh/x/a', qos=1)",
                                   ["PUBLISH(topic='mh/x/a', qos=0)   <- qos: expected 1, got 0"], "Traceback ...")),
        Result("suites/test_publish.py::test_qos1_delivery", "n2", "test_publish", "nats-process", "5", "skipped",
               reason="nats:process lacks MQTT 5 [v5]"),
        Result("suites/test_connect.py::test_accepted", "n3", "test_connect", "mosquitto-docker", "3.1.1", "passed",
               ["MQTT-3.2.0-1"], 0.01),
        Result("suites/test_connect.py::test_accepted", "n4", "test_connect", "nats-process", "3.1.1", "xfailed",
               ["MQTT-3.2.0-1"], 0.01, "known limit"),
    ]
    report = Report(RunInfo(id="20260101T000000Z-abc", started="2026-01-01T00:00:00+00:00", harness_version="0.1.0"),
                    [BrokerInfo("mosquitto-docker", "mosquitto", "docker", {"mqtt": ["mqtt://127.0.0.1:1883"]},
                                "Eclipse Mosquitto", "mosquitto 2.0.11", "2.0.11", {"max_qos": 2}, "profile"),
                     BrokerInfo("nats-process", "nats", "process", {"mqtt": ["mqtt://127.0.0.1:4222"]})],
                    results)
    return html.write(report, tmp_path / "report.html")


def test_page_is_self_contained(report_file):
    text = report_file.read_text()
    assert not re.search(r"""(src|href)=['"](https?:)?//""", text)  # nothing loaded from anywhere
    assert "@import" not in text and "url(" not in text


@needs_chromium
def test_matrix_renders_and_a_failure_detail_opens(report_file, tmp_path):
    page = report_file.as_uri()
    dom = chromium(tmp_path, "--dump-dom", page).stdout
    assert 'data-ready="1"' in dom  # the script ran
    rows = re.findall(r'<tr class="row"[^>]*>(.*?)</tr>', dom, re.S)
    assert len(rows) == 2 and all(row.count("class=\"cell\"") == 2 for row in rows)
    fail_link = re.search(r'<a class="pill failed" href="#(r-\d+)"', dom).group(1)
    assert "data-open" not in re.search(r"<body[^>]*>", dom).group()

    dom = chromium(tmp_path, "--dump-dom", f"{page}#{fail_link}").stdout
    assert f'data-open="{fail_link}"' in re.search(r"<body[^>]*>", dom).group()
    detail = re.search(rf'<section class="detail open" id="{fail_link}".*?</section>', dom, re.S).group()
    assert "qos: expected 1, got 0" in detail and "New client connected" in detail
    assert "The Topic Name in a PUBLISH packet sent by a Server" in detail  # statement text from the catalogue

    shot = tmp_path / "detail.png"
    chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,900", f"{page}#{fail_link}")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


# ------------------------------------------------------------------------------------------- parsed structure

class Node:
    def __init__(self, tag: str, attrs: dict[str, str], parent: "Node | None"):
        self.tag, self.attrs, self.parent = tag, attrs, parent
        self.children: list[Node] = []
        self.content: list[Node | str] = []  # text and child elements in document order

    def classes(self) -> set[str]:
        return set((self.attrs.get("class") or "").split())

    def all_text(self) -> str:
        return "".join(c if isinstance(c, str) else c.all_text() for c in self.content)

    def walk(self):
        yield self
        for child in self.children:
            yield from child.walk()

    def find(self, tag: str, cls: str | None = None) -> list["Node"]:
        return [n for n in self.walk() if n.tag == tag and (cls is None or cls in n.classes())]

    def inside(self, tag: str, **attrs: str) -> bool:
        node = self.parent
        while node is not None:
            if node.tag == tag and all(node.attrs.get(k) == v for k, v in attrs.items()):
                return True
            node = node.parent
        return False


class Tree(HTMLParser):
    """The page as a tree of Nodes (the report writes well-formed HTML: every element it opens it closes)."""

    VOID = {"meta", "br", "input", "img", "hr", "link"}

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.root = self.at = Node("#root", {}, None)
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        node = Node(tag, {k: v or "" for k, v in attrs}, self.at)
        self.at.children.append(node)
        self.at.content.append(node)
        if tag not in self.VOID:
            self.at = node

    def handle_endtag(self, tag):
        node = self.at
        while node is not None and node.tag != tag:
            node = node.parent
        assert node is not None, f"</{tag}> closes nothing"
        self.at = node.parent

    def handle_data(self, data):
        self.at.content.append(data)


def two_client_report(**extra) -> Report:
    """A failed and an xfailed test with two clients each (a subscriber and a publisher, both on connection 1)."""
    def log(name: str, n: int) -> ClientLog:
        return ClientLog(name, f"mh-1-{n}", "mqtt://127.0.0.1:1883", "5", [
            {"t": 0.0, "dir": "out", "conn": 1, "packet": "CONNECT(...)", "error": None},
            {"t": 0.001, "dir": "in", "conn": 1, "packet": "CONNACK(...)", "error": None},
            {"t": 0.3, "dir": "out", "conn": 2, "packet": "CONNECT(...)", "error": None}])

    def art(failure: str) -> Artifacts:
        return Artifacts([log("subscriber", 1), log("publisher", 2)], failure=failure)

    results = [
        Result("suites/test_retain.py::test_a", "n1", "test_retain", "b1", "5", "failed", reason="AssertionError: x",
               artifacts=art("AssertionError: x")),
        Result("suites/test_retain.py::test_a", "n2", "test_retain", "b2", "5", "xfailed", reason="known limit",
               artifacts=art("AssertionError: the limit still holds")),
        Result("suites/test_retain.py::test_b", "n3", "test_retain", "b1", "5", "passed", duration=0.5),
        Result("suites/test_retain.py::test_b", "n4", "test_retain", "b2", "5", "error", reason="BrokerError: down",
               artifacts=Artifacts(failure="BrokerError: down")),
        *extra.get("results", []),
    ]
    return Report(RunInfo(id="r", started="2026-01-01T00:00:00+00:00"),
                  [BrokerInfo("b1", "b1", "process"), BrokerInfo("b2", "b2", "process")], results)


def test_each_packet_log_is_labelled_with_its_own_client():
    tree = Tree(html.render(two_client_report())).root
    logs = [d for d in tree.find("details") if d.find("summary")
            and d.find("summary")[0].all_text().startswith("Packet log of ")]
    assert len(logs) == 4  # two clients in each of two results
    for details in logs:
        name = details.find("summary")[0].all_text().removeprefix("Packet log of ").split(" ")[0]
        lines = details.find("pre")[0].all_text().splitlines()
        assert len(lines) == 3
        # each line names the client whose log it is, with its connection number (not "c1" in every log)
        assert [line.split()[1] for line in lines] == [f"{name}#1", f"{name}#1", f"{name}#2"], (name, lines)


def test_every_problem_cell_opens_its_failure_detail():
    report = two_client_report()
    tree = Tree(html.render(report)).root
    details = {n.attrs["id"]: n for n in tree.find("section", "detail")}
    matrix = next(n for n in tree.find("section") if n.attrs.get("id") == "matrix")
    cells = [a for a in matrix.find("a", "pill") if a.classes() & {"failed", "xfailed", "error"}]
    assert sorted(c.all_text() for c in cells) == ["error", "fail", "xfail"]
    for cell in cells:
        target = cell.attrs["href"].removeprefix("#")
        assert target in details, f"matrix cell {cell.all_text()} links to #{target}, which is no detail panel"
        panel = details[target]
        assert panel.find("span", "pill")[0].classes() == cell.classes()  # the panel of that very result
        opened = {d.find("summary")[0].all_text().split(" (")[0] for d in panel.find("details") if "open" in d.attrs}
        assert "Failure" in opened  # its failure text shows at once
        if cell.all_text() != "error":  # ... and so do the packet logs, a known limit's included
            assert {"Packet log of subscriber", "Packet log of publisher"} <= opened, opened
    every_id = {n.attrs["id"] for n in tree.walk() if "id" in n.attrs}
    dangling = [a.attrs["href"] for a in tree.find("a") if a.attrs.get("href", "").startswith("#r-")
                and a.attrs["href"][1:] not in every_id]
    assert not dangling  # nor does any other link (statements, slowest tests, warnings) point nowhere


def keepalive_result(broker: str, ratio: float, warning: str | None, outcome: str = "passed") -> Result:
    return Result("suites/test_keepalive.py::test_silent", f"k-{broker}", "test_keepalive", broker, "3.1.1", outcome,
                  measurements=[Measurement("keepalive_window", round(2 * ratio, 3), "s", "silence allowed",
                                            ratio, "keepalive 2 s", [], warning)])


def test_a_keepalive_window_below_one_and_a_half_renders_a_warning():
    early = "closed a silent client 2.40s (1.20 x keepalive 2s) after its last packet, before 1.5 x keepalive"
    report = two_client_report(results=[keepalive_result("b1", 1.2, early), keepalive_result("b2", 1.6, None)])
    page = html.render(report)
    tree = Tree(page).root
    warnings = next(n for n in tree.find("section") if n.attrs.get("id") == "warnings")
    assert early in warnings.all_text() and "b1" in warnings.all_text() and "b2" not in warnings.all_text()
    ids = {id(r): f"r-{n}" for n, r in enumerate(report.results)}
    anchor = ids[id(report.results[-2])]
    marks = [a for a in tree.find("a", "warn") if a.inside("section", id="matrix")]
    assert [a.attrs["href"] for a in marks] == [f"#{anchor}"]  # the passed cell carries the warning, visibly
    row = next(n for n in tree.find("tr", "row") if "test_silent" in n.all_text())
    assert row.attrs["data-problem"] == "1"  # "only problems" keeps it
    panel = next(n for n in tree.find("section", "detail") if n.attrs["id"] == anchor)
    assert [w.all_text() for w in panel.find("div", "warning")] == [f"\u26a0 {early}"]
    assert "1.200× keepalive 2 s" in panel.all_text()
    cards = {c.find("h3")[0].all_text().split()[0]: c.all_text() for c in tree.find("div", "card") if c.find("h3")}
    assert "keepalive window: 2.40 s = 1.200× keepalive 2 s" in cards["b1"] and "1 of 1 results warn" in cards["b1"]
    assert "keepalive window: 3.20 s = 1.600× keepalive 2 s" in cards["b2"] and "warn" not in cards["b2"]
    header = tree.find("header", "top")[0].all_text()
    assert "1 with warnings" in header


def test_the_ten_slowest_tests_are_listed_with_links():
    extra = [Result(f"suites/test_x.py::test_{n}", f"x{n}", "test_x", "b1", "5", "passed", duration=n + 0.01)
             for n in range(1, 13)]
    report = two_client_report(results=extra)
    tree = Tree(html.render(report)).root
    run = next(n for n in tree.find("section") if n.attrs.get("id") == "run")
    rows = run.find("table")[-1].find("tbody")[0].find("tr")
    assert [r.find("td")[2].all_text() for r in rows] == [f"suites/test_x.py::test_{n}" for n in range(12, 2, -1)]
    assert rows[0].find("td")[0].all_text() == "12.01 s"
    details = {n.attrs["id"] for n in tree.find("section", "detail")}
    assert all(r.find("a")[0].attrs["href"].removeprefix("#") in details for r in rows)


def test_a_report_without_the_new_fields_renders():
    old = two_client_report()
    for result in old.results:
        result.measurements = []
    tree = Tree(html.render(old)).root
    assert not [n for n in tree.find("section") if n.attrs.get("id") == "warnings"]
