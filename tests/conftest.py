"""Shared test fixtures.

Real data lives in ../shared/data beside the project root; tests that need it skip cleanly when it is
missing. Everything else builds tiny data itself.
"""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def synthetic_corpus(tmp_path_factory) -> Path:
    """Raw text: en/fr/de monolingual files and en-fr, en-de parallel files (see xlmkit.synthetic)."""
    from xlmkit.synthetic import write_corpus

    return write_corpus(tmp_path_factory.mktemp("corpus"), n_mono=1500, n_para=800, seed=0)
