"""Qualitative labels of a comparison, derived from the measured numbers (never from a table of other
people's results), and the few sentences that sum the comparison up.

Rules (also printed under the table, :data:`LABEL_RULES`):

* params: trainable share < 0.1 % tiny, < 1 % small, < 10 % medium, else large;
* training memory and speed: where a method's peak memory (tokens/s) sits between the lowest and the
  highest of the compared methods: lowest third low (slow), highest third high (fast); when all are
  within 10 % of each other, "similar";
* inference: latency at the largest batch against the untuned base model benched right after the method
  in the same process (merged weights where the method merges; the fastest of the repeats, which other
  load on the machine cannot inflate): up to +10 % none, up to +50 % small, more large;
* quality: against the best method on the selection metric: within one standard deviation over seeds
  (at least 1 % of the value) "on par"; below that "lower"; not better than the untuned base by that
  margin "no gain".
"""

from __future__ import annotations

LABEL_RULES = [
    "params: trainable share < 0.1% tiny, < 1% small, < 10% medium, else large",
    "memory / speed: position between the lowest and highest compared method (thirds: low/medium/high, "
    "slow/medium/fast); 'similar' when all are within 10% of each other",
    "inference: latency (fastest repeat) at the largest batch vs the untuned base benched right after it in "
    "the same process (merged weights where the method merges): "
    "<= +10% none, <= +50% small, else large",
    "quality: vs the best method on the selection metric; within one std over seeds (at least 1% of the "
    "value) 'on par'; 'no gain' when not better than the untuned base by that margin",
]


def _ok(result: dict) -> list[dict]:
    return [r for r in result["rows"] if not r.get("baseline") and r["status"] != "failed"]


def _thirds(rows: list[dict], key: str, words: tuple[str, str, str]) -> dict[str, str]:
    values = {r["name"]: r.get(key) for r in rows if isinstance(r.get(key), (int, float))}
    if not values:
        return {}
    lo, hi = min(values.values()), max(values.values())
    if hi <= 0 or (hi - lo) / hi < 0.10:
        return {n: "similar" for n in values}
    out = {}
    for name, v in values.items():
        p = (v - lo) / (hi - lo)
        out[name] = words[0] if p <= 1 / 3 else words[2] if p >= 2 / 3 else words[1]
    return out


def _size(percent: float | None) -> str | None:
    if percent is None:
        return None
    return "tiny" if percent < 0.1 else "small" if percent < 1 else "medium" if percent < 10 else "large"


def inference_ratio(row: dict, base: dict) -> tuple[float | None, str | None]:
    """(latency / base latency at the largest common batch, the variant used: merged if measured;
    the base measured in the same process right after the method, where it was).
    The fastest of the repeats is compared: other processes on the machine can slow a pass down, never
    speed it up, so the minimum is the steadier measure of what the model itself costs."""
    key = "latency_min_ms" if row.get("latency_min_ms") else "latency_ms"
    lat = row.get(key) or {}
    base_lat = lat.get("base") or (base.get(key) or {}).get("base") or {}  # measured next to it, when it was
    variant = "merged" if "merged" in lat else "tuned" if "tuned" in lat else None
    if variant is None or not base_lat:
        return None, None
    common = [b for b in lat[variant] if b in base_lat]
    if not common:
        return None, None
    b = max(common, key=int)
    return lat[variant][b] / base_lat[b], variant


def _quality(result: dict, rows: list[dict], base: dict) -> dict[str, str]:
    metric, up = result["metric"], result["greater_is_better"]
    scored = {
        r["name"]: r["quality"].get(metric)
        for r in rows
        if (r.get("quality") or {}).get(metric, {}).get("mean") is not None
    }
    if not scored:
        return {}
    sign = 1 if up else -1
    best_name = max(scored, key=lambda n: sign * scored[n]["mean"])
    best = scored[best_name]
    base_mean = (base["quality"].get(metric) or {}).get("mean")
    out = {}
    for name, q in scored.items():
        tol = max(q["std"] or 0.0, best["std"] or 0.0, 0.01 * abs(best["mean"]))
        if base_mean is not None and sign * (q["mean"] - base_mean) <= tol:
            out[name] = "no gain"
        elif name == best_name:
            out[name] = "best"
        else:
            out[name] = "on par" if sign * (best["mean"] - q["mean"]) <= tol else "lower"
    return out


def add_labels(result: dict) -> None:
    """Set ``row["labels"]`` ({params, memory, speed, inference, quality}) on every finished row."""
    rows, base = _ok(result), result["rows"][0]
    busy = busy_machine(result)
    memory = _thirds(rows, "peak_train_memory_mb", ("low", "medium", "high"))
    speed = _thirds(rows, "train_tokens_per_s", ("slow", "medium", "fast"))
    quality = _quality(result, rows, base)
    for row in rows:
        ratio, variant = inference_ratio(row, base)
        overhead = (
            None
            if ratio is None or busy
            else "none"
            if ratio <= 1.10
            else "small"
            if ratio <= 1.5
            else "large"
        )
        row["inference_ratio"], row["inference_variant"] = ratio, variant
        row["labels"] = {
            k: v
            for k, v in {
                "params": _size(row.get("trainable_percent")),
                "memory": memory.get(row["name"]),
                "speed": speed.get(row["name"]),
                "inference": overhead and (overhead + (" once merged" if variant == "merged" else "")),
                "quality": quality.get(row["name"]),
            }.items()
            if v
        }
    result["label_rules"] = LABEL_RULES


def busy_machine(result: dict) -> str | None:
    """A warning when other processes used the CPUs while inference was benched, else None."""
    from deltatune.inference.efficiency import BUSY_SHARE

    share = result.get("bench_other_cpu_share")
    if share is None or share <= BUSY_SHARE:
        return None
    return (
        f"Other processes used up to {share:.0%} of the CPUs while inference was benched, so the latencies "
        "(and training speeds) are not reliable and no inference label is given; run the comparison again "
        "on an idle machine (delete its bench/ folder to measure again; trained runs are reused)."
    )


def fmt_quality(q: dict | None, digits: int = 3) -> str:
    if not q or q.get("mean") is None:
        return "n/a"
    return f"{q['mean']:.{digits}f}" + (f" ± {q['std']:.{digits}f}" if q["n"] > 1 else "")


def verdict(result: dict) -> list[str]:
    """A few sentences a reader gets the comparison from without reading the table."""
    rows, base, metric = _ok(result), result["rows"][0], result["metric"]
    lines = []
    best = [r for r in rows if r.get("labels", {}).get("quality") == "best"]
    if best:
        b = best[0]
        change = b["change"][metric]["abs"]
        lines.append(
            f"Best {metric}: {b['name']} with {fmt_quality(b['quality'][metric])}"
            + (
                f" ({change:+.4f} vs the untuned base, {fmt_quality(base['quality'][metric])})"
                if change is not None
                else ""
            )
            + "."
        )
        par = [r for r in rows if r.get("labels", {}).get("quality") in ("best", "on par")]
        small = min(par, key=lambda r: r.get("trainable") or 0)
        if small is not b:
            lines.append(
                f"{small['name']} is on par with {small['trainable']:,} trainable parameters "
                f"({small['trainable_percent']:.3g}% of the model) against {b['trainable']:,}."
            )
    nogain = [r["name"] for r in rows if r.get("labels", {}).get("quality") == "no gain"]
    if nogain:
        lines.append(f"No clear gain over the untuned base with this budget: {', '.join(nogain)}.")
    lines += _resource_lines(rows, busy_machine(result))
    lines += [
        f"{r['name']} failed: {r['errors'][0] if r['errors'] else 'see its log'}"
        for r in result["rows"]
        if r["status"] == "failed" and not r.get("baseline")
    ]
    return lines


def _resource_lines(rows: list[dict], busy: str | None) -> list[str]:
    lines = []
    mem = [r for r in rows if r.get("peak_train_memory_mb")]
    if len(mem) > 1:
        lo, hi = (
            min(mem, key=lambda r: r["peak_train_memory_mb"]),
            max(mem, key=lambda r: r["peak_train_memory_mb"]),
        )
        lines.append(
            f"Training memory: least {lo['name']} ({lo['peak_train_memory_mb']:.0f} MB peak), "
            f"most {hi['name']} ({hi['peak_train_memory_mb']:.0f} MB)."
        )
    fast = [r for r in rows if r.get("train_tokens_per_s")]
    if len(fast) > 1:
        f = max(fast, key=lambda r: r["train_tokens_per_s"])
        s = min(fast, key=lambda r: r["train_tokens_per_s"])
        lines.append(
            f"Training speed: fastest {f['name']} ({f['train_tokens_per_s']:.0f} tokens/s), "
            f"slowest {s['name']} ({s['train_tokens_per_s']:.0f} tokens/s)."
        )
    slow = [
        f"{r['name']} +{100 * (r['inference_ratio'] - 1):.0f}%"
        for r in rows
        if r.get("inference_ratio") and r["inference_ratio"] > 1.10
    ]
    none = [
        r["name"] + (" (merged)" if r["inference_variant"] == "merged" else "")
        for r in rows
        if r.get("inference_ratio") and r["inference_ratio"] <= 1.10
    ]
    if busy:
        return lines + [busy]
    if none:
        lines.append(f"No added inference latency: {', '.join(none)}.")
    if slow:
        lines.append(f"Added inference latency vs the base model: {', '.join(slow)}.")
    return lines
