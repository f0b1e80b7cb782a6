"""torchrun entry point for tests/train/test_distributed.py: `python -m xlmkit ARGS...` in which one rank fails
on purpose, so the product code needs no test hook.

    python -m torch.distributed.run --nproc-per-node 2 tests/dist_worker.py crash:1:3 pretrain --data ...

The first argument is MODE:RANK:STEP: on rank RANK, when the sampler is asked for the batches of step
STEP + 1 (after STEP optimizer steps), "crash" raises an exception (the process dies) and "hang" stops
responding (sleeps). Every other rank runs the real command.
"""

from __future__ import annotations

import os
import sys
import time


def install_failure(spec: str) -> None:
    mode, rank, step = spec.split(":")
    if mode not in ("crash", "hang"):
        raise SystemExit(f"dist_worker: unknown failure mode {mode!r}")
    if int(os.environ.get("RANK", "0")) != int(rank):
        return
    from xlmkit.train.batches import PretrainSampler

    real_next_batches = PretrainSampler.next_batches

    def next_batches(self):
        if self.step == int(step):
            if mode == "crash":
                raise RuntimeError(f"simulated crash of rank {rank} at step {step}")
            time.sleep(3600)
        return real_next_batches(self)

    PretrainSampler.next_batches = next_batches


if __name__ == "__main__":
    install_failure(sys.argv[1])
    from xlmkit.cli.main import main

    raise SystemExit(main(sys.argv[2:]))
