"""Crash-safe checkpoints: SIGKILL mid-run, resume, and get the same weights as an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys

from safetensors.torch import load_file

from deltatune.models import make_tiny_model_dir
from deltatune.training.checkpoint import list_checkpoints

ROWS = [{"text": t, "label": i % 3} for i, t in enumerate(
    "a b c d e f g h i j k l m n o p q r s t u v w x y z".split() * 3)]


def run_cli(args, fault_at=None):
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error"}
    env.pop("DELTATUNE_FAULT_AT_STEP", None)
    if fault_at is not None:
        env["DELTATUNE_FAULT_AT_STEP"] = str(fault_at)
    return subprocess.run([sys.executable, "-m", "deltatune", *args], env=env, capture_output=True,
                          text=True, timeout=600)


def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
    model = make_tiny_model_dir("bert", tmp_path / "bert")
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    common = ["train", f"model.name={model}", f"data.train={train}", f"data.validation={train}",
              "train.max_steps=12", "train.batch_size=4", "train.checkpoint_every=4",
              "train.eval_every=6", "train.progress=false", "train.precision=fp32",
              "method.dropout=0.1"]  # dropout: the RNG state must be restored too
    done = run_cli([*common, "--output-dir", str(tmp_path / "a")])
    assert done.returncode == 0, done.stderr

    killed = run_cli([*common, "--output-dir", str(tmp_path / "b")], fault_at=8)
    assert killed.returncode == -signal.SIGKILL
    steps = [s for s, _ in list_checkpoints(tmp_path / "b" / "checkpoints")]
    assert steps[-1] == 8 and not (tmp_path / "b" / "summary.json").exists()

    resumed = run_cli([*common, "--output-dir", str(tmp_path / "b"), "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    a = load_file(str(tmp_path / "a" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "b" / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert (a[key] == b[key]).all(), key
    log = (tmp_path / "b" / "metrics.jsonl").read_text()
    assert '"event": "resume"' in log

    # the finished run is not overwritten by a new one, and a changed config cannot resume
    again = run_cli([*common, "--output-dir", str(tmp_path / "b")])
    assert again.returncode == 2 and "already holds a finished run" in again.stderr


def test_resume_refuses_a_changed_config(tmp_path):
    import pytest

    from deltatune.config import load_config
    from deltatune.errors import UserError
    from deltatune.training.run import prepare_run_dir

    first = load_config(None, ["data.train=t.jsonl", f"output_dir={tmp_path}"])
    prepare_run_dir(first)
    changed = load_config(None, ["data.train=t.jsonl", f"output_dir={tmp_path}", "train.resume=true",
                                 "train.learning_rate=0.1"])
    with pytest.raises(UserError, match="train.learning_rate"):
        prepare_run_dir(changed)
    same = load_config(None, ["data.train=t.jsonl", f"output_dir={tmp_path}", "train.resume=true"])
    assert prepare_run_dir(same).dir == tmp_path
