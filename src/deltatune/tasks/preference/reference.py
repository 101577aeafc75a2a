"""The reference model of preference training (DPO, later PPO): the untuned model's answer log-probs.

Nothing is copied when the method can be switched off (every parameter-efficient method): the policy
itself computes the reference inside ``method.switch_off``. Full fine-tuning changes the base weights,
so there the reference is either computed before training (``precompute``) or a frozen copy kept for
the per-step path. Precomputed log-probs are cached in the run directory, keyed by a hash of every
token id and the model, so a resumed run does not compute them again.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
from pathlib import Path

import torch

from deltatune.io import load_safetensors, save_safetensors_atomic
from deltatune.losses.preference import answer_logps
from deltatune.tasks.preference.evaluate import pair_logps

CACHE = "reference_logps.safetensors"


class Reference:
    """Reference answer log-probs, (N, 2) per split (chosen, rejected), for pair features."""

    def __init__(
        self, model, pad_id: int, feats: dict[str, list[dict]], model_name: str, share: bool = False
    ):
        """``share``: read each pair's prompt once where the model allows (``data.share_prompt``)."""
        self.model, self.pad_id, self.feats, self.model_name = model, pad_id, feats, model_name
        self.share = share
        self.method, self.frozen, self.cached = None, None, {}
        self.seconds = 0.0  # spent computing reference log-probs before training (not in train_seconds)

    def attach(self, method, precompute: bool, run_dir: Path | None) -> None:
        """Called once the method is applied, before training: precompute every split (cached in
        ``run_dir``), or keep a frozen copy for methods that cannot be switched off."""
        import time

        self.method = method
        if precompute:
            start = time.perf_counter()
            self._precompute(run_dir / CACHE if run_dir else None)
            self.seconds = time.perf_counter() - start
        elif method.switch_off is None:
            self.frozen = copy.deepcopy(self.model).eval().requires_grad_(False)

    @property
    def inserts_tokens(self) -> bool:
        return bool(self.method and self.method.inserts_tokens)

    def _model(self):
        """The untuned model: a frozen copy, the policy with its method switched off, or the policy
        itself while no method is applied (or before full fine-tuning has trained)."""
        if self.frozen is not None:
            return self.frozen, contextlib.nullcontext()
        switch = self.method.switch_off if self.method is not None else None
        return self.model, switch(self.model) if switch else contextlib.nullcontext()

    def logps(self, split: str) -> torch.Tensor:
        if split not in self.cached:
            model, off = self._model()
            with off:
                self.cached[split] = pair_logps(
                    model, self.feats[split], self.pad_id, self.inserts_tokens, share=self.share
                )[:, :2]
        return self.cached[split]

    def for_batch(self, model, batch: dict, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
        """(chosen, rejected) reference log-probs of a training batch: looked up, or computed now."""
        if split in self.cached:
            ref = self.cached[split].to(batch["index"].device)[batch["index"]]
            return ref[:, 0], ref[:, 1]
        inner = getattr(model, "module", model)  # no gradient, so DDP's wrapper is not needed
        ref_model, off = (
            (self.frozen, contextlib.nullcontext())
            if self.frozen is not None
            else (inner, self.method.switch_off(inner))
        )
        with torch.no_grad(), off:
            logps, _ = answer_logps(ref_model, batch)
        n = logps.shape[0] // 2
        return logps[:n], logps[n:]

    def _precompute(self, cache: Path | None) -> None:
        key = self._key()
        if cache is not None and cache.is_file():
            saved = load_safetensors(cache, "cached reference log-probs")
            if "key" in saved and bytes(saved.pop("key").tolist()).decode() == key:
                self.cached.update(saved)
        for split in self.feats:
            self.logps(split)
        if cache is not None:
            key_tensor = torch.tensor(list(key.encode()), dtype=torch.uint8)
            save_safetensors_atomic({**self.cached, "key": key_tensor}, cache)

    def _key(self) -> str:
        """A hash of every token id the log-probs are computed on, and of the model."""
        h = hashlib.sha256(self.model_name.encode())
        for split in sorted(self.feats):
            for f in self.feats[split]:
                h.update(
                    repr(
                        (split, f["chosen_ids"], f["chosen_labels"], f["rejected_ids"], f["rejected_labels"])
                    ).encode()
                )
        return h.hexdigest()
