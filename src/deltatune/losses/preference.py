"""Preference losses: a pairwise reward model (Bradley–Terry) and the DPO family (DPO, IPO, hinge).

Everything here is a small pure tensor function. Losses that feed the training loop return *sums*
over pairs, so the loop can divide by the number of pairs of the whole accumulated batch
(``LossFn`` in ``deltatune.training.loop``); the DPO variants return per-pair losses ``(B,)`` and the
caller sums them. Log-probabilities are *summed* over answer tokens (:func:`sequence_logps`), the
convention of DPO and TRL, except for IPO, which expects per-token averages (:func:`mean_logps`).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from deltatune.losses.lm import IGNORE_INDEX


def bradley_terry(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    margin: torch.Tensor | float | None = None,
    center_coef: float = 0.0,
) -> torch.Tensor:
    """Pairwise reward-model loss, summed over pairs:

        ``sum_i -log σ(r_c,i − r_r,i − m_i) + center_coef · sum_i (r_c,i + r_r,i)²``

    chosen_rewards, rejected_rewards: (B,) scalar rewards; margin: (B,), a float or None (= 0).
    The Bradley–Terry likelihood of the human choice (Ouyang et al. 2022, https://arxiv.org/abs/2203.02155);
    the margin ``m`` asks for a larger gap on pairs rated far apart (Llama 2, Touvron et al. 2023,
    https://arxiv.org/abs/2307.09288, Eq. 2); the centring penalty pins rewards near zero, since the
    pairwise loss alone leaves their offset free (Eisenstein et al. 2023, "Helping or Herding?",
    https://arxiv.org/abs/2312.09244; TRL's ``center_rewards_coefficient``, a typical value is 0.01).
    Computed in float32. Returns a scalar: the *sum*, the loop divides by the number of pairs.
    """
    chosen, rejected = chosen_rewards.float(), rejected_rewards.float()
    diff = chosen - rejected
    if margin is not None:
        diff = diff - (margin.float() if torch.is_tensor(margin) else margin)
    loss = -F.logsigmoid(diff).sum()
    if center_coef:
        loss = loss + center_coef * ((chosen + rejected) ** 2).sum()
    return loss


def _logratio_delta(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps):
    """``Δ = (log π(y_w) − log π_ref(y_w)) − (log π(y_l) − log π_ref(y_l))``, (B,), float32."""
    return (policy_chosen_logps.float() - ref_chosen_logps.float()) - (
        policy_rejected_logps.float() - ref_rejected_logps.float()
    )


def _no_smoothing(name: str, label_smoothing: float) -> None:
    if label_smoothing:
        raise ValueError(
            f"label_smoothing={label_smoothing} has no meaning for the '{name}' loss; "
            "set it to 0 or use loss 'sigmoid' (conservative DPO)"
        )


def dpo_sigmoid(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """DPO, per pair (B,): ``−(1 − ε) log σ(βΔ) − ε log σ(−βΔ)``, with Δ the difference of the
    chosen and rejected log-ratios to the reference (see :func:`_logratio_delta`).

    ε = 0 is DPO (Rafailov et al. 2023, https://arxiv.org/abs/2305.18290, Eq. 7). ε > 0 is
    conservative DPO (cDPO; Mitchell 2023, "A note on DPO with noisy preferences",
    https://ericmitchell.ai/cdpo.pdf): the label is taken to be flipped with probability ε, which
    bounds how far the loss pushes Δ. Inputs: (B,) log-probs *summed* over answer tokens.
    """
    logits = beta * _logratio_delta(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
    )
    return -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)


def dpo_ipo(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """IPO, per pair (B,): ``(Δ − 1/(2β))²`` (Azar et al. 2023, https://arxiv.org/abs/2310.12036,
    Eq. 17, where β is the regulariser τ).

    Inputs are log-probs *averaged* over each answer's tokens (sum / number of answer tokens, see
    :func:`mean_logps`): the squared loss regresses Δ onto a fixed target 1/(2β), so with sums the
    target would depend on answer length. This is TRL's ``loss_type="ipo"`` (it divides the summed
    log-ratios by the completion lengths, a choice it reports confirmed by the IPO authors).
    """
    _no_smoothing("ipo", label_smoothing)
    delta = _logratio_delta(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    return (delta - 1 / (2 * beta)) ** 2


def dpo_hinge(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Hinge (SLiC), per pair (B,): ``max(0, 1 − βΔ)``.

    SLiC-HF's calibration loss ``max(0, δ − log π(y_w) + log π(y_l))`` (Zhao et al. 2023,
    https://arxiv.org/abs/2305.10425, Eq. 1) written on log-ratios to the reference with margin
    δ = 1/β and scaled by β, as in RSO (Liu et al. 2023, https://arxiv.org/abs/2309.06657, Eq. 9) and
    TRL's ``loss_type="hinge"``. Inputs: (B,) log-probs summed over answer tokens.
    """
    _no_smoothing("hinge", label_smoothing)
    delta = _logratio_delta(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    return torch.relu(1 - beta * delta)


DPO_LOSSES = {"sigmoid": dpo_sigmoid, "ipo": dpo_ipo, "hinge": dpo_hinge}


def mean_logps(summed_logps: torch.Tensor, token_counts: torch.Tensor) -> torch.Tensor:
    """Per-token average log-prob (B,) from the sums and answer-token counts of :func:`sequence_logps`
    — the input IPO expects. A count of 0 is treated as 1 (the sum is then 0 anyway), as TRL does."""
    return summed_logps / token_counts.clamp(min=1).to(summed_logps.dtype)


def dpo_rewards(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """DPO's implicit rewards ``β (log π(y) − log π_ref(y))`` of the chosen and of the rejected answers,
    each (B,), detached (they are for logging: reward accuracy and margin). Rafailov et al. 2023, Eq. 5."""
    chosen = beta * (policy_chosen_logps.detach().float() - ref_chosen_logps.detach().float())
    rejected = beta * (policy_rejected_logps.detach().float() - ref_rejected_logps.detach().float())
    return chosen, rejected


def preference_metrics(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> dict[str, float]:
    """Logged metrics of B pairs of rewards (B,), (B,):

    - ``accuracy``: share of pairs with r_c > r_r (a tie counts as wrong, as in TRL);
    - ``margin_mean``: mean of r_c − r_r;
    - ``chosen_mean``, ``rejected_mean``;
    - ``reward_mean``, ``reward_std``: over all 2B rewards (population std, so one pair gives 0, not NaN).
    """
    chosen, rejected = chosen_rewards.detach().float(), rejected_rewards.detach().float()
    both = torch.cat([chosen, rejected])
    return {
        "accuracy": (chosen > rejected).float().mean().item(),
        "margin_mean": (chosen - rejected).mean().item(),
        "chosen_mean": chosen.mean().item(),
        "rejected_mean": rejected.mean().item(),
        "reward_mean": both.mean().item(),
        "reward_std": both.std(correction=0).item(),
    }


def sequence_logps(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence ``sum_t log p(labels[t+1] | tokens <= t)`` over labelled positions, and their count.

    logits: (B, T, V) — logits at position t score token t+1; labels: (B, T) = the input ids with
    ``ignore_index`` on prompt and padding (the same labels as SFT). Returns logps (B,) float32
    and token counts (B,) int64.
    """
    logits, labels = logits[:, :-1], labels[:, 1:]
    keep = labels != ignore_index
    safe = labels.masked_fill(~keep, 0).unsqueeze(-1)
    logits = logits.float()
    # gather - logsumexp avoids materialising a second (B, T, V) tensor of log-probabilities
    token_logps = logits.gather(-1, safe).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    return (token_logps * keep).sum(dim=1), keep.sum(dim=1)


def sequence_logps_from_hidden(
    hidden: torch.Tensor, labels: torch.Tensor, head: nn.Module, ignore_index: int = IGNORE_INDEX
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same as :func:`sequence_logps`, running the LM ``head`` only on the positions that score an
    answer token (a prompt is often most of a preference pair, and the head is the largest matmul).

    hidden: (B, T, H) last hidden states; labels: (B, T); head: hidden -> (.., V) logits.
    Returns logps (B,) float32 and token counts (B,) int64.
    """
    targets = labels[:, 1:]
    keep = targets != ignore_index
    rows = torch.arange(labels.shape[0], device=labels.device).unsqueeze(1).expand_as(targets)[keep]
    logits = head(hidden[:, :-1][keep]).float()  # (N, V)
    picked = targets[keep].unsqueeze(-1)
    token_logps = logits.gather(-1, picked).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    logps = torch.zeros(labels.shape[0], dtype=torch.float32, device=hidden.device)
    return logps.index_add(0, rows, token_logps), keep.sum(dim=1)


def _inputs(model: nn.Module, part: dict) -> dict:
    """The model inputs of a part. A prefix-shared part's 4-D boolean mask (True = attend) goes to
    SDPA as it is; other attention implementations add the mask to the scores, so they get it as
    0 / the dtype's minimum."""
    inputs = {k: part[k] for k in ("input_ids", "attention_mask", "position_ids") if k in part}
    config = getattr(model, "config", None)
    if part.get("shared") and getattr(config, "_attn_implementation", "sdpa") != "sdpa":
        dtype = next(model.parameters()).dtype
        mask = inputs["attention_mask"]
        inputs["attention_mask"] = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
            ~mask, torch.finfo(dtype).min
        )
    return inputs


def shared_logps(
    states: torch.Tensor, tokens: torch.Tensor, seq: torch.Tensor, n_seq: int, head: nn.Module
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probs (n_seq,) and token counts of the answers of a prefix-shared part: ``states``
    (N, H) the hidden states that predict ``tokens[i]`` of sequence ``seq[i]``; ``head`` the LM head."""
    logits = head(states).float()
    token_logps = logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    logps = torch.zeros(n_seq, dtype=torch.float32, device=states.device).index_add(0, seq, token_logps)
    return logps, torch.bincount(seq, minlength=n_seq)


# ----------------------------------------------------------------------------- batches of pairs
# A batch of B pairs holds 2B sequences (chosen first, then rejected) in separately padded parts
# (``data.preference.pair_collate``); these functions run the model on every part and return one
# value per sequence, in row order.


def _rows(batch: dict, per_part) -> torch.Tensor:
    values = [per_part(part) for part in batch["parts"]]
    order = torch.cat([part["rows"] for part in batch["parts"]]).to(values[0].device)
    return torch.cat(values)[torch.argsort(order)]


def sequence_rewards(model: nn.Module, batch: dict) -> torch.Tensor:
    """Scalar rewards (2B,) of a sequence-classification model with one output: read at each
    sequence's last token for decoders (our own gather, so a trailing token that equals the pad id
    is still read), from the model's own pooling for encoders."""
    from deltatune.models.loading import head_module_names, is_encoder

    wrapped = not hasattr(model, "config")  # DDP: its own forward must run (gradient sync)
    encoder = wrapped or is_encoder(model.config)
    head = None if encoder else model.get_submodule(head_module_names(model)[0])

    def per_part(part: dict) -> torch.Tensor:
        inputs = _inputs(model, part)
        if encoder:
            return model(**inputs).logits[:, 0].float()
        hidden = model.base_model(**inputs, use_cache=False).last_hidden_state
        if part.get("shared"):  # one row per pair (data.preference.shared_pair_collate)
            return head(hidden.flatten(0, 1)[part["last"]]).squeeze(-1).float()
        last = hidden[torch.arange(hidden.shape[0], device=hidden.device), part["last"]]
        return head(last).squeeze(-1).float()

    return _rows(batch, per_part)


def answer_logps(model: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probs of each sequence's answer tokens (2B,) and their counts (2B,), for a causal
    LM; the LM head runs on answer positions only (:func:`sequence_logps_from_hidden`)."""
    wrapped = not hasattr(model, "config")  # DDP: its own forward must run (gradient sync)
    head = None if wrapped else model.get_output_embeddings()
    counts: list[torch.Tensor] = []

    def per_part(part: dict) -> torch.Tensor:
        inputs = _inputs(model, part)
        if part.get("shared"):  # one row per pair (data.preference.shared_pair_collate; one process only)
            hidden = model.base_model(**inputs, use_cache=False).last_hidden_state.flatten(0, 1)
            logps, n = shared_logps(hidden[part["src"]], part["tokens"], part["seq"], len(part["rows"]), head)
        elif wrapped:
            logps, n = sequence_logps(model(**inputs, use_cache=False).logits, part["labels"])
        else:
            hidden = model.base_model(**inputs, use_cache=False).last_hidden_state
            logps, n = sequence_logps_from_hidden(hidden, part["labels"], head)
        counts.append(n)
        return logps

    logps = _rows(batch, per_part)
    order = torch.cat([part["rows"] for part in batch["parts"]]).to(logps.device)
    return logps, torch.cat(counts).to(logps.device)[torch.argsort(order)]


def dpo_batch_loss(
    logps: torch.Tensor,
    counts: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    loss: str,
    beta: float,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The summed DPO-family loss of B pairs from the policy's answer log-probs (2B,) and counts (2B,)
    (chosen first) and the reference's (B,) each; plus sums to log (reward accuracy and margin,
    implicit rewards, policy log-probs). IPO gets per-token averages, the others sums."""
    n = logps.shape[0] // 2
    pc, pr, rc, rr = logps[:n], logps[n:], ref_chosen, ref_rejected
    chosen, rejected = dpo_rewards(pc, pr, rc, rr, beta)
    if loss == "ipo":
        pc, pr, rc, rr = (
            mean_logps(x, c)
            for x, c in ((pc, counts[:n]), (pr, counts[n:]), (rc, counts[:n]), (rr, counts[n:]))
        )
    total = DPO_LOSSES[loss](pc, pr, rc, rr, beta, label_smoothing).sum()
    extras = {
        "reward_accuracy": float((chosen > rejected).sum()),
        "reward_margin": float((chosen - rejected).sum()),
        "reward_chosen": float(chosen.sum()),
        "reward_rejected": float(rejected.sum()),
        "logps_chosen": float(logps[:n].detach().sum()),
        "logps_rejected": float(logps[n:].detach().sum()),
    }
    return total, extras
