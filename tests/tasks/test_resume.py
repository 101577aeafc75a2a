"""Crash-safe checkpoints: SIGKILL mid-run, resume, and get the same weights as an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys

from safetensors.torch import load_file

from deltatune.models import make_tiny_model_dir
from deltatune.training.checkpoint import list_checkpoints

ROWS = [
    {"text": t, "label": i % 3}
    for i, t in enumerate("a b c d e f g h i j k l m n o p q r s t u v w x y z".split() * 3)
]


def run_cli(args, fault_at=None):
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error"}
    env.pop("DELTATUNE_FAULT_AT_STEP", None)
    if fault_at is not None:
        env["DELTATUNE_FAULT_AT_STEP"] = str(fault_at)
    return subprocess.run(
        [sys.executable, "-m", "deltatune", *args], env=env, capture_output=True, text=True, timeout=600
    )


def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
    model = make_tiny_model_dir("bert", tmp_path / "bert")
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    common = [
        "train",
        f"model.name={model}",
        f"data.train={train}",
        f"data.validation={train}",
        "train.max_steps=12",
        "train.batch_size=4",
        "train.checkpoint_every=4",
        "train.eval_every=6",
        "train.progress=false",
        "train.precision=fp32",
        "method.dropout=0.1",
    ]  # dropout: the RNG state must be restored too
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
    from deltatune.runs.directory import prepare_run_dir

    first = load_config(None, ["data.train=t.jsonl", f"output_dir={tmp_path}"])
    prepare_run_dir(first)
    changed = load_config(
        None, ["data.train=t.jsonl", f"output_dir={tmp_path}", "train.resume=true", "train.learning_rate=0.1"]
    )
    with pytest.raises(UserError, match="train.learning_rate"):
        prepare_run_dir(changed)
    same = load_config(None, ["data.train=t.jsonl", f"output_dir={tmp_path}", "train.resume=true"])
    assert prepare_run_dir(same).dir == tmp_path


def _lines(run_dir):
    """metrics.jsonl without timing fields and resume markers: what must match an uninterrupted run."""
    out = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record.get("event") == "resume":
            continue
        out.append(
            {
                k: v
                for k, v in record.items()
                if k not in ("time", "tokens_per_s", "train_seconds", "train_tokens_per_s", "peak_memory_mb")
            }
        )
    return out


def _tree(path):
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_resumed_runs_report_like_uninterrupted_ones(tmp_path):
    model = make_tiny_model_dir("bert", tmp_path / "bert")
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    common = [
        "train",
        f"model.name={model}",
        f"data.train={train}",
        "train.max_steps=12",
        "train.batch_size=4",
        "train.checkpoint_every=4",
        "train.log_every=5",
        "train.progress=false",
        "train.precision=fp32",
    ]
    assert run_cli([*common, "--output-dir", str(tmp_path / "a")]).returncode == 0
    for fault in (8, 12):  # mid-run (a log window spans the kill), and after the last step
        out = tmp_path / f"killed-{fault}"
        assert run_cli([*common, "--output-dir", str(out)], fault_at=fault).returncode == -signal.SIGKILL
        before = _tree(out)
        again = run_cli([*common, "--output-dir", str(out)])  # forgot --resume: refused, nothing touched
        assert again.returncode == 2 and "--resume" in again.stderr and "--overwrite" in again.stderr
        assert _tree(out) == before
        assert run_cli([*common, "--output-dir", str(out), "--resume"]).returncode == 0
        a, b = (json.loads((d / "summary.json").read_text()) for d in (tmp_path / "a", out))
        for key in ("steps", "train_tokens", "best_step", "skipped_steps"):
            assert a[key] == b[key], (fault, key)
        assert b["train_tokens_per_s"] > 0
        assert _lines(out) == _lines(tmp_path / "a"), fault


def test_overwrite_keeps_the_old_run_until_the_new_one_finishes(tmp_path):
    model = make_tiny_model_dir("bert", tmp_path / "bert")
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    common = [
        "train",
        f"model.name={model}",
        "train.max_steps=4",
        "train.batch_size=4",
        "train.progress=false",
        "train.precision=fp32",
        "--output-dir",
        str(tmp_path / "run"),
    ]
    assert run_cli([*common, f"data.train={train}"]).returncode == 0
    before = _tree(tmp_path / "run")
    failed = run_cli([*common, f"data.train={tmp_path / 'missing.jsonl'}", "--overwrite"])
    assert failed.returncode == 2 and "missing.jsonl" in failed.stderr
    assert _tree(tmp_path / "run") == before
    killed = run_cli([*common, f"data.train={train}", "--overwrite", "train.checkpoint_every=2"], fault_at=2)
    assert killed.returncode == -signal.SIGKILL and _tree(tmp_path / "run") == before
    done = run_cli([*common, f"data.train={train}", "--overwrite", "train.max_steps=2"])
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == 2
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".run")) == []  # no leftovers


def test_resume_refuses_changed_data_unless_allowed(tmp_path):
    model = make_tiny_model_dir("bert", tmp_path / "bert")
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    common = [
        "train",
        f"model.name={model}",
        f"data.train={train}",
        "train.max_steps=8",
        "train.batch_size=4",
        "train.checkpoint_every=4",
        "train.progress=false",
        "train.precision=fp32",
        "--output-dir",
        str(tmp_path / "run"),
    ]
    assert run_cli(common, fault_at=4).returncode == -signal.SIGKILL
    train.write_text("".join(json.dumps({**r, "label": (r["label"] + 1) % 3}) + "\n" for r in ROWS))
    refused = run_cli([*common, "--resume"])
    assert refused.returncode == 2 and "data.train" in refused.stderr and "changed" in refused.stderr
    allowed = run_cli([*common, "--resume", "--allow-data-change"])
    assert allowed.returncode == 0, allowed.stderr


def test_resume_on_a_missing_directory_says_so(tmp_path):
    model = make_tiny_model_dir("bert", tmp_path / "bert")
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    done = run_cli(
        [
            "train",
            f"model.name={model}",
            f"data.train={train}",
            "train.max_steps=2",
            "train.progress=false",
            "--output-dir",
            str(tmp_path / "new"),
            "--resume",
        ]
    )
    assert done.returncode == 0 and "nothing to resume" in done.stderr
