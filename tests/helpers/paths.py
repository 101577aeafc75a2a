"""Where the repository and the test assets are, for every test module wherever it sits."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository
ASSETS = ROOT / "tests" / "assets"  # small data files shipped with the tests (see ATTRIBUTION.md there)
SHARED_DATA = ROOT.parent / "shared" / "data"  # the team's full datasets, beside a development checkout only
