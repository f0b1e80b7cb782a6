"""`xlmkit export-onnx`: the command line of xlmkit.interop.onnx.export_onnx."""

from __future__ import annotations

import argparse
import time


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN", help="run directory (pretrained or fine-tuned)")
    parser.add_argument("--out", required=True, help="output .onnx file (metadata beside it in OUT.json)")
    parser.add_argument("--which", choices=("best", "latest"), default="best", help="checkpoint (default: best)")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (default: 17)")
    parser.add_argument("--int8", action="store_true",
                        help="quantize the graph with onnxruntime's dynamic int8 quantization")


def run(args: argparse.Namespace) -> int:
    from xlmkit.core.errors import XlmkitError
    from xlmkit.interop.onnx import export_onnx

    t0 = time.perf_counter()
    if not args.out.endswith(".onnx"):
        raise XlmkitError(f"--out must end in .onnx, got {args.out}")
    meta = export_onnx(args.run_dir, args.out, args.which, args.opset, args.int8)
    diff = meta.get("parity_max_abs_diff")
    check = (f"max abs diff vs torch {diff:.2e}" if diff is not None else meta.get("parity_note", ""))
    print(f"[export-onnx] {args.run_dir} -> {args.out} ({meta['bytes'] / 1e6:.2f} MB{', int8' if args.int8 else ''}; "
          f"inputs {', '.join(meta['inputs'])}; outputs {', '.join(meta['outputs'])}); {check} "
          f"({time.perf_counter() - t0:.1f}s)")
    return 0
