"""The shared multilingual subword tokenizer (Hugging Face `tokenizers`).

One vocabulary for all languages, as in XLM (Lample & Conneau 2019, BPE) and XLM-R (Conneau et al.
2020, SentencePiece unigram). It is trained on a language-balanced sample: language i contributes a
share q_i = n_i^alpha / sum_j n_j^alpha of the sample (alpha = 0.3 in XLM-R, 0.5 in XLM), so
low-resource languages get more vocabulary than their raw share and high-resource ones less.

Special tokens have fixed ids (the fairseq / XLM-R order): <s>=0 <pad>=1 </s>=2 <unk>=3 <mask>=4,
then one <lang:xx> tag per language in sorted order, then the learned subwords. Pre-tokenisation is
SentencePiece's Metaspace (spaces become '▁' and stay part of the pieces), so decoding gives back the
text exactly, spaces included.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from xlmkit.data import SPECIAL_TOKENS, lang_tag
from xlmkit.errors import DataError
from xlmkit.objectives import language_probs
from xlmkit.text import CONTROL_CHARS, WHITESPACE_CHARS

METASPACE = "▁"


# ----------------------------------------------------------------------------------------------
# Language-balanced sampling (pure functions of counts and an explicit Generator)


def language_shares(counts: dict[str, int], alpha: float) -> dict[str, float]:
    """q_i = n_i^alpha / sum_j n_j^alpha (Conneau et al. 2020, eq. 1), in sorted language order: the law
    of xlmkit.objectives.language_probs, with every language required to have a sentence (a language
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
    """The tokenizer-side mirror of xlmkit.text.clean_line.

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


def _trainer(kind: str, vocab_size: int, specials: list[str], show_progress: bool):
    from tokenizers import trainers

    if kind == "unigram":
        return trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=specials, unk_token="<unk>",
                                       show_progress=show_progress)
    return trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=show_progress)


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
    vocab = data["model"]["vocab"]
    specials, pieces = vocab[:n_specials], vocab[n_specials:]
    chars = [p for p in pieces if len(p[0]) == 1]
    others = sorted((p for p in pieces if len(p[0]) > 1), key=lambda p: -p[1])
    keep = {p[0] for p in others[: max(vocab_size - n_specials - len(chars), 0)]}
    data["model"]["vocab"] = specials + [p for p in pieces if len(p[0]) == 1 or p[0] in keep]
    return Tokenizer.from_str(json.dumps(data))


def train_tokenizer(sentences: Iterable[str], languages: Sequence[str], kind: str = "unigram",
                    vocab_size: int = 8000, lowercase: bool = False, strip_accents: bool = False,
                    n_sentences: int | None = None, show_progress: bool = False):
    """Train on (already cleaned) sentences; return the Tokenizer, with exactly `vocab_size` tokens.

    `sentences` is a list or a zero-argument callable returning a fresh iterable (a unigram retry needs
    a second pass). Hugging Face trainers silently return a smaller vocabulary when the text has too
    few distinct pieces, which would only surface later as a model of another shape than asked for:
    that raises DataError naming both sizes. The unigram trainer also lands below the target for
    some sizes it could reach (its pruning overshoots), so it is retried with a larger target and
    trimmed by score to the exact size.
    """
    get = sentences if callable(sentences) else (lambda: sentences)
    specials = special_tokens(languages)
    if vocab_size <= len(specials):
        raise DataError(f"prepare.vocab_size={vocab_size} leaves no room for subwords: there are "
                        f"{len(specials)} special tokens ({len(languages)} language tags)")
    target, best = vocab_size, 0
    for _attempt in range(3 if kind == "unigram" else 1):
        tok = new_tokenizer(kind, lowercase, strip_accents)
        tok.train_from_iterator(get(), _trainer(kind, target, specials, show_progress), length=n_sentences)
        got = tok.get_vocab_size()
        if got >= vocab_size:
            break
        best = max(best, got)
        if kind != "unigram" or got < target // 2:
            break  # the data has run out of pieces, not the trainer's pruning
        target = int(target * 1.5)
    else:
        got = best
    if got < vocab_size:
        raise DataError(f"prepare.vocab_size={vocab_size} is larger than the data allows: the {kind} "
                        f"tokenizer trained on it has only {max(got, best)} tokens (specials included); "
                        f"use more text or set prepare.vocab_size={max(got, best)} or less")
    if got > vocab_size:
        tok = trim_unigram(tok, vocab_size, len(specials))
    check_tokenizer(tok, languages)
    return tok
