"""Templates, token-exact response masks, truncation, packing and collation for SFT.

A template renders a conversation as *segments*: ``(text, trained)`` pieces in order. Each segment
is tokenized on its own and the ids are concatenated, so the label mask follows segment boundaries
exactly — never found by re-tokenizing a prefix (``tokens(prompt + response)`` is not always
``tokens(prompt) + tokens(response)``). Generation uses the same prompt segments, so training and
inference see the same ids at the boundary.

Templates:

* ``chat``  the tokenizer's chat template (or a user Jinja template), split into segments by
  rendering growing prefixes of the conversation: the text each assistant message adds (its
  content and end-of-turn marker) is trained, everything else is not;
* ``alpaca``  ``### Instruction: / ### Input: / ### Response:``, EOS after each response;
* ``raw``  the prompt then the completion (and EOS), no decoration.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Sequence

from deltatune.data.conversations import Conversation
from deltatune.errors import ConfigError, DataError, UserError

Segments = list[tuple[str, bool]]

ALPACA_HEADER = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n"
)
ALPACA_HEADER_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides "
    "further context. Write a response that appropriately completes the request.\n\n"
)


class Template:
    """Renders conversations as segments; ``prompt`` renders what the model is asked."""

    name = "base"

    def __init__(self, tokenizer):
        self.eos = tokenizer.eos_token or ""

    def segments(self, conv: Conversation) -> Segments:
        raise NotImplementedError

    def prompt(self, messages: list[dict]) -> Segments:
        raise NotImplementedError


class RawTemplate(Template):
    name = "raw"

    def segments(self, conv):
        out: Segments = []
        for m in conv.messages:
            trained = m["role"] == "assistant"
            out.append((m["content"] + (self.eos if trained else ""), trained))
        return out

    def prompt(self, messages):
        return [(m["content"], False) for m in messages]


class AlpacaTemplate(Template):
    name = "alpaca"

    def _ask(self, m: dict) -> str:
        instruction, inp = m.get("instruction", m["content"]), m.get("input", "")
        text = f"### Instruction:\n{instruction}\n\n"
        if inp.strip():
            text += f"### Input:\n{inp}\n\n"
        return text + "### Response:\n"

    def _render(self, messages: list[dict], generation_prompt: bool) -> Segments:
        system = [m["content"] for m in messages if m["role"] == "system"]
        has_input = any(m.get("input", "").strip() for m in messages if m["role"] == "user")
        out: Segments = [
            (
                "\n\n".join(system) + "\n\n"
                if system
                else ALPACA_HEADER_INPUT
                if has_input
                else ALPACA_HEADER,
                False,
            )
        ]
        for m in messages:
            if m["role"] == "user":
                out.append((self._ask(m), False))
            elif m["role"] == "assistant":
                out.append((m["content"] + self.eos, True))
                out.append(("\n\n", False))
        if out[-1] == ("\n\n", False):
            out.pop()
        return _merge(out)

    def segments(self, conv):
        return self._render(conv.messages, False)

    def prompt(self, messages):
        segs = self._render(messages, True)
        if not messages or messages[-1]["role"] != "user":
            raise UserError("the alpaca template needs the conversation to end with a user message")
        return segs


class ChatTemplate(Template):
    """The tokenizer's chat template, or ``source`` (a Jinja chat template) instead."""

    name = "chat"

    def __init__(
        self, tokenizer, source: str | None = None, key: str = "data.template", origin: str | None = None
    ):
        super().__init__(tokenizer)
        self.tokenizer, self.source = tokenizer, source
        self.key, self.origin = key, origin  # where the template came from, for messages
        if source is None and not getattr(tokenizer, "chat_template", None):
            raise ConfigError(
                f"{key}: chat: this tokenizer has no chat template; use "
                "alpaca, raw, or give a Jinja chat template"
            )
        if source is not None:
            from jinja2 import TemplateSyntaxError
            from jinja2.sandbox import ImmutableSandboxedEnvironment

            try:
                ImmutableSandboxedEnvironment().parse(source)
            except TemplateSyntaxError as exc:
                raise self._template_error(exc) from None

    def _template_error(self, exc: Exception) -> ConfigError:
        """The template itself is wrong (syntax, an unknown filter, an undefined name)."""
        which = (
            f"the Jinja template {self.origin or 'given'}" if self.source else "the tokenizer's chat template"
        )
        line = f" (template line {exc.lineno})" if getattr(exc, "lineno", None) else ""
        return ConfigError(
            f"{self.key}: {which} is broken: {type(exc).__name__}: "
            f"{getattr(exc, 'message', None) or exc}{line}; fix the template"
        )

    def render(self, messages: list[dict], generation_prompt: bool = False) -> str:
        from jinja2 import TemplateError, TemplateSyntaxError

        if not messages:
            return ""
        try:
            return self.tokenizer.apply_chat_template(
                [{"role": m["role"], "content": m["content"]} for m in messages],
                chat_template=self.source,
                tokenize=False,
                add_generation_prompt=generation_prompt,
            )
        except TemplateSyntaxError as exc:
            raise self._template_error(exc) from None
        except TemplateError as exc:
            if type(exc) is not TemplateError:  # UndefinedError & co: the template's own bug
                raise self._template_error(exc) from None
            # raise_exception() in the template: it refuses this conversation (e.g. roles order)
            raise UserError(f"the chat template refused this conversation: {exc}") from None
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise self._template_error(exc) from None

    def segments(self, conv):
        try:
            return self._segments(conv)
        except ConfigError as exc:
            where = f" (it failed first on {conv.path}, line {conv.line})" if conv.path else ""
            raise ConfigError(f"{exc}{where}") from None
        except UserError as exc:
            if isinstance(exc, DataError) or conv.path is None:
                raise
            raise DataError(str(exc), path=conv.path, line=conv.line) from None

    def _segments(self, conv):
        out: Segments = []
        done = ""
        for k, m in enumerate(conv.messages):
            if m["role"] == "assistant":
                ask = self.render(conv.messages[:k], generation_prompt=True)
                out.append((self._after(done, ask, conv), False))
                done = ask
            full = self.render(conv.messages[: k + 1])
            out.append((self._after(done, full, conv), m["role"] == "assistant"))
            done = full
        return _merge(out)

    def prompt(self, messages):
        return [(self.render(messages, generation_prompt=True), False)]

    @staticmethod
    def _after(done: str, text: str, conv: Conversation) -> str:
        if not text.startswith(done):
            raise DataError(
                "the chat template renders earlier turns differently once later turns "
                "are added, so response tokens cannot be found exactly; use "
                "template: alpaca or a Jinja template whose output only grows",
                path=conv.path,
                line=conv.line or None,
            )
        return text[len(done) :]


def _merge(segments: Segments) -> Segments:
    """Join neighbouring segments with the same mask and drop empty ones."""
    out: Segments = []
    for text, trained in segments:
        if not text:
            continue
        if out and out[-1][1] == trained:
            out[-1] = (out[-1][0] + text, trained)
        else:
            out.append((text, trained))
    return out


def make_template(name: str, tokenizer, raw_data: bool = False, key: str = "data.template") -> Template:
    """The template for ``data.template`` (or another setting: ``key`` names it in messages);
    ``auto`` keeps raw pairs raw and uses the chat template when the tokenizer has one (else alpaca)."""
    if name == "auto":
        if raw_data:
            return RawTemplate(tokenizer)
        return (
            ChatTemplate(tokenizer)
            if getattr(tokenizer, "chat_template", None)
            else AlpacaTemplate(tokenizer)
        )
    if name == "chat":
        return ChatTemplate(tokenizer, key=key)
    if name == "alpaca":
        return AlpacaTemplate(tokenizer)
    if name == "raw":
        return RawTemplate(tokenizer)
    source, origin = name, None
    if name.endswith(".jinja") and "{" not in name:
        path = Path(name)
        if not path.is_file():
            raise ConfigError(f"{key}: file not found: {name}")
        source, origin = path.read_text(encoding="utf-8"), f"in {name}"
    if "{%" not in source and "{{" not in source:
        raise ConfigError(
            f"{key}: '{name}' is not auto, chat, alpaca, raw, a .jinja file or a Jinja template"
        )
    return ChatTemplate(tokenizer, source, key=key, origin=origin)


def template_for(data, tokenizer, convs: Sequence[Conversation]) -> Template:
    """The template a run with these ``data`` options uses for these conversations."""
    return make_template(data.template, tokenizer, raw_data=bool(convs) and convs[0].raw)


# ----------------------------------------------------------------------------- token ids


@functools.lru_cache(maxsize=8)
def default_bos(tokenizer) -> int | None:
    """The BOS id when the tokenizer normally starts sequences with it, else None (asked once)."""
    with_special = tokenizer("x")["input_ids"]
    without = tokenizer("x", add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    return bos if bos is not None and len(with_special) > len(without) and with_special[0] == bos else None


def bos_to_add(tokenizer, first_text: str) -> list[int]:
    """[bos] when the tokenizer normally starts sequences with BOS and the text lacks it."""
    bos = default_bos(tokenizer)
    if bos is None or (tokenizer.bos_token and first_text.startswith(tokenizer.bos_token)):
        return []
    return [bos]


CONTINUATION_SENTINELS = ("\n", "\x00", "|")


@functools.lru_cache(maxsize=8)
def continuation_prefixes(tokenizer) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """For tokenizers that mark the start of every text they encode (SentencePiece-style, e.g.
    Llama 2 and Mistral: "▁" before the first word), (sentinel, its ids) pairs: a later segment is
    encoded as sentinel + text and the sentinel's ids dropped, so it gets no word-start mark the
    whole text would not have. Empty for tokenizers that encode pieces as they come (byte-level BPE:
    GPT-2, Llama 3, SmolLM2). Asked once per tokenizer."""

    def enc(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    if tokenizer.decode(enc("a") + enc("b")) == "ab":
        return ()
    usable = []
    for sentinel in CONTINUATION_SENTINELS:
        head, probe = enc(sentinel), enc(sentinel + "b")
        if head and probe[: len(head)] == head and tokenizer.decode(enc("a") + probe[len(head) :]) == "ab":
            usable.append((sentinel, tuple(head)))
    return tuple(usable)


def encode_piece(tokenizer, text: str, continuation: bool) -> list[int]:
    """Ids of one segment; ``continuation``: it follows other text (see
    :func:`continuation_prefixes`; the first sentinel that does not merge with the text is used)."""
    for sentinel, head in continuation_prefixes(tokenizer) if continuation else ():
        ids = tokenizer(sentinel + text, add_special_tokens=False)["input_ids"]
        if tuple(ids[: len(head)]) == head:
            return ids[len(head) :]
    return tokenizer(text, add_special_tokens=False)["input_ids"]


# ----------------------------------------------------------------------------- batches
