"""Readers for benchmark folders laid out one sub-folder per language, as they are distributed.

    data = read_language_folders("../shared/data/classification/sib-200", "classification")
    data["train"]["en"], data["dev"]["de"]            # {split: {lang: [Example]}}, as evaluate reads

Two layouts, recognised by the files in each language folder:
- TSV with a header (SIB-200: `<root>/<xxx_Scrp>/{train,dev,test}.tsv`, columns `index_id, category,
  text`): text from `text` / `sentence`, label from `label` / `category`, the id from `index_id` / `id`
  (SIB-200's ids name the same FLORES sentence in every language).
- Text and label files side by side (UMSAB sentiment: `<root>/<english>/{train,val,test}_{text,labels}.txt`):
  line i of the labels file is the label of line i of the text file; their line counts must agree.

Folder names are language codes, with a script where the dataset has one (ISO 639-3 + ISO 15924:
`eng_Latn` -> en, `zho_Hans` -> zh, `zho_Hant` -> zh-hant: the script is kept where it is not the
language's usual one), or English language names (`german` -> de).
"""

from __future__ import annotations

import csv
from pathlib import Path

from xlmkit.core.errors import DataError
from xlmkit.core.langs import canonical_lang
from xlmkit.tasks.io import SPLIT_NAMES, Example

# The usual script of the languages that are written in several (a folder in another script keeps it).
USUAL_SCRIPT = {"zh": "Hans", "sr": "Cyrl", "pa": "Guru", "ms": "Latn", "uz": "Latn", "az": "Latn",
                "ku": "Latn", "mn": "Cyrl", "sd": "Arab", "ks": "Arab", "ha": "Latn", "ff": "Latn"}
# English names of languages as datasets spell their folders (lower case).
ENGLISH_NAMES = {
    "afrikaans": "af", "albanian": "sq", "amharic": "am", "arabic": "ar", "armenian": "hy", "basque": "eu",
    "belarusian": "be", "bengali": "bn", "bulgarian": "bg", "catalan": "ca", "chinese": "zh", "croatian": "hr",
    "czech": "cs", "danish": "da", "dutch": "nl", "english": "en", "estonian": "et", "finnish": "fi",
    "french": "fr", "galician": "gl", "georgian": "ka", "german": "de", "greek": "el", "gujarati": "gu",
    "hebrew": "he", "hindi": "hi", "hungarian": "hu", "icelandic": "is", "indonesian": "id", "irish": "ga",
    "italian": "it", "japanese": "ja", "kannada": "kn", "kazakh": "kk", "korean": "ko", "latvian": "lv",
    "lithuanian": "lt", "macedonian": "mk", "malay": "ms", "malayalam": "ml", "marathi": "mr", "nepali": "ne",
    "norwegian": "no", "persian": "fa", "polish": "pl", "portuguese": "pt", "punjabi": "pa", "romanian": "ro",
    "russian": "ru", "serbian": "sr", "slovak": "sk", "slovenian": "sl", "spanish": "es", "swahili": "sw",
    "swedish": "sv", "tagalog": "tl", "tamil": "ta", "telugu": "te", "thai": "th", "turkish": "tr",
    "ukrainian": "uk", "urdu": "ur", "vietnamese": "vi", "welsh": "cy",
}
_TEXT_COLUMNS = ("text", "sentence")
_LABEL_COLUMNS = ("label", "category")
_ID_COLUMNS = ("index_id", "id")


def folder_language(name: str) -> str:
    """`eng_Latn` -> en, `zho_Hant` -> zh-hant, `german` -> de; a DataError for anything else."""
    if name.lower() in ENGLISH_NAMES:
        return ENGLISH_NAMES[name.lower()]
    code, _, script = name.partition("_")
    try:
        lang = canonical_lang(code)
    except ValueError:
        raise DataError(f"{name}: a language folder must be named by a language code (eng_Latn, de) or an "
                        f"English language name (german)") from None
    if script and script.capitalize() != USUAL_SCRIPT.get(lang, script.capitalize()):
        return f"{lang}-{script.lower()}"
    return lang


def is_language_folders(root: str | Path) -> bool:
    """True when root's sub-folders hold split files of one of the two layouts."""
    root = Path(root)
    if not root.is_dir():
        return False
    return any(_split_files(d) for d in root.iterdir() if d.is_dir())


def _split_files(folder: Path) -> dict[str, tuple[Path, ...]]:
    """{split: (tsv,) or (text, labels)} of one language folder."""
    out: dict[str, tuple[Path, ...]] = {}
    for f in sorted(folder.iterdir()):
        stem = f.name.rsplit(".", 1)[0]
        if f.suffix == ".tsv" and stem in SPLIT_NAMES:
            out[SPLIT_NAMES[stem]] = (f,)
        elif f.name.endswith("_text.txt") and stem[: -len("_text")] in SPLIT_NAMES:
            labels = f.with_name(f.name[: -len("_text.txt")] + "_labels.txt")
            if not labels.is_file():
                raise DataError(f"{f}: no label file beside it (expected {labels.name})")
            out[SPLIT_NAMES[stem[: -len("_text")]]] = (f, labels)
    return out


def _read_lines(path: Path) -> list[str]:
    try:
        with open(path, encoding="utf-8", newline="") as f:
            return [line.rstrip("\r\n") for line in f]
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 ({e.reason} at byte {e.start})") from None


def _read_tsv(path: Path, lang: str) -> list[Example]:
    lines = _read_lines(path)
    if not lines:
        raise DataError(f"{path}: empty")
    rows = list(csv.reader(lines, delimiter="\t", quoting=csv.QUOTE_NONE))
    header = [h.strip() for h in rows[0]]

    def column(names: tuple[str, ...]) -> int:
        for n in names:
            if n in header:
                return header.index(n)
        raise DataError(f"{path}:1: no {' / '.join(names)} column in the header ({', '.join(header)})")

    text_col, label_col = column(_TEXT_COLUMNS), column(_LABEL_COLUMNS)
    id_col = next((header.index(n) for n in _ID_COLUMNS if n in header), None)
    out = []
    for i, row in enumerate(rows[1:], start=2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != len(header):
            raise DataError(f"{path}:{i}: {len(row)} columns but the header has {len(header)}")
        uid = row[id_col] if id_col is not None else str(len(out))
        out.append(Example(lang=lang, label=row[label_col].strip(), text=row[text_col], uid=uid,
                           source=f"{path}:{i}"))
    return out


def _read_text_and_labels(text_path: Path, label_path: Path, lang: str) -> list[Example]:
    texts, labels = _read_lines(text_path), _read_lines(label_path)
    while texts and not texts[-1].strip() and labels and not labels[-1].strip():
        texts, labels = texts[:-1], labels[:-1]
    if len(texts) != len(labels):
        raise DataError(f"{text_path} has {len(texts)} lines but {label_path} has {len(labels)}; they must "
                        f"pair line by line")
    out = []
    for i, (text, label) in enumerate(zip(texts, labels), start=1):
        if not label.strip():
            raise DataError(f"{label_path}:{i}: empty label")
        out.append(Example(lang=lang, label=label.strip(), text=text, uid=str(i - 1), source=f"{text_path}:{i}"))
    return out


def read_language_folders(root: str | Path, task: str = "classification") -> dict[str, dict[str, list[Example]]]:
    """{split: {lang: examples}} of every language folder under root (see the module docstring)."""
    if task != "classification":
        raise DataError(f"{root}: language folders hold classification data, not {task} data")
    root = Path(root)
    out: dict[str, dict[str, list[Example]]] = {}
    seen: dict[str, Path] = {}
    for folder in sorted(d for d in root.iterdir() if d.is_dir()):
        files = _split_files(folder)
        if not files:
            continue
        lang = folder_language(folder.name)
        if lang in seen:
            raise DataError(f"{folder} and {seen[lang]} are both language {lang!r}")
        seen[lang] = folder
        for split, paths in files.items():
            exs = _read_tsv(paths[0], lang) if len(paths) == 1 else _read_text_and_labels(*paths, lang)
            out.setdefault(split, {})[lang] = exs
    if not seen:
        raise DataError(f"{root}: no language folder with split files (train.tsv, train_text.txt, ...)")
    return out
