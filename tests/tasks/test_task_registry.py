"""Tasks as registered parts: a toy task added from this file trains, evaluates and saves through the
real CLI without touching any other file; task options are validated per task; methods switch off
to give the untouched base model (the reference model of DPO/PPO)."""

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from pydantic import Field

from deltatune.cli import main
from deltatune.config import DataConfig, _Strict, load_config
from deltatune.data.readers import read_rows
from deltatune.errors import ConfigError
from deltatune.models import load_for_classification, make_tiny_model_dir
from deltatune.results import BatchLoss
from deltatune.tasks import TaskSpec, available_tasks, register_task, unregister_task

# ----------------------------------------------------------------------------- a toy regression task


class ToyData(DataConfig):
    text_field: str = Field("text", description="input text")
    target_field: str = Field("y", description="number to predict")


class ToyOptions(_Strict):
    scale: float = Field(1.0, description="targets are divided by this")


def _feats(tokenizer, rows, cfg):
    d = cfg.data
    enc = tokenizer([r[d.text_field] for r in rows], truncation=True, max_length=d.max_length)
    return [
        {"input_ids": ids, "y": float(r[d.target_field]) / cfg.toy_regress.scale}
        for ids, r in zip(enc["input_ids"], rows)
    ]


def _collate(feats, pad_id=0):
    n = max(len(f["input_ids"]) for f in feats)
    ids = torch.tensor([f["input_ids"] + [pad_id] * (n - len(f["input_ids"])) for f in feats])
    mask = torch.tensor([[1] * len(f["input_ids"]) + [0] * (n - len(f["input_ids"])) for f in feats])
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "y": torch.tensor([f["y"] for f in feats]),
        "num_units": torch.tensor(len(feats)),
    }


def _predict(model, feats):
    with torch.no_grad():
        batch = _collate(feats)
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0]


class ToyJob:
    def __init__(self, cfg):
        self.cfg = cfg
        self.model, self.tokenizer, self.model_path = load_for_classification(
            cfg.model.name, 1, {0: "y"}, cfg.train.seed
        )
        self.train = _feats(self.tokenizer, read_rows(cfg.data.train), cfg)
        self.val = _feats(self.tokenizer, read_rows(cfg.data.validation), cfg) if cfg.data.validation else []
        self.has_validation = bool(self.val)

    def describe(self):
        return f"toy: {len(self.train)} train rows"

    def header(self):
        return {"toy": True}

    def evaluate(self, model):
        return {"mse": float(F.mse_loss(_predict(model, self.val), torch.tensor([f["y"] for f in self.val])))}

    eval_metrics = evaluate

    def loader(self, method, num_processes):
        return torch.utils.data.DataLoader(
            self.train, batch_size=self.cfg.train.batch_size, collate_fn=_collate
        )

    def loss_fn(self, model, batch):
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0]
        return BatchLoss(
            F.mse_loss(out.float(), batch["y"], reduction="sum"),
            int(batch["num_units"]),
            int(batch["attention_mask"].sum()),
        )

    def final(self, model):
        return {"tuned": self.evaluate(model)} if self.val else {}

    def save(self, run_dir):
        (run_dir / "toy.txt").write_text("saved by the toy task\n")

    def summary(self, report):
        return {f"{k}_mse": v["mse"] for k, v in report.items() if k in ("base", "tuned")}

    def markdown(self, report, result):
        return f"# toy\n\nbase {report['base']['mse']:.4f} -> tuned {report['tuned']['mse']:.4f}\n"


def _load(cfg, source, run_dir, saved):
    model, tokenizer, path = load_for_classification(source, 1, {0: "y"}, 0)
    return model, tokenizer, path, {}


def _evaluate_file(run, data_path, samples=None):
    feats = _feats(run.tokenizer, read_rows(data_path), run.cfg)
    return {"mse": float(F.mse_loss(_predict(run.model, feats), torch.tensor([f["y"] for f in feats])))}


TOY = TaskSpec(
    name="toy_regress",
    description="toy regression of a number from text (tests only)",
    data_options=ToyData,
    options=ToyOptions,
    prepare=ToyJob,
    load_model=_load,
    model_kind="classifier",
    peft_task_type="SEQ_CLS",
    default_max_length=32,
    default_metric="mse",
    lower_is_better=("mse",),
    evaluate_file=_evaluate_file,
    format_report=lambda report, title: f"{title}: mse={report['mse']:.4f}",
    summary_keys=("base_mse", "tuned_mse"),
)


@pytest.fixture()
def toy_task():
    register_task(TOY)
    yield TOY
    unregister_task(TOY.name)


def test_a_task_registered_from_a_test_file_trains_evaluates_and_saves_through_the_cli(
    toy_task, tmp_path, capsys
):
    model = make_tiny_model_dir("bert", tmp_path / "bert", num_labels=1)
    rows = [{"text": " ".join(["word"] * n), "y": n} for n in range(1, 9)] * 4
    data = tmp_path / "toy.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = tmp_path / "run"
    code = main(
        [
            "train",
            "task=toy_regress",
            f"model.name={model}",
            f"data.train={data}",
            f"data.validation={data}",
            "toy_regress.scale=8",
            "train.epochs=8",
            "train.batch_size=8",
            "train.learning_rate=1e-2",
            "train.progress=false",
            "train.precision=fp32",
            "--output-dir",
            str(run),
            "--json",
        ]
    )
    summary = json.loads(capsys.readouterr().out)
    assert code == 0
    assert summary["task"] == "toy_regress" and summary["tuned_mse"] < summary["base_mse"]
    assert (run / "toy.txt").is_file() and (run / "adapter" / "adapter_model.safetensors").is_file()
    saved = load_config(run / "config.yaml")
    assert saved.toy_regress.scale == 8 and saved.train.greater_is_better is False  # mse: lower is better
    assert "# toy" in (run / "eval_report.md").read_text()
    assert main(["eval", str(run), "--data", str(data), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["mse"] == pytest.approx(summary["tuned_mse"], rel=1e-4)
    assert main(["predict", str(run), "x"]) == 2  # the toy task registered no predict
    assert "cannot `predict`" in capsys.readouterr().err
    assert main(["tasks"]) == 0 and "toy_regress" in capsys.readouterr().out


def test_task_list_and_options_come_from_the_registry(toy_task, capsys):
    assert {"classify", "sft", "toy_regress"} <= set(available_tasks())
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    help_text = capsys.readouterr().out
    assert "toy_regress" in help_text and "data.target_field" in help_text and "data.layout" in help_text
    with pytest.raises(ConfigError, match="data.target_field: an option of task 'toy_regress'"):
        load_config(None, ["data.target_field=z"])
    with pytest.raises(ConfigError, match="data.layout: an option of tasks 'dpo', 'ppo', 'reward' and 'sft'"):
        load_config(None, ["task=toy_regress", "data.layout=alpaca"])
    with pytest.raises(ConfigError, match="unknown task 'toy_regres'; did you mean `toy_regress`"):
        load_config(None, ["task=toy_regres"])


def test_resolved_config_says_what_ran(tmp_path):
    cfg = load_config(None, ["task=sft", "data.train=t.jsonl", "method.name=prompt_tuning"])
    assert cfg.train.learning_rate == 3e-2 and cfg.data.max_length == 1024
    assert cfg.train.metric_for_best == "loss" and cfg.method.num_virtual_tokens == 20
    assert load_config(None, ["data.train=t.jsonl"]).classify.loss == "cross_entropy"
    with pytest.raises(ConfigError, match="data.packing: not possible with prompt_tuning"):
        load_config(None, ["task=sft", "method.name=prompt_tuning", "data.packing=true"])


# ----------------------------------------------------------------------------- switching methods off

METHOD_OPTIONS = {
    "lora": {},
    "dora": {"use_dora": True},
    "ia3": {},
    "adapters": {},
    "bitfit": {},
    "prompt_tuning": {"num_virtual_tokens": 3},
    "prefix_tuning": {"num_virtual_tokens": 3},
}


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("switch")
    return {kind: make_tiny_model_dir(kind, root / kind, task="causal_lm") for kind in ("llama", "gpt2")}


# Llama has no biases, so BitFit cannot apply there (checked below); every other pair is tested.
SWITCH_CASES = [
    (kind, m)
    for kind in ("llama", "gpt2")
    for m in sorted(METHOD_OPTIONS)
    if (kind, m) != ("llama", "bitfit")
]


def test_bitfit_on_a_model_without_biases_is_a_clear_error(tiny_models):
    from transformers import AutoModelForCausalLM

    from deltatune.methods.registry import ModelContext, get_method

    spec = get_method("bitfit")
    with pytest.raises(ConfigError, match="bias"):
        spec.apply(
            AutoModelForCausalLM.from_pretrained(tiny_models["llama"]),
            spec.options(name="bitfit"),
            ModelContext("x", "CAUSAL_LM", []),
        )


@pytest.mark.parametrize(("kind", "method"), SWITCH_CASES)
def test_switch_off_gives_the_untouched_base_model(tiny_models, one_thread, kind, method):
    from transformers import AutoModelForCausalLM

    from deltatune.methods.registry import ModelContext, get_method

    name = "lora" if method == "dora" else method
    spec = get_method(name)
    base = AutoModelForCausalLM.from_pretrained(tiny_models[kind])
    model = copy.deepcopy(base)
    spec.apply(model, spec.options(name=name, **METHOD_OPTIONS[method]), ModelContext("x", "CAUSAL_LM", []))
    with torch.no_grad():  # "train": move every trainable parameter away from its initial value
        g = torch.Generator().manual_seed(0)
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    ids = torch.tensor([[5, 9, 3, 7, 11, 2]])
    with torch.no_grad():
        expected = base(ids).logits
        tuned = model(ids).logits
        assert not torch.allclose(tuned, expected, atol=1e-4)
        with spec.switch_off(model):
            torch.testing.assert_close(model(ids).logits, expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model(ids).logits, tuned)  # switched back on
        if spec.merge is not None and name != "dora":
            from deltatune.methods.ia3 import model as ia3
            from deltatune.methods.lora import model as lora

            (lora.merge_lora if name == "lora" else ia3.merge_ia3)(model)
            with spec.switch_off(model):
                torch.testing.assert_close(model(ids).logits, expected, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(model(ids).logits, tuned, atol=1e-5, rtol=1e-5)
    assert spec.switch_off is not None  # the reference is the method switched off, not a copy


def test_capabilities_are_declared_not_named():
    from deltatune.methods.registry import available

    methods = available()
    assert {n for n, s in methods.items() if s.inserts_tokens} == {"prompt_tuning", "prefix_tuning"}
    assert {n for n, s in methods.items() if s.trains_whole_model} == {"full"}
    assert methods["full"].switch_off is None  # full fine-tuning: the reference is a frozen copy
    assert all(s.switch_off is not None for n, s in methods.items() if n != "full")
