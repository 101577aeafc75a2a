"""Generate answers with an instruction-tuned causal LM: batched, streamed, or as an interactive chat.

Prompts arrive already rendered with the chat template and tokenized (lists of token ids); this module
only pads, generates, decodes and cuts. Decoding settings come from :class:`~deltatune.config.GenerateConfig`;
anything it does not name (``top_k``, repetition penalty) comes from the model's ``generation_config``.

Generation goes through ``model.generate()``, so models whose forward is hooked (prompt and prefix
tuning hook ``model.base_model``) generate exactly as they run in training.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Callable, Iterator

import torch
from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

from deltatune.config import GenerateConfig

# End-of-turn tokens of common chat formats: ChatML/SmolLM/Qwen, Llama 3, Phi-3, Gemma, GPT-2 style.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>")


def end_token_ids(tokenizer) -> list[int]:
    """Token ids that end an answer: the eos id plus the end-of-turn tokens this tokenizer has.

    An end-of-turn token counts only if it is a single special token of the vocabulary (so a plain
    text tokenizer that would split ``"<|end|>"`` into pieces adds nothing). Order: eos first, then
    :data:`END_OF_TURN_TOKENS` order; no duplicates.
    """
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    vocab = tokenizer.get_vocab()
    special = set(tokenizer.all_special_tokens)
    special |= {t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values() if t.special}
    for token in END_OF_TURN_TOKENS:
        if token in vocab and token in special:
            ids.append(vocab[token])
    return list(dict.fromkeys(ids))


def cut_at_stop(text: str, stops: list[str]) -> str:
    """``text`` up to (not including) the earliest occurrence of any stop string."""
    cut = _first_stop(text, stops)
    return text if cut is None else text[:cut]


def generate_texts(
    model,
    tokenizer,
    prompt_ids: list[list[int]],
    settings: GenerateConfig,
    seed: int | None = None,
    stop_when: Callable[[str], bool] | None = None,
) -> list[str]:
    """Generate one answer per prompt; returns the answers in input order.

    Prompts are sorted by length (longest first) and generated ``settings.batch_size`` at a time, left
    padded: every row then ends at the same position, so the new tokens of all rows start at column
    ``width`` of the ``(batch, width + new)`` output. Only the new tokens are decoded (special tokens
    skipped), up to the first end token; each text is then cut before the first stop string.
    ``seed`` seeds sampling (``torch.manual_seed``) so that the same call gives the same answers; the
    caller's random state is restored afterwards, so evaluating mid-training does not change training.
    ``stop_when(answer so far)``: a row stops once it returns True (e.g. when a fenced code block is
    closed); it is asked after every new token, on the decoded answer.
    """
    if not prompt_ids:
        return []
    for i, ids in enumerate(prompt_ids):
        if len(ids) == 0:
            raise ValueError(f"prompt {i} has no tokens: every prompt needs at least one token id")
    end_ids = end_token_ids(tokenizer)
    kwargs = _generate_kwargs(tokenizer, settings, end_ids)
    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]), reverse=True)
    texts: list[str] = [""] * len(prompt_ids)
    device = _device_of(model)
    with _eval_mode(model), _seeded(seed, device):
        for start in range(0, len(order), settings.batch_size):
            chunk = order[start : start + settings.batch_size]
            input_ids, attention_mask = left_pad([prompt_ids[i] for i in chunk], kwargs["pad_token_id"])
            extra = (
                {}
                if stop_when is None
                else {
                    "stopping_criteria": StoppingCriteriaList(
                        [_TextStop(tokenizer, input_ids.shape[1], stop_when)]
                    )
                }
            )
            out = model.generate(
                input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), **kwargs, **extra
            )
            for i, row in zip(chunk, out[:, input_ids.shape[1] :].tolist()):
                texts[i] = cut_at_stop(_decode_answer(tokenizer, row, end_ids), settings.stop)
    return texts


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``input_ids`` and ``attention_mask``, both ``(batch, longest)`` int64, pads on the left."""
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, ids in enumerate(prompts):
        if ids:
            input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, width - len(ids) :] = 1
    return input_ids, attention_mask


def stream_text(model, tokenizer, prompt_ids: list[int], settings: GenerateConfig) -> Iterator[str]:
    """Yield pieces of the answer to one prompt as they are generated.

    ``model.generate`` runs in a background thread feeding a ``TextIteratorStreamer``; an exception
    there is re-raised here. The pieces join to the answer :func:`generate_texts` gives: a stop string
    ends the stream and is not yielded (text that might be the start of a stop string is held back
    until it is known not to be). Leaving the loop early stops the generation too.
    """
    if len(prompt_ids) == 0:
        raise ValueError("the prompt has no tokens: pass at least one token id")
    return _stream(model, tokenizer, prompt_ids, settings)  # checked now, generated when read


def _stream(model, tokenizer, prompt_ids: list[int], settings: GenerateConfig) -> Iterator[str]:
    kwargs = _generate_kwargs(tokenizer, settings, end_token_ids(tokenizer))
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    cancel = threading.Event()
    errors: list[BaseException] = []
    scanner = _StopScanner(settings.stop)
    device = _device_of(model)
    input_ids = torch.tensor([list(prompt_ids)], dtype=torch.long, device=device)

    def run() -> None:
        try:
            with torch.no_grad():  # grad mode is per thread
                model.generate(
                    input_ids=input_ids,
                    attention_mask=torch.ones_like(input_ids),
                    streamer=streamer,
                    stopping_criteria=StoppingCriteriaList([_Cancel(cancel)]),
                    **kwargs,
                )
        except BaseException as e:  # noqa: BLE001 - handed to the consuming thread
            errors.append(e)
            streamer.end()  # unblock the consumer

    with _eval_mode(model, no_grad=False):  # generate() runs under no_grad in its own thread
        thread = threading.Thread(target=run, name="deltatune-generate", daemon=True)
        thread.start()
        try:
            for piece in streamer:
                text = scanner.feed(piece)
                if text:
                    yield text
                if scanner.stopped:
                    break
        finally:
            cancel.set()
            thread.join()
    if errors:
        raise errors[0]
    rest = scanner.flush()
    if rest:
        yield rest


def chat_loop(
    model,
    tokenizer,
    encode_conversation: Callable[[list[dict]], list[int]],
    settings: GenerateConfig,
    system_prompt: str | None = None,
    input_fn: Callable[[str], str] = input,
    write: Callable[..., None] = print,
    max_context: int | None = None,
) -> list[dict]:
    """Interactive chat: read a line, stream the answer, repeat; returns the final message list.

    ``encode_conversation(messages)`` renders the history (``[{"role", "content"}, ...]``) with the
    generation prompt and returns its token ids. Commands: ``/reset`` clears the history (the system
    prompt stays), ``/exit`` or ``/quit`` (or end of input, Ctrl-C, Ctrl-D) leaves. Ctrl-C while an
    answer streams stops that answer and keeps what was written. ``write`` is ``print``-like
    (``end=``, ``flush=``).

    ``max_context`` (the model's context length, default: its config's ``max_position_embeddings``):
    when the prompt plus ``max_new_tokens`` would not fit, the oldest exchanges are dropped (the
    system prompt stays) and the user is told; a single message too long to fit is refused.
    """
    if max_context is None:
        max_context = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    first = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages = list(first)
    while True:
        try:
            line = input_fn("you> ").strip()
        except (EOFError, KeyboardInterrupt):
            write()
            break
        if not line:
            continue
        if line in ("/exit", "/quit"):
            break
        if line == "/reset":
            messages = list(first)
            write("(conversation cleared)")
            continue
        messages.append({"role": "user", "content": line})
        ids, fitted = _fit_context(
            messages, len(first), encode_conversation, max_context and max_context - settings.max_new_tokens
        )
        if ids is None:
            messages.pop()
            write(
                f"(message too long: with max_new_tokens {settings.max_new_tokens} it does not fit the "
                f"model's context of {max_context} tokens; send a shorter one)"
            )
            continue
        if len(fitted) < len(messages):
            write(
                f"(dropped the oldest {len(messages) - len(fitted)} message(s) to fit the context of "
                f"{max_context} tokens)"
            )
            messages = fitted
        answer = _write_answer(stream_text(model, tokenizer, ids, settings), write)
        messages.append({"role": "assistant", "content": answer})
    return messages


def _fit_context(
    messages: list[dict], keep: int, encode: Callable[[list[dict]], list[int]], budget: int | None
) -> tuple[list[int] | None, list[dict]]:
    """(token ids, messages) after dropping the oldest whole exchanges (a user message and the
    answer after it) behind the first ``keep`` messages until the ids fit ``budget`` tokens.
    ids is None when even the last message alone does not fit. ``messages`` is not changed."""
    messages = list(messages)
    while True:
        ids = encode(list(messages))
        if budget is None or len(ids) <= budget:
            return ids, messages
        if len(messages) - keep <= 1:
            return None, messages
        del messages[keep]  # the oldest message, then the rest of its exchange
        while len(messages) - keep > 1 and messages[keep]["role"] != "user":
            del messages[keep]


# --------------------------------------------------------------------------- helpers


def _write_answer(pieces: Iterator[str], write: Callable[..., None]) -> str:
    """Write the pieces as they arrive (flushing); the full answer."""
    answer = []
    write("assistant> ", end="", flush=True)
    try:
        for piece in pieces:
            answer.append(piece)
            write(piece, end="", flush=True)
    except KeyboardInterrupt:
        write(" [stopped]", end="")
    finally:
        pieces.close()  # stops the generation thread when interrupted
    write()
    return "".join(answer)


def _generate_kwargs(tokenizer, settings: GenerateConfig, end_ids: list[int]) -> dict:
    """``model.generate`` keyword arguments for these settings."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise ValueError("the tokenizer has neither a pad nor an eos token; set tokenizer.pad_token")
    kwargs: dict = {
        "max_new_tokens": settings.max_new_tokens,
        "do_sample": settings.do_sample,
        "pad_token_id": pad_id,
        "eos_token_id": end_ids or None,
    }
    if settings.do_sample:
        kwargs.update(
            temperature=settings.temperature,
            top_p=settings.top_p,
            **({} if settings.top_k is None else {"top_k": settings.top_k}),
        )
    if settings.stop:
        # Stops the generation at a stop string (the text is cut again after decoding, exactly).
        kwargs.update(stop_strings=list(settings.stop), tokenizer=tokenizer)
    return kwargs


def _decode_answer(tokenizer, new_ids: list[int], end_ids: list[int]) -> str:
    """Decode generated ids up to the first end token (what follows it is padding)."""
    ends = set(end_ids)
    for n, token in enumerate(new_ids):
        if token in ends:
            new_ids = new_ids[:n]
            break
    return tokenizer.decode(new_ids, skip_special_tokens=True)


def _first_stop(text: str, stops: list[str]) -> int | None:
    found = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(found) if found else None


class _StopScanner:
    """Cuts a stream of text pieces at the first stop string, even one split across pieces."""

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.text, self.emitted, self.stopped = "", 0, False

    def feed(self, piece: str) -> str:
        """The text that is now safe to show (before any stop string, and not a stop's prefix)."""
        self.text += piece
        cut = _first_stop(self.text, self.stops)
        if cut is not None:
            self.stopped = True
            safe = cut
        else:
            safe = len(self.text) - self._partial_stop_at_end()
        out = self.text[self.emitted : safe] if safe > self.emitted else ""
        self.emitted = max(self.emitted, safe)
        return out

    def flush(self) -> str:
        """Held-back text once the stream has ended (nothing after a stop string)."""
        if self.stopped:
            return ""
        out, self.emitted = self.text[self.emitted :], len(self.text)
        return out

    def _partial_stop_at_end(self) -> int:
        """Length of the longest end of the text that is the beginning of a stop string."""
        return max(
            (j for s in self.stops for j in range(len(s) - 1, 0, -1) if self.text.endswith(s[:j])), default=0
        )


class _TextStop(StoppingCriteria):
    """Ends a row once ``predicate`` holds for its decoded new text (after column ``width``)."""

    def __init__(self, tokenizer, width: int, predicate: Callable[[str], bool]):
        self.tokenizer, self.width, self.predicate = tokenizer, width, predicate

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.width :], skip_special_tokens=True)
        return torch.tensor([self.predicate(t) for t in texts], dtype=torch.bool, device=input_ids.device)


class _Cancel(StoppingCriteria):
    """Ends generation for every row once ``event`` is set (the consumer stopped reading)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        return torch.full(
            (input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device
        )


@contextlib.contextmanager
def _eval_mode(model, no_grad: bool = True):
    """``model.eval()`` (and no gradients) inside; the previous train/eval mode is restored after.

    A generator that yields inside must pass ``no_grad=False``: grad mode is global per thread, so it
    would leak into the caller's code between two ``next()`` calls.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad() if no_grad else contextlib.nullcontext():
            yield
    finally:
        model.train(was_training)


@contextlib.contextmanager
def _seeded(seed: int | None, device: torch.device):
    """Inside: the CPU (and the model's GPU) generator seeded with ``seed``; after: the old states."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def _device_of(model) -> torch.device:
    return next(model.parameters()).device


__all__ = [
    "END_OF_TURN_TOKENS",
    "chat_loop",
    "cut_at_stop",
    "end_token_ids",
    "generate_texts",
    "left_pad",
    "stream_text",
]
