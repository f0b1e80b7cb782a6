"""MLM training throughput: xlmkit `XLMModel` against Hugging Face `XLMWithLMHeadModel`.

Both models have the same dimensions, languages (use_lang_emb), exact GELU, post-LN and dropout, and
train on the same random batch with XLM's masking (15% of positions predicted; of those 80% <mask>,
10% random, 10% kept) and fused AdamW (HF Trainer's default optimizer since torch 2.8). xlmkit computes
the output layer at the predicted positions only; HF is driven as its users drive it, with `labels`
(-100 everywhere except predicted positions), so it computes the full (B*T, V) logits.

Each model runs in its own subprocess so that its peak memory (ru_maxrss on CPU,
torch.cuda.max_memory_allocated on CUDA) is its own.

    python bench/train_throughput.py                        # defaults: D=256, 4 layers, V=32000, B=32, T=128
    python bench/train_throughput.py --compile              # also xlmkit under torch.compile
    python bench/train_throughput.py --device cuda --steps 30
    python bench/train_throughput.py --cpu-isa avx2         # as on an AVX2-only CPU (see --cpu-isa)

Precision: --precision auto (the default) resolves as xlmkit's trainer does (xlmkit.core.runtime): bf16 where
the device computes it natively, else fp32; both models run in the resolved precision. Where that is
bf16, HF also runs once in fp32 (hf-fp32). The bench also measures the machine's matmul rate (a 2048^3
product, best of several, in fp32 and in the resolved precision) and prints each model's FLOP/s as a
fraction of it (MFU against the measured peak). Model FLOPs are 3x the forward's matmul FLOPs of what
each model computes (6 * weights * rows for the linear layers, 12 * T * D per token and layer for
attention; embedding look-ups are free): HF computes the output layer at all B*T rows, xlmkit at the
predicted ones, so their useful work is the same but their FLOPs differ.

The machine may be shared: tokens/s are noisy; compare runs made back to back.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _common import CPU_ISA_HELP, cpu_name, restart_with_cpu_isa, run_worker_process  # noqa: E402

PAD_ID, MASK_ID, N_SPECIAL = 1, 4, 5  # xlmkit's fixed specials: <s>=0 <pad>=1 </s>=2 <unk>=3 <mask>=4


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--ffn", type=int, default=1024, help="HF XLM's FFN is always 4*dim")
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--langs", type=int, default=2)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--steps", type=int, default=8, help="timed steps per model")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    p.add_argument("--cpu-isa", default=None, choices=["avx2"], help=CPU_ISA_HELP)
    p.add_argument("--compile", action="store_true", help="also run xlmkit under torch.compile")
    p.add_argument("--no-hf-fp32", action="store_true", help="skip the HF fp32 reference run")
    p.add_argument("--models", default="",
                   help="comma list of runs, from xlmkit, xlmkit-compile, hf, hf-fp32 (default: all that apply)")
    p.add_argument("--keep-freed-memory", action="store_true",
                   help="tell glibc malloc to keep freed memory (MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_) "
                        "instead of returning every large block to the OS, which makes each step page-fault "
                        "its large tensors again (applied to every model alike)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # xlmkit | xlmkit-compile | hf | matmul
    return p.parse_args(argv)


# ----------------------------------------------------------------------------------------------
# One model's run (in a subprocess)


def make_batch(args, device):
    """Random stream batch (no padding) with XLM's 80/10/10 corruption at 15% of positions."""
    import torch

    g = torch.Generator().manual_seed(args.seed)
    B, T = args.batch, args.seq
    x = torch.randint(N_SPECIAL, args.vocab, (B, T), generator=g)  # (B, T)
    langs = torch.randint(0, args.langs, (B, 1), generator=g).expand(B, T).contiguous()  # (B, T)
    n_pred = max(1, round(0.15 * B * T))
    pred_mask = torch.zeros(B * T, dtype=torch.bool)
    pred_mask[torch.randperm(B * T, generator=g)[:n_pred]] = True
    pred_mask = pred_mask.view(B, T)  # (B, T)
    targets = x[pred_mask]  # (N,)
    u = torch.rand(n_pred, generator=g)
    corrupted = torch.where(u < 0.8, torch.full_like(targets, MASK_ID),
                            torch.where(u < 0.9, torch.randint(N_SPECIAL, args.vocab, (n_pred,), generator=g),
                                        targets))
    inputs = x.clone()
    inputs[pred_mask] = corrupted
    labels = torch.full_like(x, -100)
    labels[pred_mask] = targets
    return {k: v.to(device) for k, v in dict(inputs=inputs, langs=langs, pred_mask=pred_mask,
                                              targets=targets, labels=labels).items()}


def build_xlmkit(args):
    from xlmkit.core.config import ModelConfig
    from xlmkit.model.encoder import XLMModel

    cfg = ModelConfig(dim=args.dim, n_layers=args.layers, n_heads=args.heads, ffn_dim=args.ffn,
                      dropout=0.1, attention_dropout=0.1, max_positions=max(512, args.seq),
                      use_lang_emb=True, vocab_size=args.vocab, n_langs=args.langs, pad_id=PAD_ID)
    return XLMModel(cfg)


def build_hf(args):
    from transformers import XLMConfig, XLMWithLMHeadModel

    if args.ffn != 4 * args.dim:
        print(f"note: HF XLM's FFN is 4*dim={4 * args.dim}, not --ffn {args.ffn}", file=sys.stderr)
    cfg = XLMConfig(vocab_size=args.vocab, emb_dim=args.dim, n_layers=args.layers, n_heads=args.heads,
                    dropout=0.1, attention_dropout=0.1, gelu_activation=True, sinusoidal_embeddings=False,
                    causal=False, n_langs=args.langs, use_lang_emb=True,
                    max_position_embeddings=max(512, args.seq), embed_init_std=args.dim ** -0.5,
                    layer_norm_eps=1e-12, pad_token_id=PAD_ID, bos_token_id=0, eos_token_id=2, unk_index=3,
                    mask_index=MASK_ID, mask_token_id=MASK_ID)
    return XLMWithLMHeadModel(cfg)


def matmul_rate(args) -> dict:
    """GFLOP/s of a 2048^3 matmul in fp32 and, where bf16 is the bench's precision, in bf16 (best of up to
    12 products, at least 3, about 2 s)."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    n = 2048
    rates = {}
    # bf16 only where it is the precision in use: emulated, a 2048^3 product takes minutes
    dtypes = (("fp32", torch.float32),) + ((("bf16", torch.bfloat16),) if args.precision == "bf16" else ())
    for name, dtype in dtypes:
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        best = 0.0
        deadline = time.perf_counter() + 2.0
        for i in range(12):
            t = time.perf_counter()
            a @ b
            if device.type == "cuda":
                torch.cuda.synchronize()
            dt = time.perf_counter() - t
            best = max(best, 2 * n**3 / dt / 1e9)
            if i >= 2 and time.perf_counter() > deadline:
                break
        rates[name] = best
    return {"model": "matmul", "gflops": rates, "threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def model_flops_per_step(args, worker: str) -> float:
    """3 x forward matmul FLOPs of one training step of the model (see the module docstring)."""
    B, T, D, L, V = args.batch, args.seq, args.dim, args.layers, args.vocab
    F = 4 * D if worker.startswith("hf") else args.ffn
    rows = B * T
    n_pred = max(1, round(0.15 * rows))

    def layer(q_rows: int) -> int:  # K and V at every row; Q, attention, output projection, FFN at q_rows
        return 2 * rows * 2 * D * D + 2 * q_rows * (2 * D * D + 2 * D * F) + 4 * q_rows * T * D

    if worker.startswith("hf"):  # every row through every layer and the output layer
        fwd = L * layer(rows) + 2 * rows * D * V
    else:  # the last block and the output layer at the predicted rows only
        fwd = (L - 1) * layer(rows) + layer(n_pred) + 2 * n_pred * D * V
    return 3.0 * fwd


def run_worker(args) -> dict:
    import torch

    if args.worker == "matmul":
        return matmul_rate(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    precision = "fp32" if args.worker == "hf-fp32" else args.precision
    steps = fp32_steps(args) if args.worker == "hf-fp32" else args.steps
    model = (build_hf(args) if args.worker.startswith("hf") else build_xlmkit(args)).to(device)
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01,
                            fused=True)
    batch = make_batch(args, device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")

    if args.worker.startswith("hf"):
        def loss_fn():
            out = model(input_ids=batch["inputs"], langs=batch["langs"], labels=batch["labels"])
            return out.loss
    else:
        from xlmkit.train.pretrain import PretrainingLoss

        # the trainer's own loss module: encoder, output layer at the predicted positions, summed loss
        loss_model = PretrainingLoss(model)
        if args.worker == "xlmkit-compile":
            loss_model = torch.compile(loss_model)
        n_pred = batch["targets"].numel()

        def loss_fn():
            loss_sum, _ = loss_model(batch["inputs"], batch["langs"], None, None, batch["pred_mask"],
                                     batch["targets"])
            return loss_sum / n_pred

    def step():
        with autocast:
            loss = loss_fn()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    t0 = time.perf_counter()
    warmup = max(args.warmup, 3) if args.worker == "xlmkit-compile" else args.warmup  # compile happens here
    for _ in range(warmup):
        step()
    sync()
    warmup_s = time.perf_counter() - t0
    rss_before_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    cpu0 = time.process_time()
    for _ in range(steps):
        t = time.perf_counter()
        loss = step()
        sync()
        times.append(time.perf_counter() - t)
    cpu_s = time.process_time() - cpu0  # CPU time of all threads: less sensitive to a shared machine
    loss = float(loss.detach())
    tokens = args.batch * args.seq
    times.sort()
    result = dict(
        model=args.worker, precision=precision, params=n_params, loss=loss, warmup_s=warmup_s,
        tokens_per_s=tokens * len(times) / sum(times),
        tokens_per_s_median=tokens / times[len(times) // 2],
        step_s_min=times[0], step_s_median=times[len(times) // 2],
        tokens_per_cpu_s=tokens * len(times) / cpu_s,
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        rss_before_timed_mb=rss_before_kb / 1024,
        threads=torch.get_num_threads(),
    )
    if device.type == "cuda":
        result["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
        result["gpu"] = torch.cuda.get_device_name()
    return result


# ----------------------------------------------------------------------------------------------
# Driver


def describe_device(device: str) -> str:
    return "CUDA" if device == "cuda" else cpu_name()


def fp32_steps(args) -> int:
    return max(2, args.steps // 2)  # the fp32 reference is slow; fewer steps keep the default run short


def run_in_subprocess(args, worker: str, argv: list[str]) -> dict | None:
    t = time.perf_counter()
    env = dict(MALLOC_MMAP_THRESHOLD_=str(2**34), MALLOC_TRIM_THRESHOLD_=str(2**34)) if args.keep_freed_memory else {}
    result = run_worker_process(__file__, argv, worker, env)
    if result is not None:
        print(f"[{worker}] done in {time.perf_counter() - t:.0f}s", file=sys.stderr, flush=True)
    return result


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    restart_with_cpu_isa(args.cpu_isa, __file__, argv)
    if args.worker:
        print(json.dumps(run_worker(args)))
        return 0

    from xlmkit.core.runtime import detect_hardware, resolve_precision

    hw = detect_hardware(args.device)
    precision, why = resolve_precision(args.precision, hw)
    argv = [*argv, "--precision", precision]  # the workers get the resolved precision
    args.precision = precision
    workers = ["xlmkit"]
    if args.compile:
        workers.append("xlmkit-compile")
    workers.append("hf")
    if args.precision == "bf16" and not args.no_hf_fp32:
        workers.append("hf-fp32")
    if args.models:
        workers = [w.strip() for w in args.models.split(",") if w.strip()]
        unknown = set(workers) - {"xlmkit", "xlmkit-compile", "hf", "hf-fp32"}
        if unknown:
            raise SystemExit(f"unknown --models entries: {', '.join(sorted(unknown))}")
    print(f"MLM training, device={args.device} ({describe_device(args.device)}); CPU capability "
          f"{hw.describe()}{' (limited by --cpu-isa ' + args.cpu_isa + ')' if args.cpu_isa else ''}; {why}")
    print(f"D={args.dim} layers={args.layers} heads={args.heads} ffn={args.ffn} V={args.vocab} B={args.batch} "
          f"T={args.seq} steps={args.steps} (+{args.warmup} warmup; hf-fp32: {fp32_steps(args)}), 15% predicted, "
          f"fused AdamW{', malloc keeps freed memory' if args.keep_freed_memory else ''}", flush=True)
    peak = run_in_subprocess(args, "matmul", argv)
    results = {w: run_in_subprocess(args, w, argv) for w in workers}

    mem_key = "cuda_max_allocated_mb" if args.device == "cuda" else "peak_rss_mb"
    if peak:
        print(f"\nmeasured matmul rate (2048^3, {peak['threads']} threads): "
              + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peak["gflops"].items()))
    print(f"\n{'model':<16}{'precision':<10}{'params':>12}{'tokens/s':>10}{'median':>9}{'step s':>8}"
          f"{'tok/cpu-s':>11}{'loss':>8}{'GFLOP/s':>9}{'MFU':>6}{mem_key:>14}")
    for w, r in results.items():
        if r is None:
            print(f"{w:<16}failed")
            continue
        gflops = model_flops_per_step(args, w) * r["tokens_per_s"] / (args.batch * args.seq) / 1e9
        mfu = f"{gflops / peak['gflops'][r['precision']]:.0%}" if peak else "-"
        print(f"{w:<16}{r['precision']:<10}{r['params']:>12,}{r['tokens_per_s']:>10.0f}"
              f"{r['tokens_per_s_median']:>9.0f}{r['step_s_median']:>8.3f}{r['tokens_per_cpu_s']:>11.0f}"
              f"{r['loss']:>8.3f}{gflops:>9.0f}{mfu:>6}{r[mem_key]:>14.0f}")
    first = next((r for r in results.values() if r), None)
    if first:
        print(f"torch threads: {first['threads']}" + (f", GPU: {first['gpu']}" if "gpu" in first else ""))
    hf = results.get("hf")
    for w in ("xlmkit", "xlmkit-compile"):
        r = results.get(w)
        if r and hf:
            print(f"speedup {w}/hf ({args.precision} vs {args.precision}): {r['tokens_per_s'] / hf['tokens_per_s']:.2f}x "
                  f"(median {r['tokens_per_s_median'] / hf['tokens_per_s_median']:.2f}x, "
                  f"per CPU-second {r['tokens_per_cpu_s'] / hf['tokens_per_cpu_s']:.2f}x)")
    if results.get("xlmkit") and results.get("hf-fp32"):
        print(f"speedup xlmkit/hf-fp32: {results['xlmkit']['tokens_per_s'] / results['hf-fp32']['tokens_per_s']:.2f}x")
    print("(tokens/s = B*T*steps / time; FLOP/s and MFU: see the docstring; peak memory per model, each in its own "
          "process; the machine may be shared, so numbers are noisy)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
