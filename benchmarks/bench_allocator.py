"""glibc malloc against jemalloc for XLA's CPU buffers, side by side in one run.

    .venv/bin/python benchmarks/bench_allocator.py [--model smollm2-135m] [--repeats 5] \
        [--json experiments/results/bench_allocator_cpu.json]

Runs ``benchmarks/bench.py`` as a child process three times: with the system allocator (glibc), with jemalloc
preloaded (``LD_PRELOAD``; ``apt install libjemalloc2``) at its defaults, and with jemalloc told to keep every freed
page (``MALLOC_CONF=oversize_threshold:0,dirty_decay_ms:-1,muzzy_decay_ms:-1``, what ``scripts/jemalloc.sh`` sets), and prints for each the median times of a
forward+backward, one edit, ten edits and one meta-training step, the child's wall time, user and system CPU seconds
and minor page faults (from ``getrusage``), and the ratios against glibc. Why it matters: glibc serves blocks over
32 MiB with a fresh ``mmap`` and unmaps them on free, and jemalloc by default purges blocks over 8 MiB at once, so
each step page-faults its large buffers (logits over a 49,152-token vocabulary) in again. The children run one after
the other, so run this on an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TIMES = {"fwd_bwd": "a_fwd_bwd", "edit_1": "b_edit_1", "edit_10": "c_edit_10", "train_step": "d_train_step"}


def project_jemalloc(library: str | None = None) -> tuple[str, str]:
    """(library, MALLOC_CONF) as ``scripts/jemalloc.sh`` sets them on this machine (``library``: its
    MEND_JAX_JEMALLOC): the benchmark measures what the project's commands run with, from the one place that
    decides it."""
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MALLOC_CONF", "MEND_JAX_NO_JEMALLOC")}
    if library:
        env["MEND_JAX_JEMALLOC"] = library
    out = subprocess.run(["sh", "-c", '. scripts/jemalloc.sh && printf "%s|%s" "${LD_PRELOAD:-}" "${MALLOC_CONF:-}"'],
                         cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout
    lib, conf = out.split("|")
    return lib, conf


def run_child(model: str, repeats: int, name: str, extra_env: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MALLOC_CONF")}
    env.update(extra_env, MEND_JAX_NO_JEMALLOC="1")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bench.json"
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--model", model,
                        "--repeats", str(repeats), "--json", str(out)], env=env, check=True, cwd=ROOT,
                       stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - t
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        result = json.loads(out.read_text())
    return {
        "allocator": name, "env": extra_env,
        "wall_s": wall,
        "user_s": after.ru_utime - before.ru_utime,
        "system_s": after.ru_stime - before.ru_stime,
        "minor_page_faults": after.ru_minflt - before.ru_minflt,
        **{name: result[key]["median_s"] for name, key in TIMES.items()},
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--jemalloc", default=None, help="path of libjemalloc.so.2 (default: the one scripts/jemalloc.sh finds)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.jemalloc and not os.path.isfile(args.jemalloc):
        sys.exit(f"bench_allocator: --jemalloc {args.jemalloc} is not a file (pass the path of libjemalloc.so.2)")
    lib, retain = project_jemalloc(args.jemalloc)
    if not lib:
        sys.exit(f"bench_allocator: libjemalloc.so.2 not found by scripts/jemalloc.sh{' at ' + args.jemalloc if args.jemalloc else ''} "
                 "(install it: `apt install libjemalloc2`, or pass --jemalloc /path/to/libjemalloc.so.2)")
    variants = {"glibc": {}, "jemalloc": {"LD_PRELOAD": lib},
                "jemalloc-retain": {"LD_PRELOAD": lib, "MALLOC_CONF": retain}}
    runs = [run_child(args.model, args.repeats, name, env) for name, env in variants.items()]
    glibc = runs[0]
    ratios = {f"{k} glibc/{r['allocator']}": glibc[k] / r[k] for r in runs[1:] for k in [*TIMES, "wall_s"]}
    print(f"model {args.model}, {os.cpu_count()} CPUs, bench.py --repeats {args.repeats}")
    print(f"{'':20s}" + "".join(f"{r['allocator']:>17s}" for r in runs))
    for k in [*TIMES, "wall_s", "user_s", "system_s", "minor_page_faults"]:
        print(f"{k:20s}" + "".join(f"{r[k]:17.3f}" if k != "minor_page_faults" else f"{r[k]:17d}" for r in runs))
    for k, v in ratios.items():
        print(f"{k:36s}{v:8.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, "cpu_count": os.cpu_count(), "repeats": args.repeats,
                                               "runs": runs, "ratios": ratios}, indent=2) + "\n")


if __name__ == "__main__":
    main()
