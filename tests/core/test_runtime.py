"""Precision is chosen from the hardware (xlmkit.core.runtime): bf16 only where it is native."""

import json

import pytest
import torch

from xlmkit.core.runtime import Hardware, autocast, detect_hardware, has_native_bf16, resolve_precision

# The two kinds of CPU as torch reports them: an AVX2-only EPYC (Zen 2/3) or pre-Cooper-Lake Xeon, and
# an AVX-512 CPU with bf16 dot products (Zen 4, Cooper Lake) or AMX (Sapphire Rapids).
AVX2_ONLY = Hardware("cpu", "AVX2")
AVX512_NO_BF16 = Hardware("cpu", "AVX512")  # Skylake / Cascade Lake
AVX512_BF16 = Hardware("cpu", "AVX512", avx512_bf16=True)
AMX = Hardware("cpu", "AVX512", avx512_bf16=True, amx=True)


@pytest.mark.parametrize("hw, expected", [
    (AVX2_ONLY, "fp32"), (AVX512_NO_BF16, "fp32"), (AVX512_BF16, "bf16"), (AMX, "bf16"),
    (Hardware("cpu", "DEFAULT"), "fp32"), (Hardware("cpu", "SVE256"), "fp32"),
    # kernels limited to AVX2 (ATEN_CPU_CAPABILITY=avx2) on a CPU that has bf16 units: bf16 is not used
    (Hardware("cpu", "AVX2", avx512_bf16=True, amx=True), "fp32"),
    (Hardware("cuda", cuda_bf16=True), "bf16"), (Hardware("cuda", cuda_bf16=False), "fp32"),
])
def test_auto_takes_bf16_only_where_it_is_native(hw, expected):
    precision, line = resolve_precision("auto", hw)
    assert precision == expected
    assert line.startswith(f"precision auto -> {expected}")
    assert has_native_bf16(hw) == (expected == "bf16")


def test_the_printed_lines_say_why():
    assert resolve_precision("auto", AVX2_ONLY)[1] == "precision auto -> fp32: this CPU has no native bf16 (AVX2)"
    assert resolve_precision("auto", AMX)[1] == ("precision auto -> bf16: this CPU computes bf16 natively "
                                                 "(AVX512 + AMX + AVX512_BF16)")


def test_explicit_choices_are_kept_and_emulated_bf16_warns():
    precision, line = resolve_precision("bf16", AVX2_ONLY)
    assert precision == "bf16" and line.startswith("warning:") and "emulated" in line and "AVX2" in line
    assert resolve_precision("bf16", AVX512_BF16)[0] == "bf16"
    assert not resolve_precision("bf16", AVX512_BF16)[1].startswith("warning")
    assert resolve_precision("fp32", AMX)[0] == "fp32"
    with pytest.raises(Exception, match="unknown precision 'fp16'"):
        resolve_precision("fp16", AMX)


def test_this_machine_resolves_consistently():
    hw = detect_hardware("cpu")
    assert hw.cpu_capability == torch.backends.cpu.get_cpu_capability()
    assert resolve_precision("auto", hw)[0] == ("bf16" if has_native_bf16(hw) else "fp32")
    with autocast("cpu", "auto"):
        x = torch.ones(2, 2) @ torch.ones(2, 2)
    assert x.dtype == (torch.bfloat16 if has_native_bf16(hw) else torch.float32)


def test_onednn_isa_limit_hides_bf16_units(monkeypatch):
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    hw = detect_hardware("cpu")
    assert not hw.avx512_bf16 and not hw.amx and resolve_precision("auto", hw)[0] == "fp32"


def test_pretrain_resolves_auto_once_and_writes_the_result(tiny_prepared, tmp_path, capsys):
    from xlmkit.core.config import load_config
    from xlmkit.train.pretrain import pretrain

    cfg = load_config("tiny", ["train.max_steps=1", "train.eval_batches=1", "train.device=cpu"])
    assert cfg.train.precision == "auto" and cfg.finetune.precision == "auto"  # the defaults
    pretrain(cfg, tiny_prepared, tmp_path / "run")
    expected, line = resolve_precision("auto", detect_hardware("cpu"))
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["precision"] == expected
    out = capsys.readouterr().out
    assert out.count("precision auto -> ") == 1 and f"[pretrain] {line}\n" in out
