"""The commands on a trained run (or an adapter trained elsewhere): ``eval``, ``predict``, ``score``,
``merge``."""

from __future__ import annotations

import json

from deltatune.cli.parser_args import target_args
from deltatune.errors import UserError


def _target(args, command: str):
    from deltatune.runs.loaded import load_target

    return load_target(args.run_dir, args.adapter, args.model, command=command)


def _cmd_eval(args) -> int:
    from deltatune.cli.code import check_data_eval, cmd_code_eval
    from deltatune.runs.services import evaluate

    if args.code is not None:
        return cmd_code_eval(args)
    check_data_eval(args)
    if args.samples is not None and args.samples < 0:
        raise UserError(f"--samples: must be 0 or more (got {args.samples})")
    if args.baseline:
        from deltatune.cli.measure import cmd_eval_baseline

        return cmd_eval_baseline(args)
    run = _target(args, "eval")
    report = evaluate(run, args.data, samples=args.samples)
    print(
        json.dumps(report, indent=2)
        if args.json
        else run.task.format_report(report, f"evaluation of {run.name} on {args.data}")
    )
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
            print(
                f"line {row['line']}\tchosen {row['chosen_reward']:.4f}\trejected "
                f"{row['rejected_reward']:.4f}\t{'correct' if row['correct'] else 'WRONG'}"
            )
        else:
            print(f"{row['reward']:.4f}\t{row.get('answer') or ''}")
    return 0


def _cmd_merge(args) -> int:
    from deltatune.runs.services import merge

    run = _target(args, "merge")
    out = merge(run, args.out)
    kind = {"classifier": "AutoModelForSequenceClassification"}.get(
        run.task.model_kind, "AutoModelForCausalLM"
    )
    print(f"merged model written to {out} (load it with {kind})")
    return 0


def add_post_run(sub) -> None:
    from deltatune.cli.code import add_code_eval_args

    e = sub.add_parser(
        "eval",
        help="evaluate a trained run (or an adapter) on a labelled file, "
        "or on code benchmarks by running the generated code (--code)",
    )
    target_args(e)
    e.add_argument(
        "--data", help="labelled file with the training config's fields (with --code: the benchmark file)"
    )
    e.add_argument("--json", action="store_true", help="print metrics as JSON on stdout")
    e.add_argument(
        "--samples",
        type=int,
        default=None,
        help="sft: examples to generate for ROUGE-L/BLEU/exact match (default generate.eval_samples); "
        "with --code: answers per task, the n of pass@k (default 1, greedy)",
    )
    e.add_argument(
        "--baseline", action="store_true", help="also evaluate the untuned base model and show the change"
    )
    add_code_eval_args(e)
    e.set_defaults(func=_cmd_eval)

    pr = sub.add_parser("predict", help="predict labels with a trained classifier run (or adapter)")
    target_args(pr, "a trained classify run directory")
    pr.add_argument("texts", nargs="*", metavar="TEXT")
    pr.add_argument("--data", help="file of inputs (the training config's text field)")
    pr.add_argument("--json", action="store_true", help="one JSON object per input")
    pr.set_defaults(func=_cmd_predict)

    sc = sub.add_parser("score", help="rewards of answers from a reward-model run")
    target_args(sc, "a trained reward run directory")
    sc.add_argument("texts", nargs="*", metavar="ANSWER")
    sc.add_argument("--prompt", help="the prompt the answers reply to")
    sc.add_argument(
        "--data", help="a file of preference pairs (both answers scored) or of prompt/answer rows"
    )
    sc.add_argument("--json", action="store_true", help="one JSON object per answer (or pair)")
    sc.set_defaults(func=_cmd_score)

    mg = sub.add_parser("merge", help="fold a LoRA/DoRA/IA3 adapter into the base weights")
    target_args(mg)
    mg.add_argument("--out", required=True, help="new directory for the merged Hugging Face model")
    mg.set_defaults(func=_cmd_merge)
