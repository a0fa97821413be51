"""mqtt-harness pytest plugin: runs conformance suites against brokers under test and writes reports.

Registered through the `pytest11` entry point, so `pytest suites/` just works. It stays out of the way of any
test that does not ask for its fixtures (`broker`, `mqtt_version`, `client_factory`): those are "suite tests".
The suite-author guide is suites/README.md; the report format is harness/report/SCHEMA.md.

Fixtures   broker (session, one per --broker), mqtt_version ("3.1.1"/"5"), client_factory, topic, pki/certs,
           keepalive_seconds, measure (a measured quantity for the report), dut (one per --dut), duts (all of them)
Markers    spec(...), requires(...), v5_only, v311_only, timeout(seconds)
Helpers    harness.expect: expect_packet, expect_nothing, expect_closed, mark
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import inspect
import linecache
import os
import secrets
import signal
import sys
import textwrap
import threading
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.plugin import devices, markers
from harness.plugin.brokers import (
    BrokerPool, BrokerSpec, BrokerSpecError, BrokerUnderTest, ClientTls, default_broker, parse_broker, unique_ids,
    unavailable_reason,
)
from harness.plugin.clients import ClientFactory, client_logs, format_logs
from harness.plugin.results import ResultCollector, measure  # noqa: F401  (measure: a fixture)

SUITE_FIXTURES = ("broker", "mqtt_version", "client_factory", "dut", "duts")
MAX_BROKER_LOG = 20_000  # characters of broker log kept per failing test


# --------------------------------------------------------------------------------------------------- options

def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("mqtt-harness", "MQTT conformance suites (mqtt-harness; see suites/README.md)")
    group.addoption("--broker", action="append", default=[], metavar="NAME|URL",
                    help="broker under test, repeatable: a definition under brokers/ (mosquitto, mosquitto:docker, "
                         "mosquitto:process, nats, ...) or the URL(s) of a running broker (mqtt://host:1883, "
                         "several listeners comma-separated, KIND=URL to name one). Default: mosquitto in docker "
                         "where docker works, else as a local process")
    group.addoption("--mqtt-version", choices=("3.1.1", "5", "all"), default="all",
                    help="MQTT version(s) suite tests run at (default: %(default)s)")
    group.addoption("--report-dir", metavar="DIR", type=Path,
                    help="write report.json, report.html and junit.xml here")
    group.addoption("--ca", metavar="PEM", help="URL brokers: CA file that signed the broker's certificate")
    group.addoption("--cert", metavar="PEM", help="URL brokers: client certificate for the mqtts-mtls listener")
    group.addoption("--key", metavar="PEM", help="URL brokers: key of --cert")
    group.addoption("--username", help="URL brokers: user name test clients log in with")
    group.addoption("--password", help="URL brokers: password test clients log in with")
    group.addoption("--mtls-url", metavar="URL",
                    help="URL broker: a listener that requires client certificates (mqtts://host:8884), so the mTLS "
                         "tests run against it")
    group.addoption("--known-limits", metavar="YAML", type=Path,
                    help="extra known limits: {broker id or name: {test name, test id or statement ID: reason}}; "
                         "matching tests are strict xfails")
    group.addoption("--keepalive-seconds", type=int, default=2, metavar="N",
                    help="keepalive that keepalive tests use (default: %(default)s)")
    group.addoption("--mqtt-timeout", type=float, default=60.0, metavar="SECONDS",
                    help="overall time limit of each suite test; @pytest.mark.timeout(N) overrides "
                         "(default: %(default)s)")
    group.addoption("--wait-timeout", type=float, default=5.0, metavar="SECONDS",
                    help="default wait of test clients and harness.expect (default: %(default)s)")
    group.addoption("--statement", action="append", default=[], metavar="ID",
                    help="run only the tests tagged with this OASIS statement ID (repeatable; a prefix selects "
                         "all below it, e.g. MQTT-3.3 or 3.3.1-6)")
    group.addoption("--profile", metavar="NAME",
                    help="documented limits for brokers given by URL: those of this definition (mosquitto, emqx, "
                         "...); default: the product the broker names in $SYS/broker/version, if it does")
    group.addoption("--broken", metavar="NAME",
                    help="broken-broker mode: put the named proxy rule set (harness.proxy.broken) in front of every "
                         "broker under test, so it has that one bug; for proving that the suites catch it")
    group.addoption("--mqtt-progress", action="store_true",
                    help="print one line per suite result (what `mqtt-harness run` shows)")
    devices.add_options(group)


# Hypothesis profiles the suites' property tests scale with. Hypothesis loads --hypothesis-profile in its
# pytest_configure, before any suite module is imported, so the names must exist by then; a conftest that
# registered them first (tests/) keeps its own.
HYPOTHESIS_PROFILES = {"ci": {"max_examples": 100}, "thorough": {"max_examples": 1000}}


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> None:
    if config.getoption("hypothesis_profile", None) not in HYPOTHESIS_PROFILES:
        return
    from hypothesis import settings
    from hypothesis.errors import InvalidArgument

    for name, values in HYPOTHESIS_PROFILES.items():
        try:
            settings.get_profile(name)
        except InvalidArgument:
            settings.register_profile(name, deadline=None, **values)  # real brokers: no per-example deadline


@dataclass
class PluginState:
    """Per-process plugin state (each xdist worker has its own, hence its own brokers)."""

    config: pytest.Config
    pool: BrokerPool
    versions: tuple[str, ...]
    collector: ResultCollector
    devices: devices.DevicePool
    dut_specs: list[devices.DutSpec]
    run_token: str = field(default_factory=lambda: secrets.token_hex(3))
    worker_device_errors: list[str] = field(default_factory=list)  # from xdist workers, for the controller
    _specs: list[BrokerSpec] | None = None

    def specs(self) -> list[BrokerSpec]:
        """The brokers under test; parsing (and choosing the default) happens on first use only."""
        if self._specs is None:
            given = self.config.getoption("broker")
            mtls = self.config.getoption("mtls_url")
            try:
                specs = [parse_broker(text, mtls_url=mtls if "://" in text else None) for text in given]
                if mtls and sum(s.backend == "external" for s in specs) != 1:
                    raise BrokerSpecError("--mtls-url needs exactly one URL --broker; with several, write it inside "
                                          "one: --broker 'mqtt://h:1883,mqtts-mtls=mqtts://h:8884'")
                self._specs = _broken(unique_ids(specs or [default_broker()]), self.config.getoption("broken"))
            except BrokerSpecError as exc:
                raise pytest.UsageError(f"--broker: {exc}") from None
        return self._specs


def _broken(specs: list[BrokerSpec], name: str | None) -> list[BrokerSpec]:
    """--broken NAME: each broker gets the rule set, and an id that says so (report columns, test ids)."""
    if not name:
        return specs
    from harness.proxy.broken import rule_set

    try:
        rule_set(name)
    except ValueError as exc:
        raise pytest.UsageError(f"--broken: {exc}") from None
    return [dataclasses.replace(s, id=f"{s.id}-broken-{name}", broken=name) for s in specs]


_STATE = pytest.StashKey[PluginState]()
_TEST = pytest.StashKey["RunningTest"]()


@dataclass
class RunningTest:
    """What the plugin keeps for one running suite test."""

    broker: BrokerUnderTest | None = None
    log_mark: int = 0
    factory: ClientFactory | None = None
    expected: str | None = None
    actual: list[str] = field(default_factory=list)
    failed: bool = False
    duts: list["OpenDevice"] = field(default_factory=list)


@dataclass
class OpenDevice:
    """A device a test has open, and where its log and events stood when the test began."""

    spec: devices.DutSpec
    dut: Any
    log_mark: int = 0
    event_mark: int = 0
    reboots_mark: int = 0


_COLOURS = {"passed": "32", "failed": "31", "error": "31", "xpassed": "33", "skipped": "33", "xfailed": "36"}


def _colour_wanted() -> bool:
    """Colour on a terminal only; NO_COLOR (any value) turns it off, FORCE_COLOR / PY_COLORS=1 on."""
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("FORCE_COLOR") or os.environ.get("PY_COLORS") == "1":
        return True
    return sys.stdout.isatty() and os.environ.get("TERM") != "dumb"


def _state(config: pytest.Config) -> PluginState:
    return config.stash[_STATE]


def pytest_configure(config: pytest.Config) -> None:
    for line in markers.MARKERS:
        config.addinivalue_line("markers", line)
    if not config.pluginmanager.hasplugin("timeout"):
        config.addinivalue_line("markers", "timeout(seconds): overall time limit of a suite test")
    version = config.getoption("mqtt_version")
    limits_file = config.getoption("known_limits")
    client_tls = ClientTls(ca=config.getoption("ca"), cert=config.getoption("cert"), key=config.getoption("key"),
                           username=config.getoption("username"), password=config.getoption("password"))
    from harness.brokers.reaper import state_dir

    pool = devices.DevicePool(baud=config.getoption("dut_baud"), reset=config.getoption("dut_reset"),
                              handshake_timeout=config.getoption("dut_timeout"), lock_dir=state_dir() / "dut-locks")
    profile = config.getoption("profile")
    from harness.brokers import definitions as brokerdefs

    if profile and profile not in brokerdefs.names():
        raise pytest.UsageError(f"--profile {profile}: no such broker definition; use one of "
                                f"{', '.join(brokerdefs.names())}")
    state = PluginState(config=config, pool=BrokerPool(client_tls=client_tls, extra_limits=_read_limits(limits_file),
                                                       profile=profile),
                        versions=markers.VERSIONS if version == "all" else (version,),
                        collector=ResultCollector(config), devices=pool, dut_specs=devices.parse_specs(config))
    config.stash[_STATE] = state
    if not hasattr(config, "workerinput"):
        config.pluginmanager.register(ReportHooks(state), "mqtt-harness-reports")
    else:
        config.pluginmanager.register(LongFirst(), "mqtt-harness-long-first")
    if config.getoption("broker"):
        state.specs()  # a bad --broker is a usage error before anything is collected


def _read_limits(path: Path | None) -> dict[str, dict[str, str]]:
    if path is None:
        return {}
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise pytest.UsageError(f"--known-limits {path}: {exc}") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise pytest.UsageError(f"--known-limits {path}: expected a mapping broker -> {{test or statement ID: reason}}")
    return {str(broker): {str(k): str(v) for k, v in limits.items()} for broker, limits in data.items()}


def _ours(fixturedefs) -> bool:
    """Is the fixture a test gets under this name the plugin's own (not a conftest's, nor a parameter)?"""
    return bool(fixturedefs) and getattr(fixturedefs[-1].func, "__module__", None) == __name__


def is_suite_item(item: pytest.Item) -> bool:
    """A test that uses the plugin's fixtures; every other test is left alone."""
    info = getattr(item, "_fixtureinfo", None)
    return info is not None and any(_ours(info.name2fixturedefs.get(name)) for name in SUITE_FIXTURES)


def _suite_names(metafunc: pytest.Metafunc) -> set[str]:
    """The plugin fixtures this test function uses (a name it parametrizes itself does not count)."""
    direct = set()
    for mark in metafunc.definition.iter_markers("parametrize"):
        names = mark.args[0] if mark.args else mark.kwargs.get("argnames", ())
        direct.update(n.strip() for n in (names.split(",") if isinstance(names, str) else names))
    return {name for name in SUITE_FIXTURES if name in metafunc.fixturenames and name not in direct
            and _ours(metafunc._arg2fixturedefs.get(name))}


# ------------------------------------------------------------------------------------------------ collection

def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    names = _suite_names(metafunc)
    if not names:
        return
    state = _state(metafunc.config)
    definition = metafunc.definition
    where = f"{definition.nodeid}"
    params = _version_params(definition, state.versions, where) if "mqtt_version" in names else []
    versions = [p.values[0] for p in params] or [None]
    errors = markers.spec_errors(list(definition.iter_markers("spec")), versions)
    try:
        markers.required(definition.iter_markers("requires"))
    except ValueError as exc:
        errors.append(str(exc))
    if errors:
        pytest.fail(f"{where}: " + "; ".join(errors), pytrace=False)
    if "broker" in names:
        metafunc.parametrize("broker", [pytest.param(s, id=s.id) for s in state.specs()], indirect=True,
                             scope="session")
    if "dut" in names:
        metafunc.parametrize("dut", devices.params(state.dut_specs), indirect=True)
    if params:
        metafunc.parametrize("mqtt_version", params)


def _version_params(definition: pytest.Function, selected: tuple[str, ...], where: str) -> list:
    only = [v for v, mark in (("5", "v5_only"), ("3.1.1", "v311_only")) if definition.get_closest_marker(mark)]
    if len(only) > 1:
        pytest.fail(f"{where}: marked both v5_only and v311_only", pytrace=False)
    wanted = only or list(markers.VERSIONS)
    params = [pytest.param(v, id=markers.VERSION_IDS[v]) for v in wanted if v in selected]
    if not params:  # shown as a skip, so a filtered-out version is visible in the report
        v = wanted[0]
        reason = f"{'v5_only' if v == '5' else 'v311_only'} test; --mqtt-version {selected[0]} excludes MQTT {v}"
        params = [pytest.param(v, id=markers.VERSION_IDS[v], marks=pytest.mark.skip(reason=reason))]
    return params


def _statement_prefixes(given: list[str]) -> list[str]:
    out = []
    for raw in given:
        text = raw.strip().strip("[]").upper()
        out.append(text if text.startswith("MQTT-") else "MQTT-" + text)
    return out


def statement_matches(statement_id: str, prefix: str) -> bool:
    """A prefix matches whole parts only: MQTT-3.3 selects MQTT-3.3.1-6, MQTT-3.3.1-1 does not select MQTT-3.3.1-10."""
    return statement_id == prefix or (statement_id.startswith(prefix) and (
        prefix[-1] in ".-" or statement_id[len(prefix)] in ".-"))


def select_by_statement(config: pytest.Config, items: list[pytest.Item]) -> None:
    """--statement: keep the items tagged with a matching statement ID (at the item's MQTT version)."""
    prefixes = _statement_prefixes(config.getoption("statement") or [])
    if not prefixes:
        return
    keep, drop = [], []
    for item in items:
        ids = markers.statement_ids(item.iter_markers("spec"), _version_of(item))
        hit = any(statement_matches(i, p) for i in ids for p in prefixes)
        (keep if hit else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    select_by_statement(config, items)
    suite = [item for item in items if is_suite_item(item)]
    if not suite:
        return
    state = _state(config)
    for spec in state.specs():
        reason = unavailable_reason(spec)
        if reason is not None:
            raise pytest.UsageError(f"broker {spec.name} cannot run here: {reason}")
    for item in suite:
        spec = _spec_of(item)
        if spec is None:
            continue
        limits = state.pool.known_limits(spec)
        found = markers.known_limit(limits, _limit_keys(item))
        if found is not None:
            key, reason = found
            item.add_marker(pytest.mark.xfail(strict=True, reason=f"known limit of {spec.name} [{key}]: {reason}"))


# ------------------------------------------------------------------------------------ spreading over xdist workers

class LongFirst:
    """Registered in xdist workers only: the long suite tests first (after pytest's own reordering by fixture,
    hence trylast), so that they start at once and the work-stealing scheduler below can spread the rest."""

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        items.sort(key=lambda item: -_expected_length(item) if is_suite_item(item) else 0)


def _expected_length(item: pytest.Item) -> int:
    """A rank of how long a suite test takes (higher: longer), from what it is: a test that waits out a real
    protocol window (it takes `keepalive_seconds` or `timer_slack`: Keep Alive, Session Expiry, Will Delay) or has
    its own time limit (bursts, the model suite's histories) ranks 2; a known-limit strict xfail ranks 1 (a broker's
    deviation usually shows as an expected packet or close that never comes, after the wait timeout)."""
    names = getattr(item, "fixturenames", ())
    if "keepalive_seconds" in names or "timer_slack" in names or item.get_closest_marker("timeout") is not None:
        return 2
    xfail = item.get_closest_marker("xfail")
    return 1 if xfail is not None and xfail.kwargs.get("strict") else 0


def _dist_given(config: pytest.Config) -> bool:
    sources = [*map(str, config.invocation_params.args), os.environ.get("PYTEST_ADDOPTS", ""),
               *config.getini("addopts")]
    return any("--dist" in text for text in sources)


def _suite_run(config: pytest.Config) -> bool:
    return bool(config.getoption("broker", None)) or any(
        "suites" in Path(str(arg).split("::")[0]).resolve().parts for arg in config.args)


# Workers per CPU for `-n auto` in a suite run. The suites mostly wait on the broker's timers and round trips
# (keepalive windows, expiry intervals, closes), not on CPU: with one worker per CPU on 2 cores, 40 waiting tests
# took 180 of the 193 s of test time. bench/README.md, "Profile: suite wall time", has the measurements.
WORKERS_PER_CPU = 3
MAX_AUTO_WORKERS = 16


@pytest.hookimpl(optionalhook=True, tryfirst=True)  # before xdist's own (one per CPU)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """`-n auto` in a suite run: WORKERS_PER_CPU workers per CPU (at most MAX_AUTO_WORKERS). Other runs, and an
    explicit PYTEST_XDIST_AUTO_NUM_WORKERS, keep xdist's own count (one per CPU)."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS") or not _suite_run(config):
        return None
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(MAX_AUTO_WORKERS, WORKERS_PER_CPU * cpus))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """A suite run under xdist's implicit `--dist load` (plain `-n N`) uses work stealing instead: every worker
    starts on an even share, the long tests first (pytest_collection_modifyitems), and a worker that runs out takes
    half of another's queue from its end, so the workers end together instead of one waiting out a long test the
    other picked up last. An explicit --dist is left alone, and so are runs that are not suite runs."""
    if config.getoption("dist", "no") != "load" or _dist_given(config) or not _suite_run(config):
        return None
    from xdist.scheduler import WorkStealingScheduling

    return WorkStealingScheduling(config, log)


def _spec_of(item: pytest.Item) -> BrokerSpec | None:
    callspec = getattr(item, "callspec", None)
    return callspec.params.get("broker") if callspec is not None else None


def _dut_of(item: pytest.Item) -> devices.DutSpec | None:
    callspec = getattr(item, "callspec", None)
    return callspec.params.get("dut") if callspec is not None else None


def _version_of(item: pytest.Item) -> str | None:
    callspec = getattr(item, "callspec", None)
    return callspec.params.get("mqtt_version") if callspec is not None else None


def canonical_test_id(item: pytest.Item) -> str:
    """The item's id without the broker and MQTT version parameters: the same check on every broker."""
    base = item.nodeid.split("[", 1)[0]
    callspec = getattr(item, "callspec", None)
    if callspec is None:
        return base
    mine = [callspec.params[name].id if name in ("broker", "dut") else markers.VERSION_IDS[callspec.params[name]]
            for name in ("broker", "mqtt_version", "dut") if name in callspec.params and callspec.params[name]]
    rest = list(getattr(callspec, "_idlist", ()))
    for ident in mine:
        if ident in rest:
            rest.remove(ident)
    return f"{base}[{'-'.join(rest)}]" if rest else base


def _limit_keys(item: pytest.Item) -> list[str]:
    name = getattr(item, "originalname", item.name)
    area = Path(str(item.path)).stem
    version = _version_of(item)
    at_version = [f"{name}[{markers.VERSION_IDS[version]}]"] if version else []  # e.g. test_x[mqtt5]
    return [name, *at_version, f"{area}::{name}", canonical_test_id(item),
            *markers.statement_ids(item.iter_markers("spec"), version)]


# ---------------------------------------------------------------------------------------------------- running

@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    if not is_suite_item(item):
        return
    test = item.stash[_TEST] = RunningTest()
    spec = _spec_of(item)
    if spec is None:
        return
    broker = test.broker = _state(item.config).pool.get(spec)  # starts it on first use; BrokerError = test error
    reason = markers.skip_reason(broker, markers.required(item.iter_markers("requires")), _version_of(item))
    if reason is not None:
        pytest.skip(reason)
    test.log_mark = len(broker.logs())


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    if not is_suite_item(pyfuncitem):
        return None
    timeout = _timeout(pyfuncitem)
    func = pyfuncitem.obj
    kwargs = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    try:
        if inspect.iscoroutinefunction(func):
            asyncio.run(_run_async(func, kwargs, timeout, pyfuncitem.stash.get(_TEST, None)))
        else:
            with _alarm(timeout, enabled=not pyfuncitem.config.pluginmanager.hasplugin("timeout")):
                func(**kwargs)
    except SuiteTimeout as exc:
        timed_out = str(exc)
    else:
        return True
    pytest.fail(timed_out, pytrace=False)


def _own_timer(item: pytest.Item) -> bool:
    """Coroutine suite tests get their time limit inside their event loop (so clients close cleanly)."""
    return is_suite_item(item) and inspect.iscoroutinefunction(getattr(item, "obj", None))


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_timeout_set_timer(item: pytest.Item, settings) -> bool | None:
    """pytest-timeout: leave coroutine suite tests to our timer (its SIGALRM would tear through the loop)."""
    return True if _own_timer(item) else None


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_timeout_cancel_timer(item: pytest.Item) -> bool | None:
    return True if _own_timer(item) else None


class SuiteTimeout(AssertionError):
    """The whole test took longer than its time limit."""


def _timeout(item: pytest.Item) -> float:
    mark = item.get_closest_marker("timeout")
    if mark is not None and mark.args:
        return float(mark.args[0])
    return float(item.config.getoption("mqtt_timeout"))


async def _run_async(func, kwargs: dict[str, Any], timeout: float, test: RunningTest | None) -> None:
    """Run a coroutine test in this fresh loop under its time limit; close its clients in the same loop."""
    try:
        async with asyncio.timeout(timeout) as limit:
            await func(**kwargs)
    except TimeoutError as exc:
        if limit.expired():
            raise SuiteTimeout(f"test did not finish within its time limit of {timeout:g}s (raise it with "
                               f"@pytest.mark.timeout(SECONDS) or --mqtt-timeout){_waiting_at(exc, func)}") from None
        raise
    finally:
        if test is not None and test.factory is not None:
            await test.factory.close_all()


def _waiting_at(exc: TimeoutError, func) -> str:
    """ "; it was waiting at test_x.py:12: await ..." from the cancelled test's traceback: where it hung."""
    tb = exc.__cause__.__traceback__ if exc.__cause__ is not None else None
    filename, where = func.__code__.co_filename, ""
    for frame, lineno in traceback.walk_tb(tb):
        if frame.f_code.co_filename == filename:
            line = linecache.getline(filename, lineno).strip()
            where = f"; it was waiting at {Path(filename).name}:{lineno}: {line}"
    return where


@contextlib.contextmanager
def _alarm(seconds: float, enabled: bool):
    """Time limit for a plain (non-async) suite test: SIGALRM, when we are the main thread and pytest-timeout,
    which uses the same signal, is not doing it already."""
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum, frame):
        raise SuiteTimeout(f"test did not finish within {seconds:g}s (its overall limit)")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    if not is_suite_item(item):
        return (yield)
    test = item.stash.setdefault(_TEST, RunningTest())  # also when an earlier setup hook skipped or failed it
    failed = call.excinfo is not None and not call.excinfo.errisinstance(pytest.skip.Exception)
    if failed and not test.failed:
        test.failed = True
        error = call.excinfo.value
        if hasattr(error, "expected") and hasattr(error, "actual"):  # harness.expect.ExpectationFailed
            test.expected, test.actual = error.expected, list(error.actual)
        shown = getattr(error, "client_name", None)  # an ExpectationFailed already shows this client's log
        others = [c for c in test.factory.clients if c.name != shown] if test.factory is not None else []
        if others:
            item.add_report_section(call.when, "packet logs" + (" of the other clients" if shown else ""),
                                    format_logs(others))
        excerpt = _broker_log(test)
        if excerpt:
            item.add_report_section(call.when, f"broker log ({test.broker.name})", excerpt)
    report = yield
    if call.when == "call":
        problem = _device_problem(test)
        if problem and report.outcome != "skipped":
            report.outcome = "failed"
            report.longrepr = problem if report.longrepr is None else f"{problem}\n\n{report.longrepr}"
            test.failed = True
    if test.duts and call.when in ("call", "teardown") and report.outcome == "failed":
        for opened in test.duts:
            item.add_report_section(call.when, f"device log ({opened.spec.id})",
                                    devices.log_excerpt(opened.dut, opened.log_mark) or "(nothing)")
            item.add_report_section(call.when, f"device events ({opened.spec.id})",
                                    "\n".join(devices.event_lines(opened.dut, opened.event_mark)) or "(none)")
    if call.when == "call" and test.broker is not None:
        ended = _state(item.config).pool.restart_if_dead(test.broker, canonical_test_id(item))
        if ended is not None:  # the broker died during this test: that is the finding, whatever else happened
            text = (f"the broker under test ({test.broker.name}) died during this test: {ended}; it was restarted "
                    f"for the tests after it\n{test.broker.crash_logs[-1]}")
            report.outcome = "failed"
            report.longrepr = text if report.longrepr is None else f"{text}\n\n{report.longrepr}"
            test.failed = True
    report.mqtt_harness = _payload(item, test, last=call.when == "teardown")
    return report


def _device_problem(test: RunningTest) -> str:
    """An unexpected reboot or a lost event line during the test fails it, whatever the test checked."""
    lines = []
    for opened in test.duts:
        for banner in opened.dut.unexpected_reboots[opened.reboots_mark:]:
            lines.append(f"device {opened.spec.id} rebooted during the test: reset reason "
                         f"{banner.get('reset_reason', 'unknown')}")
        opened.reboots_mark = len(opened.dut.unexpected_reboots)
        lost = [p for p in opened.dut.problems if "lost" in p.lower()]
        lines += [f"device {opened.spec.id}: {p}" for p in lost]
    return "\n".join(dict.fromkeys(lines))


def _broker_log(test: RunningTest) -> str:
    if test.broker is None:
        return ""
    text = test.broker.logs()[test.log_mark:]
    return text if len(text) <= MAX_BROKER_LOG else "[...]\n" + text[-MAX_BROKER_LOG:]


def _payload(item: pytest.Item, test: RunningTest, last: bool) -> dict[str, Any]:
    spec, version = _spec_of(item), _version_of(item)
    dut_spec = _dut_of(item)
    payload: dict[str, Any] = {
        "test": canonical_test_id(item), "area": Path(str(item.path)).stem, "broker": spec.id if spec else None,
        "mqtt_version": version, "statements": markers.statement_ids(item.iter_markers("spec"), version),
        "device": dut_spec.id if dut_spec else None,
    }
    if last:
        clients = test.factory.clients if test.factory is not None else []
        payload["broker_info"] = _state(item.config).pool.info(spec) if spec is not None else None
        payload["artifacts"] = {
            "clients": client_logs(clients, raw=test.failed),
            "broker_log": (_broker_log(test) or None) if test.failed else None,
            "expected": test.expected, "actual": test.actual,
            "device_log": "\n\n".join(devices.log_excerpt(o.dut, o.log_mark) for o in test.duts) or None,
            "device_events": [line for o in test.duts for line in devices.event_lines(o.dut, o.event_mark)],
        }
        facts = _state(item.config).devices.facts
        payload["device_info"] = [facts[o.spec.id].to_json() for o in test.duts if o.spec.id in facts]
    return payload


# ---------------------------------------------------------------------------------------------------- results

class ReportHooks:
    """Collects results and writes the reports; registered in the controlling process only (not in xdist
    workers, which send their reports to it)."""

    _SHOWN = {"passed": "PASS ", "failed": "FAIL ", "error": "ERROR", "skipped": "SKIP ", "xfailed": "XFAIL",
              "xpassed": "XPASS"}

    def __init__(self, state: PluginState):
        self.state = state
        self.paths: dict[str, Path] = {}
        self.total = 0  # tests to run, for the progress lines

    def _profile_line(self, spec) -> str:
        name, why = self.state.pool.profile_of(spec)
        if name is None:
            return f"mqtt-harness: {spec.id}: {why}; its deviations show as failures"
        return f"mqtt-harness: {spec.id} gets the documented limits of profile {name} ({why})"

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.total = len(session.items)  # (`mqtt-harness run` prints the profile line itself)
        reporter = session.config.pluginmanager.getplugin("terminalreporter")
        if reporter is not None and any(is_suite_item(item) for item in session.items):
            for spec in self.state.specs():
                why = f" (chosen by default: {spec.chosen_because})" if spec.chosen_because else ""
                reporter.write_line(f"mqtt-harness: broker under test {spec.id}{why}")
                if spec.backend == "external":
                    reporter.write_line(self._profile_line(spec))
                if spec.broken:
                    reporter.write_line(f"mqtt-harness: BROKEN-BROKER MODE: {spec.id} gets the bug of rule set "
                                        f"{spec.broken!r} (harness.proxy.broken)", yellow=True)

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node, ids: list[str]) -> None:
        self.total = len(ids)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            self.state.collector.add_collect_error(report)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        result = self.state.collector.add_report(report)
        if result is not None and self.state.config.getoption("mqtt_progress"):
            self._progress(result)

    def _progress(self, result) -> None:
        done = len(self.state.collector.results)
        width = len(str(self.total or done))
        line = (f"[{done:>{width}}/{self.total or '?'}] {self._SHOWN[result.outcome]} "
                f"{result.broker or '-':<20} {result.mqtt_version or '-':<5} {result.test}"
                + (f" (device {result.device})" if result.device else "") + f"  {result.duration:.2f}s")
        if result.outcome != "passed" and result.reason:
            # whole words: a known-limit reason cut mid-word reads as a different claim
            shown = textwrap.shorten(" ".join(result.reason.split()), 300, placeholder=" ...")
            line += f"\n{' ' * (2 * width + 4)}{shown}"
        reporter = self.state.config.pluginmanager.getplugin("terminalreporter")
        if reporter is None:
            colour = _COLOURS.get(result.outcome) if _colour_wanted() else None
            print(f"\x1b[{colour}m{line}\x1b[0m" if colour else line, flush=True)
            return
        reporter.ensure_newline()
        reporter.write_line(line, red=result.outcome in ("failed", "error"), green=result.outcome == "passed")

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        report_dir = session.config.getoption("report_dir")
        if report_dir is None:
            return
        from harness.report import write_reports

        specs = self.state._specs or []
        notes = {s.id: [f"chosen by default: {s.chosen_because}"] for s in specs if s.chosen_because}
        self.paths = write_reports(self.state.collector.report(notes), report_dir)

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if self.paths:
            terminalreporter.write_sep("-", "mqtt-harness reports")
            for path in self.paths.values():
                terminalreporter.write_line(str(path))


def pytest_sessionfinish(session: pytest.Session) -> None:
    state = session.config.stash.get(_STATE, None)
    if state is not None:
        for error in state.pool.stop_all():
            warnings.warn(f"mqtt-harness: stopping broker {error}", stacklevel=1)
        device_errors = state.devices.stop_all()
        if hasattr(session.config, "workerinput"):  # the controller reports them (pytest_testnodedown)
            session.config.workeroutput["mqtt_harness_device_errors"] = device_errors
        else:
            _fail_on_device_errors(session, device_errors + state.worker_device_errors)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:
    """xdist: a worker's devices stopped; keep what went wrong (a sanitizer report) for the controller."""
    state = node.config.stash.get(_STATE, None)
    output = getattr(node, "workeroutput", None) or {}
    if state is not None:
        state.worker_device_errors += list(output.get("mqtt_harness_device_errors") or [])


def _fail_on_device_errors(session: pytest.Session, errors: list[str]) -> None:
    """A device that left a sanitizer report or would not stop fails the run, even if every test passed."""
    if not errors:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_sep("!", "mqtt-harness: device failure after the tests", red=True)
    for error in errors:
        if reporter is not None:
            reporter.write_line(f"stopping device {error}")
        else:
            warnings.warn(f"mqtt-harness: stopping device {error}", stacklevel=1)
    if session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


# ---------------------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="session")
def broker(request: pytest.FixtureRequest) -> BrokerUnderTest:
    """The broker under test (one per --broker; started once per session and test process)."""
    return _state(request.config).pool.get(request.param)


@pytest.fixture
def mqtt_version(request: pytest.FixtureRequest) -> str:
    """The MQTT version this test runs at: "3.1.1" or "5" (see v5_only / v311_only)."""
    return request.param


@pytest.fixture
def client_factory(request: pytest.FixtureRequest, broker: BrokerUnderTest, mqtt_version: str) -> ClientFactory:
    """`await client_factory(kind="mqtt", version=None, **client_kwargs)` -> a connected harness.client.Client;
    closed after the test, its packet log attached to the test's report."""
    factory = ClientFactory(broker, mqtt_version, timeout=request.config.getoption("wait_timeout"))
    request.node.stash[_TEST].factory = factory
    return factory


@pytest.fixture
def topic(request: pytest.FixtureRequest) -> str:
    """A topic prefix no other test (or run, or xdist worker) uses: "mh/<run>/<test hash>/"."""
    digest = hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:10]
    return f"mh/{_state(request.config).run_token}/{digest}/"


@pytest.fixture(scope="session")
def pki(request: pytest.FixtureRequest):
    """The harness test PKI (harness.pki.Pki): CA, client certificates and deliberately broken ones. Managed
    brokers serve certificates from it."""
    return _state(request.config).pool.pki


@pytest.fixture(scope="session")
def certs(pki):
    """Another name for `pki`."""
    return pki


@pytest.fixture
def keepalive_seconds(request: pytest.FixtureRequest) -> int:
    """The keepalive (seconds) keepalive tests use (--keepalive-seconds)."""
    return request.config.getoption("keepalive_seconds")


@pytest.fixture
def dut(request: pytest.FixtureRequest):
    """The device under test (harness.device.serial_driver.Dut), one per --dut: opened for this test under an
    exclusive lock, its client destroyed before and after, its log and events attached to the report."""
    with _open_device(request, request.param) as opened:
        yield opened


@pytest.fixture
def duts(request: pytest.FixtureRequest):
    """Every --dut at once, for tests that need several devices (a list of Dut, in --dut order)."""
    specs = _state(request.config).dut_specs
    if not specs:
        pytest.skip(devices.NO_DUT)
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(_open_device(request, spec)) for spec in specs]


@contextlib.contextmanager
def _open_device(request: pytest.FixtureRequest, spec: devices.DutSpec):
    state = _state(request.config)
    test = request.node.stash.setdefault(_TEST, RunningTest())
    lock_wait = 2 * float(request.config.getoption("mqtt_timeout")) + 30
    with state.devices.exclusive(spec, timeout=lock_wait) as path:
        dut = state.devices.open(spec, path)
        reason = markers.behaviour_skip(request.node.iter_markers("esp_behaviour"), spec.id,
                                        (getattr(dut, "info", None) or {}).get("differs") or {})
        if reason:
            dut.close()
            pytest.skip(reason)
        try:
            dut.destroy()  # whatever the last test left running
            test.duts.append(OpenDevice(spec, dut, log_mark=len(dut.log), event_mark=len(dut.events),
                                        reboots_mark=len(dut.unexpected_reboots)))
            yield dut
        finally:
            with contextlib.suppress(Exception):  # a device that rebooted or vanished: the test says so already
                dut.destroy()
            dut.close()
