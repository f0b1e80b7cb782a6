"""Decoding from an EncoderDecoder: greedy, beam search, sampling.

    out = generate(model, src_ids, src_langs, tgt_lang_id, GenerationConfig(beam_size=5), bos_id=2, eos_id=2)
    out[i]   # the target ids of source i, without the leading bos and the final eos

Every target starts with `bos_id` (XLM starts with </s>, its sentence boundary) and ends at `eos_id`.
The maximum target length is max_len_a * (source length) + max_len_b (XLM: 1.3 x + 5), within the
model's positions; a hypothesis still open there is closed with eos.

Beam search (batched: B sources x K beams in one decoder call per step, with the KV cache) keeps, per
source, the K best open hypotheses and the K best finished ones, scored by
sum(log p) / length ** length_penalty (Wu et al. 2016's normalisation in its simple form, as XLM's and
transformers' BeamHypotheses; length counts the generated tokens with eos). A source is done when
K hypotheses are finished: with early_stopping at once; without it, once the best open hypothesis,
scored as if it ended at the next step, no longer beats the worst finished one (transformers'
heuristic; exact for length_penalty 0, where a longer hypothesis can only score lower). Sampling draws from softmax(logits / temperature) restricted to the
top_k tokens and to the smallest set whose probability reaches top_p (Holtzman et al. 2020), with an
explicit torch.Generator.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from xlmkit.model.decoder import EncoderDecoder, reorder_cache


@dataclass(frozen=True)
class GenerationConfig:
    beam_size: int = 1  # 1 = greedy (or sampling with sample=True)
    length_penalty: float = 1.0  # score = sum(log p) / length ** length_penalty
    early_stopping: bool = True
    max_len_a: float = 1.3  # max target length = a * source length + b (XLM)
    max_len_b: int = 5
    min_len: int = 0  # eos is not allowed before this many target tokens
    sample: bool = False
    temperature: float = 1.0
    top_k: int = 0  # 0 = no limit
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if self.beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {self.beam_size}")
        if self.sample and self.beam_size > 1:
            raise ValueError("sampling draws one hypothesis per source: use beam_size 1 with sample")
        if not self.temperature > 0 or not 0 < self.top_p <= 1 or self.top_k < 0:
            raise ValueError("temperature must be > 0, top_p in (0, 1] and top_k >= 0")


def max_lengths(src_mask: Tensor, cfg: GenerationConfig, max_positions: int) -> Tensor:
    """(B,) the number of target tokens after bos that each source may get (eos included)."""
    n = src_mask.sum(1).float() * cfg.max_len_a + cfg.max_len_b
    return n.long().clamp(min=1, max=max_positions - 1)


def filter_logits(logits: Tensor, top_k: int, top_p: float) -> Tensor:
    """logits (N, V) with everything outside the top_k and outside the top_p nucleus set to -inf."""
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]  # (N, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # drop a token when the tokens before it already reach top_p (the first one always stays)
        drop = probs.cumsum(-1) - probs >= top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


@torch.inference_mode()
def generate(model: EncoderDecoder, src_ids: Tensor, src_langs: Tensor | None, tgt_lang: int | None,
             cfg: GenerationConfig, bos_id: int, eos_id: int, src_mask: Tensor | None = None,
             generator: torch.Generator | None = None) -> list[list[int]]:
    """Target ids for each source row of src_ids (B, S) (bos and eos left out). Runs the model in eval
    mode (no dropout) and leaves it in the mode it was in."""
    was_training = model.training
    model.eval()
    try:
        memory, memory_mask = model.encode(src_ids, src_langs, src_mask)
        limits = max_lengths(memory_mask, cfg, model.cfg.max_positions)
        if cfg.beam_size == 1:
            return _greedy_or_sample(model, memory, memory_mask, tgt_lang, limits, cfg, bos_id, eos_id, generator)
        return _beam_search(model, memory, memory_mask, tgt_lang, limits, cfg, bos_id, eos_id)
    finally:
        model.train(was_training)


def _lang_column(n: int, tgt_lang: int | None, device) -> Tensor | None:
    return None if tgt_lang is None else torch.full((n, 1), tgt_lang, dtype=torch.long, device=device)


def _step_weight(model, device) -> Tensor:
    """The token matrix in the dtype the decoding steps compute in, cast once for all of them."""
    w = model.token_weight
    if torch.is_autocast_enabled(device.type):
        w = w.to(torch.get_autocast_dtype(device.type))
    return w


def _greedy_or_sample(model, memory, memory_mask, tgt_lang, limits, cfg, bos_id, eos_id, generator):
    B = memory.shape[0]
    weight = _step_weight(model, memory.device)
    device = memory.device
    cache = model.new_cache()
    langs = _lang_column(B, tgt_lang, device)
    last = torch.full((B, 1), bos_id, dtype=torch.long, device=device)
    out: list[list[int]] = [[] for _ in range(B)]
    open_rows = torch.ones(B, dtype=torch.bool, device=device)
    for t in range(int(limits.max())):
        logits = model.decode_step(last, langs, t, memory, memory_mask, cache, weight).float()  # (B, V)
        if t < cfg.min_len:
            logits[:, eos_id] = float("-inf")
        if cfg.sample:
            probs = filter_logits(logits / cfg.temperature, cfg.top_k, cfg.top_p).softmax(-1)
            tok = torch.multinomial(probs, 1, generator=generator)[:, 0]  # (B,)
        else:
            tok = logits.argmax(-1)  # (B,)
        tok = torch.where(t + 1 >= limits, torch.full_like(tok, eos_id), tok)  # the last allowed position
        for b in open_rows.nonzero()[:, 0].tolist():
            if tok[b].item() != eos_id:
                out[b].append(int(tok[b]))
        open_rows &= tok != eos_id
        if not bool(open_rows.any()):
            break
        last = tok[:, None]
    return out


class _Finished:
    """The best `k` finished hypotheses of one source: (score, ids)."""

    def __init__(self, k: int, length_penalty: float) -> None:
        self.k, self.length_penalty = k, length_penalty
        self.items: list[tuple[float, list[int]]] = []

    def score(self, sum_logprobs: float, length: int) -> float:
        return sum_logprobs / length ** self.length_penalty

    def add(self, ids: list[int], sum_logprobs: float) -> None:
        self.items.append((self.score(sum_logprobs, len(ids) + 1), ids))  # + eos
        self.items.sort(key=lambda item: -item[0])
        del self.items[self.k:]

    def done(self, best_open_logprobs: float, length: int, early_stopping: bool) -> bool:
        """No open hypothesis can enter the list any more (log-probabilities only fall as it grows;
        with a length penalty > 0 the best it can do is stop now)."""
        if len(self.items) < self.k:
            return False
        if early_stopping:
            return True
        return self.items[-1][0] >= self.score(best_open_logprobs, length)


def _beam_search(model, memory, memory_mask, tgt_lang, limits, cfg, bos_id, eos_id):
    B, K = memory.shape[0], cfg.beam_size
    weight = _step_weight(model, memory.device)
    device = memory.device
    memory = memory.repeat_interleave(K, dim=0)  # (B*K, S, D)
    memory_mask = memory_mask.repeat_interleave(K, dim=0)  # (B*K, S)
    row_limits = limits.repeat_interleave(K)  # (B*K,)
    langs = _lang_column(B * K, tgt_lang, device)
    cache = model.new_cache()
    beams: list[list[int]] = [[] for _ in range(B * K)]  # the tokens of each open hypothesis
    scores = torch.zeros(B, K, device=device)
    scores[:, 1:] = float("-inf")  # at the first step every beam is the same: expand one only
    finished = [_Finished(K, cfg.length_penalty) for _ in range(B)]
    done = [False] * B
    last = torch.full((B * K, 1), bos_id, dtype=torch.long, device=device)
    for t in range(int(limits.max())):
        logits = model.decode_step(last, langs, t, memory, memory_mask, cache, weight).float()  # (B*K, V)
        logp = F.log_softmax(logits, dim=-1)
        if t < cfg.min_len:
            logp[:, eos_id] = float("-inf")
        at_limit = t + 1 >= row_limits  # (B*K,) only eos is left
        if bool(at_limit.any()):  # eos with its own probability, so a cut hypothesis gains nothing
            forced = torch.full_like(logp, float("-inf"))
            forced[:, eos_id] = logp[:, eos_id]
            logp = torch.where(at_limit[:, None], forced, logp)
        V = logp.shape[-1]
        candidates = (scores.view(-1, 1) + logp).view(B, K * V)  # (B, K*V)
        top_scores, top_index = candidates.topk(2 * K, dim=1)  # (B, 2K): K of them may end here
        top_scores, top_index = top_scores.tolist(), top_index.tolist()
        next_rows, next_tokens, next_scores = [], [], []
        for b in range(B):
            if done[b]:  # keep the rows in place with any token; nothing is read from them
                next_rows += [b * K] * K
                next_tokens += [eos_id] * K
                next_scores += [float("-inf")] * K
                continue
            kept = 0
            for score, index in zip(top_scores[b], top_index[b]):
                if score == float("-inf"):
                    break
                beam, token = divmod(index, V)
                row = b * K + beam
                if token == eos_id:
                    finished[b].add(list(beams[row]), score)
                    continue
                next_rows.append(row)
                next_tokens.append(token)
                next_scores.append(score)
                kept += 1
                if kept == K:
                    break
            while kept < K:  # fewer than K open continuations (tiny vocabularies): pad with dead beams
                next_rows.append(b * K)
                next_tokens.append(eos_id)
                next_scores.append(float("-inf"))
                kept += 1
            best_open = max(next_scores[-K:])
            done[b] = best_open == float("-inf") or finished[b].done(best_open, t + 2, cfg.early_stopping)
        if all(done):
            break
        beams = [beams[r] + [tok] for r, tok in zip(next_rows, next_tokens)]
        index = torch.tensor(next_rows, device=device)
        cache = reorder_cache(cache, index)
        scores = torch.tensor(next_scores, device=device).view(B, K)
        last = torch.tensor(next_tokens, device=device)[:, None]
    # sources that ran out of steps with open hypotheses: close the best of them
    for b in range(B):
        if not finished[b].items:
            best = int(torch.argmax(scores[b]))
            finished[b].add(beams[b * K + best], float(scores[b, best]))
    return [finished[b].items[0][1] for b in range(B)]


def sentence_logprob(model: EncoderDecoder, src_ids: Tensor, src_langs: Tensor | None, tgt_ids: Tensor,
                     tgt_langs: Tensor | None) -> Tensor:
    """sum of log p(tgt[t+1] | tgt[:t+1], src) per row (B,), tgt_ids (B, T) starting with bos and
    ending with eos, no padding: what beam search maximises (before the length penalty)."""
    logits = model(src_ids, src_langs, tgt_ids, tgt_langs).float()  # (B, T, V)
    logp = F.log_softmax(logits[:, :-1], dim=-1)
    return logp.gather(-1, tgt_ids[:, 1:, None])[..., 0].sum(-1)



# ----------------------------------------------------------------------------------------------
# Text generation from a causal LM (an encoder trained with CLM steps)


@torch.inference_mode()
def continue_text(encoder, prompt: Sequence[int], lang_id: int | None, cfg: GenerationConfig, max_new_tokens: int,
                  eos_id: int, generator: torch.Generator | None = None) -> list[int]:
    """The tokens after `prompt` (framed ids) from an XLM encoder run causally (XLM's CLM), greedy or
    sampled (cfg.sample: temperature, top_k, top_p), until eos, max_new_tokens or the positions run out
    (eos left out). Each step recomputes the whole prefix: the encoder keeps no cache, and a prompt
    plus a continuation of a few dozen tokens costs little next to a full forward per token."""
    if cfg.beam_size != 1:
        raise ValueError("continue_text: beam search is for translation; use beam_size 1 (greedy) or sampling")
    was_training = encoder.training
    encoder.eval()
    try:
        device = encoder.token_embeddings.weight.device
        ids = torch.tensor([list(prompt)], dtype=torch.long, device=device)  # (1, T)
        out: list[int] = []
        for _ in range(max_new_tokens):
            if ids.shape[1] >= encoder.cfg.max_positions:
                break
            langs = None if lang_id is None else torch.full_like(ids, lang_id)
            h = encoder(ids, langs=langs, causal=True)  # (1, T, D)
            logits = encoder.clm_logits(h[:, -1]).float()  # (1, V)
            if len(out) < cfg.min_len:
                logits[:, eos_id] = float("-inf")
            if cfg.sample:
                logits = filter_logits(logits / cfg.temperature, cfg.top_k, cfg.top_p)
                token = int(torch.multinomial(logits.softmax(-1), 1, generator=generator))
            else:
                token = int(logits.argmax(-1))
            if token == eos_id:
                break
            out.append(token)
            ids = torch.cat([ids, ids.new_tensor([[token]])], dim=1)
        return out
    finally:
        encoder.train(was_training)
