"""Every shipped example config loads and validates."""

from pathlib import Path

import pytest

from deltatune.config import load_config

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_example_config_is_valid(path):
    cfg = load_config(path)
    assert cfg.data.train


def test_there_are_configs():
    assert len(CONFIGS) >= 3
