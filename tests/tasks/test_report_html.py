"""The HTML reports rendered in a real browser (headless Chromium): the comparison table and every
plot are on the page and drawn at a real size; the page loads nothing from the network; the
single-run reports show their loss curve and confusion matrix or generation samples.

Chromium is Debian's `chromium` package (`.ci/run` installs it); without it these tests are skipped
with the reason printed (`make test` shows skip reasons)."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from deltatune.cli import main
from deltatune.compare.runner import compare
from deltatune.config import load_config
from deltatune.models import make_tiny_model_dir
from helpers.paths import ASSETS

BROWSER = next(
    (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None
)
pytestmark = pytest.mark.skipif(
    BROWSER is None,
    reason="headless Chromium not installed (Debian: apt-get install "
    "chromium); the HTML reports are not checked in a browser",
)
ALPACA = ASSETS / "alpaca_sample.json"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--hide-scrollbars",
]

# Appended to a copy of the page: measures what the browser laid out and writes it into the DOM.
MEASURE = """<script>
window.addEventListener('load', () => {
  const box = el => { const r = el.getBoundingClientRect(); \
return [Math.round(r.width), Math.round(r.height)]; };
  const out = {figures: {}, tables: {}};
  document.querySelectorAll('figure').forEach(f => {
    const svg = f.querySelector('svg');
    out.figures[f.id] = svg ? {size: box(svg), paths: svg.querySelectorAll('path').length,
                               texts: Array.from(svg.querySelectorAll('text')).map(\
t => t.textContent)} : null;
  });
  document.querySelectorAll('table').forEach(t => {
    out.tables[t.id] = {size: box(t), rows: Array.from(t.querySelectorAll('tbody tr')).map(
      r => Array.from(r.cells).map(c => c.textContent.trim()))};
  });
  out.resources = performance.getEntriesByType('resource').map(e => e.name);
  const pre = document.createElement('pre'); pre.id = 'measured'; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def chromium(args: list[str], tmp: Path) -> str:
    profile = tmp / f"profile-{len(list(tmp.glob('profile-*')))}"
    done = subprocess.run(
        [BROWSER, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def rendered(html: Path, tmp: Path) -> dict:
    """What the browser laid out: per figure the SVG's size, paths and texts; per table its rows."""
    probe = tmp / f"probe-{html.name}"
    probe.write_text(html.read_text().replace("</body>", MEASURE + "</body>"))
    dom = chromium(
        ["--virtual-time-budget=10000", "--window-size=1400,2000", "--dump-dom", probe.as_uri()], tmp
    )
    start = dom.index('<pre id="measured">') + len('<pre id="measured">')
    import html as htmllib

    return json.loads(htmllib.unescape(dom[start : dom.index("</pre>", start)]))


def screenshot(html: Path, png: Path, tmp: Path, height: int = 2600):
    chromium([f"--window-size=1400,{height}", f"--screenshot={png}", html.as_uri()], tmp)
    from matplotlib.image import imread

    pixels = imread(png)[..., :3]
    return pixels


@pytest.fixture(scope="module")
def comparison(tmp_path_factory, one_thread):
    tmp = tmp_path_factory.mktemp("html")
    model = make_tiny_model_dir("bert", tmp / "bert", task="classify")
    words = ["great", "fine", "awful", "dull", "warm", "cold", "bright", "flat"]
    rows = [
        {
            "text": f"{w} film number {i}",
            "label": "pos" if w in ("great", "fine", "warm", "bright") else "neg",
        }
        for i in range(6)
        for w in words
    ]
    (tmp / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp / "val.jsonl").write_text(
        "".join(json.dumps(dict(r, text=r["text"] + " again")) + "\n" for r in rows[:16])
    )
    cfg = load_config(
        None,
        [
            f"model.name={model}",
            f"data.train={tmp / 'train.jsonl'}",
            f"data.validation={tmp / 'val.jsonl'}",
            "train.epochs=2",
            "train.batch_size=8",
            "train.precision=fp32",
            "train.log_every=1",
            "method.target_modules=[no_such_module]",
        ],
    )
    result = compare(
        cfg,
        ["lora", "ia3", "bitfit"],
        [0, 1],
        tmp / "cmp",
        isolate=False,
        bench={"batch_sizes": [1, 4], "warmup": 1, "repeats": 3},
    )
    return tmp, result


def test_compare_html_in_a_browser(comparison, tmp_path):
    tmp, result = comparison
    page = tmp / "cmp" / "compare.html"
    seen = rendered(page, tmp_path)
    assert seen["resources"] == []  # nothing fetched: self-contained
    table = seen["tables"]["compare-table"]
    assert table["size"][0] > 600 and table["size"][1] > 80
    names = [r[0] for r in table["rows"]]
    assert names == ["base (untuned)", "lora", "ia3", "bitfit"]
    lora = table["rows"][1]
    assert lora[1].startswith("failed:") and "no_such_module" in lora[1]
    ia3 = table["rows"][2]
    assert "merged" in " ".join(ia3) and any("params" in c for c in ia3)
    figures = seen["figures"]
    assert set(figures) == {"plot-quality", "plot-loss", "plot-resources", "plot-latency"}
    for name, fig in figures.items():
        width, height = fig["size"]
        assert width > 300 and height > 150, (name, fig["size"])
        assert fig["paths"] > 10, name  # axes, ticks, bars, lines, markers
    assert {"ia3", "bitfit"} <= set(figures["plot-quality"]["texts"])
    assert {"ia3", "bitfit", "base (untuned)"} <= set(figures["plot-latency"]["texts"])
    assert "Training loss of every method" in figures["plot-loss"]["texts"]
    pixels = screenshot(page, tmp_path / "compare.png", tmp_path)
    ink = (pixels.mean(axis=2) < 0.85).mean()
    assert pixels.std() > 0.05 and ink > 0.02, "the screenshot looks blank"


def test_eval_report_html_of_a_classifier(comparison, tmp_path):
    tmp, _ = comparison
    page = tmp / "cmp" / "runs" / "ia3-seed0" / "eval_report.html"
    assert page.is_file()
    seen = rendered(page, tmp_path)
    assert seen["resources"] == []
    assert set(seen["figures"]) == {"plot-loss", "plot-confusion"}
    for fig in seen["figures"].values():
        assert fig["size"][0] > 150 and fig["size"][1] > 150 and fig["paths"] > 5
    assert {"neg", "pos"} <= set(seen["figures"]["plot-confusion"]["texts"])
    metrics = {r[0]: r for r in seen["tables"]["metrics-table"]["rows"]}
    assert "accuracy" in metrics and len(metrics["accuracy"]) == 4  # metric, base, tuned, change


def test_eval_report_html_of_an_sft_run_shows_samples(tmp_path, one_thread):
    model = make_tiny_model_dir("llama", tmp_path / "llama", task="causal_lm")
    (tmp_path / "a.json").write_text(json.dumps(json.load(open(ALPACA))[:12]))
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "task=sft",
                f"model.name={model}",
                f"data.train={tmp_path / 'a.json'}",
                "data.validation_split=0.25",
                "data.max_length=64",
                "train.batch_size=4",
                "train.max_steps=2",
                "train.log_every=1",
                "train.progress=false",
                "generate.eval_samples=2",
                "generate.max_new_tokens=4",
                "--no-check",
                "--output-dir",
                str(run),
            ]
        )
        == 0
    )
    seen = rendered(run / "eval_report.html", tmp_path)
    samples = seen["tables"]["samples-table"]["rows"]
    assert len(samples) == 2 and all(len(r) == 4 for r in samples)  # prompt, reference, base, tuned
    assert "plot-loss" in seen["figures"] and seen["figures"]["plot-loss"]["paths"] > 5
