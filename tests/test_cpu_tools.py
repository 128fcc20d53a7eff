"""The CPU tools around training: the jemalloc preload of scripts/jemalloc.sh and benchmarks/step_times.py."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _source_jemalloc(env_extra: dict) -> tuple[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MALLOC_CONF", "MEND_JAX_NO_JEMALLOC")}
    env.update(env_extra)
    out = subprocess.run(["sh", "-c", '. scripts/jemalloc.sh && printf "%s|%s" "${LD_PRELOAD:-}" "${MALLOC_CONF:-}"'],
                         cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout
    preload, conf = out.split("|")
    return preload, conf


def test_jemalloc_preload_is_set_only_where_the_library_is_and_can_be_turned_off():
    preload, conf = _source_jemalloc({})
    if preload:  # the system has it: an existing file, and the configuration that keeps freed pages
        assert Path(preload).exists() and preload.endswith("libjemalloc.so.2")
        assert "oversize_threshold:0" in conf and "dirty_decay_ms:-1" in conf
    else:
        assert conf == ""
    assert _source_jemalloc({"MEND_JAX_NO_JEMALLOC": "1"}) == ("", "")
    # something preloaded already, or a configuration of the user's own: left as it is
    assert _source_jemalloc({"LD_PRELOAD": "/some/other.so"}) == ("/some/other.so", "")
    if preload:
        assert _source_jemalloc({"MALLOC_CONF": "narenas:1"}) == (preload, "narenas:1")


@pytest.fixture(scope="module")
def step_times():
    spec = importlib.util.spec_from_file_location("step_times", ROOT / "benchmarks" / "step_times.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _write_run(folder: Path, invocations: list[list[tuple[int, float, int, float]]]) -> Path:
    folder.mkdir()
    (folder / "train_config.json").write_text(json.dumps({"val_every": 10}))
    with open(folder / "log.jsonl", "w") as f:
        for inv in invocations:
            for step, t, k, loss in inv:
                f.write(json.dumps({"step": step, "time": t, "edits_per_problem": k, "loss": loss}) + "\n")
            f.write(json.dumps({"steps": inv[-1][0], "stopped": "time limit"}) + "\n")  # a summary line
    return folder


def test_step_times_splits_invocations_and_times_each_kind_apart(tmp_path, step_times, capsys):
    # invocation 1: steps 1-16, single-edit steps take 2 s and ten-edit steps 1 s, step 10 is a validation (30 s);
    # invocation 2 (resumed, its clock starts again): steps 17-32 twice as fast
    def inv(first, last, single, ten):
        t, rows = 0.0, []
        for s in range(first, last + 1):
            k = 1 if s % 2 else 10
            t += 30.0 if s % 10 == 0 else (single if k == 1 else ten)
            rows.append((s, t, k, float(s)))
        return rows
    run = _write_run(tmp_path / "run", [inv(1, 16, 2.0, 1.0), inv(17, 32, 1.0, 0.5)])
    groups = step_times.invocations(run / "log.jsonl")
    assert [(g[0]["step"], g[-1]["step"]) for g in groups] == [(1, 16), (17, 32)]
    first, second = (step_times.step_times(g, 10) for g in groups)
    assert first["edits_per_problem=1"]["median_s"] == 2.0 and first["edits_per_problem=10"]["median_s"] == 1.0
    assert second["edits_per_problem=1"]["median_s"] == 1.0 and second["edits_per_problem=10"]["median_s"] == 0.5
    # 8 ten-edit steps (2, 4, ..., 16), less step 10 (a validation) and three of warm-up; 7 single-edit steps with a
    # predecessor (3, 5, ..., 15), less three of warm-up
    assert first["edits_per_problem=10"]["n"] == 4 and first["edits_per_problem=1"]["n"] == 4


def test_step_times_compare_reports_the_largest_loss_difference_of_the_last_invocations(tmp_path, step_times,
                                                                                     monkeypatch, capsys):
    # steps 1-5: a copied history (different per folder here: it must not be compared); steps 6-: the folders' own
    # last invocations, whose clock starts again
    a = _write_run(tmp_path / "a", [[(s, 10.0 * s, 1, 9.0) for s in range(1, 6)],
                                    [(s, float(s - 5), 1, 0.5) for s in range(6, 12)]])
    b = _write_run(tmp_path / "b", [[(s, 10.0 * s, 1, 1.0) for s in range(1, 6)],
                                    [(s, float(s - 5), 1, 0.5 + (0.25 if s == 8 else 0.0)) for s in range(6, 10)]])
    monkeypatch.setattr("sys.argv", ["step_times.py", str(a), "--compare", str(b)])
    step_times.main()
    assert "loss on 4 common steps: max |difference| 0.25" in capsys.readouterr().out
