"""The run contract: what a run's vocab.json promises to every reader of the model (tasks, retrieval,
export, generation), read once into one typed, frozen object. No other module indexes the vocab dict.

    c = RunContract.from_vocab(loaded.vocab, tokenizer).for_model(model)   # or RunContract.read(RUN/vocab.json)
    c.specials.eos, c.pad_id, c.lang2id                                     # special ids, languages
    ids = c.frame(body, max_len)                 # "xlm": </s> x </s>   "roberta": <s> x </s>
    ids, langs, positions, cut = c.pair(x1, x2, max_len, lang1, lang2)     # the TLM pair layout
    lid = c.lang_id("de", unknown=c.resolve_unknown("en"))                  # --unknown-lang-id LANG|ID
    ids, mask = pad_batch(seqs, c.pad_id)                                   # (B, T) int64, (B, T) bool
    c.write(run_dir / "vocab.json")

vocab.json keys: lang2id, specials {bos, pad, eos, unk, mask}, languages, pairs, vocab_size,
lang_tokens, data_dir, special_ids (every id that is not a subword), sentence_wrap ("xlm" default,
"roberta" for XLM-R imports), special_tokens (their strings); unknown keys are kept as they are.

The pair layout (Lample & Conneau 2019, figure 1): `first x1 </s> </s> x2 </s>`, each sentence
framed as alone, positions restarting at 0 for the second sentence (xlm wrap; roberta: one run of
positions), every token carrying the language id of its side; when too long the sentences (not the
separators) lose their ends, longer side first (`tlm_truncate`).
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from xlmkit.core.errors import DataError, XlmkitError
from xlmkit.core.langs import canonical_lang
from xlmkit.data.format import SpecialIds

WRAPS = ("xlm", "roberta")
VOCAB_FILE = "vocab.json"
_TOKENS = {"bos": "<s>", "pad": "<pad>", "eos": "</s>", "unk": "<unk>", "mask": "<mask>"}
_KNOWN = ("lang2id", "specials", "languages", "pairs", "vocab_size", "lang_tokens", "data_dir", "special_ids",
          "sentence_wrap", "special_tokens")


def _special_id(specials: Mapping, name: str, tokenizer, default: int) -> int:
    token = _TOKENS[name]
    if isinstance(specials.get(name), int):
        return int(specials[name])
    if isinstance(specials.get(token), int):  # {"</s>": 2} layout
        return int(specials[token])
    tid = tokenizer.token_to_id(token) if tokenizer is not None else None
    return int(tid) if tid is not None else default


def canonical_lang2id(lang2id: Mapping[str, int] | None) -> dict[str, int]:
    """lang2id with its codes canonicalised where they are codes (`eng` -> `en`); others kept as they
    are, and a code whose canonical form is taken keeps its own spelling."""
    out: dict[str, int] = {}
    for code, i in (lang2id or {}).items():
        try:
            c = canonical_lang(str(code))
        except ValueError:
            c = str(code)
        out[c if c not in out else str(code)] = int(i)
    return out


@dataclass(frozen=True)
class RunContract:
    """A run's vocab.json, typed. `n_lang_embeddings` is the model's side of it (0: no language
    embeddings, so no language ids are given); `for_model(model)` fills it in."""

    specials: SpecialIds = field(default_factory=SpecialIds)
    lang2id: Mapping[str, int] = field(default_factory=dict)  # canonical code -> language-embedding id
    sentence_wrap: str | None = None  # None: not stated, i.e. "xlm"
    vocab_size: int | None = None
    languages: tuple[str, ...] = ()
    pairs: tuple[str, ...] = ()
    lang_tokens: Mapping[str, int] = field(default_factory=dict)
    special_ids: tuple[int, ...] | None = None
    special_tokens: Mapping[str, str] | None = None
    data_dir: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)  # other vocab.json keys, written back as they are
    has_specials: bool = True  # False: vocab.json gave none (ids from the tokenizer or the defaults)
    n_lang_embeddings: int = 0

    # -- reading and writing -------------------------------------------------------------------

    @classmethod
    def from_vocab(cls, vocab: Mapping[str, Any] | None, tokenizer=None, source: str | Path | None = None,
                   ) -> RunContract:
        """From a vocab.json dict. A special id vocab.json does not give comes from the tokenizer's
        token (`</s>` ...), else the XLM-R / fairseq default; with `source` (the file, for the error)
        its "specials" must give all five ids instead."""
        vocab = dict(vocab or {})
        if source is not None:
            given = {k: int(v) for k, v in (vocab.get("specials") or {}).items()}
            if sorted(given) != sorted(_TOKENS):
                raise DataError(f"{source}: 'specials' must give the ids of bos, pad, eos, unk and mask; got {given}")
        sp = vocab.get("specials") or {}
        defaults = dataclasses.asdict(SpecialIds())
        specials = SpecialIds(**{k: _special_id(sp, k, tokenizer, d) for k, d in defaults.items()})
        wrap = str(vocab["sentence_wrap"]) if vocab.get("sentence_wrap") is not None else None
        special_ids = vocab.get("special_ids")
        return cls(
            specials=specials,
            lang2id=canonical_lang2id(vocab.get("lang2id")),
            sentence_wrap=wrap,
            vocab_size=int(vocab["vocab_size"]) if vocab.get("vocab_size") else None,
            languages=tuple(str(x) for x in vocab.get("languages") or ()),
            pairs=tuple(str(x) for x in vocab.get("pairs") or ()),
            lang_tokens={str(k): int(v) for k, v in (vocab.get("lang_tokens") or {}).items()},
            special_ids=tuple(int(i) for i in special_ids) if special_ids is not None else None,
            special_tokens=dict(vocab["special_tokens"]) if isinstance(vocab.get("special_tokens"), dict) else None,
            data_dir=vocab.get("data_dir"),
            extra={k: v for k, v in vocab.items() if k not in _KNOWN},
            has_specials=isinstance(vocab.get("specials"), dict) and bool(vocab.get("specials")),
        )

    @classmethod
    def read(cls, path: str | Path, tokenizer=None, require_specials: bool = False) -> RunContract:
        """From a vocab.json file; with require_specials its "specials" must give all five ids."""
        path = Path(path)
        try:
            vocab = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataError(f"{path}: not a readable vocab.json ({type(e).__name__}: {e})") from None
        if not isinstance(vocab, dict):
            raise DataError(f"{path}: not a readable vocab.json (a JSON object was expected)")
        return cls.from_vocab(vocab, tokenizer, source=path if require_specials else None)

    @classmethod
    def from_data(cls, data) -> RunContract:
        """The contract of a run trained on prepared data (data.format.PreparedData)."""
        special_ids = data.manifest.get("special_ids")  # a reused tokenizer (`xlmkit prepare --tokenizer`)
        return cls(specials=data.specials, lang2id=dict(data.lang2id), languages=tuple(data.languages),
                   pairs=tuple(data.pairs), vocab_size=data.vocab_size, lang_tokens=dict(data.lang_token_ids),
                   data_dir=str(Path(data.root).resolve()),
                   special_ids=tuple(int(i) for i in special_ids) if special_ids is not None else None)

    def to_vocab(self) -> dict[str, Any]:
        """The vocab.json dict (key order as pretraining has always written it)."""
        d: dict[str, Any] = {"lang2id": dict(self.lang2id)}
        if self.has_specials:
            d["specials"] = dataclasses.asdict(self.specials)
        d.update({"languages": list(self.languages), "pairs": list(self.pairs)})
        if self.vocab_size is not None:
            d["vocab_size"] = self.vocab_size
        d.update({"lang_tokens": dict(self.lang_tokens), "data_dir": self.data_dir})
        if self.special_ids is not None:
            d["special_ids"] = list(self.special_ids)
        if self.sentence_wrap is not None:
            d["sentence_wrap"] = self.sentence_wrap
        if self.special_tokens is not None:
            d["special_tokens"] = dict(self.special_tokens)
        d.update(self.extra)
        return d

    def write(self, path: str | Path) -> Path:
        return write_vocab(path, self.to_vocab())

    def for_model(self, model) -> RunContract:
        """This contract with the model's number of language embeddings (0 without them)."""
        emb = getattr(model, "lang_embeddings", None)
        return dataclasses.replace(self, n_lang_embeddings=int(emb.num_embeddings) if emb is not None else 0)

    def replace(self, **changes) -> RunContract:
        return dataclasses.replace(self, **changes)

    # -- special ids and framing ---------------------------------------------------------------

    @property
    def pad_id(self) -> int:
        return self.specials.pad

    @property
    def eos_id(self) -> int:
        return self.specials.eos

    @property
    def first_id(self) -> int:
        """The id a sentence starts with: </s> (xlm wrap) or <s> (roberta)."""
        return self.specials.eos if self.wrap() == "xlm" else self.specials.bos

    def wrap(self, wrap: str = "auto") -> str:
        """The sentence wrap: `wrap` itself, or the run's for "auto"; an unknown one is an error."""
        wrap = (self.sentence_wrap or "xlm") if wrap == "auto" else wrap
        if wrap not in WRAPS:
            raise XlmkitError(f"unknown sentence wrap {wrap!r}; use xlm (</s> … </s>) or roberta (<s> … </s>)")
        return wrap

    def with_wrap(self, wrap: str = "auto") -> RunContract:
        return dataclasses.replace(self, sentence_wrap=self.wrap(wrap))

    def frame(self, body: Sequence[int], max_len: int | None = None) -> list[int]:
        """One sentence as model input: first_id + body + </s>, the body cut so that the whole holds at
        most max_len ids."""
        return frame_ids(body, self.first_id, self.eos_id, max_len)

    def pair(self, x1: Sequence[int], x2: Sequence[int], max_len: int, lang1: int | None = None,
             lang2: int | None = None) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, bool]:
        """Two sentences as one input (module docstring) -> (ids, langs or None, positions, truncated)."""
        ids, langs, positions = pair_layout(x1, x2, self.first_id, self.eos_id, max_len, lang1, lang2,
                                            restart_positions=self.wrap() == "xlm")
        return ids, langs, positions, len(ids) - 4 < len(x1) + len(x2)

    # -- languages -----------------------------------------------------------------------------

    @property
    def has_lang_emb(self) -> bool:
        return self.n_lang_embeddings > 0

    def _known(self) -> str:
        return ", ".join(sorted(self.lang2id)) or "none"

    def resolve_unknown(self, value: str | int | None) -> int | None:
        """--unknown-lang-id: a language of lang2id or an integer id -> the id; None stays None (and
        so does any value for a model without language embeddings)."""
        if value is None or not self.has_lang_emb:
            return None
        text = str(value).strip()
        if re.fullmatch(r"\d+", text):
            lid = int(text)
            if lid >= self.n_lang_embeddings:
                raise XlmkitError(f"--unknown-lang-id {lid} out of range: the model has {self.n_lang_embeddings} "
                                  "language ids")
            return lid
        code = canonical_lang(str(value))
        if code not in self.lang2id:
            raise XlmkitError(f"--unknown-lang-id {value!r} is not a language of the model ({self._known()})")
        return int(self.lang2id[code])

    def lang_id(self, lang: str, unknown: int | None = None, where: str | None = None) -> int | None:
        """The language-embedding id of `lang` (any code form); None for a model without language
        embeddings. A code with a script or region subtag that lang2id lacks takes its language's id
        (`zh-hant` -> `zh`'s: the language embedding is the language's, whatever its script). A language
        missing from lang2id gets `unknown` (see resolve_unknown); without one it is an error (a
        DataError naming `where`, the example's file and line, when given)."""
        if not self.has_lang_emb:
            return None
        known = self.known_code(lang)
        if known is not None:
            return int(self.lang2id[known])
        code = canonical_lang(lang)
        if unknown is not None:
            return unknown
        if where is not None:
            raise DataError(f"{where}: language {lang!r} has no language embedding in this model (it knows "
                            f"{self._known()}); pass --unknown-lang-id LANG|ID to give such languages another "
                            "language's id")
        raise XlmkitError(f"the model has no language embedding for {code!r} (knows: {self._known()}); pass "
                          "--unknown-lang-id ID|LANG to embed it with another language's id")

    def known_code(self, lang: str) -> str | None:
        """The key of lang2id that `lang` takes: its canonical code, else the code without its subtag
        (`zh-hant` -> `zh`), else None."""
        code = canonical_lang(lang)
        if code in self.lang2id:
            return code
        base = code.partition("-")[0]
        return base if base in self.lang2id else None

    def missing_langs(self, langs: Sequence[str]) -> list[str]:
        """The languages of `langs` that lang2id lacks, even without a subtag (canonical codes, in order)."""
        return [canonical_lang(x) for x in langs if self.known_code(x) is None]

    # -- ids that are not subwords -------------------------------------------------------------

    def reserved_ids(self, tokenizer=None) -> set[int]:
        """Every id that is not a subword: the specials, special_ids, language tags and the tokenizer's
        special added tokens."""
        ids = set(dataclasses.asdict(self.specials).values()) if self.has_specials else set()
        ids |= set(self.special_ids or ()) | set(self.lang_tokens.values())
        if tokenizer is not None:
            ids |= {i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special}
        return ids


def write_vocab(path: str | Path, vocab: Mapping[str, Any]) -> Path:
    """Write a vocab.json dict atomically (a temporary file, then a rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(dict(vocab), indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


# ----------------------------------------------------------------------------------------------
# Pair layout and padding


def frame_ids(body: Sequence[int], first_id: int, last_id: int, max_len: int | None = None) -> list[int]:
    """[first_id, *body, last_id], the body cut so that the whole holds at most max_len ids."""
    keep = len(body) if max_len is None else max_len - 2
    return [first_id, *body[:keep], last_id]


def tlm_truncate(len1: int, len2: int, budget: int) -> tuple[int, int]:
    """Lengths to keep so that len1 + len2 <= budget, trimming the longer side first ("longest first"):
    a short sentence is kept whole and a long translation loses its end."""
    if len1 + len2 <= budget:
        return len1, len2
    n1 = min(len1, max((budget + 1) // 2, budget - len2))
    return n1, min(len2, budget - n1)


def pair_layout(x1: Sequence[int], x2: Sequence[int], first_id: int, eos_id: int, max_len: int,
                lang1: int | None = None, lang2: int | None = None, restart_positions: bool = True,
                ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """`first x1 </s> </s> x2 </s>` -> (ids, langs, positions), each (L,) int64 with
    L = len1' + len2' + 4 <= max_len; langs is None when lang1 is None (lang2 defaults to lang1)."""
    x1 = np.asarray(x1, dtype=np.int64)
    x2 = np.asarray(x2, dtype=np.int64)
    n1, n2 = tlm_truncate(len(x1), len(x2), max_len - 4)
    eos = np.array([eos_id], dtype=np.int64)
    ids = np.concatenate([np.array([first_id], dtype=np.int64), x1[:n1], eos, eos, x2[:n2], eos])
    langs = None
    if lang1 is not None:
        lang2 = lang1 if lang2 is None else lang2
        langs = np.concatenate([np.full(n1 + 2, lang1, dtype=np.int64), np.full(n2 + 2, lang2, dtype=np.int64)])
    if restart_positions:
        positions = np.concatenate([np.arange(n1 + 2, dtype=np.int64), np.arange(n2 + 2, dtype=np.int64)])
    else:
        positions = np.arange(len(ids), dtype=np.int64)
    return ids, langs, positions


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int, length: int | None = None,
              dtype=np.int64) -> tuple[np.ndarray, np.ndarray]:
    """Variable-length id sequences -> (ids (B, T) padded with pad_id, mask (B, T) bool, True = real
    token), T = the longest (or `length`)."""
    t = max((len(s) for s in seqs), default=0) if length is None else length
    ids = np.full((len(seqs), t), pad_id, dtype=dtype)
    mask = np.zeros((len(seqs), t), dtype=bool)
    for row, s in enumerate(seqs):
        n = len(s)
        ids[row, :n] = s
        mask[row, :n] = True
    return ids, mask
