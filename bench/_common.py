"""What the benchmark scripts share: running as on a CPU with fewer instruction sets, and the CPU's name."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

# Limits every kernel library of torch to AVX2 (no AVX-512, no native bf16), to measure as on an
# AVX2-only CPU: ATen's own kernels, oneDNN (bf16 matmuls, convolutions) and MKL (fp32 GEMM).
CPU_ISA_ENV = {"avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2",
                        "MKL_ENABLE_INSTRUCTIONS": "AVX2"}}
CPU_ISA_HELP = ("limit every kernel library to this instruction set (ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA, "
                "MKL_ENABLE_INSTRUCTIONS) to measure as on a CPU that has no more: avx2 = no AVX-512, no native bf16")


def restart_with_cpu_isa(cpu_isa: str | None, script: str, argv: list[str]) -> None:
    """Run `script` again with the --cpu-isa limits in its environment, unless they are already set:
    they only take effect before torch loads its kernels."""
    if cpu_isa and any(os.environ.get(k) != v for k, v in CPU_ISA_ENV[cpu_isa].items()):
        env = {**os.environ, **CPU_ISA_ENV[cpu_isa]}
        os.execve(sys.executable, [sys.executable, str(Path(script).resolve()), *argv], env)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cpus"
    except OSError:
        pass
    return f"{os.cpu_count()} cpus"


def run_worker_process(script: str, argv: list[str], worker: str, extra_env: dict | None = None) -> dict | None:
    """`script *argv --worker WORKER` in a process of its own (its memory and threads are its own);
    its last stdout line is its JSON result. None, with the tail of its stderr, when it fails."""
    cmd = [sys.executable, str(Path(script).resolve()), *argv, "--worker", worker]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", **(extra_env or {})}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        print(f"[{worker}] failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])
