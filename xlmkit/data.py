"""Prepared data: the on-disk format written by `xlmkit prepare`, and read-only access to it.

Layout of a prepared directory:

    manifest.json                         languages, lang2id, vocab, special ids, counts, sources, config
    tokenizer.json                        Hugging Face `tokenizers` file (loads with Tokenizer.from_file)
    mono/{lang}.{split}.ids.bin           token ids (manifest["dtype"]); every sentence is followed by
                                          </s>, as in XLM's streams (Lample & Conneau 2019)
    mono/{lang}.{split}.offsets.bin       int64, n_sentences + 1: sentence i is ids[off[i] : off[i+1] - 1]
                                          (the slice excludes its trailing </s>)
    para/{a}-{b}.{split}.{lang}.ids.bin   the same for each side of a parallel pair; line i of one side
    para/{a}-{b}.{split}.{lang}.offsets.bin  is the translation of line i of the other

Splits are "train", "valid", "test". Arrays are raw little-endian binaries opened with np.memmap, so
reading never loads a corpus into memory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from xlmkit.errors import DataError

FORMAT = "xlmkit-data"
FORMAT_VERSION = 1
SPLITS = ("train", "valid", "test")

# Fixed special tokens and ids (the XLM-R / fairseq order), then one tag per language.
SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")


def lang_tag(lang: str) -> str:
    return f"<lang:{lang}>"


@dataclass(frozen=True)
class SpecialIds:
    bos: int = 0
    pad: int = 1
    eos: int = 2
    unk: int = 3
    mask: int = 4

    @property
    def all(self) -> tuple[int, ...]:
        return (self.bos, self.pad, self.eos, self.unk, self.mask)


@dataclass(frozen=True)
class TokenShard:
    """One split of one language (or one side of a pair): ids + sentence offsets, memory-mapped."""

    ids: np.ndarray  # (n_tokens + n_sentences,) every sentence followed by </s>
    offsets: np.ndarray  # (n_sentences + 1,) int64

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def sentence(self, i: int) -> np.ndarray:
        return self.ids[self.offsets[i] : self.offsets[i + 1] - 1]

    @property
    def n_tokens(self) -> int:
        """Subword tokens, </s> separators excluded."""
        return int(self.offsets[-1]) - len(self)


def shard_paths(root: Path, kind: str, name: str, split: str, lang: str | None = None) -> tuple[Path, Path]:
    """Paths of (ids, offsets) for mono (name=lang) or para (name=pair, lang=side)."""
    stem = f"{name}.{split}" if kind == "mono" else f"{name}.{split}.{lang}"
    return root / kind / f"{stem}.ids.bin", root / kind / f"{stem}.offsets.bin"


def _open(path: Path, dtype: str) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"missing shard file {path} (re-run `xlmkit prepare`)")
    if path.stat().st_size == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")


class PreparedData:
    """Read-only view of a directory written by `xlmkit prepare`."""

    def __init__(self, path: str | Path):
        self.root = Path(path)
        manifest_path = self.root / "manifest.json"
        if not manifest_path.is_file():
            raise DataError(f"{self.root}: no manifest.json; not a prepared data directory (run `xlmkit prepare`)")
        self.manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        if self.manifest.get("format") != FORMAT or self.manifest.get("version") != FORMAT_VERSION:
            raise DataError(f"{manifest_path}: not an {FORMAT} v{FORMAT_VERSION} manifest")
        self.languages: list[str] = list(self.manifest["languages"])
        self.pairs: list[str] = list(self.manifest["pairs"])
        self.lang2id: dict[str, int] = dict(self.manifest["lang2id"])
        self.vocab_size: int = int(self.manifest["vocab_size"])
        self.dtype: str = self.manifest["dtype"]
        self.specials = SpecialIds(**self.manifest["specials"])
        self.lang_token_ids: dict[str, int] = dict(self.manifest.get("lang_tokens", {}))

    @property
    def mono_languages(self) -> list[str]:
        return sorted(self.manifest.get("mono", {}))

    def mono(self, lang: str, split: str = "train") -> TokenShard:
        if lang not in self.manifest.get("mono", {}):
            raise DataError(f"{self.root}: no monolingual data for language {lang!r}; "
                            f"have: {', '.join(self.mono_languages) or 'none'}")
        ids, offsets = shard_paths(self.root, "mono", lang, split)
        return TokenShard(_open(ids, self.dtype), _open(offsets, "int64"))

    def para(self, pair: str, split: str = "train") -> tuple[TokenShard, TokenShard]:
        if pair not in self.pairs:
            raise DataError(f"{self.root}: no parallel data for pair {pair!r}; have: {', '.join(self.pairs) or 'none'}")
        a, b = pair.split("-")
        sides = []
        for lang in (a, b):
            ids, offsets = shard_paths(self.root, "para", pair, split, lang)
            sides.append(TokenShard(_open(ids, self.dtype), _open(offsets, "int64")))
        return sides[0], sides[1]

    def count(self, kind: str, name: str, split: str = "train") -> int:
        """Sentences in a split (from the manifest, no file access)."""
        return int(self.manifest[kind][name][split]["sentences"])

    @cached_property
    def tokenizer(self):
        from tokenizers import Tokenizer

        return Tokenizer.from_file(str(self.root / "tokenizer.json"))
