"""The shared multilingual subword tokenizer: trained and encoded with SentencePiece, saved as a
Hugging Face `tokenizers` file.

One vocabulary for all languages, as in XLM (Lample & Conneau 2019, BPE) and XLM-R (Conneau et al.
2020, SentencePiece unigram). It is trained on a language-balanced sample: language i contributes a
share q_i = n_i^alpha / sum_j n_j^alpha of the sample (alpha = 0.3 in XLM-R, 0.5 in XLM), so
low-resource languages get more vocabulary than their raw share and high-resource ones less.

Special tokens have fixed ids (the fairseq / XLM-R order): <s>=0 <pad>=1 </s>=2 <unk>=3 <mask>=4,
then one <lang:xx> tag per language in sorted order, then the learned subwords. Pre-tokenisation is
SentencePiece's Metaspace (spaces become '▁' and stay part of the pieces), so decoding gives back the
text exactly, spaces included.

Engines, chosen by measurement (bench/prepare.py, README): the Unigram model is trained with
SentencePiece (Kudo & Richardson 2018; XLM-R's own tool) and written as a `tokenizers` Unigram
`tokenizer.json` with the same pieces, ids and scores; shards are encoded by SentencePiece from that
file (`FastEncoder`), ~10x faster per core than `tokenizers`. The two produce the same ids because
the scores are rounded to multiples of 2^-7, so Viterbi sums are exact in SentencePiece's float32 and
in `tokenizers`' float64 alike (no rounding-order ties); tested over every sentence of the real data.
BPE stays with `tokenizers` (training and encoding). SentencePiece training uses a fixed thread count,
so the tokenizer is the same on any machine and with any worker count.

Character coverage (SentencePiece's, 0.9995 as XLM-R): the rarest characters are left out of the
vocabulary and become <unk>, or their UTF-8 bytes with `byte_fallback` (256 <0xXX> pieces). When the
characters needed for that coverage would not fit in the vocabulary (Chinese with a small one), the
coverage is lowered until they take at most 3/4 of it, so any script mix trains at any size. BPE
keeps every character that fits (the same cap, no coverage setting). The characters left out are
removed from the trainers' sample text, so both trainers see exactly the alphabet chosen here.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import itertools
import json
import operator
import re
import struct

import numpy as np

from xlmkit.data.format import SPECIAL_TOKENS, lang_tag
from xlmkit.core.errors import DataError
from xlmkit.data.sampling import language_probs
from xlmkit.data.text import CONTROL_CHARS, WHITESPACE_CHARS

METASPACE = "▁"
SCORE_QUANTUM = 2.0**-7  # unigram scores are multiples of this (see the module docstring)
SPM_TRAIN_THREADS = 2  # fixed, not the worker count: SentencePiece's EM sums depend on the thread split
MAX_CHAR_SHARE = 0.75  # characters may take at most this share of the non-special vocabulary
N_BYTE_PIECES = 256
# Longer lines go through `tokenizers`: a Viterbi sum of more pieces (each score >= -50 on the 2^-7
# grid, <unk> >= -60) could leave float32's exact range (2^17 at that step) and break ties differently.
MAX_EXACT_CHARS = 2000


# ----------------------------------------------------------------------------------------------
# Language-balanced sampling (pure functions of counts and an explicit Generator)


def language_shares(counts: dict[str, int], alpha: float) -> dict[str, float]:
    """q_i = n_i^alpha / sum_j n_j^alpha (Conneau et al. 2020, eq. 1), in sorted language order: the law
    of xlmkit.data.sampling.language_probs, with every language required to have a sentence (a language
    with none has nothing to sample). alpha=1: proportional, 0: uniform."""
    if any(n <= 0 for n in counts.values()):
        raise ValueError(f"every language needs at least one sentence, got {counts}")
    probs = language_probs(counts, alpha)
    return {lang: probs[lang] for lang in sorted(counts)}


def sample_sizes(counts: dict[str, int], alpha: float, total: int) -> dict[str, int]:
    """How many sentences each language contributes to a sample of `total` (largest remainder, so
    the sizes sum to exactly `total`)."""
    shares = language_shares(counts, alpha)
    langs = sorted(shares)
    exact = np.array([shares[lang] * total for lang in langs])
    sizes = np.floor(exact).astype(np.int64)
    short = total - int(sizes.sum())
    for i in np.argsort(-(exact - sizes), kind="stable")[:short]:
        sizes[i] += 1
    return {lang: int(k) for lang, k in zip(langs, sizes)}


def sample_line_indices(counts: dict[str, int], alpha: float, total: int,
                        rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Sorted line indices to take from each language for a balanced sample of `total` sentences.

    A language with fewer lines than its share is sampled with replacement (upsampled, as XLM-R does
    for low-resource languages), so its share holds whatever the corpus sizes. Sorted so that the
    caller can collect the sample in one streaming pass over the text; memory is O(total).
    """
    out = {}
    for lang, k in sample_sizes(counts, alpha, total).items():
        n = counts[lang]
        out[lang] = np.sort(rng.choice(n, size=k, replace=k > n))
    return out


def iter_sampled(lines: Iterable[str], indices: np.ndarray) -> Iterator[str]:
    """Yield line i of `lines` once for every occurrence of i in the sorted `indices`."""
    pos, k = 0, len(indices)
    if k == 0:
        return
    for i, line in enumerate(lines):
        while pos < k and indices[pos] == i:
            yield line
            pos += 1
        if pos == k:
            return


# ----------------------------------------------------------------------------------------------
# Building and training


def special_tokens(languages: Sequence[str]) -> list[str]:
    """Specials in id order: <s> <pad> </s> <unk> <mask> <lang:xx>..., languages sorted."""
    return list(SPECIAL_TOKENS) + [lang_tag(lang) for lang in sorted(languages)]


def _rust_class(chars: str) -> str:
    """A Python regex character-class body (chars and a-b ranges) spelt for the Rust/Oniguruma regex."""
    return "".join("-" if c == "-" else f"\\x{{{ord(c):x}}}" for c in chars)


def make_normalizer(lowercase: bool = False, strip_accents: bool = False):
    """The tokenizer-side mirror of xlmkit.data.text.clean_line.

    Shards are encoded from text that `clean_line` already cleaned, where this is a no-op; it is there
    so that code encoding raw text later (fine-tuning, retrieval) sees the same normalisation.
    """
    from tokenizers import Regex, normalizers

    steps = [normalizers.NFKC(), normalizers.Replace(Regex(f"[{_rust_class(CONTROL_CHARS)}]"), "")]
    if lowercase:
        steps.append(normalizers.Lowercase())
    if strip_accents:
        steps += [normalizers.NFD(), normalizers.StripAccents(), normalizers.NFC()]
    steps += [normalizers.Replace(Regex(f"[{_rust_class(WHITESPACE_CHARS)}]+"), " "), normalizers.Strip()]
    return normalizers.Sequence(steps)


def new_tokenizer(kind: str = "unigram", lowercase: bool = False, strip_accents: bool = False):
    """An untrained tokenizer: model + normaliser + Metaspace pre-tokenizer/decoder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    if kind == "unigram":
        tok = Tokenizer(models.Unigram())
    elif kind == "bpe":
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
    else:
        raise ValueError(f"unknown tokenizer kind {kind!r}; expected 'unigram' or 'bpe'")
    tok.normalizer = make_normalizer(lowercase, strip_accents)
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=METASPACE, prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement=METASPACE, prepend_scheme="always")
    return tok


def _bpe_trainer(vocab_size: int, specials: list[str], limit_alphabet: int | None):
    from tokenizers import trainers

    # show_progress=False: its bars print blank lines into logs; prepare logs its own one-line steps
    extra = {} if limit_alphabet is None else {"limit_alphabet": limit_alphabet}
    return trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False, **extra)


def char_counts(sentences: Iterable[str]) -> dict[str, int]:
    """Characters of the sample as SentencePiece counts them (spaces as ▁, one ▁ prefix per line)."""
    from collections import Counter

    counts: Counter = Counter()
    n = 0
    for line in sentences:
        counts.update(line)
        n += 1
    if " " in counts:
        counts[METASPACE] += counts.pop(" ")
    counts[METASPACE] += n
    return dict(counts)


def covered_chars(counts: dict[str, int], coverage: float, max_chars: int) -> set[str]:
    """The most frequent characters that together make up `coverage` of the text (SentencePiece's
    rule: add characters by frequency until the share reached is >= coverage), at most `max_chars`."""
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    total, acc, kept = sum(counts.values()), 0, set()
    for ch, n in ranked:
        if len(kept) >= max_chars or (coverage < 1.0 and acc >= coverage * total):
            break
        kept.add(ch)
        acc += n
    return kept


@dataclass(frozen=True)
class TokenizerInfo:
    vocab_size: int
    specials: dict[str, int]  # bos/pad/eos/unk/mask -> id
    lang_tokens: dict[str, int]  # lang -> id of <lang:xx>


def check_tokenizer(tok, languages: Sequence[str]) -> TokenizerInfo:
    """Verify the fixed special ids (the whole toolkit relies on them) and describe the tokenizer."""
    expected = special_tokens(languages)
    for i, token in enumerate(expected):
        got = tok.token_to_id(token)
        if got != i:
            raise DataError(f"tokenizer: special token {token} has id {got}, expected {i}")
    names = ("bos", "pad", "eos", "unk", "mask")
    return TokenizerInfo(
        vocab_size=tok.get_vocab_size(),
        specials={name: i for i, name in enumerate(names)},
        lang_tokens={lang: tok.token_to_id(lang_tag(lang)) for lang in sorted(languages)},
    )


def trim_unigram(tok, vocab_size: int, n_specials: int):
    """Keep the specials, every single character and the best-scoring other pieces, `vocab_size` in all.

    This is SentencePiece's own last step (keep the top pieces by score); it lets us reach an exact
    size when Hugging Face's trainer overshoots its pruning and lands below the size asked for.
    """
    import json

    from tokenizers import Tokenizer

    data = json.loads(tok.to_str())
    scored = data["model"]["vocab"]  # [[piece, score], ...] (tokenizer.json, not the run's vocab.json)
    specials, pieces = scored[:n_specials], scored[n_specials:]
    chars = [p for p in pieces if len(p[0]) == 1]
    others = sorted((p for p in pieces if len(p[0]) > 1), key=lambda p: -p[1])
    keep = {p[0] for p in others[: max(vocab_size - n_specials - len(chars), 0)]}
    data["model"]["vocab"] = specials + [p for p in pieces if len(p[0]) == 1 or p[0] in keep]
    return Tokenizer.from_str(json.dumps(data))


def train_tokenizer(sentences: Iterable[str], languages: Sequence[str], kind: str = "unigram",
                    vocab_size: int = 8000, lowercase: bool = False, strip_accents: bool = False,
                    n_sentences: int | None = None, show_progress: bool = False,
                    character_coverage: float = 1.0, byte_fallback: bool = False):
    """Train on (already cleaned) sentences; return the Tokenizer, with exactly `vocab_size` tokens.

    `sentences` is a list or a zero-argument callable returning a fresh iterable (training makes
    more than one pass). A vocabulary larger than the text has distinct pieces for raises DataError
    naming both sizes, rather than silently returning a model of another shape than asked for.
    `character_coverage` (unigram) 1.0 here (`prepare.character_coverage` is 0.9995) keeps every
    character that fits in the vocabulary; BPE always keeps every character that fits (see the module
    docstring).
    """
    get = sentences if callable(sentences) else (lambda: sentences)
    specials = special_tokens(languages)
    n_fixed = len(specials) + (N_BYTE_PIECES if byte_fallback else 0)
    if vocab_size < n_fixed + 8:
        raise DataError(f"prepare.vocab_size={vocab_size} leaves no room for subwords: there are "
                        f"{len(specials)} special tokens ({len(languages)} language tags)"
                        + (f" and {N_BYTE_PIECES} byte pieces (prepare.byte_fallback)" if byte_fallback else "")
                        + f"; use prepare.vocab_size={n_fixed + 8} or more")
    max_chars = max(int(MAX_CHAR_SHARE * (vocab_size - n_fixed)), 1)
    counts = char_counts(get())
    # BPE (`tokenizers`) has no notion of coverage: it keeps every character that fits
    kept = covered_chars(counts, character_coverage if kind == "unigram" else 1.0, max_chars) | {METASPACE}
    dropped = {ord(c): None for c in counts if c not in kept and c != " "}
    if dropped:  # the trainers see the text without the characters left out; the encoder maps them to <unk>/bytes
        get = (lambda g: lambda: (line.translate(dropped) for line in g()))(get)
    coverage = 1.0
    if kind == "unigram":
        try:
            tok = _train_unigram(get, specials, vocab_size, lowercase, strip_accents, coverage, byte_fallback)
        except _TooLarge as e:
            if byte_fallback:
                raise
            # SentencePiece's M step drops every piece the corpus never needs, so a tiny or very repetitive
            # corpus caps its vocabulary below what `tokenizers`' trainer still fills: use that one then.
            tok = _train_unigram_hf(get, specials, vocab_size, lowercase, strip_accents, n_sentences, e.got)
    elif kind == "bpe":
        if byte_fallback:
            raise DataError("prepare.byte_fallback needs prepare.tokenizer=unigram")
        tok = _train_bpe(get, specials, vocab_size, lowercase, strip_accents, n_sentences, counts_limit=None)
    else:
        raise ValueError(f"unknown tokenizer kind {kind!r}; expected 'unigram' or 'bpe'")
    check_tokenizer(tok, languages)
    return tok


class _TooLarge(DataError):
    def __init__(self, msg: str, got: int):
        super().__init__(msg)
        self.got = got


def _too_large(kind: str, vocab_size: int, got: int) -> DataError:
    return _TooLarge(f"prepare.vocab_size={vocab_size} is larger than the data allows: the {kind} "
                     f"tokenizer trained on it has only {got} tokens (specials included); "
                     f"use more text or set prepare.vocab_size={got} or less", got)


def _train_unigram_hf(get, specials, vocab_size, lowercase, strip_accents, n_sentences, got_spm):
    """`tokenizers`' Unigram trainer, retried with a larger target and trimmed to the exact size when
    its pruning overshoots; scores rounded to SCORE_QUANTUM like SentencePiece's (same encoder, and
    run-to-run differences in their last digits vanish)."""
    from tokenizers import Tokenizer, trainers

    target, best, tok = vocab_size, got_spm, None
    for _attempt in range(3):
        tok = new_tokenizer("unigram", lowercase, strip_accents)
        tok.train_from_iterator(get(), trainers.UnigramTrainer(vocab_size=target, special_tokens=specials,
                                                               unk_token="<unk>", show_progress=False),
                                length=n_sentences)
        got = tok.get_vocab_size()
        best = max(best, got)
        if got >= vocab_size:
            break
        if got < target // 2:
            break  # the data has run out of pieces, not the trainer's pruning
        target = int(target * 1.5)
    if tok.get_vocab_size() < vocab_size:
        raise _too_large("unigram", vocab_size, best)
    if tok.get_vocab_size() > vocab_size:
        tok = trim_unigram(tok, vocab_size, len(specials))
    data = json.loads(tok.to_str())
    data["model"]["vocab"] = [[p, max(round(sc / SCORE_QUANTUM) * SCORE_QUANTUM, -50.0) if i >= len(specials) else 0.0]
                              for i, (p, sc) in enumerate(data["model"]["vocab"])]
    return Tokenizer.from_str(json.dumps(data))


def _train_bpe(get, specials, vocab_size, lowercase, strip_accents, n_sentences, counts_limit):
    tok = new_tokenizer("bpe", lowercase, strip_accents)
    tok.train_from_iterator(get(), _bpe_trainer(vocab_size, specials, counts_limit), length=n_sentences)
    got = tok.get_vocab_size()
    if got < vocab_size:
        raise _too_large("bpe", vocab_size, got)
    return tok


def _train_unigram(get, specials, vocab_size, lowercase, strip_accents, coverage, byte_fallback):
    """SentencePiece Unigram on the sample, its scores rounded to SCORE_QUANTUM, as a `tokenizers` file."""
    import io

    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as pb

    model = io.BytesIO()
    # Ids: <s> <pad> </s> are control symbols 0-2 (never matched in text), <unk> 3, then <mask> and
    # the language tags as further control symbols, then (byte_fallback) <0x00>..<0xFF>, then pieces.
    controls = [t for t in specials if t != "<unk>"]
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(get()), model_writer=model, model_type="unigram", vocab_size=vocab_size,
            character_coverage=coverage, byte_fallback=byte_fallback, normalization_rule_name="identity",
            add_dummy_prefix=True, remove_extra_whitespaces=False, split_digits=False,
            unk_id=specials.index("<unk>"), bos_id=-1, eos_id=-1, pad_id=-1, control_symbols=controls,
            num_threads=SPM_TRAIN_THREADS, minloglevel=2, shuffle_input_sentence=False, input_sentence_size=0,
            max_sentence_length=1 << 20, hard_vocab_limit=True, train_extremely_large_corpus=False,
            # 10 seed pieces per final one instead of a fixed 1M: on 20k Leipzig sentences, vocab 8000,
            # 100k seeds train ~20% faster and encode held-out text in 0.6% fewer tokens
            seed_sentencepiece_size=min(1_000_000, max(100_000, 10 * vocab_size)))
    except RuntimeError as e:
        m = re.search(r"Please set it to a value <= (\d+)", str(e))
        if m:
            raise _too_large("unigram", vocab_size, int(m[1])) from None
        raise DataError(f"tokenizer training failed: {str(e).splitlines()[-1]}") from None
    proto = pb.ModelProto()
    proto.ParseFromString(model.getvalue())
    vocab = []
    for p in proto.pieces:
        normal = p.type == pb.ModelProto.SentencePiece.NORMAL
        vocab.append((p.piece, max(round(p.score / SCORE_QUANTUM) * SCORE_QUANTUM, -50.0) if normal else 0.0))
    if len(vocab) != vocab_size:
        raise _too_large("unigram", vocab_size, len(vocab))
    return unigram_tokenizer(vocab, specials.index("<unk>"), specials, lowercase, strip_accents, byte_fallback)


def unigram_tokenizer(vocab: list[tuple[str, float]], unk_id: int, specials: Sequence[str], lowercase: bool = False,
                      strip_accents: bool = False, byte_fallback: bool = False):
    """A `tokenizers` Unigram tokenizer with xlmkit's normaliser, Metaspace and special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    tok = Tokenizer(models.Unigram(vocab, unk_id, byte_fallback))
    tok.normalizer = make_normalizer(lowercase, strip_accents)
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=METASPACE, prepend_scheme="always")
    metaspace = decoders.Metaspace(replacement=METASPACE, prepend_scheme="always")
    # with byte pieces: ▁ -> space, bytes -> characters, then the prefix space off (the Llama converter's order)
    tok.decoder = decoders.Sequence([decoders.Replace(METASPACE, " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)]) if byte_fallback else metaspace
    tok.add_special_tokens(list(specials))
    return tok


# ----------------------------------------------------------------------------------------------
# Fast encoding of shards


_BYTE_PIECE = re.compile(r"<0x[0-9A-F]{2}>")


class FastEncoder:
    """Encodes clean lines to ids: SentencePiece when the tokenizer is one xlmkit writes (Unigram,
    xlmkit's normaliser, Metaspace), `tokenizers` otherwise (BPE, a reused run's tokenizer).

    The SentencePiece model is rebuilt from the tokenizer.json itself (same pieces, ids and scores),
    so the file is the one source of truth. Lines holding the text of a special token or byte piece
    (which `tokenizers` matches as that token, SentencePiece never) and lines over MAX_EXACT_CHARS
    go through `tokenizers`. A Unigram file whose scores are off xlmkit's grid (made elsewhere) is
    encoded by `tokenizers` alone.
    """

    def __init__(self, tok, memo: bool = True):
        self.tok = tok
        self.spm, self.special_re, pieces = _sentencepiece_from(tok)
        self._with_eos: dict[int, object] = {}  # eos id -> a SentencePiece processor that appends it
        # encode_flat goes word by word through a memo (xlmkit.data.wordmemo) where that is exact
        self.memo = None
        if memo and self.spm is not None:
            from xlmkit.data.wordmemo import make_memo

            self.memo = make_memo(self.spm, pieces=pieces)

    @property
    def engine(self) -> str:
        return "sentencepiece" if self.spm is not None else "tokenizers"

    def encode(self, lines: list[str]) -> list[list[int]]:
        return self._encode(lines, None)

    def encode_flat(self, lines: list[str], eos: int | None = None, dtype="int64", data: bytes | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
        """-> (every line's ids one after another, each followed by `eos` when given; the number of ids
        per line, eos included): the shards' form. `data`, where the caller has it, is
        '\\n'.join(lines) in UTF-8 (the memo's input: the pipeline's workers read the lines as such bytes)."""
        if self.memo is not None and lines:
            out = self._encode_flat_memo(lines, eos, data)
            if out is not None:
                return out[0].astype(dtype), out[1]
        ids = self._encode(lines, eos)
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        # lists of Python ints to one array: struct.pack of the chained list is ~30% faster than
        # np.fromiter (measured: ~6% of SentencePiece's own time against ~9%), a list op per line slower
        flat = list(itertools.chain.from_iterable(ids))
        return np.frombuffer(struct.pack(f"<{len(flat)}q", *flat), dtype="<i8").astype(dtype), lengths

    def _encode_flat_memo(self, lines: list[str], eos: int | None, data: bytes | None = None
                          ) -> tuple[np.ndarray, np.ndarray] | None:
        """encode_flat through the word memo; the lines it cannot take (special-token text, empty
        words, very long words) are encoded by `_encode` and spliced in. Long lines need no such care
        here: the memo's SentencePiece calls hold a few hundred words at most, within float32's exact
        sums (MAX_EXACT_CHARS). None where a line holds a line break (the memo's input is the lines
        joined by '\n')."""
        if data is None:
            data = "\n".join(lines).encode("utf-8")
        try:
            flat, lengths, bad = self.memo.encode(data, len(lines), eos)
        except ValueError:
            return None
        special = [] if b"<" not in data else self._special_lines(lines)
        redo = sorted(set(bad.tolist()) | set(special))
        if not redo:
            return flat, lengths
        ids = self._encode([lines[i] for i in redo], eos)
        ends = np.cumsum(lengths)
        parts, prev = [], 0
        for i, x in zip(redo, ids):
            parts += [flat[prev:ends[i] - lengths[i]], np.asarray(x, dtype=flat.dtype)]
            prev = ends[i]
        parts.append(flat[prev:])
        lengths = lengths.copy()
        lengths[redo] = [len(x) for x in ids]
        return np.concatenate(parts), lengths

    def _encode(self, lines: list[str], eos: int | None) -> list[list[int]]:
        if self.spm is None:
            ids = [e.ids for e in self.tok.encode_batch_fast(lines, add_special_tokens=False)]
            return ids if eos is None else [x + [eos] for x in ids]
        # SentencePiece appends the eos itself (an id per line from C++, not a Python list operation)
        ids = self._processor(eos).encode(lines, out_type=int, num_threads=1, add_eos=eos is not None)
        for i in self._tokenizers_lines(lines):
            ids[i] = self.tok.encode(lines[i], add_special_tokens=False).ids + ([] if eos is None else [eos])
        return ids

    def _processor(self, eos: int | None):
        if eos is None:
            return self.spm
        if eos not in self._with_eos:
            import sentencepiece as spm
            from sentencepiece import sentencepiece_model_pb2 as pb

            proto = pb.ModelProto()
            proto.ParseFromString(self.spm.serialized_model_proto())
            proto.trainer_spec.eos_id = eos
            self._with_eos[eos] = spm.SentencePieceProcessor(model_proto=proto.SerializeToString())
        return self._with_eos[eos]

    def _special_lines(self, lines: list[str]) -> list[int]:
        """Indices of the lines holding the text of a special token or byte piece, found by C-level
        scans: a Python test per line costs ~0.1 us, ~1% of encoding."""
        return [i for i in itertools.compress(range(len(lines)), map(operator.contains, lines, itertools.repeat("<")))
                if self.special_re.search(lines[i])]

    def _tokenizers_lines(self, lines: list[str]) -> list[int]:
        """Indices of the lines `tokenizers` must encode (special-token text, or too long for exact
        float32 sums)."""
        out = self._special_lines(lines)
        if lines and max(map(len, lines)) > MAX_EXACT_CHARS:
            out = sorted(set(out) | {i for i, line in enumerate(lines) if len(line) > MAX_EXACT_CHARS})
        return out


def _sentencepiece_from(tok):
    """(SentencePieceProcessor, regex of special-token texts, pieces by id) equivalent to `tok` on clean
    text, or (None, None, None)."""
    data = json.loads(tok.to_str())
    model, pre = data.get("model") or {}, data.get("pre_tokenizer") or {}
    if model.get("type") != "Unigram" or data.get("post_processor") is not None:
        return None, None, None
    if not (pre.get("type") == "Metaspace" and pre.get("replacement") == METASPACE
            and pre.get("prepend_scheme") == "always" and pre.get("split", True)):
        return None, None, None
    ours = [json.loads(json.dumps(_normalizer_json(lower, acc))) for lower in (False, True) for acc in (False, True)]
    if data.get("normalizer") not in ours:
        return None, None, None
    try:
        import sentencepiece as spm
        from sentencepiece import sentencepiece_model_pb2 as pb
    except ImportError:
        return None, None, None
    added = {t["content"] for t in data.get("added_tokens", [])}
    unk_id, byte_fallback = model.get("unk_id"), bool(model.get("byte_fallback"))
    if unk_id is None or not 0 <= unk_id < len(model.get("vocab") or ()):
        return None, None, None
    Piece = pb.ModelProto.SentencePiece
    pieces = [piece for piece, _ in model["vocab"]]
    scores = np.array([score for _, score in model["vocab"]], dtype=np.float64)
    types = np.full(len(pieces), Piece.NORMAL)
    types[[i for i, piece in enumerate(pieces) if piece in added]] = Piece.CONTROL
    if byte_fallback:
        types[[i for i, piece in enumerate(pieces)
               if piece.startswith("<0x") and piece not in added and _BYTE_PIECE.fullmatch(piece)]] = Piece.BYTE
    types[unk_id] = Piece.UNKNOWN  # the precedence of the rules: unknown, then added (control), then byte
    # only scores on xlmkit's grid (float32 holds them and their sums exactly): others would round
    # differently in SentencePiece's float32 than in tokenizers' float64
    normal = scores[types == Piece.NORMAL]
    if not ((normal.astype(np.float32) == normal).all() and (np.round(normal / SCORE_QUANTUM) * SCORE_QUANTUM == normal).all()
            and (normal >= -50).all()):
        return None, None, None
    proto = pb.ModelProto()
    proto.pieces.extend(Piece(piece=piece, score=score, type=int(kind))
                        for piece, score, kind in zip(pieces, scores.tolist(), types.tolist()))
    spec = proto.trainer_spec
    spec.model_type, spec.vocab_size, spec.byte_fallback = pb.TrainerSpec.UNIGRAM, len(model["vocab"]), byte_fallback
    spec.unk_id, spec.bos_id, spec.eos_id, spec.pad_id = unk_id, -1, -1, -1
    norm = proto.normalizer_spec
    norm.name, norm.add_dummy_prefix, norm.remove_extra_whitespaces, norm.escape_whitespaces = "identity", True, False, True
    sp = spm.SentencePieceProcessor(model_proto=proto.SerializeToString())
    texts = sorted(added) + (["<0x"] if byte_fallback else [])
    return sp, re.compile("|".join(re.escape(t) for t in texts) if texts else r"(?!)"), pieces


def _normalizer_json(lowercase: bool, strip_accents: bool) -> dict:
    from tokenizers import Tokenizer, models

    t = Tokenizer(models.Unigram())
    t.normalizer = make_normalizer(lowercase, strip_accents)
    return json.loads(t.to_str())["normalizer"]
