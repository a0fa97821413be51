"""Run the throughput and codec benchmarks; write bench/results/<timestamp>/{results.json,summary.md}.

  python -m bench.run            full run (3 reps; about 10 minutes on the 2-core lab machine)
  python -m bench.run --quick    smoke run (small N, 1 rep; about 1 minute)
  python -m bench.run --skip codec --reps 5
"""

from __future__ import annotations

import argparse
import sys

from bench import codec, report, throughput

PARTS = ("throughput", "codec")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: small N, 1 rep")
    ap.add_argument("--reps", type=int, default=None, help="repetitions of both parts (default 3; 1 with --quick)")
    ap.add_argument("--skip", default="", help=f"comma-separated parts to skip: {', '.join(PARTS)}")
    ap.add_argument("--clients", default=",".join(throughput.DEFAULT_CLIENTS), help="throughput clients")
    ap.add_argument("--qos", default="0,1,2", help="throughput QoS levels")
    ap.add_argument("--codecs", default=",".join(codec.DEFAULT_CODECS), help="codecs")
    ap.add_argument("--n", type=int, default=None, help="codec packets per op")
    a = ap.parse_args(argv)
    skip = {s for s in a.skip.split(",") if s}
    if skip - set(PARTS):
        raise SystemExit(f"--skip {a.skip!r}: parts are {', '.join(PARTS)}")
    tp_args = throughput.parse(a) if "throughput" not in skip else None
    codec_args = codec.parse(a) if "codec" not in skip else None

    throughput.stop_on_sigterm()
    run_dir = report.new_run_dir()
    results: dict = {"environment": report.environment(), "targets": []}
    sections = []
    if tp_args:
        results["throughput"] = tp = throughput.run(*tp_args, run_dir=run_dir)
        results["targets"] += throughput.targets(tp)
        sections.append(throughput.markdown(tp))
    if codec_args:
        results["codec"] = cd = codec.run(*codec_args)
        results["targets"] += codec.targets(cd)
        sections.append(codec.markdown(cd))
    env = results["environment"]
    head = (f"# mqtt-harness benchmarks, {env['time_utc']}\n\ncommit {env['commit']}"
            f"{' (+ uncommitted changes in harness/ or bench/)' if env['uncommitted_changes'] else ''}; "
            f"{env['cpus']} × {env['cpu_model']}; load {' '.join(env['loadavg'])}; Python {env['python']}; "
            + ", ".join(f"{k} {v}" for k, v in env["packages"].items()))
    md = "\n\n".join([head, "## Targets\n\n" + report.targets_markdown(results["targets"]), *sections])
    report.write(run_dir, results, md)
    print("\n" + md + f"\n\nwritten to {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
