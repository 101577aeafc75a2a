"""Config: defaults, overrides, and one clear message per mistake."""

import pytest

from deltatune.config import load_config
from deltatune.config.reference import config_reference
from deltatune.errors import ConfigError


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_defaults_and_overrides(tmp_path):
    p = write(tmp_path, "data: {train: t.jsonl}\nmethod: {name: lora, r: 8}\n")
    cfg = load_config(
        p, ["train.learning_rate=3e-4", "method.target_modules=[query, value]", "train.group_by_length=false"]
    )
    assert cfg.train.learning_rate == 3e-4
    assert cfg.method["r"] == 8 and cfg.method["target_modules"] == ["query", "value"]
    assert cfg.method["alpha"] == 32  # method default filled in
    assert cfg.train.group_by_length is False
    assert cfg.model.name == "minilm-l6"


def test_unknown_key_suggests_the_right_one(tmp_path):
    p = write(tmp_path, "train: {learnig_rate: 1e-3}\n")
    with pytest.raises(ConfigError) as err:
        load_config(p)
    msg = str(err.value)
    assert "train.learnig_rate" in msg and "did you mean `learning_rate`" in msg


def test_unknown_method_option_and_method(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(None, ["method.name=lora", "method.rank=4"])
    assert "method.rank" in str(err.value) and "`r`" in str(err.value)
    with pytest.raises(ConfigError) as err:
        load_config(None, ["method.name=lorra"])
    assert "lorra" in str(err.value) and "did you mean `lora`" in str(err.value)


def test_wrong_type_names_key_and_value(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(None, ["train.batch_size=many"])
    assert "train.batch_size" in str(err.value) and "'many'" in str(err.value)
    with pytest.raises(ConfigError) as err:
        load_config(None, ["train.precision=fp8"])
    assert "train.precision" in str(err.value)


def test_impossible_combination(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(None, ["data.validation=v.jsonl", "data.validation_split=0.1"])
    assert "choose one" in str(err.value)


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, "train: {epochs: 1\n  bad"))
    assert "c.yaml" in str(err.value) and "line" in str(err.value)
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "nope.yaml")
    assert "nope.yaml" in str(err.value)
    with pytest.raises(ConfigError):
        load_config(None, ["no_equals_sign"])


def test_reference_documents_every_key():
    ref = config_reference()
    for key in (
        "train.learning_rate",
        "data.text_field",
        "model.name",
        "train.grad_accum",
        "data.validation_split",
        "train.precision",
    ):
        assert key in ref


def test_a_lora_variant_name_is_lora_with_the_variants_options():
    cfg = load_config(None, ["method.name=dora", "method.r=8"])
    assert (cfg.method.name, cfg.method.use_dora, cfg.method.r) == ("lora", True, 8)
    cfg = load_config(None, ["method.name=loraplus", "method.loraplus_lr_ratio=4"])  # the user's value wins
    assert (cfg.method.name, cfg.method.loraplus_lr_ratio) == ("lora", 4)
    with pytest.raises(ConfigError, match="method.name: unknown method 'dorra'"):
        load_config(None, ["method.name=dorra"])


def test_a_method_may_have_its_own_learning_rate_for_one_task():
    from deltatune.checks.config_checks import learning_rate
    from deltatune.methods.registry import get_method

    full = get_method("full")
    assert full.lr_for("classify") == 1e-4 and full.lr_for("sft") == full.default_lr == 5e-5
    assert load_config(None, ["method.name=full"]).train.learning_rate == 1e-4
    assert load_config(None, ["task=sft", "method.name=full"]).train.learning_rate == 5e-5
    assert load_config(None, ["method.name=full", "train.learning_rate=3e-5"]).train.learning_rate == 3e-5
    # the pre-flight check measures against the task's own default: 6e-6 is 16.7x below 1e-4, 8.3x below 5e-5
    finding = learning_rate(load_config(None, ["method.name=full", "train.learning_rate=6e-6"]))
    assert finding is not None and "default (0.0001)" in finding.evidence
    assert (
        learning_rate(load_config(None, ["task=sft", "method.name=full", "train.learning_rate=6e-6"])) is None
    )


@pytest.mark.parametrize("value", ["0", "-1", "Auto", "null", "soon", "inf", "true"])
def test_epochs_is_a_positive_number_or_auto_in_one_line(value):
    with pytest.raises(ConfigError) as err:
        load_config(None, [f"train.epochs={value}"])
    lines = str(err.value).splitlines()[1:]
    assert (
        len(lines) == 1 and "train.epochs: expected a positive number of passes (1, 2.5) or auto" in lines[0]
    )
    assert load_config(None, ["train.epochs=2.5"]).train.epochs == 2.5
    assert load_config(None, []).train.epochs == "auto"


def test_compare_says_what_epochs_auto_does_for_the_task():
    from deltatune.compare.report import auto_passes

    assert auto_passes("sft") == "one pass" and auto_passes("dpo") == "one pass"
    assert auto_passes("classify") == "one pass, more while a pass is under 200 steps"
