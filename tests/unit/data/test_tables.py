"""Columnar data sources: Parquet (file, glob, folder of shards), save_to_disk folders, hub ids offline."""

import json

import pytest

from deltatune.cli import main
from deltatune.data.readers import read_rows
from deltatune.errors import DataError
from deltatune.models import make_tiny_model_dir

ROWS = [
    {"text": t, "label": "pos" if i % 2 else "neg"}
    for i, t in enumerate(
        "a great film|a dull mess|wonderful acting|terrible acting|i loved it|i hated it|superb|awful".split(
            "|"
        )
        * 4
    )
]


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    import datasets

    root = tmp_path_factory.mktemp("tables")
    ds = datasets.Dataset.from_list(ROWS)
    ds.to_parquet(str(root / "train.parquet"))
    (root / "shards").mkdir()
    ds.select(range(16)).to_parquet(str(root / "shards" / "train-00000.parquet"))
    ds.select(range(16, 32)).to_parquet(str(root / "shards" / "train-00001.parquet"))
    ds.save_to_disk(str(root / "saved"))
    datasets.Dataset.from_list([{"text": "fine", "label": "pos"}, {"text": "", "label": "neg"}]).to_parquet(
        str(root / "bad.parquet")
    )
    return root


def test_every_columnar_source_reads_the_same_rows(tables):
    expected = [dict(r) for r in ROWS]
    for source in ("train.parquet", "shards", "shards/train-*.parquet", "saved"):
        rows = read_rows(str(tables / source))
        assert [dict(r) for r in rows] == expected, source
        assert rows[4].line == 5  # the row number stands in for the line


def test_errors_name_the_row_and_hub_ids_fail_clearly_offline(tables, monkeypatch):
    from deltatune.tasks.classify.examples import LabelSet, rows_to_examples

    rows = read_rows(str(tables / "bad.parquet"))
    with pytest.raises(DataError, match=r"bad.parquet, row 2, field 'text'"):
        rows_to_examples(rows, labels=LabelSet.from_rows(rows))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match="cannot be reached.*save_to_disk"):
        read_rows("hf://org/some-dataset?split=train")
    with pytest.raises(DataError, match="no .parquet file"):
        read_rows(str(tables / "nothing-*.parquet"))
    (tables / "damaged.parquet").write_bytes(b"x")
    with pytest.raises(DataError, match="damaged.parquet.*not a readable Parquet file"):
        read_rows(str(tables / "damaged.parquet"))


def test_training_from_parquet_through_the_cli(tables, tmp_path, capsys):
    model = make_tiny_model_dir("bert", tmp_path / "bert", task="classify")
    code = main(
        [
            "train",
            f"model.name={model}",
            f"data.train={tables / 'shards'}",
            f"data.validation={tables / 'train.parquet'}",
            "train.max_steps=2",
            "train.progress=false",
            "train.precision=fp32",
            "--output-dir",
            str(tmp_path / "run"),
            "--json",
        ]
    )
    assert code == 0 and json.loads(capsys.readouterr().out)["steps"] == 2
