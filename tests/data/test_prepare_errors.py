"""Bad input gets one clear DataError naming the file (and the line where one applies)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from xlmkit.cli.main import main
from xlmkit.core.config import load_config
from xlmkit.core.errors import DataError
from xlmkit.data.prepare import discover_inputs, prepare_data


def tiny(**changes):
    return dataclasses.replace(load_config("tiny").prepare, workers=1, **changes)


def write(path, text: str | bytes):
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


def lines(prefix: str, n: int) -> str:
    return "".join(f"{prefix} sentence number {i} is here.\n" for i in range(n))


def prepare(tmp_path, cfg=None, **inputs):
    return prepare_data(cfg or tiny(vocab_size=60), tmp_path / "out", progress=False, **inputs)


def assert_no_output(tmp_path):
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob("out.tmp-*"))


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"nothere\.txt: file not found"):
        prepare(tmp_path, mono={"en": tmp_path / "nothere.txt"})
    assert_no_output(tmp_path)


def test_empty_file(tmp_path):
    en = write(tmp_path / "en.txt", lines("en", 50))
    empty = write(tmp_path / "fr.txt", "")
    with pytest.raises(DataError, match=r"fr\.txt: empty file"):
        prepare(tmp_path, mono={"en": en, "fr": empty})
    assert_no_output(tmp_path)


def test_empty_after_cleaning(tmp_path):
    blank = write(tmp_path / "fr.txt", "   \n\t\n\x00\x07\n\u200b\n")
    with pytest.raises(DataError, match=r"fr\.txt: no usable lines after cleaning \(4 read; dropped too_short=4"):
        prepare(tmp_path, mono={"fr": blank})
    assert_no_output(tmp_path)


def test_invalid_utf8_names_file_and_line(tmp_path):
    en = write(tmp_path / "en.txt", lines("en", 5).encode() + b"caf\xe9 latin-1 here\n" + lines("en", 5).encode())
    with pytest.raises(DataError, match=r"en\.txt:6: invalid UTF-8.*prepare\.skip_bad_lines=true"):
        prepare(tmp_path, mono={"en": en})
    assert_no_output(tmp_path)


def test_skip_bad_lines_counts_them(tmp_path):
    text = lines("en", 100).encode() + b"caf\xe9\n" + b"\xff\xfe\n" + lines("fr", 100).encode()
    en = write(tmp_path / "en.txt", text)
    out = prepare(tmp_path, tiny(vocab_size=30, skip_bad_lines=True), mono={"en": en})
    (source,) = json.loads((out / "manifest.json").read_text())["sources"]
    assert source["dropped"]["bad_utf8"] == 2
    assert source["lines_read"] == 202 and source["kept"] == 200


def test_invalid_utf8_in_parallel_file(tmp_path):
    a = write(tmp_path / "x.en-fr.en", lines("en", 20))
    b = write(tmp_path / "x.en-fr.fr", lines("fr", 10).encode() + b"\xc3\x28 bad\n" + lines("fr", 9).encode())
    with pytest.raises(DataError, match=r"x\.en-fr\.fr:11: invalid UTF-8"):
        prepare(tmp_path, para={"en-fr": (a, b)})


def test_parallel_line_counts_differ(tmp_path):
    a = write(tmp_path / "train.en", lines("en", 30))
    b = write(tmp_path / "train.fr", lines("fr", 29))
    with pytest.raises(DataError, match=r"different line counts: .*train\.en has 30 lines, .*train\.fr has 29 lines"):
        prepare(tmp_path, para={"en-fr": (a, b)})
    assert_no_output(tmp_path)


def test_unknown_language_code(tmp_path):
    en = write(tmp_path / "english.txt", lines("en", 10))
    with pytest.raises(DataError, match=r"unknown language code 'english' for .*english\.txt"):
        prepare(tmp_path, mono={"english": en})
    with pytest.raises(DataError, match=r"bad language pair 'en-en'"):
        prepare(tmp_path, para={"en-en": (en, en)})


def test_duplicate_language_codes(tmp_path):
    a = write(tmp_path / "a.txt", lines("en", 10))
    b = write(tmp_path / "b.txt", lines("en", 10))
    with pytest.raises(DataError, match=r"duplicate language 'en': en=.*a\.txt and eng=.*b\.txt"):
        prepare(tmp_path, mono={"en": a, "eng": b})
    with pytest.raises(DataError, match=r"duplicate language pair 'fr-en'"):
        prepare(tmp_path, para={"en-fr": (a, b), "fr-en": (b, a)})


def test_duplicate_language_codes_on_the_command_line(tmp_path, capsys):
    a = write(tmp_path / "a.txt", lines("en", 10))
    b = write(tmp_path / "b.txt", lines("en", 10))
    rc = main(["prepare", "--out", str(tmp_path / "out"), "--mono", f"en={a}", "--mono", f"eng={b}", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("xlmkit prepare: error: duplicate language 'en'") and "a.txt" in err and "b.txt" in err
    assert main(["prepare", "--out", str(tmp_path / "out"), "--para", f"en-fr={a}"]) == 2
    assert "expected A-B=PATH_A,PATH_B" in capsys.readouterr().err


def test_duplicates_found_in_a_data_dir(tmp_path):
    write(tmp_path / "en.txt", lines("en", 10))
    (tmp_path / "mono").mkdir()
    write(tmp_path / "mono" / "eng.txt", lines("en", 10))
    with pytest.raises(DataError, match=r"duplicate language 'en': .*en\.txt and .*mono/eng\.txt"):
        discover_inputs(tmp_path)


def test_parallel_file_without_other_side(tmp_path):
    write(tmp_path / "europarl.en-fr.en", lines("en", 10))
    with pytest.raises(DataError, match=r"europarl\.en-fr\.en: parallel file without its other side.*en-fr\.fr"):
        discover_inputs(tmp_path)


def test_vocab_larger_than_data_allows(tmp_path):
    en = write(tmp_path / "en.txt", lines("en", 200))
    with pytest.raises(DataError, match=r"prepare\.vocab_size=1000 is larger than the data allows: .* only (\d+) tokens"):
        prepare(tmp_path, tiny(), mono={"en": en})
    assert_no_output(tmp_path)


def test_refuses_to_replace_a_directory_that_is_not_prepared_data(tmp_path):
    en = write(tmp_path / "en.txt", lines("en", 200))
    (tmp_path / "out").mkdir()
    write(tmp_path / "out" / "precious.txt", "keep me")
    with pytest.raises(DataError, match=r"out exists, is not empty and holds no manifest\.json"):
        prepare(tmp_path, mono={"en": en})
    assert (tmp_path / "out" / "precious.txt").read_text() == "keep me"


def test_no_inputs(tmp_path):
    with pytest.raises(DataError, match=r"no input text in .*looked for"):
        prepare(tmp_path, data_dir=tmp_path)


def test_train_tokenizer_will_not_overwrite_a_prepared_dirs_tokenizer(tmp_path):
    from xlmkit.data.prepare import train_tokenizer_only

    en = write(tmp_path / "en.txt", lines("en", 200))
    out = prepare(tmp_path, tiny(vocab_size=30), mono={"en": en})
    with pytest.raises(DataError, match=r"is a prepared data directory"):
        train_tokenizer_only(tiny(vocab_size=30), out, mono={"en": en}, progress=False)
