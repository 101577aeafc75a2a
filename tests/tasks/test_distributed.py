"""Two CPU processes (gloo, through torchrun + Accelerate) with per-device batch 4 reach the same
weights as one process with batch 8."""

import json
import os
import shutil
import subprocess
import sys

import torch
from safetensors.torch import load_file

from deltatune.models import make_tiny_model_dir
from helpers.paths import ASSETS

ROWS = [
    {"text": " ".join("abcdefghijklmnopqrstuvwxyz"[i % 26] * (1 + i % 5)), "label": i % 2} for i in range(64)
]


def run(args, nproc=None, timeout=600):
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "deltatune", *args]
    if nproc:
        torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
        cmd = [torchrun, "--standalone", f"--nproc_per_node={nproc}", "-m", "deltatune", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def one_vs_two_processes(common, tmp_path):
    """Run ``common`` with batch 8 in one process and batch 4 in two; return both adapters."""
    one = run([*common, "train.batch_size=8", "--output-dir", str(tmp_path / "one")])
    assert one.returncode == 0, one.stderr[-3000:]
    two = run([*common, "train.batch_size=4", "--output-dir", str(tmp_path / "two")], nproc=2)
    assert two.returncode == 0, two.stderr[-3000:]
    a = load_file(str(tmp_path / "one" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "two" / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-5), key


def test_two_processes_equal_one_with_double_batch(tmp_path):
    model = make_tiny_model_dir("bert", tmp_path / "bert")
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    common = [
        "train",
        f"model.name={model}",
        f"data.train={train}",
        "train.max_steps=5",
        "train.group_by_length=false",
        "train.progress=false",
        "train.precision=fp32",
        "method.dropout=0",
        "train.checkpoint_every=100",
    ]
    one_vs_two_processes(common, tmp_path)
    # only rank 0 wrote the log: one end record
    ends = [line for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines() if '"end"' in line]
    assert len(ends) == 1


def test_sft_two_processes_equal_one_with_double_batch(tmp_path):
    """Token-level loss: target tokens are counted across processes, so the update is the same."""
    model = make_tiny_model_dir("llama", tmp_path / "llama", task="causal_lm")
    rows = json.load(open(ASSETS / "alpaca_sample.json"))[:48]
    train = tmp_path / "train.json"
    train.write_text(json.dumps(rows))
    common = [
        "train",
        "task=sft",
        f"model.name={model}",
        f"data.train={train}",
        "data.max_length=96",
        "train.max_steps=3",
        "train.group_by_length=false",
        "train.progress=false",
        "train.precision=fp32",
        "train.checkpoint_every=100",
        "generate.eval_samples=0",
    ]
    one_vs_two_processes(common, tmp_path)
