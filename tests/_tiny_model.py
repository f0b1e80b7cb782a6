"""Helpers for the fine-tuning tests: a tiny untrained xlmkit run (made with xlmkit's own APIs, in
about a second) and small synthetic task data in en / fr / de."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

LANGS = ("de", "en", "fr")


def make_tiny_run(out: Path, langs=LANGS, use_lang_emb: bool = True, max_positions: int = 64) -> Path:
    """A run directory with a random-init `tiny` XLMModel, a small BPE tokenizer trained on the
    synthetic grammar, vocab.json as pretraining writes it (checkpoint.save_model_run)."""
    from xlmkit.train.checkpoint import save_model_run
    from xlmkit.core.config import load_config
    from xlmkit.model.encoder import XLMModel
    from xlmkit.data.synthetic import sentence
    from xlmkit.data.tokenizer import train_tokenizer

    rng = np.random.default_rng(0)
    sents = [sentence(rng)[lang] for _ in range(300) for lang in ("en", "fr", "de", "es")]
    tok = train_tokenizer(sents, list(langs), kind="bpe", vocab_size=200)
    out.mkdir(parents=True, exist_ok=True)
    tok_path = out.parent / f"{out.name}.tokenizer.json"
    tok.save(str(tok_path))
    cfg = load_config("tiny")
    model_cfg = dataclasses.replace(cfg.model, vocab_size=tok.get_vocab_size(), n_langs=len(langs), pad_id=1,
                                    use_lang_emb=use_lang_emb, max_positions=max_positions, dropout=0.0,
                                    attention_dropout=0.0)
    cfg = dataclasses.replace(cfg, model=model_cfg)
    import torch

    torch.manual_seed(0)
    model = XLMModel(model_cfg)
    vocab = {"lang2id": {lang: i for i, lang in enumerate(sorted(langs))},
             "specials": {"bos": 0, "pad": 1, "eos": 2, "unk": 3, "mask": 4},
             "languages": sorted(langs), "pairs": [], "vocab_size": tok.get_vocab_size()}
    save_model_run(out, model, cfg, vocab, tok_path)
    return out


# Words of xlmkit.data.synthetic's grammar with their UPOS tags, per language.
def tagged_sentence(rng: np.random.Generator) -> dict[str, tuple[list[str], list[str]]]:
    from xlmkit.data import synthetic as S

    n1, n2 = rng.choice(list(S._NOUNS), size=2, replace=False)
    adj = rng.choice(list(S._ADJS))
    verb = rng.choice(list(S._VERBS))
    adv = rng.choice(list(S._ADVS))
    out = {}
    for i, lang in enumerate(S.LANGS):
        words = [(S._DET[i], "DET"), (S._ADJS[adj][i], "ADJ"), (S._NOUNS[n1][i], "NOUN")]
        if lang == "fr":
            words[1], words[2] = words[2], words[1]
        verb_words = S._VERBS[verb][i].split()
        words += [(verb_words[0], "VERB")] + [(w, "ADP") for w in verb_words[1:]]
        words += [(S._DET[i], "DET"), (S._NOUNS[n2][i], "NOUN")]
        words += [(w, "ADV") for w in S._ADVS[adv][i].split()]
        words += [(".", "PUNCT")]
        out[lang] = ([w for w, _ in words], [t for _, t in words])
        out[lang][0][0] = out[lang][0][0].capitalize()
    return out


def write_pos_jsonl(out_dir: Path, n: int, seed: int = 0, langs=LANGS, parallel_ids: bool = True) -> Path:
    """{lang}.jsonl token-task files, the same `n` sentences (ids s0…) in every language."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = [tagged_sentence(rng) for _ in range(n)]
    for lang in langs:
        with open(out_dir / f"{lang}.jsonl", "w", encoding="utf-8") as f:
            for i, r in enumerate(rows):
                tokens, tags = r[lang]
                rec = {"tokens": tokens, "labels": tags}
                if parallel_ids:
                    rec["id"] = f"s{i}"
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return out_dir


def write_cls_jsonl(path: Path, n: int, lang: str, seed: int = 0) -> Path:
    """Classification: is the subject of the sentence an animal (cat, dog, bird)?"""
    from xlmkit.data.synthetic import sentence

    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(n):
            s = sentence(rng)
            subject = s["en"].rstrip(".").lower().split()[2]
            label = "animal" if subject in ("cat", "dog", "bird") else "other"
            f.write(json.dumps({"text": s[lang], "label": label, "lang": lang}, ensure_ascii=False) + "\n")
    return path
