"""``deltatune generate`` and ``deltatune chat`` with a causal-LM run, an adapter, or a base model."""

from __future__ import annotations

import json
import os
import sys

from deltatune.errors import UserError


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
    from deltatune.data.masks import prompt_ids
    from deltatune.inference.generation import generate_texts

    prompts = list(args.prompts)
    if args.model is None and prompts and args.run_dir is None:
        args.run_dir = prompts.pop(0)
        if not os.path.isdir(args.run_dir):
            raise UserError(
                f"{args.run_dir!r} is not a deltatune run directory; use `deltatune generate "
                'RUN_DIR "PROMPT"`, or `deltatune generate --model NAME "PROMPT"` for a base model'
            )
    if not prompts and not args.data:
        raise UserError("generate: give one or more PROMPT arguments or --data FILE")
    from deltatune.config import GenerateConfig

    settings = _generation_settings(args, GenerateConfig())  # flags checked before loading
    model, tokenizer, template, cfg = _generation_target(args)
    settings = _generation_settings(args, cfg.generate)
    if args.data:
        from deltatune.data.conversations import read_conversations

        convs = [
            c for c in read_conversations(args.data, cfg.data, require_response=False) if c.prompt_messages
        ]
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
    from deltatune.data.masks import prompt_ids
    from deltatune.inference.generation import chat_loop

    model, tokenizer, template, cfg = _generation_target(args)
    print("chat: type a message; /reset clears the conversation, /exit (or Ctrl-D) quits", file=sys.stderr)
    chat_loop(
        model,
        tokenizer,
        lambda msgs: prompt_ids(tokenizer, template, msgs),
        _generation_settings(args, cfg.generate),
        system_prompt=args.system,
        input_fn=lambda prompt: input(prompt),
    )  # looked up per call (tests patch it)
    return 0


def add_generation(sub) -> None:
    for name, func, helptext in (
        ("generate", _cmd_generate, "generate answers with an sft run or a base model"),
        ("chat", _cmd_chat, "chat with an sft run or a base model (streamed)"),
    ):
        g = sub.add_parser(name, help=helptext)
        if name == "generate":
            g.add_argument(
                "prompts",
                nargs="*",
                metavar="RUN_DIR PROMPT",
                help="an sft run directory, then prompts (with --model: prompts only)",
            )
            g.add_argument(
                "--data",
                help="file of prompts (the run's data layout); prints JSON lines "
                "with --json, references included",
            )
            g.add_argument("--json", action="store_true", help="one JSON object per prompt")
            g.add_argument("--batch-size", dest="batch_size", type=int, help="prompts generated together")
            g.set_defaults(run_dir=None)
        else:
            g.add_argument("run_dir", nargs="?", help="an sft run directory (or use --model)")
        g.add_argument("--model", help="a base model (bundled name, directory or hub id) instead of a run")
        g.add_argument("--adapter", help="an adapter trained elsewhere (PEFT format), on --model")
        g.add_argument(
            "--template", help="auto, chat, alpaca, raw or a Jinja template (default: the run's, or auto)"
        )
        g.add_argument("--system", help="system message")
        g.add_argument("--max-new-tokens", dest="max_new_tokens", type=int)
        g.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
        g.add_argument("--temperature", type=float)
        g.add_argument("--top-p", dest="top_p", type=float)
        g.add_argument("--stop", action="append", help="stop string (repeatable)")
        g.add_argument("--seed", type=int, default=0, help="seed for sampling")
        g.set_defaults(func=func)
