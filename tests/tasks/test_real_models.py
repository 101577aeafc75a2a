"""End to end on the real bundled MiniLM: what a user runs with `deltatune demo`, made small."""

import json

import pytest

from deltatune.cli import main
from deltatune.compare.demo import demo_data_dir
from helpers.paths import ASSETS


@pytest.mark.slow
def test_lora_on_bundled_minilm_learns_sst2(tmp_path, capsys):
    data = demo_data_dir()
    out = tmp_path / "run"
    code = main(
        [
            "train",
            "model.name=minilm-l6",
            f"data.train={data / 'sst2_train_sample.tsv'}",
            f"data.validation={data / 'sst2_dev.tsv'}",
            "data.text_field=sentence",
            "data.label_names=[negative, positive]",
            "data.max_train_samples=1280",
            "train.epochs=1",
            "train.progress=false",
            "--output-dir",
            str(out),
            "--json",
        ]
    )
    assert code == 0
    report = json.loads((out / "eval_report.json").read_text())
    # 80 steps on 1,280 sentences (one pass; auto would take 3):
    # well above the untuned model (random head, ~0.5)
    assert report["base"]["accuracy"] < 0.6
    assert report["validation"]["accuracy"] > 0.7
    assert main(["predict", str(out), "a gorgeous, witty, seductive movie.", "--json"]) == 0
    capsys.readouterr()


@pytest.mark.slow
def test_sft_lora_on_bundled_smollm2(tmp_path, capsys):
    """What `configs/sft_alpaca_lora.yaml` does, made small: 24 Alpaca rows, held-out loss drops."""
    rows = json.load(open(ASSETS / "alpaca_sample.json"))
    (tmp_path / "train.json").write_text(json.dumps(rows[:24]))
    (tmp_path / "val.json").write_text(json.dumps(rows[48:64]))
    out = tmp_path / "run"
    code = main(
        [
            "train",
            "configs/sft_alpaca_lora.yaml",
            f"data.train={tmp_path / 'train.json'}",
            f"data.validation={tmp_path / 'val.json'}",
            "data.validation_split=null",
            "data.max_train_samples=null",
            "train.learning_rate=1e-3",
            "generate.eval_samples=2",
            "generate.max_new_tokens=8",
            "train.progress=false",
            "--output-dir",
            str(out),
            "--json",
        ]
    )
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["template"] == "chat" and summary["tuned_loss"] < summary["base_loss"]
    assert "## Samples" in (out / "eval_report.md").read_text()
    capsys.readouterr()
    assert main(["generate", str(out), "What is the capital of France?", "--max-new-tokens", "8"]) == 0
    assert capsys.readouterr().out.strip()
