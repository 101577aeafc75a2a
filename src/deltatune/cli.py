"""Command line: ``deltatune train | preview | eval | predict | generate | chat | merge | models | methods | demo``.

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
    keys = ("validation_accuracy", "validation_f1_macro", "test_accuracy", "base_loss", "tuned_loss",
            "base_rouge_l", "tuned_rouge_l", "train_tokens_per_s", "peak_rss_mb", "train_seconds")
    parts = [f"{k}={summary[k]:.4g}" for k in keys if isinstance(summary.get(k), (int, float))]
    return f"run finished: {summary.get('run_dir', '')}\n  " + "  ".join(parts)


def _run_task(run_dir: str) -> str:
    """The task of a finished run (``classify`` or ``sft``), read from its config.yaml."""
    from pathlib import Path

    import yaml

    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise UserError(f"{run_dir} is not a deltatune run (no config.yaml); pass the --output-dir "
                        "of a `deltatune train` run")
    return (yaml.safe_load(path.read_text()) or {}).get("task", "classify")


def _cmd_eval(args) -> int:
    from deltatune.evaluation.reports import classification_markdown

    if _run_task(args.run_dir) == "sft":
        from deltatune.recipes.sft import evaluate_run as evaluate_sft

        report = evaluate_sft(args.run_dir, args.data, samples=args.samples)
        if args.json:
            print(json.dumps(report, indent=2))
        else:
            print("  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                            for k, v in report.items()))
        return 0
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
    if _run_task(args.run_dir) == "sft":
        raise UserError(f"{args.run_dir} is an sft run: use `deltatune generate {args.run_dir} \"PROMPT\"`")
    rows = predict(args.run_dir, texts=args.texts or None, data_path=args.data)
    for row in rows:
        if args.json:
            print(json.dumps(row))
        else:
            print(f"{row['label']}\t{row['probability']:.4f}\t{row['text']}")
    return 0


def _cmd_merge(args) -> int:
    from deltatune.recipes.classify import merge_run

    if _run_task(args.run_dir) == "sft":
        from deltatune.recipes.sft import load_trained

        out = merge_run(args.run_dir, args.out, loader=lambda d: load_trained(d)[:2])
        print(f"merged model written to {out} (load it with AutoModelForCausalLM)")
        return 0
    out = merge_run(args.run_dir, args.out)
    print(f"merged model written to {out} (load it with AutoModelForSequenceClassification)")
    return 0


def _generation_settings(args, cfg):
    from pydantic import ValidationError

    from deltatune.config import GenerateConfig

    values = cfg.generate.model_dump()
    for key in ("max_new_tokens", "temperature", "top_p", "batch_size"):
        if getattr(args, key, None) is not None:
            values[key] = getattr(args, key)
    if args.sample:
        values["do_sample"] = True
    if args.stop:
        values["stop"] = list(args.stop)
    try:
        return GenerateConfig(**values)
    except ValidationError as exc:
        err = exc.errors()[0]
        flag = "--" + str(err["loc"][0]).replace("_", "-")
        raise UserError(f"{flag}: {err['msg']} (got {err.get('input')!r})") from None


def _generation_target(args):
    from deltatune.recipes.sft import load_for_generation

    if args.model and args.run_dir:
        raise UserError("give a RUN_DIR or --model NAME, not both")
    if not args.model and not args.run_dir:
        raise UserError("give a RUN_DIR (an sft run) or --model NAME (a base model)")
    return load_for_generation(args.run_dir, args.model, args.template)


def _cmd_generate(args) -> int:
    from deltatune.data.sft import prompt_ids
    from deltatune.evaluation.generation import generate_texts

    prompts = list(args.prompts)
    if args.model is None and prompts and args.run_dir is None:
        args.run_dir = prompts.pop(0)
        if not os.path.isdir(args.run_dir):
            raise UserError(f"{args.run_dir!r} is not a deltatune run directory; use `deltatune generate "
                            "RUN_DIR \"PROMPT\"`, or `deltatune generate --model NAME \"PROMPT\"` for a base model")
    if not prompts and not args.data:
        raise UserError("generate: give one or more PROMPT arguments or --data FILE")
    from deltatune.config import validate_config

    settings = _generation_settings(args, validate_config({"task": "sft"}))  # flags checked before loading
    model, tokenizer, template, cfg = _generation_target(args)
    settings = _generation_settings(args, cfg)
    if args.data:
        from deltatune.recipes.sft import read_conversations

        convs = [c for c in read_conversations(args.data, cfg, require_response=False) if c.prompt_messages]
        asks = [c.prompt_messages for c in convs]
        references = [c.reference for c in convs]
    else:
        system = [{"role": "system", "content": args.system}] if args.system else []
        asks = [system + [{"role": "user", "content": p}] for p in prompts]
        references = [None] * len(asks)
    ids = [prompt_ids(tokenizer, template, a) for a in asks]
    answers = generate_texts(model, tokenizer, ids, settings, seed=args.seed)
    for ask, ref, answer in zip(asks, references, answers):
        if args.json:
            row = {"prompt": ask[-1]["content"], "output": answer}
            if ref is not None:
                row["reference"] = ref
            print(json.dumps(row, ensure_ascii=False))
        else:
            print(answer if len(asks) == 1 else f"### {ask[-1]['content']}\n{answer}\n")
    return 0


def _cmd_chat(args) -> int:
    from deltatune.data.sft import prompt_ids
    from deltatune.evaluation.generation import chat_loop

    model, tokenizer, template, cfg = _generation_target(args)
    print("chat: type a message; /reset clears the conversation, /exit (or Ctrl-D) quits", file=sys.stderr)
    chat_loop(model, tokenizer, lambda msgs: prompt_ids(tokenizer, template, msgs),
              _generation_settings(args, cfg), system_prompt=args.system,
              input_fn=lambda prompt: input(prompt))  # looked up per call (tests patch it)
    return 0


def _cmd_preview(args) -> int:
    from deltatune.config import load_config
    from deltatune.preview import preview

    cfg = load_config(args.config, list(args.overrides))
    color = sys.stdout.isatty() if args.color == "auto" else args.color == "always"
    print(preview(cfg, examples=args.examples, color=color))
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
    e.add_argument("--samples", type=int, default=None,
                   help="sft: examples to generate for ROUGE-L/BLEU/exact match (default generate.eval_samples)")
    e.set_defaults(func=_cmd_eval)

    pr = sub.add_parser("predict", help="predict labels with a trained run")
    pr.add_argument("run_dir")
    pr.add_argument("texts", nargs="*", metavar="TEXT")
    pr.add_argument("--data", help="file of inputs (the training config's text field)")
    pr.add_argument("--json", action="store_true", help="one JSON object per input")
    pr.set_defaults(func=_cmd_predict)

    pv = sub.add_parser("preview", help="sft dry run: show examples as the model sees them, "
                                         "trained tokens highlighted, with length statistics")
    pv.add_argument("config", help="YAML config (task: sft)")
    pv.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    pv.add_argument("--examples", type=int, default=3, help="examples to render")
    pv.add_argument("--color", choices=("auto", "always", "never"), default="auto",
                    help="highlight with colour (default: when printing to a terminal)")
    pv.set_defaults(func=_cmd_preview)

    for name, func, helptext in (("generate", _cmd_generate, "generate answers with an sft run or a base model"),
                                 ("chat", _cmd_chat, "chat with an sft run or a base model (streamed)")):
        g = sub.add_parser(name, help=helptext)
        if name == "generate":
            g.add_argument("prompts", nargs="*", metavar="RUN_DIR PROMPT",
                           help="an sft run directory, then prompts (with --model: prompts only)")
            g.add_argument("--data", help="file of prompts (the run's data layout); prints JSON lines "
                                          "with --json, references included")
            g.add_argument("--json", action="store_true", help="one JSON object per prompt")
            g.add_argument("--batch-size", dest="batch_size", type=int, help="prompts generated together")
            g.set_defaults(run_dir=None)
        else:
            g.add_argument("run_dir", nargs="?", help="an sft run directory (or use --model)")
        g.add_argument("--model", help="a base model (bundled name, directory or hub id) instead of a run")
        g.add_argument("--template", help="auto, chat, alpaca, raw or a Jinja template "
                                          "(default: the run's, or auto)")
        g.add_argument("--system", help="system message")
        g.add_argument("--max-new-tokens", dest="max_new_tokens", type=int)
        g.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
        g.add_argument("--temperature", type=float)
        g.add_argument("--top-p", dest="top_p", type=float)
        g.add_argument("--stop", action="append", help="stop string (repeatable)")
        g.add_argument("--seed", type=int, default=0, help="seed for sampling")
        g.set_defaults(func=func)

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
    if extra and args.command == "generate" and not any(x.startswith("-") for x in extra):
        args.prompts, extra = [*args.prompts, *extra], []  # prompts after options
    if extra:
        if args.command not in ("train", "preview") or any(x.startswith("-") or "=" not in x for x in extra):
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
