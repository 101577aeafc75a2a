"""Tests for deltatune.data.readers and deltatune.tasks.classify.examples."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deltatune.data.readers import read_rows
from deltatune.errors import ConfigError, DataError, UserError
from deltatune.tasks.classify.examples import (
    Example,
    LabelSet,
    load_classification_data,
    rows_to_examples,
    stratified_sample,
    stratified_split,
)
from helpers.paths import ROOT

SST2_DEV = ROOT / "src" / "deltatune" / "demo_data" / "sst2_dev.tsv"


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def data_error(path: Path, fmt: str | None = None) -> DataError:
    """The DataError that reading ``path`` raises (it must name the file)."""
    with pytest.raises(DataError) as info:
        read_rows(path, fmt)
    assert str(path) in str(info.value)
    assert isinstance(info.value, UserError)
    return info.value


# ---------------------------------------------------------------- readers: happy paths


def test_jsonl_rows_carry_line_numbers_and_skip_blank_lines(tmp_path):
    path = write(tmp_path, "d.jsonl", '{"text": "a", "label": 1}\n\n  \n{"text": "b", "label": 0}\n')
    rows = read_rows(path)
    assert rows == [{"text": "a", "label": 1}, {"text": "b", "label": 0}]
    assert [r.line for r in rows] == [1, 4]
    assert rows[0].path == str(path)


def test_json_list_rows_get_the_line_where_each_object_starts(tmp_path):
    records = [{"text": "a", "label": "x"}, {"text": "b", "label": "y"}]
    path = write(tmp_path, "d.json", json.dumps(records, indent=2))
    rows = read_rows(path)
    assert rows == records
    assert [r.line for r in rows] == [2, 6]


def test_csv_handles_quoted_commas_and_multiline_fields(tmp_path):
    path = write(tmp_path, "d.csv", 'text,label\n"good, not great",1\n"two\nlines",0\nplain,1\n')
    rows = read_rows(path)
    assert [r["text"] for r in rows] == ["good, not great", "two\nlines", "plain"]
    assert [r.line for r in rows] == [2, 3, 5]
    assert rows[0]["label"] == "1"


def test_tsv_keeps_double_quotes_as_plain_characters(tmp_path):
    path = write(tmp_path, "d.tsv", 'sentence\tlabel\nthe " director \'s cut\t1\n"quoted start\t0\n')
    rows = read_rows(path)
    assert [r["sentence"] for r in rows] == ["the \" director 's cut", '"quoted start']
    assert [r.line for r in rows] == [2, 3]


def test_byte_order_mark_and_crlf_are_accepted(tmp_path):
    path = write(tmp_path, "d.csv", b"\xef\xbb\xbftext,label\r\nhi,1\r\n")
    rows = read_rows(path)
    assert rows == [{"text": "hi", "label": "1"}]


def test_format_argument_overrides_the_extension(tmp_path):
    path = write(tmp_path, "d.txt", "text\tlabel\nhi\t1\n")
    assert read_rows(path, "tsv") == [{"text": "hi", "label": "1"}]


# ---------------------------------------------------------------- readers: errors


def test_missing_file(tmp_path):
    error = data_error(tmp_path / "nope.jsonl")
    assert "file not found" in str(error)


@pytest.mark.parametrize("name", ["e.jsonl", "e.json", "e.csv", "e.tsv"])
def test_empty_file(tmp_path, name):
    assert "empty" in str(data_error(write(tmp_path, name, "\n  \n")))


def test_header_only_csv_has_no_rows(tmp_path):
    error = data_error(write(tmp_path, "h.csv", "text,label\n"))
    assert "no data rows" in str(error)


def test_empty_json_list_has_no_rows(tmp_path):
    assert "no rows" in str(data_error(write(tmp_path, "e.json", "[]")))


def test_malformed_jsonl_line_names_line_and_column(tmp_path):
    path = write(tmp_path, "bad.jsonl", '{"text": "a", "label": 1}\n{"text": "b" "label": 0}\n')
    error = data_error(path)
    assert error.line == 2
    assert "line 2" in str(error) and "not valid JSON" in str(error) and "column 14" in str(error)


def test_jsonl_line_that_is_not_an_object(tmp_path):
    error = data_error(write(tmp_path, "bad.jsonl", '{"text": "a"}\n["b", 0]\n'))
    assert "line 2" in str(error) and "expected a JSON object" in str(error)
    assert "got a list" in str(error)


def test_json_array_in_a_jsonl_file_gets_a_hint(tmp_path):
    error = data_error(write(tmp_path, "arr.jsonl", '[\n{"text": "a"}\n]\n'))
    assert "format: json" in str(error)


def test_json_item_that_is_not_an_object_names_item_and_line(tmp_path):
    error = data_error(write(tmp_path, "bad.json", '[\n  {"text": "a"},\n  "b"\n]'))
    assert "item 2" in str(error) and "line 3" in str(error)


def test_malformed_json_names_line(tmp_path):
    error = data_error(write(tmp_path, "bad.json", '[\n  {"text": "a"},\n  {"text": }\n]'))
    assert error.line == 3 and "not valid JSON" in str(error)


def test_json_top_level_must_be_a_list(tmp_path):
    error = data_error(write(tmp_path, "obj.json", '{"text": "a"}'))
    assert "list of objects" in str(error)


def test_json_lines_in_a_json_file_gets_a_hint(tmp_path):
    error = data_error(write(tmp_path, "lines.json", '{"text": "a"}\n{"text": "b"}\n'))
    assert "line 2" in str(error) and "format: jsonl" in str(error)


def test_non_utf8_byte_names_its_line_and_suggests_reencoding(tmp_path):
    path = write(tmp_path, "latin.csv", "text,label\nok,1\ncaf\xe9,0\n".encode("latin-1"))
    error = data_error(path)
    assert error.line == 3 and "line 3" in str(error)
    assert "0xe9" in str(error) and "UTF-8" in str(error)


def test_csv_row_with_too_few_columns_names_the_missing_column(tmp_path):
    error = data_error(write(tmp_path, "short.csv", "text,label\na,1\nb\n"))
    assert error.line == 3 and error.field == "label"
    assert "line 3" in str(error) and "field 'label'" in str(error) and "has 1 column but" in str(error)


def test_csv_row_with_an_unquoted_comma_suggests_quoting(tmp_path):
    error = data_error(write(tmp_path, "wide.csv", "text,label\ngood, not great,1\n"))
    assert error.line == 2 and "extra value" in str(error) and "double quotes" in str(error)


def test_tsv_row_with_an_extra_tab(tmp_path):
    error = data_error(write(tmp_path, "wide.tsv", "sentence\tlabel\na\tb\t1\n"))
    assert error.line == 2 and error.field == "label" and "tab" in str(error)


def test_csv_duplicate_header_names_the_column(tmp_path):
    error = data_error(write(tmp_path, "dup.csv", "text,text\na,b\n"))
    assert error.line == 1 and error.field == "text"


def test_unknown_extension_lists_formats_and_format_key(tmp_path):
    error = data_error(
        write(tmp_path, "d.xlsx", "x")
    )  # (.parquet was the example here until it was supported)
    message = str(error)
    assert ".xlsx" in message and "jsonl, json, csv, tsv" in message and "format:" in message


def test_unknown_format_argument(tmp_path):
    error = data_error(write(tmp_path, "d.csv", "text\na\n"), fmt="xml")
    assert "unknown format 'xml'" in str(error)


# ---------------------------------------------------------------- labels


def rows_of(tmp_path, name, content):
    return read_rows(write(tmp_path, name, content))


def test_integer_labels_from_tsv_strings_sort_numerically(tmp_path):
    rows = rows_of(tmp_path, "t.tsv", "text\tlabel\na\t10\nb\t2\nc\t2\n")
    labels = LabelSet.from_rows(rows)
    assert labels.is_integer and labels.values == [2, 10]
    assert labels.id2label == {0: "2", 1: "10"}
    assert labels.encode(10, "v.jsonl", 1) == 1 and labels.encode("2", "v.tsv", 1) == 0
    assert labels.encode(" 10 ", "v.tsv", 1) == 1 and labels.encode(2.0, "v.json", 1) == 0


def test_string_labels_sort_alphabetically(tmp_path):
    rows = rows_of(tmp_path, "t.jsonl", '{"label": "pos"}\n{"label": "neg"}\n{"label": "mixed"}\n')
    labels = LabelSet.from_rows(rows)
    assert labels.names == ["mixed", "neg", "pos"] and labels.label2id["pos"] == 2


def test_label_names_list_names_integer_labels_and_fixes_the_class_count(tmp_path):
    rows = rows_of(tmp_path, "t.jsonl", '{"label": 0}\n{"label": 2}\n')
    labels = LabelSet.from_rows(rows, label_names=["neg", "neutral", "pos"])
    assert labels.id2label == {0: "neg", 1: "neutral", 2: "pos"}
    assert labels.encode(2, "t", 1) == 2


def test_label_names_dict_renames_raw_values(tmp_path):
    rows = rows_of(tmp_path, "t.csv", "text,label\na,1\nb,5\n")
    labels = LabelSet.from_rows(rows, label_names={5: "great", "1": "awful"})
    assert labels.id2label == {0: "awful", 1: "great"}


def test_label_names_list_with_string_labels_is_a_config_error(tmp_path):
    rows = rows_of(tmp_path, "t.jsonl", '{"label": "pos"}\n')
    with pytest.raises(ConfigError, match="dict"):
        LabelSet.from_rows(rows, label_names=["neg", "pos"])


def test_label_outside_label_names_is_a_data_error(tmp_path):
    path = write(tmp_path, "t.jsonl", '{"label": 0}\n{"label": 3}\n')
    with pytest.raises(DataError) as info:
        LabelSet.from_rows(read_rows(path), label_names=["neg", "pos"])
    assert str(path) in str(info.value) and "line 2" in str(info.value)
    assert "label 3 has no name" in str(info.value)


def test_unseen_validation_label_names_file_line_and_training_labels(tmp_path):
    train = write(tmp_path, "train.csv", "text,label\na,neg\nb,pos\n")
    val = write(tmp_path, "val.csv", "text,label\nc,pos\nd,neutral\n")
    with pytest.raises(DataError) as info:
        load_classification_data(train, validation_path=val)
    message = str(info.value)
    assert str(val) in message and "line 3" in message and "field 'label'" in message
    assert "'neutral' was never seen in training" in message
    assert "training labels are: 'neg', 'pos'" in message


def test_empty_label_is_an_error(tmp_path):
    path = write(tmp_path, "t.csv", "text,label\na,1\nb,\n")
    with pytest.raises(DataError) as info:
        LabelSet.from_rows(read_rows(path))
    assert "line 3" in str(info.value) and "label is empty" in str(info.value)


# ---------------------------------------------------------------- rows to examples


def test_missing_text_field_suggests_the_closest_field(tmp_path):
    path = write(tmp_path, "t.tsv", "sentence\tlabel\na\t1\n")
    with pytest.raises(DataError) as info:
        rows_to_examples(read_rows(path), text_field="sentense", labels=None)
    message = str(info.value)
    assert str(path) in message and "line 2" in message and "field 'sentense'" in message
    assert "sentence, label" in message and "Did you mean 'sentence'" in message


def test_missing_label_field_names_the_config_key(tmp_path):
    path = write(tmp_path, "t.jsonl", '{"text": "a", "labels": 1}\n')
    with pytest.raises(DataError, match="label_field: labels"):
        LabelSet.from_rows(read_rows(path))


def test_text_must_be_non_empty_text(tmp_path):
    rows = rows_of(tmp_path, "t.jsonl", '{"text": 3.5}\n{"text": "  "}\n')
    with pytest.raises(DataError, match="line 2.*text is empty"):
        rows_to_examples(rows, labels=None)
    assert rows_to_examples(rows[:1], labels=None)[0].text == "3.5"
    rows = rows_of(tmp_path, "u.jsonl", '{"text": ["a"]}\n')
    with pytest.raises(DataError, match="expected text"):
        rows_to_examples(rows, labels=None)


def test_text_pairs_and_labels(tmp_path):
    rows = rows_of(tmp_path, "t.jsonl", '{"q": "a", "p": "b", "y": "yes"}\n')
    labels = LabelSet.from_rows(rows, "y")
    examples = rows_to_examples(rows, "q", "p", "y", labels)
    assert examples == [Example(text="a", text_pair="b", label=0, line=1)]


def test_prediction_file_without_labels(tmp_path):
    train = write(tmp_path, "train.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label": 0}\n')
    test = write(tmp_path, "test.jsonl", '{"text": "c"}\n')
    data = load_classification_data(train, test_path=test)
    assert data.validation is None
    assert data.test == [Example("c", None, None, 1)]


# ---------------------------------------------------------------- splits and samples


def make_examples(counts: dict[int, int]) -> list[Example]:
    examples = []
    for label, count in counts.items():
        examples += [Example(f"{label}-{i}", None, label, 0) for i in range(count)]
    return examples


def test_stratified_split_keeps_proportions_and_is_deterministic():
    examples = make_examples({0: 80, 1: 20})
    train, val = stratified_split(examples, 0.25, seed=3)
    assert len(val) == 25 and len(train) == 75
    assert sum(ex.label == 1 for ex in val) == 5
    assert (train, val) == stratified_split(examples, 0.25, seed=3)
    assert val != stratified_split(examples, 0.25, seed=4)[1]
    assert sorted(ex.text for ex in train + val) == sorted(ex.text for ex in examples)


def test_stratified_split_keeps_every_class_in_train():
    examples = make_examples({0: 10, 1: 2, 2: 1})
    train, val = stratified_split(examples, 0.9, seed=0)
    assert {ex.label for ex in train} == {0, 1, 2}
    assert len(val) == 10  # 9 of class 0 and 1 of class 1: the most the constraint allows


def test_stratified_split_rejects_bad_fractions():
    with pytest.raises(ConfigError, match="validation_split"):
        stratified_split(make_examples({0: 4}), 1.5, seed=0)


def test_stratified_sample_has_the_exact_size_and_every_class():
    examples = make_examples({0: 90, 1: 9, 2: 1})
    sample = stratified_sample(examples, 10, seed=1)
    assert len(sample) == 10 and {ex.label for ex in sample} == {0, 1, 2}
    assert sample == stratified_sample(examples, 10, seed=1)
    assert stratified_sample(examples, 500, seed=1) == examples


def test_load_with_validation_split_and_max_train_samples(tmp_path):
    lines = "".join(f"t{i},{i % 2}\n" for i in range(100))
    train = write(tmp_path, "train.csv", "text,label\n" + lines)
    data = load_classification_data(train, validation_split=0.2, max_train_samples=30, seed=7)
    assert len(data.validation) == 20 and len(data.train) == 30
    assert sum(ex.label for ex in data.train) == 15
    assert not {ex.text for ex in data.train} & {ex.text for ex in data.validation}
    again = load_classification_data(train, validation_split=0.2, max_train_samples=30, seed=7)
    assert again == data


def test_validation_file_and_split_together_is_a_config_error(tmp_path):
    train = write(tmp_path, "train.csv", "text,label\na,1\n")
    with pytest.raises(ConfigError, match="choose one"):
        load_classification_data(train, validation_path=train, validation_split=0.1)


def test_real_sst2_dev_file():
    rows = read_rows(SST2_DEV)
    assert len(rows) == 872 and set(rows[0]) == {"sentence", "label"}
    data = load_classification_data(SST2_DEV, text_field="sentence", label_names=["negative", "positive"])
    assert len(data.train) == 872 and data.labels.values == [0, 1]
    assert data.labels.id2label == {0: "negative", 1: "positive"}
    assert {ex.label for ex in data.train} == {0, 1}
