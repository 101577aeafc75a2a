"""Evaluating preference models on held-out pairs: a reward model's pairwise accuracy (with a 95%
interval), margins and reward spread, and the pairs it scores most wrongly; DPO's loss, implicit
reward accuracy and margins against the reference."""

from __future__ import annotations

import torch

from deltatune.losses.preference import (
    DPO_LOSSES,
    answer_logps,
    bradley_terry,
    dpo_rewards,
    mean_logps,
    preference_metrics,
    sequence_rewards,
)
from deltatune.metrics.intervals import pairwise_accuracy_ci
from deltatune.tasks.preference.pairs import can_share_prompt, pair_collate, shared_pair_collate


@torch.no_grad()
def _over_pairs(
    model, feats: list[dict], pad_id: int, fn, batch_size: int, attention_mask: bool, share: bool = False
) -> list:
    """``fn(model, batch)`` over ``feats`` in batches sorted by length; outputs in input order.
    ``share``: prefix-shared rows where the model allows (:func:`can_share_prompt`; exact)."""
    share = share and can_share_prompt(model, attention_mask)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    order = sorted(
        range(len(feats)), key=lambda i: len(feats[i]["chosen_ids"]) + len(feats[i]["rejected_ids"])
    )
    results: list = [None] * len(feats)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        chunk = [feats[i] for i in idx]
        batch = shared_pair_collate(chunk, pad_id) if share else pair_collate(chunk, pad_id, attention_mask)
        batch = {
            k: (
                [{n: t.to(device) if torch.is_tensor(t) else t for n, t in p.items()} for p in v]
                if k == "parts"
                else v.to(device)
            )
            for k, v in batch.items()
        }
        out = fn(model, batch)
        for j, i in enumerate(idx):
            results[i] = [o[j].item() for o in out]
    model.train(was_training)
    return results


def pair_rewards(
    model, feats: list[dict], pad_id: int, batch_size: int = 16
) -> tuple[torch.Tensor, torch.Tensor]:
    """A reward model's scores of every chosen and every rejected answer, (N,) each."""

    def fn(m, batch):
        r = sequence_rewards(m, batch)
        n = r.shape[0] // 2
        return r[:n], r[n:]

    out = torch.tensor(_over_pairs(model, feats, pad_id, fn, batch_size, attention_mask=True))
    return out[:, 0], out[:, 1]


def pair_logps(
    model,
    feats: list[dict],
    pad_id: int,
    attention_mask: bool = False,
    batch_size: int = 8,
    share: bool = False,
) -> torch.Tensor:
    """Summed answer log-probs and answer lengths, (N, 4): chosen, rejected, chosen count, rejected count.
    ``share``: each pair's prompt read once where the model allows (the same values)."""

    def fn(m, batch):
        logps, counts = answer_logps(m, batch)
        n = logps.shape[0] // 2
        return logps[:n], logps[n:], counts[:n].float(), counts[n:].float()

    return torch.tensor(_over_pairs(model, feats, pad_id, fn, batch_size, attention_mask, share))


def reward_report(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    pairs: list | None = None,
    center_coef: float = 0.0,
    worst: int = 5,
) -> dict:
    """Pairwise accuracy with its 95% Wilson interval, loss, margin and reward statistics, and the
    ``worst`` pairs scored most wrongly (most negative margin) with their texts when ``pairs`` given."""
    accuracy, low, high = pairwise_accuracy_ci((chosen > rejected).tolist())
    out = {
        **preference_metrics(chosen, rejected),
        "accuracy": accuracy,
        "accuracy_ci_low": low,
        "accuracy_ci_high": high,
        "loss": float(bradley_terry(chosen, rejected, None, center_coef)) / len(chosen),
        "pairs": len(chosen),
    }
    if pairs is not None:
        margins = (chosen - rejected).tolist()
        out["most_wrong"] = [
            {
                "line": pairs[i].line,
                "margin": round(margins[i], 4),
                "prompt": pairs[i].prompt[-1]["content"] if pairs[i].prompt else "",
                "chosen": pairs[i].chosen,
                "rejected": pairs[i].rejected,
            }
            for i in sorted(range(len(margins)), key=lambda i: margins[i])[:worst]
            if margins[i] <= 0
        ]
    return out


def dpo_report(
    policy: torch.Tensor, reference: torch.Tensor, beta: float, loss: str, label_smoothing: float = 0.0
) -> dict:
    """DPO metrics of N pairs from (N, 4) policy and reference log-probs (see :func:`pair_logps`)."""
    pc, pr, nc, nr = policy.unbind(1)
    rc, rr = reference[:, 0], reference[:, 1]
    if loss == "ipo":  # IPO compares per-token averages
        pc, pr, rc, rr = mean_logps(pc, nc), mean_logps(pr, nr), mean_logps(rc, nc), mean_logps(rr, nr)
    losses = DPO_LOSSES[loss](pc, pr, rc, rr, beta, label_smoothing)
    chosen, rejected = dpo_rewards(pc, pr, rc, rr, beta)
    metrics = preference_metrics(chosen, rejected)
    accuracy, low, high = pairwise_accuracy_ci((chosen > rejected).tolist())
    return {
        "loss": float(losses.mean()),
        "reward_accuracy": accuracy,
        "reward_accuracy_ci_low": low,
        "reward_accuracy_ci_high": high,
        "reward_margin": metrics["margin_mean"],
        "reward_chosen": metrics["chosen_mean"],
        "reward_rejected": metrics["rejected_mean"],
        "logps_chosen": float(policy[:, 0].mean()),
        "logps_rejected": float(policy[:, 1].mean()),
        "pairs": len(policy),
    }


def preference_markdown(title: str, report: dict, keys: tuple[str, ...], extra: dict) -> str:
    """``eval_report.md`` of a preference run: base vs tuned (and test) metrics, then the pairs the
    tuned model scores most wrongly, if the report has them."""
    from deltatune.reports.writers import cell

    sides = [s for s in ("base", "tuned", "test") if s in report]
    lines = [f"# {title}", ""] + [f"- **{k}**: {v}" for k, v in extra.items()] + [""]
    if sides:
        lines += [
            "| metric | " + " | ".join("base (untuned)" if s == "base" else s for s in sides) + " |",
            "|---" * (len(sides) + 1) + "|",
        ]
        lines += [
            f"| {k} | " + " | ".join(f"{report[s][k]:.4f}" for s in sides) + " |"
            for k in keys
            if all(k in report[s] for s in sides)
        ]
    wrong = report.get("tuned", {}).get("most_wrong") or []
    if wrong:
        lines += [
            "",
            "## Pairs scored most wrongly (tuned, validation)",
            "",
            "| line | margin | prompt | chosen | rejected |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {w['line']} | {w['margin']:.3f} | {cell(w['prompt'], 150)} | {cell(w['chosen'], 150)} "
            f"| {cell(w['rejected'], 150)} |"
            for w in wrong
        ]
    return "\n".join(lines) + "\n"
