"""Shared test fixtures.

Real data lives in ../shared/data beside the project root; tests that need it skip cleanly when it is
missing. Everything else builds tiny data itself.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

# Tests mirror the package's folders, and some share helpers across them (tests/train/test_continue.py
# writes transformers checkpoints with tests/interop/test_hf.py's helpers): every test folder is
# importable by module name, whatever order pytest collects them in.
for _folder in sorted(Path(__file__).parent.iterdir()):
    if _folder.is_dir() and _folder.name.isidentifier() and not _folder.name.startswith("_") \
            and str(_folder) not in sys.path:
        sys.path.append(str(_folder))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def synthetic_corpus(tmp_path_factory) -> Path:
    """Raw text: en/fr/de monolingual files and en-fr, en-de parallel files (see xlmkit.data.synthetic)."""
    from xlmkit.data.synthetic import write_corpus

    return write_corpus(tmp_path_factory.mktemp("corpus"), n_mono=1500, n_para=800, seed=0)


@pytest.fixture(scope="module")
def one_cpu_thread():
    """Tiny models run several times faster on one thread than on two that contend with each other
    (and with anything else on a small shared CPU). Use with pytestmark = usefixtures(...)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_prepared(synthetic_corpus, tmp_path_factory) -> Path:
    """The synthetic corpus prepared with the tiny preset, once per session. Its small grammar has
    fewer distinct pieces than the preset's vocabulary size, hence a smaller one."""
    from xlmkit.core.config import load_config
    from xlmkit.data.prepare import prepare_data

    cfg = load_config("tiny", ["prepare.vocab_size=80"])
    return prepare_data(cfg.prepare, tmp_path_factory.mktemp("prepared") / "data", data_dir=synthetic_corpus,
                        progress=False)


@pytest.fixture(scope="module")
def tiny_random_run(tmp_path_factory) -> Path:
    """A run directory holding a random-init tiny XLM and a small BPE tokenizer (tests/_tiny_model.py),
    for the commands that use a pretrained model."""
    from _tiny_model import make_tiny_run

    return make_tiny_run(tmp_path_factory.mktemp("tiny") / "run")
