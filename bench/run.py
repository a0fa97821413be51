"""Run the throughput, codec and proxy benchmarks; write bench/results/<timestamp>/{results.json,summary.md}.

  python -m bench.run            full run (3 reps; about 30 minutes on the 2-core lab machine, 17 of them proxy)
  python -m bench.run --quick    smoke run (small N, 1 rep; about 4 minutes)
  python -m bench.run --skip codec,proxy --reps 5
  python -m bench.run --render bench/results/<timestamp>   tables and targets again from its results.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench import codec, proxy, report, throughput

PARTS = ("throughput", "codec", "proxy")


def render(results: dict) -> str:
    """The markdown summary; targets are judged afresh from the raw rows (and stored in `results`)."""
    results["targets"] = []
    sections = []
    if "throughput" in results:
        results["targets"] += throughput.targets(results["throughput"])
        sections.append(throughput.markdown(results["throughput"]))
    if "codec" in results:
        results["targets"] += codec.targets(results["codec"])
        sections.append(codec.markdown(results["codec"]))
    if "proxy" in results:
        results["targets"] += proxy.targets(results["proxy"])
        sections.append(proxy.markdown(results["proxy"]))
    env = results["environment"]
    head = (f"# mqtt-harness benchmarks, {env['time_utc']}\n\ncommit {env['commit']}"
            f"{' (+ uncommitted changes in harness/ or bench/)' if env['uncommitted_changes'] else ''}; "
            f"{env['cpus']} × {env['cpu_model']}; load {' '.join(env['loadavg'])}; Python {env['python']}; "
            + ", ".join(f"{k} {v}" for k, v in env["packages"].items()))
    return "\n\n".join([head, "## Targets\n\n" + report.targets_markdown(results["targets"]), *sections])


def rerender(run_dir: Path) -> int:
    path = run_dir / "results.json"
    try:
        results = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"--render {run_dir}: cannot read {path} ({exc}); give a bench/results/<timestamp> folder")
    md = render(results)
    report.write(run_dir, results, md)
    print(md)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: small N, 1 rep")
    ap.add_argument("--reps", type=int, default=None, help="repetitions of every part (default 3; 1 with --quick)")
    ap.add_argument("--skip", default="", help=f"comma-separated parts to skip: {', '.join(PARTS)}")
    ap.add_argument("--clients", default=",".join(throughput.DEFAULT_CLIENTS), help="throughput clients")
    ap.add_argument("--qos", default="0,1,2", help="throughput QoS levels")
    ap.add_argument("--codecs", default=",".join(codec.DEFAULT_CODECS), help="codecs")
    ap.add_argument("--n", type=int, default=None, help="codec packets per op")
    ap.add_argument("--render", type=Path, metavar="RUN_DIR",
                    help="re-render an earlier run's summary; measures nothing")
    a = ap.parse_args(argv)
    if a.render:
        return rerender(a.render)
    skip = {s for s in a.skip.split(",") if s}
    if skip - set(PARTS):
        raise SystemExit(f"--skip {a.skip!r}: parts are {', '.join(PARTS)}")
    tp_args = throughput.parse(a) if "throughput" not in skip else None
    codec_args = codec.parse(a) if "codec" not in skip else None
    proxy_args = proxy.parse(proxy.options(quick=a.quick, reps=a.reps)) if "proxy" not in skip else None

    throughput.stop_on_sigterm()
    run_dir = report.new_run_dir()
    results: dict = {"environment": report.environment()}
    if tp_args:
        results["throughput"] = throughput.run(*tp_args, run_dir=run_dir)
    if codec_args:
        results["codec"] = codec.run(*codec_args)
    if proxy_args:
        results["proxy"] = proxy.run(*proxy_args, run_dir=run_dir)
    md = render(results)
    report.write(run_dir, results, md)
    print("\n" + md + f"\n\nwritten to {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
