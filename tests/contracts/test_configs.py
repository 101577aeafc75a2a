"""Every shipped example config loads and validates."""

import pytest

from deltatune.config import load_config
from helpers.paths import ROOT

CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_example_config_is_valid(path):
    cfg = load_config(path)
    assert cfg.data.train


def test_there_are_configs():
    assert len(CONFIGS) >= 3
