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

The manifest's "shards" maps each shard file (relative path) to its {"bytes", "sha256"} (absent in
manifests written before it existed; those still load). Opening a shard checks, cheaply: sizes
against the dtype and the recorded sizes, offsets against the manifest's sentence and token counts,
and token ids below vocab_size on a sample; `PreparedData.verify()` (`xlmkit info --verify`) checks
every id, every offset and every hash. Each failure is a DataError naming the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from xlmkit.core.errors import DataError, reading
from xlmkit.core.integrity import check_file, file_record, open_tokenizer

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


REQUIRED_KEYS = {"languages": list, "pairs": list, "lang2id": dict, "vocab_size": int, "dtype": str,
                 "specials": dict}
SAMPLE_BLOCKS, SAMPLE_BLOCK = 16, 4096  # ids read per shard when it is opened: 16 evenly spaced runs


def read_manifest(path: str | Path) -> dict:
    """A manifest.json, checked enough that readers can trust its keys: DataError naming the file when
    it is not JSON, not an xlmkit-data manifest, or lacks a key or has one of the wrong type."""
    path = Path(path)
    try:
        with reading(path):
            m = json.loads(path.read_bytes().decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: damaged manifest, not valid JSON ({e}); re-run `xlmkit prepare`") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT or m.get("version") != FORMAT_VERSION:
        raise DataError(f"{path}: not an {FORMAT} v{FORMAT_VERSION} manifest")
    for key, tp in REQUIRED_KEYS.items():
        if key not in m:
            raise DataError(f"{path}: damaged manifest, no {key!r}; re-run `xlmkit prepare`")
        if not isinstance(m[key], tp) or isinstance(m[key], bool):
            raise DataError(f"{path}: damaged manifest, {key!r} must be a {tp.__name__}, got {m[key]!r}")
    if m["dtype"] not in ("uint16", "int32"):
        raise DataError(f"{path}: damaged manifest, dtype must be uint16 or int32, got {m['dtype']!r}")
    if m["vocab_size"] < 1 or (m["dtype"] == "uint16" and m["vocab_size"] > 1 << 16):
        raise DataError(f"{path}: damaged manifest, vocab_size {m['vocab_size']} does not fit dtype {m['dtype']}")
    tok_vocab = m.get("tokenizer", {}).get("vocab_size") if isinstance(m.get("tokenizer"), dict) else None
    if isinstance(tok_vocab, int) and tok_vocab != m["vocab_size"]:
        raise DataError(f"{path}: damaged manifest, vocab_size {m['vocab_size']} but the tokenizer's is {tok_vocab}")
    if set(m["specials"]) != set(SpecialIds.__dataclass_fields__) or not all(
            isinstance(v, int) for v in m["specials"].values()):
        raise DataError(f"{path}: damaged manifest, specials must map {', '.join(SpecialIds.__dataclass_fields__)} "
                        f"to ids, got {m['specials']!r}")
    for kind in ("mono", "para"):
        entry = m.get(kind, {})
        if not isinstance(entry, dict) or not all(
                isinstance(v, dict) and all(isinstance(e, dict) and isinstance(e.get("sentences", 0), int)
                                            for e in v.values()) for v in entry.values()):
            raise DataError(f"{path}: damaged manifest, {kind!r} must map names to per-split counts")
    return m


def shard_records(root: str | Path) -> dict[str, dict]:
    """{"mono/en.train.ids.bin": {"bytes", "sha256"}, …} of every shard file under root (for the
    manifest, written by `xlmkit prepare`)."""
    root = Path(root)
    return {p.relative_to(root).as_posix(): file_record(p)
            for kind in ("mono", "para") if (root / kind).is_dir() for p in sorted((root / kind).iterdir())
            if p.name.endswith(".bin")}


def _open(path: Path, dtype: str) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"missing shard file {path} (re-run `xlmkit prepare`)")
    size = path.stat().st_size
    if size % np.dtype(dtype).itemsize:
        raise DataError(f"{path}: damaged shard, {size:,} bytes is not a whole number of {dtype} values "
                        f"(cut short?); re-run `xlmkit prepare`")
    if size == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")


class PreparedData:
    """Read-only view of a directory written by `xlmkit prepare`."""

    def __init__(self, path: str | Path):
        self.root = Path(path)
        manifest_path = self.root / "manifest.json"
        if not manifest_path.is_file():
            raise DataError(f"{self.root}: no manifest.json; not a prepared data directory (run `xlmkit prepare`)")
        self.manifest_path = manifest_path
        self.manifest = read_manifest(manifest_path)
        self._checked: set[Path] = set()
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
        return self._shard(ids, offsets, self.manifest["mono"][lang].get(split, {}), None)

    def para(self, pair: str, split: str = "train") -> tuple[TokenShard, TokenShard]:
        if pair not in self.pairs:
            raise DataError(f"{self.root}: no parallel data for pair {pair!r}; have: {', '.join(self.pairs) or 'none'}")
        a, b = pair.split("-")
        sides = []
        for lang in (a, b):
            ids, offsets = shard_paths(self.root, "para", pair, split, lang)
            sides.append(self._shard(ids, offsets, self.manifest.get("para", {}).get(pair, {}).get(split, {}), lang))
        return sides[0], sides[1]

    def _shard(self, ids_path: Path, offsets_path: Path, counts: dict, side: str | None,
               full: bool = False) -> TokenShard:
        """Open a shard, checked once per PreparedData (cheaply; everything with `full`)."""
        records = self.manifest.get("shards") if isinstance(self.manifest.get("shards"), dict) else {}
        if full or ids_path not in self._checked:
            for p in (ids_path, offsets_path):
                rec = records.get(p.relative_to(self.root).as_posix())
                why = check_file(p, rec, full=full) if p.is_file() else None
                if why is not None:
                    raise DataError(f"{p}: damaged shard, {why}; re-run `xlmkit prepare`")
        shard = TokenShard(_open(ids_path, self.dtype), _open(offsets_path, "int64"))
        if full or ids_path not in self._checked:
            self._check_shard(shard, ids_path, offsets_path, counts, side, full)
            self._checked.add(ids_path)
        return shard

    def _check_shard(self, shard: TokenShard, ids_path: Path, offsets_path: Path, counts: dict,
                     side: str | None, full: bool) -> None:
        off, ids = shard.offsets, shard.ids
        n = counts.get("sentences")
        if len(off) == 0:
            raise DataError(f"{offsets_path}: damaged shard, empty offsets file; re-run `xlmkit prepare`")
        if isinstance(n, int) and len(off) != n + 1:
            raise DataError(f"{offsets_path}: damaged shard, {len(off) - 1:,} sentences but the manifest "
                            f"{self.manifest_path} says {n:,}")
        if off[0] != 0 or off[-1] != len(ids):
            raise DataError(f"{offsets_path}: damaged shard, offsets end at {int(off[-1]):,} but {ids_path.name} "
                            f"holds {len(ids):,} ids; re-run `xlmkit prepare`")
        tokens = counts.get("tokens")
        tokens = tokens.get(side) if side is not None and isinstance(tokens, dict) else tokens
        if isinstance(tokens, int) and shard.n_tokens != tokens:
            raise DataError(f"{ids_path}: damaged shard, {shard.n_tokens:,} tokens but the manifest "
                            f"{self.manifest_path} says {tokens:,}")
        if full:
            if len(off) > 1 and np.any(np.diff(off) < 1):
                raise DataError(f"{offsets_path}: damaged shard, offsets are not increasing")
            chunks = (ids[i:i + (1 << 22)] for i in range(0, len(ids), 1 << 22))
        else:  # a few evenly spaced runs: catches a vocab_size that is too small without reading it all
            starts = np.linspace(0, max(len(ids) - SAMPLE_BLOCK, 0), SAMPLE_BLOCKS).astype(np.int64)
            chunks = (ids[s:s + SAMPLE_BLOCK] for s in np.unique(starts))
        for chunk in chunks:
            if len(chunk) and int(chunk.max()) >= self.vocab_size:
                raise DataError(f"{ids_path}: token id {int(chunk.max())} >= vocab_size {self.vocab_size} "
                                f"of {self.manifest_path}; the manifest or the shard is damaged")

    def verify(self) -> list[tuple[str, str]]:
        """Every shard fully checked (every id, every offset, every hash): [(shard, "ok" or why)]."""
        out = []
        jobs = [("mono", lang, split, None) for lang in self.mono_languages for split in SPLITS
                if split in self.manifest["mono"][lang]]
        jobs += [("para", pair, split, side) for pair in self.pairs for split in SPLITS
                 if split in self.manifest.get("para", {}).get(pair, {}) for side in pair.split("-")]
        for kind, name, split, side in jobs:
            ids, offsets = shard_paths(self.root, kind, name, split, side)
            counts = self.manifest[kind][name][split]
            try:
                self._shard(ids, offsets, counts, side, full=True)
                out.append((ids.relative_to(self.root).as_posix(), "ok"))
            except DataError as e:
                out.append((ids.relative_to(self.root).as_posix(), str(e)))
        tok = self.root / "tokenizer.json"
        try:
            n = self.tokenizer.get_vocab_size()
            out.append(("tokenizer.json", "ok" if n == self.vocab_size else
                        f"{tok}: vocab size {n} but the manifest says {self.vocab_size}"))
        except Exception as e:  # tokenizers raises its own exception type for a damaged file
            out.append(("tokenizer.json", f"{tok}: unreadable ({type(e).__name__}: {e})"))
        return out

    def count(self, kind: str, name: str, split: str = "train") -> int:
        """Sentences in a split (from the manifest, no file access)."""
        try:
            return int(self.manifest[kind][name][split]["sentences"])
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{self.manifest_path}: damaged manifest, no sentence count for {kind} {name} "
                            f"{split}") from None

    @cached_property
    def tokenizer(self):
        return open_tokenizer(self.root / "tokenizer.json")
