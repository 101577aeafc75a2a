"""Helpers shared by the test modules (importable because pyproject puts tests/ on pytest's path)."""
