"""Decoding time per token step against the memory-bandwidth bound of this machine.

    python bench/bandwidth.py --model=out/sft/last [--bf16] [--rounds=3]

A decoding step reads every weight once, so its bound is weight bytes / read bandwidth. Two
bandwidths are measured over a buffer as large as the weights: a plain sum (the fastest read
torch does here) and a matrix-vector product (the read pattern of decoding one row). Decoding is
timed at the benchmark's shape (2 prompts x G = 4 rows, EOS suppressed) for our sampler
(`mer.engine.sample`) and HF `generate`, alternating; a step's time is (time for 40 tokens - time for
8 tokens) / 32, which leaves the prompt's forward out. --bf16 decodes under bf16 autocast (as
training does with --precision=bf16) and also reports the bound of bf16 weights.
"""
import os
import statistics
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the training scripts, before torch loads
import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import mer.data, mer.engine, mer.inputs, mer.models  # noqa: E402

args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if "=" in a)
BF16, ROUNDS = "--bf16" in sys.argv, int(args.get("rounds", 3))
model, tok = mer.models.load_model(args.get("model", "smollm2"))
model.eval()
n_params = sum(p.numel() for p in model.parameters())


def median_time(f, n=7):
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[2:])


bounds = {}
for dtype in (torch.float32, torch.bfloat16) if BF16 else (torch.float32,):
    n_bytes = n_params * torch.finfo(dtype).bits // 8
    weights = torch.randn(n_bytes * 8 // torch.finfo(dtype).bits // 4096, 4096, dtype=dtype)
    x = torch.randn(4096, dtype=dtype)
    for name, f in (("sum", lambda: weights.sum()), ("matrix-vector", lambda: weights @ x)):
        t = median_time(f)
        bounds[(str(dtype)[6:], name)] = 1000 * t
        print(f"{str(dtype)[6:]} weights {n_bytes / 1e6:.0f} MB, {name} read {n_bytes / t / 1e9:.1f} GB/s: "
              f"bound {1000 * t:.1f} ms per token step")

samples = mer.data.load_split("train")[:2]
ids, mask = mer.inputs.left_pad(mer.inputs.encode_prompts(samples, tok, "slow")[0], tok.eos_token_id)
eos = tok.eos_token_id


def ours(tokens):
    mer.engine.sample(model, ids, mask, {}, 4, tokens, tokens, 1.0, 1.0, eos)


def hf(tokens):
    model.generate(input_ids=ids.repeat_interleave(4, 0), attention_mask=mask.repeat_interleave(4, 0),
                   do_sample=True, temperature=1.0, top_p=1.0, max_new_tokens=tokens, min_new_tokens=tokens,
                   pad_token_id=eos, eos_token_id=eos)


steps = {"mer.engine.sample": [], "HF generate": []}
with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=BF16):
    ours(4), hf(4)  # warm-up
    for _ in range(ROUNDS):
        for name, f in (("mer.engine.sample", ours), ("HF generate", hf)):
            t0 = time.perf_counter()
            f(8)
            t1 = time.perf_counter()
            f(40)
            steps[name].append(1000 * ((time.perf_counter() - t1) - (t1 - t0)) / 32)
print(f"decoding, 8 rows, {'bf16 autocast' if BF16 else 'fp32'}, threads {torch.get_num_threads()}, "
      f"{ROUNDS} rounds (ms per token step, min / median / max):")
for name, ms in steps.items():
    med = statistics.median(ms)
    ratios = ", ".join(f"{med / b:.1f}x the {d} {k} bound" for (d, k), b in bounds.items())
    print(f"  {name}: {min(ms):.1f} / {med:.1f} / {max(ms):.1f}: {ratios}")
