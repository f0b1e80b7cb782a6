"""Fine-tuning and embedding throughput on real sentences: xlmkit against Hugging Face transformers.

    python bench/downstream_throughput.py                  # D=256, 4 layers, V=32000, 2048 sentences
    python bench/downstream_throughput.py --cpu-isa avx2   # as on an AVX2-only CPU (see train_throughput.py)

Sentences as they come: the lines of ../shared/data/tatoeba (short conversational sentences in ~100
languages) and of ../shared/data/mono (news, long), shuffled together, so lengths range from 3 to
the 128-token limit (without the data: xlmkit.data.synthetic sentences of random lengths). Both models get
the same token ids (one tokenizer, trained here on the text) and the same random weights' shape:
an XLM-R-style encoder (no language embeddings, post-LN, exact GELU, dropout 0.1), D=256, 4 layers,
4 heads, FFN 1024, V=32000.

- Fine-tuning (sequence classification, 2 labels, batch 32, AdamW): xlmkit's own batches
  (`xlmkit.tasks.finetune.training_batches`: length-grouped, so a batch holds sentences of similar length)
  through `TaskModel`, against `XLMRobertaForSequenceClassification` driven as the Trainer drives it:
  a shuffled epoch, each batch padded to its longest sentence (DataCollatorWithPadding), `labels=`.
- Embedding (mean-pooled last layer, batch 64, no gradients): `xlmkit.tasks.retrieval.embed_ids` against
  `XLMRobertaModel` under `torch.inference_mode`, batches in input order padded to their longest.

Precision: --precision auto (default) resolves as xlmkit does (xlmkit.core.runtime); both run in it. Each
measurement runs in its own subprocess. The machine may be shared: compare runs made back to back.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _common import CPU_ISA_HELP, cpu_name, restart_with_cpu_isa, run_worker_process  # noqa: E402
SHARED = ROOT.parent / "shared" / "data"
PAD_ID, N_LABELS = 1, 2


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--max-len", type=int, default=128)
    p.add_argument("--sentences", type=int, default=2048, help="sentences embedded; fine-tuning uses them too")
    p.add_argument("--train-batch", type=int, default=32)
    p.add_argument("--embed-batch", type=int, default=64)
    p.add_argument("--train-steps", type=int, default=24, help="timed fine-tuning steps (after 2 warm-up steps)")
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    p.add_argument("--cpu-isa", default=None, choices=["avx2"], help=CPU_ISA_HELP)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", default=None, help=argparse.SUPPRESS)  # the encoded sentences (JSON)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # {xlmkit,hf}-{finetune,embed}
    return p.parse_args(argv)


# ----------------------------------------------------------------------------------------------
# The sentences, encoded once (in the driver)


def read_sentences(n: int, seed: int) -> tuple[list[str], str]:
    lines: list[str] = []
    sources = sorted((SHARED / "tatoeba").glob("tatoeba.*-eng.*")) + sorted((SHARED / "mono").glob("*.txt"))
    for path in sources:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines += [s for s in (line.strip() for _, line in zip(range(400), f)) if s]
    where = "../shared/data tatoeba + mono"
    if not lines:
        import numpy as np

        from xlmkit.data.synthetic import sentence

        rng = np.random.default_rng(seed)
        lines = [" ".join(sentence(rng)["en"] for _ in range(rng.integers(1, 12))) for _ in range(n)]
        where = "xlmkit.data.synthetic"
    random.Random(seed).shuffle(lines)
    return lines[:n], where


def encode(lines: list[str], vocab: int, max_len: int) -> list[list[int]]:
    """Unigram tokenizer trained on the lines (ids shifted past 5 specials), `<s> ... </s>` framing."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    size = min(vocab - 5, 8000)
    tok.train_from_iterator(lines, trainers.UnigramTrainer(vocab_size=size, show_progress=False))
    seqs = []
    for enc in tok.encode_batch(lines):
        ids = [i + 5 for i in enc.ids][: max_len - 2]
        seqs.append([0, *ids, 2])
    return seqs


# ----------------------------------------------------------------------------------------------
# The workers


def build_xlmkit(args):
    from xlmkit.core.config import ModelConfig
    from xlmkit.model.encoder import XLMModel

    cfg = ModelConfig(dim=args.dim, n_layers=args.layers, n_heads=args.heads, ffn_dim=4 * args.dim,
                      dropout=0.1, attention_dropout=0.1, max_positions=514, use_lang_emb=False,
                      head_transform=True, layer_norm_eps=1e-5, vocab_size=args.vocab, n_langs=1,
                      pad_id=PAD_ID)
    return XLMModel(cfg)


def hf_config(args):
    from transformers import XLMRobertaConfig

    return XLMRobertaConfig(vocab_size=args.vocab, hidden_size=args.dim, num_hidden_layers=args.layers,
                            num_attention_heads=args.heads, intermediate_size=4 * args.dim,
                            max_position_embeddings=514, pad_token_id=PAD_ID, bos_token_id=0, eos_token_id=2,
                            num_labels=N_LABELS, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)


def padded(seqs: list[list[int]]):
    """(ids, mask) padded to the longest sequence: what DataCollatorWithPadding / tokenizer(padding=True) give."""
    import torch

    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), PAD_ID, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return ids, mask


def run_worker(args, seqs: list[list[int]]) -> dict:
    import numpy as np
    import torch

    from xlmkit.core.runtime import autocast

    torch.manual_seed(args.seed)
    device = torch.device("cpu")
    labels = [i % N_LABELS for i in range(len(seqs))]
    name, what = args.worker.split("-")
    tokens = 0
    t0 = time.perf_counter()
    if what == "embed":
        if name == "xlmkit":
            from xlmkit.tasks.retrieval import embed_ids

            model = build_xlmkit(args)
            t0 = time.perf_counter()
            out = embed_ids(model, seqs, PAD_ID, None, -1, args.embed_batch, device, args.precision)
        else:
            from transformers import XLMRobertaModel

            model = XLMRobertaModel(hf_config(args), add_pooling_layer=False).eval()
            t0 = time.perf_counter()
            chunks = []
            with torch.inference_mode(), autocast(device, args.precision):
                for start in range(0, len(seqs), args.embed_batch):
                    ids, mask = padded(seqs[start:start + args.embed_batch])
                    h = model(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, T, D)
                    m = mask[:, :, None].to(h.dtype)
                    chunks.append(((h * m).sum(1) / m.sum(1)).float())
            out = torch.cat(chunks).numpy()
        seconds = time.perf_counter() - t0
        assert out.shape == (len(seqs), args.dim)
        return {"worker": args.worker, "sentences_per_s": len(seqs) / seconds, "seconds": seconds,
                "tokens": sum(map(len, seqs))}

    # fine-tuning
    rng = np.random.default_rng(args.seed)
    if name == "xlmkit":
        from xlmkit.core.config import FinetuneConfig
        from xlmkit.tasks.finetune import Encoded, TaskModel, build_optimizer, collate, training_batches

        model = TaskModel(build_xlmkit(args), N_LABELS, "classification").train()
        ft = FinetuneConfig(lr=2e-5, head_lr=1e-3, precision=args.precision, batch_size=args.train_batch)
        opt = build_optimizer(model, ft, device)
        items = [Encoded(ids=np.asarray(s), langs=None, positions=np.arange(len(s)), target=y)
                 for s, y in zip(seqs, labels)]

        def batches():
            while True:
                for idx in training_batches([len(s) for s in seqs], args.train_batch, rng):
                    yield collate([items[i] for i in idx], PAD_ID)

        def step(batch) -> int:
            target = batch.pop("target")
            with autocast(device, args.precision):
                logits = model(**batch)
            loss = torch.nn.functional.cross_entropy(logits.float(), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            return int(batch["attention_mask"].sum())
    else:
        from transformers import XLMRobertaForSequenceClassification

        model = XLMRobertaForSequenceClassification(hf_config(args)).train()
        opt = torch.optim.AdamW(model.parameters(), lr=2e-5, weight_decay=0.01, fused=True)

        def batches():
            while True:
                order = rng.permutation(len(seqs))  # the Trainer's RandomSampler
                for start in range(0, len(order) - args.train_batch + 1, args.train_batch):
                    idx = order[start:start + args.train_batch]
                    ids, mask = padded([seqs[i] for i in idx])
                    yield {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([labels[i] for i in idx])}

        def step(batch) -> int:
            with autocast(device, args.precision):
                loss = model(**batch).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            return int(batch["attention_mask"].sum())

    it = batches()
    for _ in range(2):
        step(next(it))
    t0 = time.perf_counter()
    for _ in range(args.train_steps):
        tokens += step(next(it))
    seconds = time.perf_counter() - t0
    return {"worker": args.worker, "sentences_per_s": args.train_steps * args.train_batch / seconds,
            "seconds": seconds, "tokens": tokens}


# ----------------------------------------------------------------------------------------------
# Driver


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    restart_with_cpu_isa(args.cpu_isa, __file__, argv)
    if args.worker:
        seqs = json.loads(Path(args.work).read_text())
        print(json.dumps(run_worker(args, seqs)))
        return 0

    import tempfile

    from xlmkit.core.runtime import detect_hardware, resolve_precision

    hw = detect_hardware("cpu")
    precision, why = resolve_precision(args.precision, hw)
    lines, where = read_sentences(args.sentences, args.seed)
    seqs = encode(lines, args.vocab, args.max_len)
    lengths = sorted(map(len, seqs))
    print(f"fine-tuning and embedding on {cpu_name()}; CPU capability {hw.describe()}"
          f"{' (limited by --cpu-isa ' + args.cpu_isa + ')' if args.cpu_isa else ''}; {why}")
    print(f"{len(seqs)} sentences from {where}: tokens min {lengths[0]}, median {lengths[len(lengths) // 2]}, "
          f"max {lengths[-1]}; D={args.dim} layers={args.layers} V={args.vocab}; fine-tune batch "
          f"{args.train_batch} x {args.train_steps} steps, embed batch {args.embed_batch}", flush=True)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "seqs.json"
        work.write_text(json.dumps(seqs))
        for worker in ("xlmkit-finetune", "hf-finetune", "xlmkit-embed", "hf-embed"):
            result = run_worker_process(__file__, [*argv, "--precision", precision, "--work", str(work)], worker)
            if result is None:
                continue
            results[worker] = result
            print(f"[{worker}] {results[worker]['sentences_per_s']:.1f} sentences/s", file=sys.stderr, flush=True)

    print(f"\n{'task':<12}{'xlmkit sent/s':>15}{'HF sent/s':>12}{'ratio':>8}   ({precision} vs {precision})")
    for what in ("finetune", "embed"):
        x, h = results.get(f"xlmkit-{what}"), results.get(f"hf-{what}")
        if x and h:
            print(f"{what:<12}{x['sentences_per_s']:>15.1f}{h['sentences_per_s']:>12.1f}"
                  f"{x['sentences_per_s'] / h['sentences_per_s']:>7.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
