"""Decoding, before and after, side by side in one run: evaluation with the harness's previous decoder
(HF `generate` with stop_strings=["</answer>"], every row kept until the batch's longest ends)
against `mer.generation.generate` (our KV-cache sampler, finished rows leave the batch), and GRPO
sampling at natural lengths with the previous sampler (rows kept) against `mer.engine.sample`.
Outputs are compared (how many differ is printed); the pairs alternate (A B, then B A) and
medians are quoted.

    python bench/decode.py --model=out/sft/last [--samples=48] [--rounds=2] [--bf16] [--threads=0] [--batch=16]

Evaluation: the first --samples of each bundled test split (test_fine, test_basic,
test_sentiment), fast and slow, --batch rows at a time, greedy, with the limits of evaluate.py
(192 / 48 new tokens). GRPO: --steps batches of 2 training prompts x G = 4, temperature 1.0, 128 new tokens,
the same seed for both. The last line is one JSON object with every figure.
"""
import json
import os
import statistics
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the training scripts, before torch loads
import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import rewards  # noqa: E402
from mer import data, engine, generation, inputs, models, prompts  # noqa: E402

args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if "=" in a)
BF16, ROUNDS, N = "--bf16" in sys.argv, int(args.get("rounds", 2)), int(args.get("samples", 48))
STEPS, THREADS, BATCH = int(args.get("steps", 4)), int(args.get("threads", 0)), int(args.get("batch", 16))
if THREADS:
    torch.set_num_threads(THREADS)
device = "cuda" if torch.cuda.is_available() else "cpu"
model, tok = models.load_model(args.get("model", "out/sft/last"))
model.to(device).eval()
eos = tok.eos_token_id
autocast = lambda: torch.autocast(device, dtype=torch.bfloat16, enabled=BF16)  # noqa: E731
LIMIT = {"slow": 192, "fast": 48}


def sync():
    if device == "cuda":
        torch.cuda.synchronize()


def hf_harness(samples, mode):
    """The evaluation harness before: HF generate with stop_strings, batches sorted by prompt length."""
    order = sorted(range(len(samples)), key=lambda i: len(prompts.prompt_text(samples[i], tok, mode)))
    out = [None] * len(samples)
    for b in range(0, len(order), BATCH):
        idx = order[b:b + BATCH]
        ids, mask = inputs.left_pad(inputs.encode_prompts([samples[i] for i in idx], tok, mode)[0], eos, device)
        with torch.no_grad(), autocast():
            seqs = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=LIMIT[mode],
                                  pad_token_id=eos, eos_token_id=eos, stop_strings=["</answer>"], tokenizer=tok)
        completion = seqs[:, ids.shape[1]:]
        n = rewards.completion_mask(completion, eos).sum(1)
        for row, i in enumerate(idx):
            out[i] = completion[row, :int(n[row])].tolist()
    return out


def our_harness(samples, mode):
    return [c for _, c, _ in generation.generate(model, tok, samples, mode, LIMIT[mode], BATCH, autocast)]


def kept_rows_sample(ids, mask, n, max_new, temperature):
    """GRPO's sampler before: finished rows go on decoding EOS until the last row ends."""
    cache, position = engine.prompt_cache(model, ids, mask, {}, n)
    mask = mask.repeat_interleave(n, 0)
    token = ids[:, -1].repeat_interleave(n)
    done = torch.zeros_like(token, dtype=torch.bool)
    out = []
    for t in range(max_new):
        logits = model(input_ids=token[:, None], attention_mask=mask, position_ids=(position + t)[:, None],
                       cache=cache, use_cache=True).logits[:, -1].float()
        token = engine.next_token(logits, temperature).masked_fill(done, eos)
        out.append(token)
        done |= token == eos
        if done.all():
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
    return torch.stack(out, 1)


def timed(f, *a):
    sync()
    t0 = time.perf_counter()
    out = f(*a)
    sync()
    return time.perf_counter() - t0, out


splits = {s: data.load_split(s)[:N] for s in ("test_fine", "test_basic", "test_sentiment")}
train = data.select(data.load_split("train"), 1000, 0)
batches = [train[2 * i:2 * i + 2] for i in range(STEPS)]
times = {"eval_before": [], "eval_after": [], "grpo_before": [], "grpo_after": []}
tokens = {"eval": 0, "grpo": 0}
with torch.no_grad(), autocast():
    our_harness(splits["test_fine"][:4], "fast")  # warm-up
    for r in range(ROUNDS):
        differ = {"eval": 0, "grpo": 0}  # outputs of before and after that differ (the last round's are printed)
        pairs = [("before", hf_harness), ("after", our_harness)]
        total = {"before": 0.0, "after": 0.0}
        outs = {}
        for split, samples in splits.items():
            for mode in ("fast", "slow"):
                for name, f in pairs if (r + len(outs)) % 2 == 0 else pairs[::-1]:
                    t, outs[(split, mode, name)] = timed(f, samples, mode)
                    total[name] += t
                before, after = outs[(split, mode, "before")], outs[(split, mode, "after")]
                differ["eval"] += sum(a != b for a, b in zip(before, after))
                tokens["eval"] = sum(len(c) for k, v in outs.items() if k[2] == "after" for c in v)
        times["eval_before"].append(total["before"])
        times["eval_after"].append(total["after"])
        total = {"before": 0.0, "after": 0.0}
        for i, batch in enumerate(batches):
            ids, mask = inputs.left_pad(inputs.encode_prompts(batch, tok, "slow")[0], eos, device)
            res = {}
            for name in (("before", "after") if (r + i) % 2 == 0 else ("after", "before")):
                torch.manual_seed(1000 + i)
                f = (lambda: kept_rows_sample(ids, mask, 4, 128, 1.0)) if name == "before" else \
                    (lambda: engine.sample(model, ids, mask, {}, 4, 128, temperature=1.0, eos=eos))
                t, res[name] = timed(f)
                total[name] += t
            n = max(res["before"].shape[1], res["after"].shape[1])  # rows that differ (EOS after the end)
            pad = lambda x: torch.nn.functional.pad(x, (0, n - x.shape[1]), value=eos)  # noqa: E731
            differ["grpo"] += int((pad(res["before"]) != pad(res["after"])).any(1).sum())
            tokens["grpo"] += int(rewards.completion_mask(res["after"], eos).sum()) if r == 0 else 0
        times["grpo_before"].append(total["before"] / STEPS)
        times["grpo_after"].append(total["after"] / STEPS)
med = {k: statistics.median(v) for k, v in times.items()}
print(f"{device}, {'bf16 autocast' if BF16 else 'fp32'}, threads {torch.get_num_threads()}, batch {BATCH}, "
      f"{ROUNDS} rounds; outputs that differ: {differ['eval']} of {6 * N} answers, "
      f"{differ['grpo']} of {8 * STEPS} GRPO rows")
print(f"evaluation, 3 splits x {N} samples x fast and slow ({tokens['eval']} tokens): "
      f"before {med['eval_before']:.1f} s, after {med['eval_after']:.1f} s: "
      f"{med['eval_before'] / med['eval_after']:.2f}x")
print(f"GRPO sampling, 2 prompts x G = 4, natural lengths ({tokens['grpo'] / STEPS:.0f} tokens per step): before "
      f"{med['grpo_before']:.2f} s, after {med['grpo_after']:.2f} s per step: "
      f"{med['grpo_before'] / med['grpo_after']:.2f}x")
print(json.dumps({"device": device, "bf16": BF16, "differ": differ, "batch": BATCH, "median_s": med, "tokens": tokens,
                  "samples": N, "steps": STEPS}))
