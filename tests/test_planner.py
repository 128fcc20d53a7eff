"""The planner on tiny configs: the CLI in a child process with its own fake device count, and the depth
extrapolation against a full-depth compile."""
import json
import subprocess
import sys

import pytest

from mend_jax import planner
from mend_jax.errors import MendJaxError

TINY = {"model_type": "llama", "vocab_size": 128, "hidden_size": 32, "intermediate_size": 64,
        "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8,
        "max_position_embeddings": 64}
SMALL = dict(edits=4, tokens=16, target_len=4, rank=8, edit_blocks=1)


def test_cli_plans_in_a_child_process_with_its_own_device_count(tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(TINY))
    out, md = tmp_path / "plan.json", tmp_path / "plan.md"
    code = "import sys; from mend_jax import cli; sys.exit(cli.main(sys.argv[1:]))"
    # the parent has 1 CPU device: the planner must start a child with 16 fake devices itself
    r = subprocess.run([sys.executable, "-c", code, "plan", "--model", str(cfg), "--mesh", "16",
                        "--platform", "tpu-v5e,h100", "--edits", "4", "--tokens", "16", "--target-len", "4",
                        "--rank", "8", "--edit-blocks", "1", "--json", str(out), "--markdown", str(md)],
                       capture_output=True, text=True, timeout=600,
                       env={"PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""})
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    (plan,) = res["results"]
    assert plan["mesh"] == {"data": 1, "fsdp": 2, "tensor": 8, "devices": 16, "how": plan["mesh"]["how"]}
    assert "16 devices -> data=1 fsdp=2 tensor=8" in plan["mesh"]["how"]
    assert plan["compiler"] == "XLA:CPU with 16 devices"
    assert plan["depth"] == {"full": 4, "compiled": [4], "extrapolated": False}
    for step in ("edit", "train"):
        s = plan["steps"][step]
        assert s["peak"] == s["arguments"] + s["outputs"] - s["aliased"] + s["temporaries"] > 0
        assert s["flops"] > 0 and s["weights_bytes"] > 0 and s["editor_bytes"] > 0
        assert set(s["platforms"]) == {"tpu-v5e", "h100"} and s["platforms"]["h100"]["verdict"] == "fits"
    # bf16 weights, 2-D sharded over 16 devices: exactly the shard sizes (norms replicated)
    n_params = plan["params"]
    assert plan["steps"]["edit"]["weights_bytes"] < 2 * n_params / 16 * 1.2
    assert plan["steps"]["train"]["aliased"] > 0  # the train state is donated
    assert "--model" in res["command"] and "mend-jax plan" in res["command"]
    text = md.read_text()
    assert "| model |" in text and "fits" in text and res["command"] in text
    rows = r.stdout.split("\n\n")[0].splitlines()
    assert rows[0].startswith("model") and "tpu-v5e (16 GiB)" in rows[0] and "h100 (80 GiB)" in rows[0]
    assert len(rows) == 4 and rows[2].startswith(cfg.parent.name) and "fits" in rows[2]
    assert plan["model"] == cfg.parent.name


def test_extrapolated_depth_matches_full_depth():
    """In-process (the test process has 8 fake CPU devices): compile at depths 2 and 4 and extrapolate to 7 layers,
    against a real 7-layer compile."""
    cfg = planner.with_depth(planner.MODELS["tiny-llama"][0](), 7)
    kw = dict(SMALL, steps=("edit",))
    ext = planner.plan(cfg, (1, 2, 2), "h100", **kw)
    full = planner.plan(cfg, (1, 2, 2), "h100", full_depth=True, **kw)
    assert ext["depth"]["compiled"] == [2, 4] and full["depth"]["compiled"] == [7]
    e, f = ext["steps"]["edit"], full["steps"]["edit"]
    assert e["arguments"] == f["arguments"] and e["weights_bytes"] == f["weights_bytes"]
    assert e["flops"] == pytest.approx(f["flops"], rel=1e-3)
    assert e["peak"] == pytest.approx(f["peak"], rel=0.05)


def test_verdicts_and_arguments():
    assert planner.verdict(50 * planner.GiB, 0, 0, "h100")["verdict"] == "fits"
    assert planner.verdict(75 * planner.GiB, 0, 0, "h100")["verdict"] == "tight"
    v = planner.verdict(17 * planner.GiB, 197e12, 0, "tpu-v5e")
    assert v["verdict"] == "does not fit" and v["t_min_ms"] == pytest.approx(1000)
    assert planner.resolve_mesh("64")[0] == (1, 8, 8)
    assert planner.resolve_mesh("1x64x4") == ((1, 64, 4), "data=1 fsdp=64 tensor=4 (as given)")
    with pytest.raises(MendJaxError, match="device count"):
        planner.resolve_mesh("64x")
    with pytest.raises(MendJaxError, match="unknown model"):
        planner.resolve_model("llama9-1t")
    cfg, desc = planner.resolve_model("gptj-6b")
    assert cfg.family == "gpt2" and cfg.n_embd == 4096 and "GPT-J block not built" in desc
    assert planner.resolve_model("llama3-405b")[0].num_layers == 126


def test_cli_errors(capsys, monkeypatch):
    from mend_jax import cli
    monkeypatch.setattr(cli, "_EXTRA_COMMANDS", [planner.register_plan_command])
    assert cli.main(["plan", "--model", "nope", "--mesh", "8"]) == 2
    assert "unknown model 'nope'" in capsys.readouterr().err
    assert cli.main(["plan", "--model", "tiny-llama", "--mesh", "8", "--platform", "tpu-v9"]) == 2
    assert "unknown platform" in capsys.readouterr().err
