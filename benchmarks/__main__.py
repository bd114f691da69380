"""Run every benchmark and write one JSON file and a Markdown table.

    python -m benchmarks [--quick] [--only NAME ...] [--out benchmarks/out]

Synthetic mosaics are generated on the fly in temporary directories. Numbers
are ratios measured side by side in one run, plus peak RSS of all processes.
"""

from __future__ import annotations

import argparse
import importlib
import json
import time
import traceback
from pathlib import Path

SUITE = [
    "bench_scheduler", "bench_pipeline", "bench_merge", "bench_merge_quality", "bench_unique", "bench_multipass",
    "bench_scaling", "bench_baselines", "bench_gpu",
]


def _md(results: dict) -> str:
    lines = ["| benchmark | status | seconds | key numbers |", "|---|---|---|---|"]
    for name, r in results.items():
        if "error" in r:
            lines.append(f"| {name} | error | {r.get('elapsed_s', 0):.1f} | {r['error'][:80]} |")
            continue
        keys = {k: v for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        summary = ", ".join(f"{k}={v:.3g}" for k, v in list(keys.items())[:6])
        lines.append(f"| {name} | ok | {r.get('elapsed_s', 0):.1f} | {summary} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="remote_samsing benchmark suite")
    ap.add_argument("--quick", action="store_true", help="small sizes (CI smoke, < 5 min)")
    ap.add_argument("--only", nargs="*", help="benchmark module names to run")
    ap.add_argument("--out", default="benchmarks/out", help="output directory")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    failed = False
    for name in args.only or SUITE:
        print(f"== {name} ({'quick' if args.quick else 'full'})", flush=True)
        t0 = time.perf_counter()
        try:
            mod = importlib.import_module(f"benchmarks.{name}")
            r = mod.run(quick=args.quick)
            r = dict(r) if isinstance(r, dict) else {"result": r}
        except Exception as exc:  # noqa: BLE001 - report and continue with the next benchmark
            traceback.print_exc()
            r = {"error": f"{type(exc).__name__}: {exc}"}
            failed = True
        r["elapsed_s"] = time.perf_counter() - t0
        results[name] = r
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    (out / "results.md").write_text(_md(results))
    print(_md(results))
    print(f"wrote {out / 'results.json'} and {out / 'results.md'}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
