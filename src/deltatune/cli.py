"""Command line: ``deltatune train | eval | predict | merge | models | methods | demo``.

Every command is a thin shell over a plain Python function. Errors a user can cause print one
line (``error: ...``) and exit with status 2 — no traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from deltatune.errors import UserError


def _cmd_train(args) -> int:
    from deltatune.config import load_config
    from deltatune.recipes import run_config

    overrides = list(args.overrides)
    if args.config and "=" in args.config and not os.path.exists(args.config):
        args.config, overrides = None, [args.config, *overrides]  # no file, only overrides
    cfg = load_config(args.config, overrides)
    if args.output_dir:
        cfg.output_dir = args.output_dir
    if args.resume:
        cfg.train.resume = True
    summary = run_config(cfg, overwrite=args.overwrite)
    print(json.dumps(summary, indent=2) if args.json else _summary_text(summary))
    return 0


def _summary_text(summary: dict) -> str:
    keys = ("validation_accuracy", "validation_f1_macro", "test_accuracy", "train_tokens_per_s",
            "peak_rss_mb", "train_seconds")
    parts = [f"{k}={summary[k]:.4g}" for k in keys if isinstance(summary.get(k), (int, float))]
    return f"run finished: {summary.get('run_dir', '')}\n  " + "  ".join(parts)


def _cmd_eval(args) -> int:
    from deltatune.evaluation.reports import classification_markdown
    from deltatune.recipes.classify import evaluate_run

    report = evaluate_run(args.run_dir, args.data)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(classification_markdown(f"evaluation of {args.run_dir} on {args.data}", {"data": report}))
    return 0


def _cmd_predict(args) -> int:
    from deltatune.recipes.classify import predict

    if not args.texts and not args.data:
        raise UserError("predict: give one or more TEXT arguments or --data FILE")
    rows = predict(args.run_dir, texts=args.texts or None, data_path=args.data)
    for row in rows:
        if args.json:
            print(json.dumps(row))
        else:
            print(f"{row['label']}\t{row['probability']:.4f}\t{row['text']}")
    return 0


def _cmd_merge(args) -> int:
    from deltatune.recipes.classify import merge_run

    out = merge_run(args.run_dir, args.out)
    print(f"merged model written to {out} (load it with AutoModelForSequenceClassification)")
    return 0


def _cmd_models(args) -> int:
    from deltatune.models import list_models

    models = list_models()
    if args.json:
        print(json.dumps(models, indent=2))
        return 0
    print(f"{'name':<24}{'architecture':<14}{'parameters':>14}  source")
    for m in models:
        print(f"{m['name']:<24}{m['architecture']:<14}{m['parameters']:>14,}  {m['source']}")
    print("\nAlso accepted: any local Hugging Face model directory, or a hub id when online.")
    return 0


def _cmd_methods(args) -> int:
    from deltatune.methods.registry import available, trainable_shares

    shares = trainable_shares(args.model)
    print(f"{'method':<14} {'trainable on ' + args.model:>32}  description")
    for name, spec in sorted(available().items()):
        share = shares[name]
        shown = (f"{share['trainable']:>11,} ({share['percent']:7.3f}%)" if isinstance(share, dict)
                 else "n/a")
        merge = ("; mergeable" if spec.merge else
                 "" if spec.saved_dir == "model" else "; not mergeable")
        print(f"{name:<14} {shown:>32}  {spec.description} [lr {spec.default_lr:g}{merge}]")
    print("\n(default options, 2-label head included; `--model NAME` counts on another model)")
    return 0


def _cmd_demo(args) -> int:
    from deltatune.demo import run_demo

    run_demo(output_dir=args.output_dir, train_samples=args.train_samples)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from deltatune.config import config_reference

    p = argparse.ArgumentParser(prog="deltatune", description="Fine-tune pretrained transformers.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train from a YAML config",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Train from a YAML config; any key can be overridden as "
                                   "dotted.key=value (e.g. train.learning_rate=3e-4 method.r=8).",
                       epilog="config keys (section.key = default):\n" + config_reference() +
                              "\n\nmethod options: see `deltatune methods` and the README.")
    t.add_argument("config", nargs="?", help="YAML config file")
    t.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    t.add_argument("--output-dir", help="run directory (overrides output_dir)")
    t.add_argument("--overwrite", action="store_true", help="replace a finished run in --output-dir")
    t.add_argument("--resume", action="store_true",
                   help="continue from the latest complete checkpoint in the run directory")
    t.add_argument("--json", action="store_true", help="print the run summary as JSON")
    t.set_defaults(func=_cmd_train)

    e = sub.add_parser("eval", help="evaluate a trained run on a labelled file")
    e.add_argument("run_dir")
    e.add_argument("--data", required=True, help="labelled file with the training config's fields")
    e.add_argument("--json", action="store_true", help="print metrics as JSON on stdout")
    e.set_defaults(func=_cmd_eval)

    pr = sub.add_parser("predict", help="predict labels with a trained run")
    pr.add_argument("run_dir")
    pr.add_argument("texts", nargs="*", metavar="TEXT")
    pr.add_argument("--data", help="file of inputs (the training config's text field)")
    pr.add_argument("--json", action="store_true", help="one JSON object per input")
    pr.set_defaults(func=_cmd_predict)

    mg = sub.add_parser("merge", help="fold a LoRA/DoRA/IA3 adapter into the base weights")
    mg.add_argument("run_dir")
    mg.add_argument("--out", required=True, help="new directory for the merged Hugging Face model")
    mg.set_defaults(func=_cmd_merge)

    m = sub.add_parser("models", help="list the bundled models")
    m.add_argument("--json", action="store_true")
    m.set_defaults(func=_cmd_models)

    me = sub.add_parser("methods", help="list the methods and the share of parameters each trains")
    me.add_argument("--model", default="minilm-l6", help="model to count trainable parameters on")
    me.set_defaults(func=_cmd_methods)

    d = sub.add_parser("demo", help="LoRA on the bundled MiniLM with a small SST-2 sample")
    d.add_argument("--output-dir", default=None, help="run directory (default runs/demo-<time>)")
    d.add_argument("--train-samples", type=int, default=None, help="training sentences to use")
    d.set_defaults(func=_cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from deltatune.training.memory import limit_allocator_retention

    limit_allocator_retention()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch

        if not torch.cuda.is_available():
            # torchrun on CPUs: without this Accelerate sees no distributed setup and every
            # process would train alone (gloo DDP needs Accelerate's MULTI_CPU mode).
            os.environ.setdefault("ACCELERATE_USE_CPU", "true")
    parser = build_parser()
    # Overrides may come after options (`train c.yaml --output-dir d a.b=1`): collect the leftovers.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if args.command != "train" or any(x.startswith("-") or "=" not in x for x in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    try:
        return args.func(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
