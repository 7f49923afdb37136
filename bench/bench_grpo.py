"""Our GRPO step against TRL's GRPOTrainer, side by side, and MER-R1 against our baseline.

    pip install -r bench/requirements.txt
    python bench/bench_grpo.py --model=out/sft/last --rounds=3 --steps=6
    python bench/bench_grpo.py --model=tiny
    python bench/bench_grpo.py --impls=ours_baseline,ours_mer_r1 --tokens=128   # answers complete: fast pass runs
    python bench/bench_grpo.py --impls=ours_baseline,ours_checkpointed,ours_lora,trl   # the memory switches

Each implementation runs in its own process (one invocation = warm-up + measured steps), the
invocations alternate (ours-baseline, TRL, ours-mer_r1, ...) so that outside load hits all of
them alike. Configuration shared by both: the same weights and prompts, G = 4, 2 prompts per
step, a fixed completion length (EOS suppressed), beta = 0.04 with a reference model, one
update per batch, per-sequence loss averaging, fp32 (or --bf16 for both). Prints a markdown
report: min / median / max step time after warm-up, ratios, generation and training tokens/s,
peak RSS, CPU seconds per step. "rest" is the step minus generation (log-probs, reference,
fast pass, backward, optimizer); tokens/s count completion tokens.
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if "=" in a)
MODEL = args.get("model", "out/sft/last")
ROUNDS, STEPS, WARMUP = int(args.get("rounds", 3)), int(args.get("steps", 6)), int(args.get("warmup", 1))
TOKENS, THREADS = int(args.get("tokens", 64)), int(args.get("threads", 0))
BF16 = "--bf16" in sys.argv
IMPLS = args.get("impls", "ours_baseline,trl,ours_mer_r1").split(",")
PYTHON = args.get("python", sys.executable)


def model_dir(tmp):
    """A folder both implementations load: a checkpoint as is, or smollm2 / tiny saved once."""
    import mer.models
    if MODEL == "smollm2":
        return mer.models.smollm2_dir()
    if MODEL == "tiny":
        path = os.path.join(tmp, "tiny")
        model, tok = mer.models.load_model("tiny")
        model.save_pretrained(path)
        tok.save_pretrained(path)
        return path
    return MODEL


def run(cmd, log_path):
    """Run one invocation; return (per-step records after warm-up, peak RSS of that process in MB)."""
    r = subprocess.run([PYTHON, os.path.join(ROOT, "bench", "peak_rss.py"), *cmd], capture_output=True, text=True,
                       cwd=ROOT)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
    peak = max(int(l.split()[1]) for l in r.stdout.splitlines() if l.startswith("PEAK_RSS_KB"))
    rows = [json.loads(l) for l in open(log_path) if '"event"' not in l]
    return rows[WARMUP:], peak / 1024


def main():
    tmp = tempfile.mkdtemp(prefix="bench-")
    path = model_dir(tmp)
    precision = "bf16" if BF16 else "fp32"
    common = [f"--init={path}", "--train=train", "--skip_samples=0", "--max_samples=2", "--g=4", "--prompts=2",
              f"--max_new_tokens={TOKENS}", f"--min_new_tokens={TOKENS}", "--beta=0.04", "--lr=1e-6",
              f"--precision={precision}", f"--max_steps={WARMUP + STEPS}", "--save_every=100000", "--resume=False",
              "--aggregation=sequence", f"--threads={THREADS}", "--temperature=1.0", "--top_p=1.0"]
    def ours(*flags):
        return lambda out: [os.path.join(ROOT, "train_grpo.py"), *common, *flags, f"--out_dir={out}"]

    impls = {
        "ours_baseline": ours("--variant=baseline"),
        "trl": lambda out: [os.path.join(ROOT, "bench", "trl_grpo.py"), f"--model={path}",
                            f"--steps={WARMUP + STEPS}", f"--out={out}/log.jsonl", f"--tokens={TOKENS}",
                            f"--threads={THREADS}"] + (["--bf16"] if BF16 else []),
        "ours_mer_r1": ours("--variant=mer_r1"),
        # the memory switches (Step 11), each on top of ours_baseline
        "ours_checkpointed": ours("--variant=baseline", "--grad_checkpointing=True"),
        "ours_lora": ours("--variant=baseline", "--lora_r=8"),
        "ours_lora_checkpointed": ours("--variant=baseline", "--lora_r=8", "--grad_checkpointing=True"),
    }
    impls = {k: v for k, v in impls.items() if k in IMPLS}
    results = {k: {"rows": [], "peak_mb": []} for k in impls}
    for r in range(ROUNDS):
        order = list(impls) if r % 2 == 0 else list(reversed(impls))
        for name in order:
            out = os.path.join(tmp, f"{name}_{r}")
            os.makedirs(out, exist_ok=True)
            t0 = time.time()
            rows, peak = run(impls[name](out), os.path.join(out, "log.jsonl"))
            results[name]["rows"] += rows
            results[name]["peak_mb"].append(peak)
            print(f"round {r} {name}: {len(rows)} steps, median {statistics.median(x['step_s'] for x in rows):.2f} s, "
                  f"{time.time() - t0:.0f} s in all", file=sys.stderr)
    report(results)


def report(results):
    n_gen = 2 * 4 * TOKENS
    lines = [f"model `{MODEL}`, {'bf16' if BF16 else 'fp32'}, 2 prompts x G=4 x {TOKENS} forced tokens, "
             f"threads {THREADS or 'default'}, {ROUNDS} rounds x {STEPS} steps after {WARMUP} warm-up",
             "", "| implementation | step s (min / median / max) | generate s | rest s | gen tok/s | rest tok/s "
             "| CPU s/step | peak RSS MB |", "|---|---|---|---|---|---|---|---|"]
    med = {}
    for name, r in results.items():
        steps = [x["step_s"] for x in r["rows"]]
        gen = statistics.median(x["generate_s"] for x in r["rows"])
        med[name] = statistics.median(steps)
        train = med[name] - gen
        cpu = statistics.median(x["cpu_s"] for x in r["rows"])
        lines.append(f"| {name} | {min(steps):.2f} / {med[name]:.2f} / {max(steps):.2f} | {gen:.2f} | {train:.2f} | "
                     f"{n_gen / gen:.0f} | {n_gen / train:.0f} | {cpu:.2f} | {max(r['peak_mb']):.0f} |")
    lines.append("")
    for name in [n for n in med if n.startswith("ours") and "trl" in med]:
        peak = max(results[name]["peak_mb"]) / max(results["trl"]["peak_mb"])
        lines += [f"- {name} / trl step time: **{med[name] / med['trl']:.2f}x**, peak RSS: {peak:.2f}x"]
    if "ours_mer_r1" in med:
        fast = statistics.median(x["fast_s"] for x in results["ours_mer_r1"]["rows"])
        lines += [f"- ours_mer_r1 / ours_baseline step time (cost of the fast-mode pass): "
                  f"**{med['ours_mer_r1'] / med['ours_baseline']:.2f}x** (fast pass {fast:.2f} s per step)"]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
