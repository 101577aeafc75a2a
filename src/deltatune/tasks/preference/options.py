"""The options of the preference tasks: their ``data:`` section (pairs), ``reward:`` and ``dpo:`` (no torch
here)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from deltatune.config.schema import DataConfig, _Strict

# The names of the losses in :data:`deltatune.losses.preference.DPO_LOSSES` (kept here without torch; a
# contract test checks the two agree).
DPO_LOSS_NAMES = ("sigmoid", "ipo", "hinge")


class PreferenceData(DataConfig):
    """The options of the preference tasks: their ``data:`` section (pairs), ``reward:`` and ``dpo:`` (no
    torch here)."""

    layout: Literal["auto", "prompt_chosen_rejected", "hh", "messages"] = Field(
        "auto",
        description="pair layout; auto = prompt+chosen+rejected if there is a prompt field, "
        "messages if chosen is a list, else HH-RLHF transcripts",
    )
    fields: dict[str, str] = Field(
        default_factory=dict,
        description="map our field names to yours, e.g. {prompt: question, "
        "chosen: good, rejected: bad, margin: score_gap}",
    )
    template: str = Field("auto", description="as for sft: auto, chat, alpaca, raw, or a Jinja chat template")
    system_prompt: str | None = Field(None, description="system message for prompts that have none")
    truncation: Literal["truncate", "drop"] = Field(
        "truncate",
        description="pairs longer than max_length: cut (the prompt from the left first, "
        "then both answers at the end) or dropped",
    )
    share_prompt: bool = Field(
        True,
        description="train decoders on one row per pair, the shared prompt read once (exact; not with "
        "encoders, prompt/prefix tuning, flash attention or several processes)",
    )


class RewardOptions(_Strict):
    center_coef: float = Field(
        0.0,
        ge=0,
        description="penalty coef * (r_chosen + r_rejected)^2 keeps rewards "
        "centred on 0 (0.01 is typical; 0 = off)",
    )
    use_margin: bool = Field(
        True,
        description="subtract the pair's margin (data.fields: {margin: ...}) "
        "inside the loss when the data has one",
    )


class DpoOptions(_Strict):
    loss: Literal[DPO_LOSS_NAMES] = Field("sigmoid", description="sigmoid (DPO), ipo or hinge")
    beta: float = Field(
        0.1, gt=0, description="strength of the pull towards the reference (higher = stay closer); IPO's tau"
    )
    label_smoothing: float = Field(
        0.0,
        ge=0,
        lt=0.5,
        description="conservative DPO: the share of labels taken to be wrong (sigmoid only)",
    )
    precompute_reference: bool = Field(
        True,
        description="reference log-probs computed once before training "
        "and cached in the run dir (else every step)",
    )
