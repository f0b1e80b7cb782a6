"""A tiny built-in multilingual corpus, generated, for tests and for the demo when no real data is at hand.

Sentences come from a small grammar with word-for-word dictionaries in English, French, German and
Spanish, so the parallel side is truly parallel (same meaning, same seed) and a model can learn
something cross-lingual from it in seconds. Deterministic given the seed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

LANGS = ("en", "fr", "de", "es")

# concept -> word per language (en, fr, de, es)
_NOUNS = {
    "cat": ("cat", "chat", "Katze", "gato"), "dog": ("dog", "chien", "Hund", "perro"),
    "child": ("child", "enfant", "Kind", "niño"), "house": ("house", "maison", "Haus", "casa"),
    "book": ("book", "livre", "Buch", "libro"), "tree": ("tree", "arbre", "Baum", "árbol"),
    "car": ("car", "voiture", "Auto", "coche"), "bird": ("bird", "oiseau", "Vogel", "pájaro"),
    "woman": ("woman", "femme", "Frau", "mujer"), "man": ("man", "homme", "Mann", "hombre"),
    "city": ("city", "ville", "Stadt", "ciudad"), "river": ("river", "rivière", "Fluss", "río"),
    "apple": ("apple", "pomme", "Apfel", "manzana"), "table": ("table", "table", "Tisch", "mesa"),
    "teacher": ("teacher", "professeur", "Lehrer", "profesor"), "garden": ("garden", "jardin", "Garten", "jardín"),
}
_ADJS = {
    "big": ("big", "grand", "große", "grande"), "small": ("small", "petit", "kleine", "pequeño"),
    "red": ("red", "rouge", "rote", "rojo"), "old": ("old", "vieux", "alte", "viejo"),
    "happy": ("happy", "heureux", "glückliche", "feliz"), "green": ("green", "vert", "grüne", "verde"),
    "quiet": ("quiet", "calme", "ruhige", "tranquilo"), "new": ("new", "nouveau", "neue", "nuevo"),
}
_VERBS = {
    "sees": ("sees", "voit", "sieht", "ve"), "likes": ("likes", "aime", "mag", "quiere"),
    "finds": ("finds", "trouve", "findet", "encuentra"), "follows": ("follows", "suit", "folgt", "sigue"),
    "paints": ("paints", "peint", "malt", "pinta"), "waits for": ("waits for", "attend", "erwartet", "espera"),
}
_ADVS = {
    "today": ("today", "aujourd'hui", "heute", "hoy"), "often": ("often", "souvent", "oft", "a menudo"),
    "again": ("again", "encore", "wieder", "otra vez"), "slowly": ("slowly", "lentement", "langsam", "despacio"),
}
_DET = ("the", "le", "die", "el")


def sentence(rng: np.random.Generator) -> dict[str, str]:
    """One sentence in every language: {'en': 'The big cat sees the tree today.', 'fr': ...}."""
    n1, n2 = rng.choice(list(_NOUNS), size=2, replace=False)
    adj = rng.choice(list(_ADJS))
    verb = rng.choice(list(_VERBS))
    adv = rng.choice(list(_ADVS))
    out = {}
    for i, lang in enumerate(LANGS):
        words = [_DET[i], _ADJS[adj][i], _NOUNS[n1][i], _VERBS[verb][i], _DET[i], _NOUNS[n2][i], _ADVS[adv][i]]
        if lang == "fr":  # French adjectives mostly follow the noun
            words[1], words[2] = words[2], words[1]
        text = " ".join(words)
        out[lang] = text[0].upper() + text[1:] + "."
    return out


def write_corpus(out_dir: str | Path, n_mono: int = 2000, n_para: int = 1000, seed: int = 0,
                 langs: tuple[str, ...] = ("en", "fr", "de"), pairs: tuple[str, ...] = ("en-fr", "en-de")) -> Path:
    """Write `{lang}.txt` monolingual files and `{a}-{b}.{a}` / `{a}-{b}.{b}` parallel files."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for lang in langs:
        lines = [sentence(rng)[lang] for _ in range(n_mono)]
        (out / f"{lang}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    for pair in pairs:
        a, b = pair.split("-")
        rows = [sentence(rng) for _ in range(n_para)]
        (out / f"{pair}.{a}").write_text("\n".join(r[a] for r in rows) + "\n", encoding="utf-8")
        (out / f"{pair}.{b}").write_text("\n".join(r[b] for r in rows) + "\n", encoding="utf-8")
    return out
