"""The listings: ``deltatune models``, ``methods``, ``tasks``, and ``demo`` (methods compared on the bundled
data)."""

from __future__ import annotations

import json


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
        shown = f"{share['trainable']:>11,} ({share['percent']:7.3f}%)" if isinstance(share, dict) else "n/a"
        merge = "; mergeable" if spec.merge else "" if spec.trains_whole_model else "; not mergeable"
        what = (
            f"{spec.name} with {', '.join(f'{k}: {v}' for k, v in opts.items())}"
            if opts
            else spec.description
        )
        task_lr = "".join(f", {task} {lr:g}" for task, lr in spec.task_lr.items())
        print(f"{row:<14} {shown:>32}  {what} [lr {spec.default_lr:g}{task_lr}{merge}]")
    print(
        "\n(default options, 2-label head included; variants are names `method.name` and `compare --methods` "
        "accept; `--model NAME` counts on another model)"
    )
    return 0


def _cmd_tasks(args) -> int:
    from deltatune.tasks import available_tasks

    for name, spec in sorted(available_tasks().items()):
        own = [f for f in spec.data_options.model_fields if f not in _common_data_keys()]
        print(
            f"{name:<10} {spec.description}\n{'':<10} data options: {', '.join(own) or '(common only)'}"
            + (f"; section `{name}:` {', '.join(spec.options.model_fields)}" if spec.options else "")
            + f"\n{'':<10} after training: {', '.join(spec.commands())}"
        )
    return 0


def _common_data_keys() -> tuple[str, ...]:
    from deltatune.config import DataConfig

    return tuple(DataConfig.model_fields)


def _cmd_demo(args) -> int:
    from deltatune.compare.demo import run_demo

    run_demo(
        output_dir=args.output_dir,
        train_samples=args.train_samples,
        methods=args.methods.split(",") if args.methods else None,
    )
    return 0


def add_listings(sub) -> None:
    m = sub.add_parser("models", help="list the bundled models")
    m.add_argument("--json", action="store_true")
    m.set_defaults(func=_cmd_models)

    me = sub.add_parser("methods", help="list the methods and the share of parameters each trains")
    me.add_argument("--model", default="minilm-l6", help="model to count trainable parameters on")
    me.set_defaults(func=_cmd_methods)

    ta = sub.add_parser("tasks", help="list the tasks, their data options and their commands")
    ta.set_defaults(func=_cmd_tasks)

    d = sub.add_parser("demo", help="fine-tuning methods compared on the bundled MiniLM with an SST-2 sample")
    d.add_argument(
        "--output-dir", default=None, help="comparison directory (default runs/demo; reused when run again)"
    )
    d.add_argument("--train-samples", type=int, default=None, help="training sentences to use (default 2000)")
    d.add_argument("--methods", help="comma-separated methods (default full,lora,ia3,bitfit,prompt_tuning)")
    d.set_defaults(func=_cmd_demo)
