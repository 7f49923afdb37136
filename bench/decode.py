"""Decoding, before and after, side by side in one run: evaluation with the harness's previous decoder
(HF `generate` with stop_strings=["</answer>"], every row kept until the batch's longest ends)
against `mer.generation.generate` (our KV-cache sampler, finished rows leave the batch), and GRPO
sampling at natural lengths with the previous sampler (rows kept) against `mer.engine.sample`.
Outputs are compared (how many differ is printed); the pairs alternate (A B, then B A) and
medians are quoted.

    python bench/decode.py --model=out/sft/last [--samples=48] [--rounds=2] [--bf16] [--threads=0] [--batch=16]
                           [--diagnostics]

Evaluation: the first --samples of each bundled test split (test_fine, test_basic,
test_sentiment), fast and slow, --batch rows at a time, greedy, with the limits of evaluate.py
(192 / 48 new tokens); with --diagnostics, as evaluate.py runs by default on fine and basic
splits: before, a teacher-forced pass over each batch's prompts and answers for the log-probs at
the answer words (Eq. 1-2); after, the same log-probs kept while decoding (the largest difference
of an Eq.-1 confidence is printed). Times are wall and CPU seconds. GRPO: --steps batches of
2 training prompts x G = 4, temperature 1.0, 128 new tokens, the same seed for both. The last
line is one JSON object with every figure.
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
import wheel  # noqa: E402
from mer import data, engine, generation, inputs, models, prompts  # noqa: E402

args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if "=" in a)
BF16, ROUNDS, N = "--bf16" in sys.argv, int(args.get("rounds", 2)), int(args.get("samples", 48))
DIAGNOSTICS = "--diagnostics" in sys.argv
STEPS, THREADS, BATCH = int(args.get("steps", 4)), int(args.get("threads", 0)), int(args.get("batch", 16))
if THREADS:
    torch.set_num_threads(THREADS)
device = "cuda" if torch.cuda.is_available() else "cpu"
model, tok = models.load_model(args.get("model", "out/sft/last"))
model.to(device).eval()
eos = tok.eos_token_id
autocast = lambda: torch.autocast(device, dtype=torch.bfloat16, enabled=BF16)  # noqa: E731
LIMIT = {"slow": 192, "fast": 48}
TABLES = prompts.category_tables(tok, wheel.load_wheels())
KEEP = prompts.table_token_ids(TABLES)
AT = {i: j for j, i in enumerate(KEEP)}
# Eq. (1) for every (wheel, leading space, category) at once, as columns of KEEP
GROUPS = [[AT[i] for i in ids] for table in TABLES.values() for ids in table.values() if ids]


def conf_gap(a, b):
    """The largest |conf_before - conf_after| of Eq. (1), over answer words and every table's categories."""
    return max(float((torch.logsumexp(a[:, g], -1) - torch.logsumexp(b[:, g], -1)).abs().max()) for g in GROUPS)


def sync():
    if device == "cuda":
        torch.cuda.synchronize()


def teacher_logprobs(prompt_rows, completions, mode):
    """The diagnostics pass before: prompt + answer teacher-forced again, log-probs at the answer
    words' first tokens (at KEEP, the ids Eq. 1 reads), or None where the answer does not parse."""
    found = [prompts.answer_words(c, tok, prompts.PREFIX[mode]) for c in completions]
    ids, mask = inputs.left_pad([p + c for p, c in zip(prompt_rows, completions)], eos, device)
    keep = max(len(c) for c in completions) + 1
    logits = engine.forward_logits(model, ids, mask, {}, keep).float()
    return [None if not words else torch.log_softmax(logits[row, [keep - len(c) + w.token - 1 for w in words]], -1)
            [:, KEEP].cpu() for row, (words, c) in enumerate(zip(found, completions))]


def hf_harness(samples, mode, diagnostics):
    """The evaluation harness before: HF generate with stop_strings, batches sorted by prompt length
    (and with --diagnostics the teacher-forced pass). Returns [(completion, log-probs or None)]."""
    order = sorted(range(len(samples)), key=lambda i: len(prompts.prompt_text(samples[i], tok, mode)))
    out = [None] * len(samples)
    for b in range(0, len(order), BATCH):
        idx = order[b:b + BATCH]
        prompt_rows = inputs.encode_prompts([samples[i] for i in idx], tok, mode)[0]
        ids, mask = inputs.left_pad(prompt_rows, eos, device)
        with torch.no_grad(), autocast():
            seqs = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=LIMIT[mode],
                                  pad_token_id=eos, eos_token_id=eos, stop_strings=["</answer>"], tokenizer=tok)
        completion = seqs[:, ids.shape[1]:]
        n = rewards.completion_mask(completion, eos).sum(1)
        rows = [completion[row, :int(n[row])].tolist() for row in range(len(idx))]
        teacher = teacher_logprobs(prompt_rows, rows, mode) if diagnostics else [None] * len(idx)
        for row, i in enumerate(idx):
            out[i] = (rows[row], teacher[row])
    return out


def our_harness(samples, mode, diagnostics):
    out = generation.generate(model, tok, samples, mode, LIMIT[mode], BATCH, autocast, None, KEEP if diagnostics else None)
    return [(c, None if t is None else t[1][:, KEEP]) for _, c, t in out]


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
    """(wall seconds, CPU seconds of this process, f's result)."""
    sync()
    t0, c0 = time.perf_counter(), time.process_time()
    out = f(*a)
    sync()
    return time.perf_counter() - t0, time.process_time() - c0, out


splits = {s: data.load_split(s)[:N] for s in ("test_fine", "test_basic", "test_sentiment")}
train = data.select(data.load_split("train"), 1000, 0)
batches = [train[2 * i:2 * i + 2] for i in range(STEPS)]
times = {k: [] for k in ("eval_before", "eval_after", "grpo_before", "grpo_after",
                         "eval_before_cpu", "eval_after_cpu", "grpo_before_cpu", "grpo_after_cpu")}
tokens = {"eval": 0, "grpo": 0}
with torch.no_grad(), autocast():
    our_harness(splits["test_fine"][:4], "fast", DIAGNOSTICS)  # warm-up
    for r in range(ROUNDS):
        differ = {"eval": 0, "grpo": 0}  # outputs of before and after that differ (the last round's are printed)
        logprob_gap = 0.0  # the largest |before - after| of an Eq.-1 confidence, where both answers agree
        pairs = [("before", hf_harness), ("after", our_harness)]
        total = {"before": 0.0, "after": 0.0, "before_cpu": 0.0, "after_cpu": 0.0}
        outs = {}
        for split, samples in splits.items():
            for mode in ("fast", "slow"):
                diagnose = DIAGNOSTICS and split != "test_sentiment"  # as evaluate.py
                for name, f in pairs if (r + len(outs)) % 2 == 0 else pairs[::-1]:
                    t, cpu, outs[(split, mode, name)] = timed(f, samples, mode, diagnose)
                    total[name] += t
                    total[name + "_cpu"] += cpu
                before, after = outs[(split, mode, "before")], outs[(split, mode, "after")]
                differ["eval"] += sum(a[0] != b[0] for a, b in zip(before, after))
                logprob_gap = max([logprob_gap] + [conf_gap(a[1], b[1]) for a, b in zip(before, after)
                                                   if a[0] == b[0] and a[1] is not None])
                tokens["eval"] = sum(len(c) for k, v in outs.items() if k[2] == "after" for c, _ in v)
        for name in ("before", "after", "before_cpu", "after_cpu"):
            times["eval_" + name].append(total[name])
        total = {"before": 0.0, "after": 0.0, "before_cpu": 0.0, "after_cpu": 0.0}
        for i, batch in enumerate(batches):
            ids, mask = inputs.left_pad(inputs.encode_prompts(batch, tok, "slow")[0], eos, device)
            res = {}
            for name in (("before", "after") if (r + i) % 2 == 0 else ("after", "before")):
                torch.manual_seed(1000 + i)
                f = (lambda: kept_rows_sample(ids, mask, 4, 128, 1.0)) if name == "before" else \
                    (lambda: engine.sample(model, ids, mask, {}, 4, 128, temperature=1.0, eos=eos))
                t, cpu, res[name] = timed(f)
                total[name] += t
                total[name + "_cpu"] += cpu
            n = max(res["before"].shape[1], res["after"].shape[1])  # rows that differ (EOS after the end)
            pad = lambda x: torch.nn.functional.pad(x, (0, n - x.shape[1]), value=eos)  # noqa: E731
            differ["grpo"] += int((pad(res["before"]) != pad(res["after"])).any(1).sum())
            tokens["grpo"] += int(rewards.completion_mask(res["after"], eos).sum()) if r == 0 else 0
        for name in ("before", "after", "before_cpu", "after_cpu"):
            times["grpo_" + name].append(total[name] / STEPS)
med = {k: statistics.median(v) for k, v in times.items()}
print(f"{device}, {'bf16 autocast' if BF16 else 'fp32'}, threads {torch.get_num_threads()}, batch {BATCH}, "
      f"{ROUNDS} rounds, diagnostics {'on' if DIAGNOSTICS else 'off'}; outputs that differ: {differ['eval']} of "
      f"{6 * N} answers, {differ['grpo']} of {8 * STEPS} GRPO rows"
      + (f"; Eq.-1 confidences differ by at most {logprob_gap:.2g}" if DIAGNOSTICS else ""))
print(f"evaluation, 3 splits x {N} samples x fast and slow ({tokens['eval']} tokens): "
      f"before {med['eval_before']:.1f} s, after {med['eval_after']:.1f} s: "
      f"{med['eval_before'] / med['eval_after']:.2f}x (CPU {med['eval_before_cpu']:.1f} s, "
      f"{med['eval_after_cpu']:.1f} s: {med['eval_before_cpu'] / med['eval_after_cpu']:.2f}x)")
print(f"GRPO sampling, 2 prompts x G = 4, natural lengths ({tokens['grpo'] / STEPS:.0f} tokens per step): before "
      f"{med['grpo_before']:.2f} s, after {med['grpo_after']:.2f} s per step: "
      f"{med['grpo_before'] / med['grpo_after']:.2f}x (CPU {med['grpo_before_cpu'] / med['grpo_after_cpu']:.2f}x)")
print(json.dumps({"device": device, "bf16": BF16, "diagnostics": DIAGNOSTICS, "differ": differ,
                  "logprob_gap": logprob_gap if DIAGNOSTICS else None, "batch": BATCH, "median_s": med,
                  "tokens": tokens, "samples": N, "steps": STEPS}))
