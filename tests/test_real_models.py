"""End to end on the real bundled MiniLM: what a user runs with `deltatune demo`, made small."""

import json

import pytest

from deltatune.cli import main
from deltatune.demo import demo_data_dir


@pytest.mark.slow
def test_lora_on_bundled_minilm_learns_sst2(tmp_path, capsys):
    data = demo_data_dir()
    out = tmp_path / "run"
    code = main(["train", "model.name=minilm-l6", f"data.train={data / 'sst2_train_sample.tsv'}",
                 f"data.validation={data / 'sst2_dev.tsv'}", "data.text_field=sentence",
                 "data.label_names=[negative, positive]", "data.max_train_samples=1280",
                 "train.progress=false", "--output-dir", str(out), "--json"])
    assert code == 0
    report = json.loads((out / "eval_report.json").read_text())
    # 40 steps on 1,280 sentences: well above the untuned model (random head, ~0.5)
    assert report["base"]["accuracy"] < 0.6
    assert report["validation"]["accuracy"] > 0.7
    assert main(["predict", str(out), "a gorgeous, witty, seductive movie.", "--json"]) == 0
    capsys.readouterr()
