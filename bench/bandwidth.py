"""Memory-read bandwidth of this machine and the decoding bound it implies for a model.

    python bench/bandwidth.py --model=out/sft/last

A matrix-vector product over a matrix as large as the model's weights reads every weight once,
as one decoding step does; the bound is weight bytes / that bandwidth (ms per token step).
"""
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import mer  # noqa: E402

args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if "=" in a)
model, _ = mer.load_model(args.get("model", "smollm2"))
for dtype in (torch.float32, torch.bfloat16):
    n_bytes = sum(p.numel() for p in model.parameters()) * torch.finfo(dtype).bits // 8
    cols = 4096
    weights = torch.randn(n_bytes // (cols * torch.finfo(dtype).bits // 8), cols, dtype=dtype)
    x = torch.randn(cols, dtype=dtype)
    times = []
    for _ in range(7):
        t0 = time.perf_counter()
        weights @ x
        times.append(time.perf_counter() - t0)
    t = statistics.median(times[2:])
    print(f"{str(dtype)[6:]}: weights {n_bytes / 1e6:.0f} MB, matrix-vector read {n_bytes / t / 1e9:.1f} GB/s, "
          f"bound {1000 * t:.1f} ms per token step (threads {torch.get_num_threads()})")
