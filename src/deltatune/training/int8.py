"""``train.int8_base``: the frozen linear layers' training matmuls in int8, a CPU speed path.

On a CPU without native bf16 (AVX2) an fp32 matmul is bound by its multiply-add units, and
``torch._int_mm`` (int8 x int8 -> int32) runs about 4x faster at the shapes of a small encoder.
A linear layer whose weight is frozen (LoRA's base layers; the whole model for prompt tuning)
needs two matmuls per training step, and both can run in int8::

    y  = (q(x) q(W)^T) * s_x * s_W + b         forward
    dx = (q(g) q(W^T)^T) * s_g * s_Wt          backward, for the layers below

``q`` is symmetric round-to-nearest int8 with one scale per row of the activation or gradient
(per token) and one per output feature of the weight (``W^T`` is quantized again, per input
feature, for the backward product). No weight gradient is computed: the weight is frozen. A
trainable bias (BitFit) is added outside the int8 product, so it still gets its gradient.

Only training steps use int8. Evaluation, merging and saving use the float weights, so the model
that is evaluated is the float model that PEFT loads from the saved adapter. The int8 copies are
made on the first training step and again whenever the float weight changes in place (a LoRA merge).
"""

from __future__ import annotations

import functools

import torch
import torch.nn as nn
import torch.nn.functional as F

from deltatune.errors import ConfigError
from deltatune.log import log


def _rows_int8(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``t`` (n, k) float as int8 with one scale per row: ``t ~ q * scale``, ``scale`` (n, 1)."""
    scale = t.abs().amax(dim=1, keepdim=True).clamp_(min=1e-12).div_(127.0)
    return (t / scale).round_().to(torch.int8), scale


def _int8_matmul(t: torch.Tensor, weight_t: torch.Tensor, weight_scale: torch.Tensor) -> torch.Tensor:
    """``t @ W^T`` for ``t`` (n, k) float and ``W`` given as ``weight_t`` (k, m) int8 with one scale
    per output column ``weight_scale`` (m,); the result is in ``t``'s dtype."""
    q, scale = _rows_int8(t)
    return torch._int_mm(q, weight_t).to(t.dtype).mul_(scale).mul_(weight_scale.to(t.dtype))


class _FrozenInt8(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, layer: "Int8TrainLinear") -> torch.Tensor:
        fwd_t, fwd_scale, bwd_t, bwd_scale = layer.int8_weights()
        ctx.backward_weights = (bwd_t, bwd_scale)
        flat = x.reshape(-1, x.shape[-1])
        return _int8_matmul(flat, fwd_t, fwd_scale).view(*x.shape[:-1], fwd_t.shape[1])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        bwd_t, bwd_scale = ctx.backward_weights
        flat = grad.reshape(-1, grad.shape[-1]).contiguous()
        return _int8_matmul(flat, bwd_t, bwd_scale).view(*grad.shape[:-1], bwd_t.shape[1]), None


class _BackwardInt8(torch.autograd.Function):
    """Float forward, int8 input gradient: the loss and the evaluated function are exact."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, layer: "Int8TrainLinear") -> torch.Tensor:
        ctx.backward_weights = layer.int8_weights()[2:]
        return F.linear(x, layer.weight)

    backward = staticmethod(_FrozenInt8.backward)


def _quantize_columns(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``w`` (m, k) float -> ``(q^T (k, m) int8, scale (m,))`` with one scale per row of ``w``."""
    q, scale = _rows_int8(w)
    return q.t().contiguous(), scale.squeeze(1)


class Int8TrainLinear(nn.Linear):
    """An ``nn.Linear`` with a frozen weight whose training steps run in int8. It holds the same
    ``weight`` and ``bias`` parameters as the layer it replaces (state dicts and saved files are
    unchanged); :func:`restore_float_linears` puts plain ``nn.Linear`` layers back."""

    def __init__(self, linear: nn.Linear, mode: str = "on"):
        nn.Module.__init__(self)
        self.mode = mode  # "on": both matmuls in int8; "backward": the input gradient's only
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias
        self._int8: tuple[torch.Tensor, ...] | None = None
        self._int8_key: tuple | None = None

    @torch.no_grad()
    def int8_weights(self) -> tuple[torch.Tensor | None, ...]:
        """``(W^T, per-output scales, W, per-input scales)``, the int8 operands (the first two None in
        ``backward`` mode, which does not use them); remade when the float weight has changed in place
        (its version counter) or moved."""
        w = self.weight
        key = (w.data_ptr(), w._version, w.device, w.dtype, self.mode)
        if self._int8 is None or key != self._int8_key:
            w = w.detach().float()
            forward = _quantize_columns(w) if self.mode == "on" else (None, None)
            self._int8 = (*forward, *_quantize_columns(w.t()))
            self._int8_key = key
        return self._int8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            self.weight.requires_grad
            or not (self.training and torch.is_grad_enabled())
            or torch.is_autocast_enabled(x.device.type)
            or x.dtype != torch.float32
        ):
            return F.linear(x, self.weight, self.bias)
        out = (_FrozenInt8 if self.mode == "on" else _BackwardInt8).apply(x, self)
        return out + self.bias if self.bias is not None else out


@functools.cache
def int8_matmul_available() -> bool:
    """Whether this torch build runs ``torch._int_mm`` on CPU (and gets it right)."""
    try:
        a = torch.tensor([[1, -2, 3]], dtype=torch.int8)
        return torch._int_mm(a.repeat(17, 1), a.t().repeat(1, 8).contiguous())[0, 0].item() == 14
    except (RuntimeError, AttributeError):
        return False


def use_int8_linears(model: nn.Module, mode: str = "on") -> int:
    """Swap every ``nn.Linear`` whose weight is frozen for an :class:`Int8TrainLinear` sharing its
    parameters; returns how many. Layers with a trainable weight (heads, LoRA's A and B, full
    fine-tuning) and subclasses of ``nn.Linear`` are left alone."""
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if (
                type(child) is nn.Linear
                and not child.weight.requires_grad
                and child.weight.is_floating_point()
            ):
                setattr(parent, name, Int8TrainLinear(child, mode))
                swapped += 1
    return swapped


def restore_float_linears(model: nn.Module) -> int:
    """Undo :func:`use_int8_linears`: plain ``nn.Linear`` layers with the same parameters."""
    restored = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is Int8TrainLinear:
                linear = nn.Linear.__new__(nn.Linear)
                nn.Module.__init__(linear)
                linear.in_features, linear.out_features = child.in_features, child.out_features
                linear.weight, linear.bias = child.weight, child.bias
                setattr(parent, name, linear)
                restored += 1
    return restored


def int8_fast_cpu() -> str | None:
    """Why this CPU is not one where ``auto`` turns int8 on (None: it is). Measured: on an x86 CPU with
    AVX2/AVX512 (no VNNI) ``torch._int_mm`` ran 3-4x faster than fp32 at a small encoder's shapes. On other
    CPUs (ARM builds of torch) it was not measured and may be slower than fp32."""
    import platform

    machine, capability = platform.machine(), torch.backends.cpu.get_cpu_capability()
    if machine.lower() in ("x86_64", "amd64") and capability.startswith(("AVX2", "AVX512")):
        return None
    return (
        "int8 was measured faster than fp32 only on x86 CPUs with AVX2/AVX512 "
        f"(this is {machine}, {capability})"
    )


def int8_base_blocker(
    device_type: str, mixed_precision: str, weight_dtype: torch.dtype, compiled: bool = False
) -> str | None:
    """Why the int8 path cannot run here (None: it can)."""
    if compiled:
        return "train.compile is on, and torch.compile does not trace the int8 layers"
    if device_type != "cpu":
        return f"it runs on CPU only and this run is on {device_type} (where bf16 is the fast path)"
    if mixed_precision not in ("no", "fp32"):
        return f"this run computes in {mixed_precision} (train.precision); int8 replaces fp32 matmuls"
    if weight_dtype != torch.float32:
        return f"the base weights are {str(weight_dtype).removeprefix('torch.')} (model.dtype), not float32"
    if not int8_matmul_available():
        return f"this torch ({torch.__version__}) has no CPU int8 matmul (torch._int_mm)"
    return None


def setup_int8_base(
    model: nn.Module,
    setting: str,
    auto_mode: str,
    device_type: str,
    mixed_precision: str,
    compiled: bool = False,
) -> str:
    """Apply ``train.int8_base`` (``off``, ``backward``, ``on`` or ``auto``) to an adapted model; returns
    the mode the run trains with. ``auto_mode``: what ``auto`` means for this task and method (where it
    was measured; ``off`` elsewhere), and it quietly stays off where the int8 path cannot run."""
    mode = auto_mode if setting == "auto" else setting
    if mode == "off":
        return "off"
    weights = [p for p in model.parameters() if p.is_floating_point()]
    blocker = int8_base_blocker(
        device_type, mixed_precision, weights[0].dtype if weights else torch.float32, compiled
    )
    if blocker is None and setting == "auto":
        blocker = int8_fast_cpu()
    if blocker:
        if setting != "auto":
            raise ConfigError(f"train.int8_base: {setting}, but {blocker}; set train.int8_base: off")
        return "off"
    swapped = use_int8_linears(model, mode)
    if swapped == 0:
        if setting != "auto":
            raise ConfigError(
                f"train.int8_base: {setting}, but the model has no frozen linear layer (every "
                "weight trains, as in full fine-tuning); set train.int8_base: off"
            )
        return "off"
    what = "input-gradient matmuls" if mode == "backward" else "forward and input-gradient matmuls"
    log(
        f"train.int8_base {setting}: the {swapped} frozen linear layers run their training {what} in int8 "
        "(evaluation and saved weights stay float). Set train.int8_base: off for fp32"
    )
    return mode
