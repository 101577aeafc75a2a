"""Command line: ``deltatune train | preview | eval | predict | generate | chat | merge | models | methods | tasks | demo
| compare | bench | check`` (the last three in :mod:`deltatune.cli_measure`).

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
    from deltatune.runs import run_config

    overrides = list(args.overrides)
    if args.config and "=" in args.config and not os.path.exists(args.config):
        args.config, overrides = None, [args.config, *overrides]  # no file, only overrides
    cfg = load_config(args.config, overrides)
    if args.output_dir:
        cfg.output_dir = args.output_dir
    if args.resume:
        cfg.train.resume = True
    summary = run_config(cfg, overwrite=args.overwrite, allow_data_change=args.allow_data_change,
                         preflight=not args.no_check)
    if summary.get("task"):  # the main process reports; other processes of a distributed run return {}
        print(json.dumps(summary, indent=2) if args.json else _summary_text(summary))
    return 0


def _summary_text(summary: dict) -> str:
    from deltatune.tasks import get_task

    keys = (*get_task(summary["task"]).summary_keys, "train_tokens_per_s", "peak_rss_mb", "train_seconds")
    parts = [f"{k}={summary[k]:.4g}" for k in keys if isinstance(summary.get(k), (int, float))]
    return f"run finished: {summary.get('run_dir', '')}\n  " + "  ".join(parts)


def _target(args, command: str):
    from deltatune.runs.loaded import load_target

    return load_target(args.run_dir, args.adapter, args.model, command=command)


def _cmd_eval(args) -> int:
    from deltatune.cli_code import check_data_eval, cmd_code_eval
    from deltatune.runs.services import evaluate

    if args.code is not None:
        return cmd_code_eval(args)
    check_data_eval(args)
    if args.samples is not None and args.samples < 0:
        raise UserError(f"--samples: must be 0 or more (got {args.samples})")
    if args.baseline:
        from deltatune.cli_measure import cmd_eval_baseline

        return cmd_eval_baseline(args)
    run = _target(args, "eval")
    report = evaluate(run, args.data, samples=args.samples)
    print(json.dumps(report, indent=2) if args.json
          else run.task.format_report(report, f"evaluation of {run.name} on {args.data}"))
    return 0


def _cmd_predict(args) -> int:
    from deltatune.runs.services import predict

    if not args.texts and not args.data:
        raise UserError("predict: give one or more TEXT arguments or --data FILE")
    rows = predict(_target(args, "predict"), texts=args.texts or None, data_path=args.data)
    for row in rows:
        if args.json:
            print(json.dumps(row))
        else:
            print(f"{row['label']}\t{row['probability']:.4f}\t{row['text']}")
    return 0


def _cmd_score(args) -> int:
    from deltatune.runs.services import score

    if not args.texts and not args.data:
        raise UserError("score: give one or more ANSWER arguments (with --prompt) or --data FILE")
    for row in score(_target(args, "score"), args.texts, prompt=args.prompt, data_path=args.data):
        if args.json:
            print(json.dumps(row, ensure_ascii=False))
        elif "chosen_reward" in row:
            print(f"line {row['line']}\tchosen {row['chosen_reward']:.4f}\trejected {row['rejected_reward']:.4f}"
                  f"\t{'correct' if row['correct'] else 'WRONG'}")
        else:
            print(f"{row['reward']:.4f}\t{row.get('answer') or ''}")
    return 0


def _cmd_merge(args) -> int:
    from deltatune.runs.services import merge

    run = _target(args, "merge")
    out = merge(run, args.out)
    kind = {"classifier": "AutoModelForSequenceClassification"}.get(run.task.model_kind, "AutoModelForCausalLM")
    print(f"merged model written to {out} (load it with {kind})")
    return 0


def _generation_settings(args, defaults):
    """The ``generate`` settings of a run (``defaults``) with the command-line flags applied."""
    from pydantic import ValidationError

    from deltatune.config import GenerateConfig

    values = defaults.model_dump()
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
    from deltatune.runs.services import generation_target

    return generation_target(args.run_dir, args.model, getattr(args, "adapter", None), args.template)


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
    from deltatune.config import GenerateConfig

    settings = _generation_settings(args, GenerateConfig())  # flags checked before loading
    model, tokenizer, template, cfg = _generation_target(args)
    settings = _generation_settings(args, cfg.generate)
    if args.data:
        from deltatune.data.conversations import read_conversations

        convs = [c for c in read_conversations(args.data, cfg.data, require_response=False) if c.prompt_messages]
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
              _generation_settings(args, cfg.generate), system_prompt=args.system,
              input_fn=lambda prompt: input(prompt))  # looked up per call (tests patch it)
    return 0


def _cmd_preview(args) -> int:
    from deltatune.config import load_config
    from deltatune.tasks import available_tasks, get_task

    cfg = load_config(args.config, list(args.overrides))
    task = get_task(cfg.task)
    if task.preview is None:
        able = ", ".join(sorted(n for n, t in available_tasks().items() if t.preview))
        raise UserError(f"{args.config}: preview shows templated data as the model sees it, for tasks "
                        f"{able}; this config has task: {cfg.task}")
    color = sys.stdout.isatty() if args.color == "auto" else args.color == "always"
    print(task.preview(cfg, args.examples, color))
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
    from deltatune.methods.shares import method_rows, trainable_shares

    shares = trainable_shares(args.model)
    print(f"{'method':<14} {'trainable on ' + args.model:>32}  description")
    for row, spec, opts in method_rows():
        share = shares[row]
        shown = (f"{share['trainable']:>11,} ({share['percent']:7.3f}%)" if isinstance(share, dict)
                 else "n/a")
        merge = ("; mergeable" if spec.merge else "" if spec.trains_whole_model else "; not mergeable")
        what = (f"{spec.name} with {', '.join(f'{k}: {v}' for k, v in opts.items())}" if opts
                else spec.description)
        task_lr = "".join(f", {task} {lr:g}" for task, lr in spec.task_lr.items())
        print(f"{row:<14} {shown:>32}  {what} [lr {spec.default_lr:g}{task_lr}{merge}]")
    print("\n(default options, 2-label head included; variants are names `method.name` and `compare --methods` accept; "
          "`--model NAME` counts on another model)")
    return 0


def _cmd_tasks(args) -> int:
    from deltatune.tasks import available_tasks

    for name, spec in sorted(available_tasks().items()):
        own = [f for f in spec.data_options.model_fields if f not in _common_data_keys()]
        print(f"{name:<10} {spec.description}\n{'':<10} data options: {', '.join(own) or '(common only)'}"
              + (f"; section `{name}:` {', '.join(spec.options.model_fields)}" if spec.options else "")
              + f"\n{'':<10} after training: {', '.join(spec.commands())}")
    return 0


def _common_data_keys() -> tuple[str, ...]:
    from deltatune.config import DataConfig

    return tuple(DataConfig.model_fields)


def _cmd_demo(args) -> int:
    from deltatune.demo import run_demo

    run_demo(output_dir=args.output_dir, train_samples=args.train_samples,
             methods=args.methods.split(",") if args.methods else None)
    return 0


def _add_train(sub) -> None:
    from deltatune.config import config_reference
    from deltatune.tasks import available_tasks

    tasks = ", ".join(sorted(available_tasks()))
    t = sub.add_parser("train", help="train from a YAML config",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Train from a YAML config; any key can be overridden as "
                                   "dotted.key=value (e.g. train.learning_rate=3e-4 method.r=8). "
                                   f"Tasks: {tasks} (see `deltatune tasks`).",
                       epilog="config keys (section.key = default):\n" + config_reference() +
                              "\n\nmethod options: see `deltatune methods` and the README.")
    t.add_argument("config", nargs="?", help="YAML config file")
    t.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    t.add_argument("--output-dir", help="run directory (overrides output_dir)")
    t.add_argument("--overwrite", action="store_true",
                   help="replace the run in --output-dir (the old one stays until the new one finishes)")
    t.add_argument("--resume", action="store_true",
                   help="continue from the latest complete checkpoint in the run directory")
    t.add_argument("--allow-data-change", action="store_true",
                   help="with --resume: accept data files whose content changed since the checkpoint")
    t.add_argument("--json", action="store_true", help="print the run summary as JSON")
    t.add_argument("--no-check", action="store_true", help="skip the fast pre-flight checks of the data")
    t.set_defaults(func=_cmd_train)


def _target_args(parser, what: str = "a trained run directory") -> None:
    parser.add_argument("run_dir", nargs="?", help=f"{what} (or --adapter DIR)")
    parser.add_argument("--adapter", help="an adapter trained elsewhere (PEFT format) instead of a run")
    parser.add_argument("--model", help="with --adapter: its base model (default: the one its "
                                        "adapter_config.json names)")


def _add_post_run(sub) -> None:
    from deltatune.cli_code import add_code_eval_args

    e = sub.add_parser("eval", help="evaluate a trained run (or an adapter) on a labelled file, "
                                    "or on code benchmarks by running the generated code (--code)")
    _target_args(e)
    e.add_argument("--data", help="labelled file with the training config's fields (with --code: the benchmark file)")
    e.add_argument("--json", action="store_true", help="print metrics as JSON on stdout")
    e.add_argument("--samples", type=int, default=None,
                   help="sft: examples to generate for ROUGE-L/BLEU/exact match (default generate.eval_samples); "
                        "with --code: answers per task, the n of pass@k (default 1, greedy)")
    e.add_argument("--baseline", action="store_true", help="also evaluate the untuned base model and show the change")
    add_code_eval_args(e)
    e.set_defaults(func=_cmd_eval)

    pr = sub.add_parser("predict", help="predict labels with a trained classifier run (or adapter)")
    _target_args(pr, "a trained classify run directory")
    pr.add_argument("texts", nargs="*", metavar="TEXT")
    pr.add_argument("--data", help="file of inputs (the training config's text field)")
    pr.add_argument("--json", action="store_true", help="one JSON object per input")
    pr.set_defaults(func=_cmd_predict)

    sc = sub.add_parser("score", help="rewards of answers from a reward-model run")
    _target_args(sc, "a trained reward run directory")
    sc.add_argument("texts", nargs="*", metavar="ANSWER")
    sc.add_argument("--prompt", help="the prompt the answers reply to")
    sc.add_argument("--data", help="a file of preference pairs (both answers scored) or of prompt/answer rows")
    sc.add_argument("--json", action="store_true", help="one JSON object per answer (or pair)")
    sc.set_defaults(func=_cmd_score)

    mg = sub.add_parser("merge", help="fold a LoRA/DoRA/IA3 adapter into the base weights")
    _target_args(mg)
    mg.add_argument("--out", required=True, help="new directory for the merged Hugging Face model")
    mg.set_defaults(func=_cmd_merge)

    pv = sub.add_parser("preview", help="sft dry run: show examples as the model sees them, "
                                         "trained tokens highlighted, with length statistics")
    pv.add_argument("config", help="YAML config (task: sft)")
    pv.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    pv.add_argument("--examples", type=int, default=3, help="examples to render")
    pv.add_argument("--color", choices=("auto", "always", "never"), default="auto",
                    help="highlight with colour (default: when printing to a terminal)")
    pv.set_defaults(func=_cmd_preview)


def _add_generation(sub) -> None:
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
        g.add_argument("--adapter", help="an adapter trained elsewhere (PEFT format), on --model")
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


def _add_listings(sub) -> None:
    m = sub.add_parser("models", help="list the bundled models")
    m.add_argument("--json", action="store_true")
    m.set_defaults(func=_cmd_models)

    me = sub.add_parser("methods", help="list the methods and the share of parameters each trains")
    me.add_argument("--model", default="minilm-l6", help="model to count trainable parameters on")
    me.set_defaults(func=_cmd_methods)

    ta = sub.add_parser("tasks", help="list the tasks, their data options and their commands")
    ta.set_defaults(func=_cmd_tasks)

    d = sub.add_parser("demo", help="fine-tuning methods compared on the bundled MiniLM with an SST-2 sample")
    d.add_argument("--output-dir", default=None, help="comparison directory (default runs/demo; reused when run again)")
    d.add_argument("--train-samples", type=int, default=None, help="training sentences to use (default 2000)")
    d.add_argument("--methods", help="comma-separated methods (default full,lora,ia3,bitfit,prompt_tuning)")
    d.set_defaults(func=_cmd_demo)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="deltatune", description="Fine-tune pretrained transformers.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_train(sub)
    _add_post_run(sub)
    _add_generation(sub)
    _add_listings(sub)
    from deltatune.cli_measure import add_measure_commands

    add_measure_commands(sub)
    return p


def _parse(argv: list[str] | None):
    parser = build_parser()
    # Overrides may come after options (`train c.yaml --output-dir d a.b=1`): collect the leftovers.
    args, extra = parser.parse_known_args(argv)
    if extra and args.command == "generate" and not any(x.startswith("-") for x in extra):
        args.prompts, extra = [*args.prompts, *extra], []  # prompts after options
    if extra:
        if args.command not in ("train", "preview", "compare", "check") or any(x.startswith("-") or "=" not in x for x in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    return args


def _setup_environment() -> None:
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


def main(argv: list[str] | None = None) -> int:
    """Run one command. Exit status: 0 done, 2 a problem with the input (one ``error:`` line),
    1 a deltatune bug (one line; the traceback goes to a file, or to the screen with
    ``DELTATUNE_DEBUG=1``), 130 interrupted."""
    _setup_environment()
    try:
        args = _parse(argv)
        return args.func(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `deltatune eval ... --json | head`: the reader left; nothing to report
        _silence_stdout()
        return 0
    except OSError as exc:
        if exc.filename is None:
            return _internal_error(exc)
        print(f"error: {exc.filename}: {exc.strerror}; check the path and its permissions", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - the last line of defence against a traceback
        return _internal_error(exc)


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _internal_error(exc: BaseException) -> int:
    """An unexpected exception: one line for the user, the traceback kept in a file."""
    import tempfile
    import traceback

    if os.environ.get("DELTATUNE_DEBUG"):
        raise exc
    path = os.path.join(tempfile.gettempdir(), f"deltatune-error-{os.getpid()}.txt")
    try:
        with open(path, "w", encoding="utf-8") as fh:
            traceback.print_exception(exc, file=fh)
    except OSError:
        path = "(could not be saved)"
    print(f"error: unexpected {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}\n"
          f"  this is a deltatune bug: please report it with the traceback in {path} "
          "(DELTATUNE_DEBUG=1 shows it here)", file=sys.stderr)
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
