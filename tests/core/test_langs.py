import pytest

from xlmkit.core.iso639 import ISO639_1, ISO639_3, ISO639_3_TO_1
from xlmkit.core.langs import MACROLANGUAGE_MEMBERS, canonical_lang, canonical_pair


def test_codes_canonicalise_to_639_1_where_there_is_one():
    assert canonical_lang("eng") == "en" and canonical_lang("EN") == "en" and canonical_lang("ger") == "de"
    assert canonical_lang("mya") == "my" and canonical_lang("bur") == "my"  # 639-2 T and B forms
    assert canonical_lang("ber") == "ber" and canonical_lang("yue") == "yue"  # no 639-1 code: kept
    assert canonical_lang("arb") == "ar" and canonical_lang("cmn") == "zh"  # a macrolanguage's standard member
    assert canonical_lang("arz") == "arz"  # Egyptian Arabic is a language of its own here
    assert canonical_lang("zho_Hant") == "zh-hant" and canonical_lang("sr-Latn") == "sr-latn"  # subtag kept
    assert canonical_pair("eng-fra") == "en-fr"
    with pytest.raises(ValueError, match="not a language code: 'english'"):
        canonical_lang("english")


def test_code_tables_are_consistent():
    # every 639-1 code is reached from its three-letter codes, and the tables name real codes only
    assert set(ISO639_3_TO_1.values()) == ISO639_1
    assert set(ISO639_3_TO_1) <= ISO639_3 and set(MACROLANGUAGE_MEMBERS) <= ISO639_3
    assert set(MACROLANGUAGE_MEMBERS.values()) <= ISO639_1
