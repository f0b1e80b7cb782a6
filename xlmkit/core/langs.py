"""Language codes: one canonical code per language.

Real corpora mix ISO 639-3 (`eng`, `fra`, Tatoeba, Leipzig) and ISO 639-1 (`en`, `fr`, UD, Multi30K).
xlmkit uses ISO 639-1 where the language has one and the 639-3 code otherwise, so `eng.txt` and
`multi30k.en-fr.en` are the same language. Where corpora name a macrolanguage's main member rather
than the macrolanguage (FLORES / SIB-200: `arb_Arab`, `cmn_Hans`, `swh_Latn`, `pes_Arab`), the member
is taken as the macrolanguage's 639-1 code too (`arb` -> `ar`), so that it meets the model's language
embedding and parallel text of that code; other members keep their own code (`arz`, `azb`, `prs`).
"""

from __future__ import annotations

import re

from xlmkit.core.iso639 import ISO639_3_TO_1

# Individual languages that corpora use for a macrolanguage, with the macrolanguage's 639-1 code
# (SIL's ISO 639-3 macrolanguage mappings; only the standard / most-spoken member of each).
MACROLANGUAGE_MEMBERS = {
    "arb": "ar", "azj": "az", "cmn": "zh", "ekk": "et", "gaz": "om", "khk": "mn", "kmr": "ku", "lvs": "lv",
    "npi": "ne", "ory": "or", "pbt": "ps", "pes": "fa", "plt": "mg", "quy": "qu", "swh": "sw", "uzn": "uz",
    "ydd": "yi", "zsm": "ms", "als": "sq",
}

# The three-letter codes that corpora put in file names (lang_from_filename recognises these and the
# macrolanguage members; canonical_lang maps any code through the full tables).
CORPUS_CODES = frozenset("""
afr alb amh ara arm aze baq bel ben bos bre bul cat ces chi cym cze dan deu dut ell eng epo est eus
fao fas fin fra fre fry geo ger gla gle glg gre guj heb hin hrv hun hye ice ido ile ina ind isl ita
jav jpn kat kaz khm kor kur lat lav lit lug mac mal mao mar may mkd mon mri msa nds nld nno nob nor
oci pan per pol por ron rum rus slk slo slv sna som sot spa sqi srp swa swe tam tat tel tgl tha tsn
tso tuk tur uig ukr urd uzb vie wel xho yid yor yue zho zul
""".split()) | frozenset(MACROLANGUAGE_MEMBERS)

_CODE = re.compile(r"^[a-z]{2,3}([_-][A-Za-z0-9]{2,8})?$")


def canonical_lang(code: str) -> str:
    """'eng' -> 'en', 'EN' -> 'en', 'arb' -> 'ar', 'zho_Hant' -> 'zh-hant', 'ber' -> 'ber'. Raises
    ValueError for something that is no code."""
    c = code.strip()
    if not _CODE.match(c.lower()):
        raise ValueError(f"not a language code: {code!r} (expected ISO 639-1 or 639-3, e.g. 'en' or 'eng')")
    base, dash, subtag = c.lower().replace("_", "-").partition("-")
    return (MACROLANGUAGE_MEMBERS.get(base) or ISO639_3_TO_1.get(base, base)) + dash + subtag


def canonical_pair(pair: str) -> str:
    """'eng-fra' -> 'en-fr'. Order is kept: the first language is the first side."""
    parts = pair.split("-")
    if len(parts) != 2:
        raise ValueError(f"not a language pair: {pair!r} (expected e.g. 'en-fr')")
    a, b = (canonical_lang(p) for p in parts)
    if a == b:
        raise ValueError(f"language pair {pair!r} has the same language on both sides")
    return f"{a}-{b}"


def check_lang(code: str, extra: tuple[str, ...] | list[str] = ()) -> str:
    """canonical_lang, and the code must be ISO 639 (xlmkit.core.iso639: 639-1, 639-2/3/5, the local-use
    range qaa-qtz) or one of `extra` (prepare.extra_langs), so that a typo ('fe' for 'fr') does not
    silently become a new language. A subtag after the code ('zh-Hans', 'sr_Latn') is kept unchecked."""
    from xlmkit.core.iso639 import ISO639_1, ISO639_3

    lang = canonical_lang(code)
    if lang in {canonical_lang(e) for e in extra} or code.strip().lower() in {e.strip().lower() for e in extra}:
        return lang
    base = lang.split("-")[0]
    if base in ISO639_1 or base in ISO639_3 or (len(base) == 3 and "qaa" <= base <= "qtz"):
        return lang
    raise ValueError(f"{code!r} is not an ISO 639-1 or 639-3 language code; for a private code "
                     f"set prepare.extra_langs={code}")
