"""launch/tpu_pod.sh: the exact gcloud command lines of a dry run; and, against a fake `gcloud` that runs each
worker's command here, per-worker logs, arguments that arrive intact, re-creation after a preemption."""

import os
import shlex
import shutil
import signal
import stat
import subprocess
import time

import pytest

from tests.launch import LAUNCH, run_script

COMMAND = ["t5scale", "train", "--gin_file=models/small.gin", "--gin_file=runs/pretrain.gin",
           "--gin.MODEL_DIR='gs://b/x'"]
REMOTE_PREFIX = ('set -o pipefail; export PATH="$HOME/.local/bin:$PATH"; w=$(curl -s -H Metadata-Flavor:Google '
                 'http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number); ')
REMOTE_SUFFIX = ' 2>&1 | sed -u "s/^/[worker $w] /"'


@pytest.fixture(scope="module")
def no_gcloud(tmp_path_factory):
    """PATH with a `gcloud` that fails: a dry run, and a test gone wrong, must never reach a real one."""
    bin_dir = tmp_path_factory.mktemp("no_gcloud")
    (bin_dir / "gcloud").write_text("#!/bin/sh\necho 'gcloud called' >&2\nexit 99\n")
    (bin_dir / "gcloud").chmod(stat.S_IRWXU)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}"}


def dry_run(*args, env):
    result = run_script("tpu_pod.sh", "--dry-run", *args, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return [shlex.split(line) for line in result.stdout.splitlines()]


def test_dry_run_of_a_tpu_vm_slice(no_gcloud):
    lines = dry_run("--name", "t5-small", "--zone", "us-central2-b", "--accelerator", "v4-32", "--", *COMMAND,
                    env=no_gcloud)
    tpu_vm = ["gcloud", "compute", "tpus", "tpu-vm"]
    assert lines == [
        [*tpu_vm, "describe", "t5-small", "--zone=us-central2-b", "--format=value(state)"],
        [*tpu_vm, "create", "t5-small", "--zone=us-central2-b", "--accelerator-type=v4-32",
         "--version=tpu-ubuntu2204-base"],
        [*tpu_vm, "ssh", "t5-small", "--zone=us-central2-b", "--worker=all",
         "--command=python3 -m pip install --upgrade \"t5scale[tpu]\""],
        [*tpu_vm, "ssh", "t5-small", "--zone=us-central2-b", "--worker=all",
         "--command=" + REMOTE_PREFIX + " ".join(COMMAND[:4]) + " \"--gin.MODEL_DIR='gs://b/x'\"" + REMOTE_SUFFIX],
        [*tpu_vm, "delete", "t5-small", "--zone=us-central2-b", "--quiet"],
    ]
    # The worker's shell gets back exactly the user's words.
    remote = lines[3][-1].removeprefix("--command=" + REMOTE_PREFIX).removesuffix(REMOTE_SUFFIX)
    assert shlex.split(remote) == COMMAND


def test_dry_run_of_a_spot_queued_resource_sweep_with_a_gs_wheel(no_gcloud):
    lines = dry_run("--name", "exp", "--zone", "us-east5-a", "--accelerator", "v6e-16", "--queued", "--spot",
                    "--project", "my-proj", "--install", "gs://b/dist/t5scale-0.1-py3-none-any.whl", "--runs", "2",
                    "--keep", "--", "t5scale", "sweep", "--gin_file=sweeps/x.gin", env=no_gcloud)
    qr = ["gcloud", "compute", "tpus", "queued-resources"]
    flags = ["--zone=us-east5-a", "--project=my-proj"]
    expected = []
    for i in range(2):
        expected += [
            [*qr, "describe", f"exp-{i}", *flags, "--format=value(state.state)"],
            [*qr, "create", f"exp-{i}", f"--node-id=exp-{i}", *flags, "--accelerator-type=v6e-16",
             "--runtime-version=v2-alpha-tpuv6e", "--spot"],
            [*qr, "describe", f"exp-{i}", *flags, "--format=value(state.state)"],  # until ACTIVE
            ["gcloud", "compute", "tpus", "tpu-vm", "ssh", f"exp-{i}", *flags, "--worker=all",
             "--command=gcloud storage cp gs://b/dist/t5scale-0.1-py3-none-any.whl /tmp/ && "
             "python3 -m pip install --upgrade \"/tmp/t5scale-0.1-py3-none-any.whl[tpu]\""],
            ["gcloud", "compute", "tpus", "tpu-vm", "ssh", f"exp-{i}", *flags, "--worker=all",
             f"--command={REMOTE_PREFIX}t5scale sweep --gin_file=sweeps/x.gin --run_index={i}{REMOTE_SUFFIX}"],
        ]  # --keep: no delete
    assert lines == expected


def test_a_local_wheel_is_copied_to_every_worker(no_gcloud):
    lines = dry_run("--name", "n", "--zone", "z", "--accelerator", "v5litepod-16", "--install", "dist/t5scale.whl",
                    "--", "t5scale", "eval", env=no_gcloud)
    assert lines[1][-1] == "--version=v2-alpha-tpuv5-lite"
    assert lines[2] == ["gcloud", "compute", "tpus", "tpu-vm", "scp", "dist/t5scale.whl", "n:/tmp/", "--zone=z",
                        "--worker=all"]
    assert lines[3][-1] == "--command=python3 -m pip install --upgrade \"/tmp/t5scale.whl[tpu]\""


@pytest.mark.parametrize("accelerator, version", [
    ("v6e-8", "v2-alpha-tpuv6e"), ("v5p-128", "v2-alpha-tpuv5"), ("v5litepod-256", "v2-alpha-tpuv5-lite"),
    ("v3-32", "tpu-ubuntu2204-base")])
def test_default_software_version_follows_the_accelerator(no_gcloud, accelerator, version):
    lines = dry_run("--name", "n", "--zone", "z", "--accelerator", accelerator, "--", "t5scale", "train", env=no_gcloud)
    assert lines[1][-1] == f"--version={version}"


def test_help():
    result = run_script("tpu_pod.sh", "--help")
    assert result.returncode == 0 and result.stdout.startswith("Usage: launch/tpu_pod.sh --name NAME")
    assert "--worker=all" in result.stdout


GOOD = ["--name", "n", "--zone", "z", "--accelerator", "v4-8"]


@pytest.mark.parametrize("args, message", [
    (["--zone", "z", "--accelerator", "v4-8", "--", "t5scale"], "--name is required"),
    (["--name", "n", "--accelerator", "v4-8", "--", "t5scale"], "--zone is required"),
    (["--name", "n", "--zone", "z", "--", "t5scale"], "--accelerator is required (e.g. v4-32)"),
    ([*GOOD], "no COMMAND given (put it after --, e.g. -- t5scale train --gin_file=...)"),
    ([*GOOD, "t5scale", "train"], "unknown argument 't5scale' (the command goes after --)"),
    (["--name", "--zone", "z"], "--name needs a value"),
    (["--name", "My_TPU", "--zone", "z", "--accelerator", "v4-8", "--", "x"],
     "--name 'My_TPU': lowercase letters, digits and '-' only"),
    (["--name", "n", "--zone", "z", "--accelerator", "tpu", "--", "x"],
     "--accelerator 'tpu' is not a TPU type like v4-32"),
    (["--name", "n", "--zone", "z", "--accelerator", "v7x-8", "--", "x"],
     "no default --version for 'v7x-8'; pass --version (see Cloud TPU's 'TPU software versions')"),
    ([*GOOD, "--runs", "two", "--", "x"], "--runs must be a number, not 'two'"),
    ([*GOOD, "--install", "gs://b/t5.tgz", "--", "x"], "--install 'gs://b/t5.tgz': a gs:// path must be a .whl"),
    ([*GOOD, "--install", "no/such.whl", "--", "x"], "--install: no wheel at 'no/such.whl'"),
])
def test_a_bad_or_missing_argument_is_one_clear_error(no_gcloud, args, message):
    result = run_script("tpu_pod.sh", *args, env=no_gcloud)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [f"tpu_pod.sh: {message}", "Try 'launch/tpu_pod.sh --help'."]


# A stand-in for gcloud: remembers each slice's state in a file; `ssh --worker=all` runs the command here once per
# worker (2 workers), with a `curl` that answers the metadata server's agent-worker-number.
FAKE_GCLOUD = r"""#!/usr/bin/env bash
state=$FAKE/state-$5  # $5: the slice
case "$3 $4" in
  "tpu-vm describe" | "queued-resources describe")
    echo "describe" >>"$FAKE/calls"; [[ -s $state ]] || exit 1; cat "$state" ;;
  "tpu-vm create") echo create >>"$FAKE/calls"; sleep "${FAKE_CREATE_S:-0}"; echo READY >"$state" ;;
  "queued-resources create") echo create >>"$FAKE/calls"; echo ACTIVE >"$state" ;;
  "tpu-vm delete" | "queued-resources delete") echo delete >>"$FAKE/calls"; rm -f "$state" ;;
  "tpu-vm ssh")
    for arg; do [[ $arg == --command=* ]] && command=${arg#--command=}; done
    [[ " $* " == *" --worker=all "* ]] || { echo "not on all workers" >&2; exit 3; }
    if [[ $command == *"pip install"* ]]; then echo install >>"$FAKE/calls"; exit 0; fi
    echo run >>"$FAKE/calls"
    for worker in 0 1; do FAKE_WORKER=$worker bash -c "$command" || exit; done
    if [[ -n ${FAKE_PREEMPT:-} && ! -e $FAKE/preempted ]]; then
      touch "$FAKE/preempted"; echo "$FAKE_PREEMPT" >"$state"; exit 255  # the slice goes away mid-run
    fi ;;
  *) echo "fake gcloud: unexpected $*" >&2; exit 9 ;;
esac
"""


@pytest.fixture
def fake(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in {"gcloud": FAKE_GCLOUD, "curl": "#!/bin/sh\necho \"$FAKE_WORKER\"\n"}.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(stat.S_IRWXU)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE": str(tmp_path), "T5SCALE_TPU_POLL_S": "0"}
    return tmp_path, env


PRINT_ARGS = ["python3", "-c", "import sys; print(sys.argv[1:])", "--gin.MODEL_DIR='gs://b/x'", "two words"]


def calls(tmp_path):
    return (tmp_path / "calls").read_text().split()


def test_every_worker_runs_the_command_with_its_words_intact_and_logs_apart(fake):
    tmp_path, env = fake
    result = run_script("tpu_pod.sh", *GOOD, "--log-dir", str(tmp_path / "logs"), "--", *PRINT_ARGS, env=env)
    assert result.returncode == 0, result.stderr
    assert calls(tmp_path) == ["describe", "create", "install", "run", "delete"]
    for worker in (0, 1):
        assert (tmp_path / "logs" / f"worker_{worker}.log").read_text() == f"{PRINT_ARGS[3:]}\n"
    all_lines = (tmp_path / "logs" / "all.log").read_text().splitlines()
    assert [line[:10] for line in all_lines if line.startswith("[worker")] == ["[worker 0]", "[worker 1]"]


@pytest.mark.parametrize("queued, preempted_state", [(False, "PREEMPTED"), (True, "SUSPENDED")])
def test_a_preempted_slice_is_created_again_and_the_command_rerun(fake, queued, preempted_state):
    tmp_path, env = fake
    result = run_script("tpu_pod.sh", *GOOD, *(["--queued"] if queued else []), "--log-dir", str(tmp_path / "logs"),
                        "--", *PRINT_ARGS, env={**env, "FAKE_PREEMPT": preempted_state})
    assert result.returncode == 0, result.stderr
    assert f"slice n is {preempted_state} (preempted?); creating it again" in result.stderr
    created = ["create", "describe"] if queued else ["create"]  # a queued resource is polled until ACTIVE
    assert calls(tmp_path) == ["describe", *created, "install", "run", "describe",  # preempted
                               "describe", "delete", *created, "install", "run", "delete"]
    assert (tmp_path / "logs" / "worker_1.log").read_text().count("two words") == 2  # both attempts


def test_a_failing_command_on_a_healthy_slice_is_not_retried_and_keeps_the_slice(fake):
    tmp_path, env = fake
    result = run_script("tpu_pod.sh", *GOOD, "--log-dir", str(tmp_path / "logs"), "--", "sh", "-c", "exit 3",
                        env=env)
    assert result.returncode == 3
    assert "tpu_pod.sh: COMMAND failed (exit 3) on n; kept it" in result.stderr
    assert calls(tmp_path) == ["describe", "create", "install", "run", "describe"]


def test_ctrl_c_says_how_to_delete_the_slice(fake):
    tmp_path, env = fake
    launcher = subprocess.Popen(["bash", str(LAUNCH / "tpu_pod.sh"), *GOOD, "--project", "p", "--log-dir",
                                 str(tmp_path / "logs"), "--", "true"],
                                env={**os.environ, **env, "FAKE_CREATE_S": "3"}, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True,
                                # a shell ignores a signal it was started with ignored (as every job started
                                # with & in a script is for SIGINT): give the launcher the default
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 30
    while not (tmp_path / "calls").exists() or "create" not in (tmp_path / "calls").read_text():
        assert time.time() < deadline and launcher.poll() is None
        time.sleep(0.1)
    # As a terminal's Ctrl-C does: to the whole foreground process group. (SIGINT to bash alone, while it waits
    # for a child that does not die of it, is ignored by bash's wait-and-cooperative-exit rule: flaky.)
    os.killpg(launcher.pid, signal.SIGINT)
    out, err = launcher.communicate(timeout=30)
    assert launcher.returncode == 130, err
    assert err.splitlines()[-1] == ("tpu_pod.sh: interrupted; slices keep running (and billing) until deleted: "
                                    "gcloud compute tpus tpu-vm delete n --zone=z --project=p")


def test_a_sweep_gives_each_run_its_own_slice_and_run_index(fake):
    tmp_path, env = fake
    result = run_script("tpu_pod.sh", *GOOD, "--runs", "2", "--log-dir", str(tmp_path / "logs"), "--",
                        "python3", "-c", "import sys; print(sys.argv[1:])", env=env)
    assert result.returncode == 0, result.stderr
    assert sorted(calls(tmp_path)) == sorted(["describe", "create", "install", "run", "delete"] * 2)
    for i in range(2):
        log = tmp_path / "logs" / f"n-{i}" / "worker_0.log"
        assert log.read_text() == f"['--run_index={i}']\n"


@pytest.mark.skipif(shutil.which("gcloud") is None, reason="needs the Google Cloud SDK's gcloud (offline is fine)")
def test_every_gcloud_line_of_a_dry_run_parses_with_the_real_gcloud(no_gcloud, tmp_path):
    # Without an account or a project (a fresh CLOUDSDK_CONFIG) gcloud stops after parsing the arguments, before
    # any API call: an unknown flag says "unrecognized arguments", a known one complains about project/account.
    lines = dry_run("--name", "t5", "--zone", "us-central2-b", "--accelerator", "v4-32", "--spot", "--", *COMMAND,
                    env=no_gcloud)
    lines += dry_run("--name", "t5", "--zone", "us-central2-b", "--accelerator", "v4-32", "--queued", "--spot",
                     "--install", "dist/x.whl", "--", *COMMAND, env=no_gcloud)
    lines.append(["gcloud", "compute", "tpus", "queued-resources", "delete", "t5", "--zone=z", "--force", "--quiet"])
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "CLOUDSDK_CONFIG": str(tmp_path / "gcloud"),
           "CLOUDSDK_API_ENDPOINT_OVERRIDES_TPU": "http://127.0.0.1:9/"}
    control = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "t5", "--zone=z", "--worker=all", "--no-such-flag"]
    for line in [control, *{tuple(line) for line in lines}]:
        result = subprocess.run(line, env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert result.returncode != 0
        if line is control:
            assert "unrecognized arguments: --no-such-flag" in result.stderr
        else:
            assert "unrecognized" not in result.stderr and (
                "Failed to find attribute [project]" in result.stderr
                or "You do not currently have an active account selected" in result.stderr), (line, result.stderr)
