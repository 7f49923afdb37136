"""A step of SFT, GRPO and evaluation on a quiet CPU and next to one competing process, under
OpenMP's default waiting policy and under OMP_WAIT_POLICY=PASSIVE (set before torch loads, as the
scripts do by default).

On a shared 2-core machine two torch threads spin-wait for each other at every parallel region;
when another process holds one core, each region waits for a time slice, and a step slows
several-fold. PASSIVE threads sleep instead of spinning.

    python bench/contention.py                  # SmolLM2 from out/sft/last (else smollm2), 3 steps each
    python bench/contention.py --steps=2 --jobs=sft,grpo
    python bench/contention.py --probe --spins=300000,30000,3000,0   # one small layer per spin count

The competitor is another torch process multiplying 512 x 512 matrices on one thread
(--competitor_threads=2: two, like a second training job). Times are
medians of the steps after the first (SFT and GRPO: step_s of log.jsonl; evaluation: seconds per
batch of 8 fast-mode answers, all batches).
"""
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if "=" in a)
STEPS = int(args.get("steps", 3))
JOBS = args.get("jobs", "sft,grpo,eval").split(",")
MODEL = args.get("model", "out/sft/last" if os.path.isdir(os.path.join(ROOT, "out/sft/last")) else "smollm2")
# the competing process: torch multiplying 512 x 512 matrices on --competitor_threads threads (2: another
# training job at torch's default on this machine; its own OpenMP default waiting policy)
COMPETITOR = (f"import torch; torch.set_num_threads({int(args.get('competitor_threads', 1))}); "
              f"a = torch.randn(512, 512)\nimport os\nwhile os.getppid() == {os.getpid()}: a @ a")  # dies with us
# --probe: microseconds per call of one small layer, under each spin count (GOMP_SPINCOUNT: how long an
# idle OpenMP thread spins before it sleeps; libgomp's default is 300000, PASSIVE means 0)
PROBE = "--probe" in sys.argv
SPINS = args.get("spins", "300000,30000,3000,0").split(",")
PROBE_CODE = """import time, torch
layer, x = torch.nn.Linear(576, 1536), torch.randn(8, 576)
with torch.no_grad():
    for _ in range(200): layer(x)
    ts = []
    for _ in range(5000):
        t = time.perf_counter(); layer(x); ts.append(time.perf_counter() - t)
print(sorted(ts)[len(ts) // 2] * 1e6)"""


@contextlib.contextmanager
def competing(loaded):
    """With `loaded`, the competitor runs for the duration (from when its torch import is done)."""
    other = subprocess.Popen([sys.executable, "-c", COMPETITOR]) if loaded else None
    time.sleep(3 if loaded else 0)
    try:
        yield
    finally:
        if other:
            other.kill()


def probe():
    print("| GOMP_SPINCOUNT | quiet us/call | one competitor us/call | slowdown |\n|---|---|---|---|")
    for spin in SPINS:
        env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
        env["GOMP_SPINCOUNT"] = spin
        us = []
        for loaded in (False, True):
            with competing(loaded):
                r = subprocess.run([sys.executable, "-c", PROBE_CODE], env=env, capture_output=True, text=True, check=True)
            us.append(float(r.stdout))
        print(f"| {spin} | {us[0]:.0f} | {us[1]:.0f} | {us[1] / us[0]:.1f}x |", flush=True)


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def job(name, out, policy):
    """Seconds per step of one job run with OMP_WAIT_POLICY = policy (None: OpenMP's default)."""
    # "" is no policy: libgomp warns and keeps its default (spin 300000), and the scripts' setdefault leaves it
    env = dict(os.environ, OMP_WAIT_POLICY=policy or "")
    if name == "sft":
        cmd = ["train_sft.py", f"--model={MODEL}", f"--max_steps={STEPS + 1}", "--max_samples=64", "--save_every=1000"]
    elif name == "grpo":
        # the speed bench's configuration: 2 prompts x G = 4, 64 forced tokens, so every step does the same work
        cmd = ["train_grpo.py", f"--init={MODEL}", f"--max_steps={STEPS + 1}", "--beta=0", "--save_every=1000",
               "--prompts=2", "--g=4", "--max_new_tokens=64", "--min_new_tokens=64"]
    else:
        cmd = ["evaluate.py", f"--ckpt={MODEL}", "--splits=test_fine", "--modes=fast", "--diagnostics=False",
               f"--max_samples={8 * (STEPS + 1)}", "--batch_size=8", "--grpo_log="]
    r = subprocess.run([sys.executable, *cmd, f"--out_dir={out}"], cwd=ROOT, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)}:\n{r.stderr[-2000:]}")
    if name == "eval":
        summary = json.load(open(os.path.join(out, "summary.json")))
        return summary["results"]["test_fine"]["fast"]["seconds"] / (STEPS + 1)
    rows = [json.loads(line) for line in open(os.path.join(out, "log.jsonl")) if '"event"' not in line]
    return median([r["step_s"] for r in rows[1:]])


def main():
    results = {}
    for name in JOBS:
        for policy in (None, "PASSIVE"):
            for loaded in (False, True):
                out = tempfile.mkdtemp()
                try:
                    with competing(loaded):
                        results[(name, policy, loaded)] = job(name, out, policy)
                finally:
                    shutil.rmtree(out, ignore_errors=True)
                print(name, policy or "default", "loaded" if loaded else "quiet",
                      f"{results[(name, policy, loaded)]:.2f} s", flush=True)
    print(f"\nmodel {MODEL}, default threads, median of {STEPS} steps after the first\n")
    print("| job | wait policy | quiet s/step | one competitor s/step | slowdown |\n|---|---|---|---|---|")
    for name in JOBS:
        for policy in (None, "PASSIVE"):
            q, l = results[(name, policy, False)], results[(name, policy, True)]
            print(f"| {name} | {policy or 'OpenMP default'} | {q:.2f} | {l:.2f} | {l / q:.1f}x |")
        print(f"| {name} | PASSIVE / default, quiet | {results[(name, 'PASSIVE', False)] / results[(name, None, False)]:.2f}x | | |")


if __name__ == "__main__":
    probe() if PROBE else main()
