"""Beam-search decoding throughput: xlmkit `EncoderDecoder` + `generate` against transformers'
`EncoderDecoderModel.generate` (BERT2BERT) of the same shape.

    python bench/generate_throughput.py                      # D=256, 4+4 layers, V=32000, beam 5
    python bench/generate_throughput.py --beam 1 --cpu-isa avx2

Both models have random weights, the same dimensions (post-LN, GELU, learned positions), and decode the
same random sources (lengths 8..40) with the same beam, length penalty 1 and early stopping, in
batches of --batch sources; both are made to generate exactly --new-tokens tokens (xlmkit
`min_len`/`max_len`, transformers `min_new_tokens`/`max_new_tokens`) so that the work is the same
whatever the random weights prefer. Precision: auto, as xlmkit resolves it. Each model runs in its
own subprocess; the machine may be shared: compare runs made back to back.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _common import CPU_ISA_HELP, cpu_name, restart_with_cpu_isa, run_worker_process  # noqa: E402
BOS = EOS = 2
PAD = 1


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--sources", type=int, default=64)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--beam", type=int, default=5)
    p.add_argument("--new-tokens", type=int, default=24)
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    p.add_argument("--cpu-isa", default=None, choices=["avx2"], help=CPU_ISA_HELP)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # xlmkit | hf
    return p.parse_args(argv)


def make_sources(args):
    import torch

    g = torch.Generator().manual_seed(args.seed)
    lengths = torch.randint(8, 41, (args.sources,), generator=g)
    return [torch.randint(5, args.vocab, (int(n),), generator=g).tolist() for n in lengths]


def batches(args, sources):
    import torch

    for start in range(0, len(sources), args.batch):
        chunk = sources[start:start + args.batch]
        T = max(map(len, chunk))
        ids = torch.full((len(chunk), T), PAD, dtype=torch.long)
        mask = torch.zeros((len(chunk), T), dtype=torch.long)
        for i, s in enumerate(chunk):
            ids[i, :len(s)] = torch.tensor(s)
            mask[i, :len(s)] = 1
        yield ids, mask


def run_worker(args) -> dict:
    import torch

    from xlmkit.core.runtime import autocast

    torch.manual_seed(args.seed)
    device = torch.device("cpu")
    sources = make_sources(args)
    if args.worker == "xlmkit":
        from xlmkit.core.config import ModelConfig
        from xlmkit.model.decoder import EncoderDecoder
        from xlmkit.model.generate import GenerationConfig, generate

        cfg = ModelConfig(dim=args.dim, n_layers=args.layers, n_heads=args.heads, ffn_dim=4 * args.dim,
                          max_positions=512, use_lang_emb=False, vocab_size=args.vocab, n_langs=1, pad_id=PAD)
        model = EncoderDecoder(cfg).eval()
        gen = GenerationConfig(beam_size=args.beam, length_penalty=1.0, early_stopping=True, max_len_a=0.0,
                               max_len_b=args.new_tokens + 1, min_len=args.new_tokens)

        def decode(ids, mask):
            return generate(model, ids, None, None, gen, BOS, EOS, src_mask=mask.bool())
    else:
        from transformers import BertConfig, EncoderDecoderConfig, EncoderDecoderModel

        def half(**kw):
            return BertConfig(vocab_size=args.vocab, hidden_size=args.dim, num_hidden_layers=args.layers,
                              num_attention_heads=args.heads, intermediate_size=4 * args.dim,
                              max_position_embeddings=512, pad_token_id=PAD, **kw)

        config = EncoderDecoderConfig.from_encoder_decoder_configs(
            half(), half(is_decoder=True, add_cross_attention=True))
        config.decoder_start_token_id, config.pad_token_id, config.eos_token_id = BOS, PAD, EOS
        config.tie_word_embeddings = True
        model = EncoderDecoderModel(config=config).eval()

        def decode(ids, mask):
            with torch.inference_mode():
                out = model.generate(input_ids=ids, attention_mask=mask, num_beams=args.beam,
                                     max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                                     length_penalty=1.0, early_stopping=True, do_sample=False,
                                     decoder_start_token_id=BOS, pad_token_id=PAD, eos_token_id=EOS)
            return out.tolist()

    all_batches = list(batches(args, sources))
    with autocast(device, args.precision):
        decode(*all_batches[0])  # warm-up
        t0 = time.perf_counter()
        n_tokens = 0
        for ids, mask in all_batches:
            out = decode(ids, mask)
            n_tokens += sum(len(o) for o in out)
        seconds = time.perf_counter() - t0
    return {"worker": args.worker, "sentences_per_s": len(sources) / seconds, "seconds": seconds,
            "tokens_out": n_tokens, "threads": torch.get_num_threads()}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    restart_with_cpu_isa(args.cpu_isa, __file__, argv)
    if args.worker:
        print(json.dumps(run_worker(args)))
        return 0
    from xlmkit.core.runtime import detect_hardware, resolve_precision

    hw = detect_hardware("cpu")
    precision, why = resolve_precision(args.precision, hw)
    print(f"beam-search decoding on {cpu_name()}; CPU capability {hw.describe()}"
          f"{' (limited by --cpu-isa ' + args.cpu_isa + ')' if args.cpu_isa else ''}; {why}")
    print(f"D={args.dim} layers={args.layers}+{args.layers} V={args.vocab}; {args.sources} sources (8-40 tokens) in "
          f"batches of {args.batch}; beam {args.beam}; {args.new_tokens} new tokens each", flush=True)
    results = {}
    for worker in ("xlmkit", "hf"):
        r = run_worker_process(__file__, [*argv, "--precision", precision], worker)
        if r is None:
            continue
        results[worker] = r
        print(f"{worker:<8}{r['sentences_per_s']:>10.2f} sentences/s  ({r['seconds']:.1f} s, {r['tokens_out']} tokens out)",
              flush=True)
    if len(results) == 2:
        print(f"speedup xlmkit/hf ({precision} vs {precision}, beam {args.beam}): "
              f"{results['xlmkit']['sentences_per_s'] / results['hf']['sentences_per_s']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
