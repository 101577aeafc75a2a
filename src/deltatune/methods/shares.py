"""How many parameters each method trains on a given model (``deltatune methods``)."""

from __future__ import annotations

from deltatune.methods.registry import ModelContext, available, trainable_report


def method_rows() -> list[tuple[str, object, dict]]:
    """(row name, method spec, options) for every method and every variant it declares (LoRA's
    ``dora``, ``rslora``, ``loraplus``), in name order with each method's variants after it."""
    rows = []
    for name, spec in sorted(available().items()):
        rows.append((name, spec, {}))
        rows += [(variant, spec, dict(opts)) for variant, opts in sorted(spec.variants.items())]
    return rows


def trainable_shares(model_name: str, num_labels: int = 2) -> dict[str, dict | str]:
    """Apply every method and variant (default options) to a fresh copy of a classification model
    and count trainable parameters; a method that does not apply gives its error message instead."""
    import copy

    import torch

    from deltatune.errors import UserError
    from deltatune.models import head_module_names, load_for_classification

    base, _, path = load_for_classification(model_name, num_labels, {i: str(i) for i in range(num_labels)})
    ctx = ModelContext(base_model=str(path), task_type="SEQ_CLS", head_modules=head_module_names(base))
    shares: dict[str, dict | str] = {}
    for row, spec, opts in method_rows():
        model = copy.deepcopy(base)
        torch.manual_seed(0)
        try:
            spec.apply(model, spec.options(name=spec.name, **opts), ctx)
            shares[row] = trainable_report(model)
        except UserError as exc:
            shares[row] = str(exc).split(";")[0]
    return shares
