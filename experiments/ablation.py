"""Table 4 on a laptop: one SFT checkpoint, then GRPO variants x seeds from it, each evaluated.

    python experiments/ablation.py              # run what is missing, then write experiments/RESULTS.md
    python experiments/ablation.py --plan       # what remains, with its estimated time
    python experiments/ablation.py --report     # only rewrite RESULTS.md from the finished runs
    python experiments/ablation.py --variants=baseline,mer_r1 --seeds=1   # a subset (e.g. one per core)
    python experiments/ablation.py --jobs=12 --threads=1   # 12 runs at a time (e.g. on one GPU)
    python experiments/ablation.py --recipe=real --variants=baseline,rd,rd_ad,mer_r1   # GoEmotions
    python experiments/ablation.py --recipe=real --table=options --variants=mer_r1,mer_r1+eta_high=0.28
                                   # a variant with train_grpo.py settings after `+`, in a table of its own

Resumable: every finished run leaves `RUNS/NAME/result.json` (copied with its logs and evaluation
summaries into RECORDS, which git keeps) and is skipped next time; an
interrupted run continues from its last checkpoint (train_grpo.py resumes by itself), and a run
whose training finished (`RUNS/NAME/trained`) goes straight to its evaluation. Several runners may
share the folder (a run in progress holds `RUNS/NAME/runner.lock`); `--jobs=N` starts N-1 more
once the SFT checkpoint is trained. The recipe is the
pair of config files below; the SFT-init row is the SFT checkpoint itself (greedy evaluation,
so one number, std 0).
"""
import ast
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from mer.data import split_name  # noqa: E402
from mer.run import configure, pid_alive, read_log  # noqa: E402

RECIPE = "template"                # template: our generator's data; real: GoEmotions (configs/real_*.py)
RESULTS = "experiments/RESULTS.md"
VARIANTS = "baseline,mer_r1,rd_ad,rd,a1,a2,b1,b2"  # table rows in this order
SEEDS = "0,1,2"
# per recipe: runs folder, SFT and GRPO configs, FINE (EW-F1, P, R, fast and slow, with the Section-3
# diagnostics) and how many of its samples (0: all), OTHER (HIT and WAF) and how many samples of each,
# and the marker of its table in RESULTS
RECIPES = {"template": ("experiments/runs", "configs/cpu_rl_sft.py", "configs/cpu_rl.py", "test_fine", 0,
                        "test_basic,test_sentiment", 50, "table"),
           "real": ("experiments/runs_real", "configs/real_sft.py", "configs/real_rl.py", "goemotions/test_fine", 1000,
                    "goemotions/test_basic,goemotions/test_sentiment", 300, "table real")}
RUNS, SFT_CONFIG, GRPO_CONFIG, FINE, FINE_SAMPLES, OTHER, OTHER_SAMPLES, MARKER = RECIPES[RECIPE]  # again after --recipe
# train_grpo.py settings every GRPO run of a recipe gets before its variant's own (which win): the
# real recipe's tables ran with the paper's group scaling and BETA 0.04, before configs/real_rl.py
# took "none" and 0.2 (RESULTS.md, "Real data"); pinned so that their missing seeds match their records
PINNED = {"template": "", "real": "scale_rewards=group+beta=0.04"}
TRANSFER = ""                      # set by --recipe=real: the bundled test_fine, all 300, fast and slow
EVAL_BATCH = 32
THREADS = 0                        # per training / evaluation process (0: torch's default)
JOBS = 1                           # runners at a time, sharing RUNS (one GPU holds ~12 SmolLM2 runs)
WORKER = False                     # started by another runner: runs, but leaves the report to it
KEEP_OPTIMIZER = False             # keep trainer_state.pt of finished runs (1 GB each for SmolLM2)
RECORDS = "experiments/records"    # each finished run's small files are copied here (kept in git, unlike RUNS):
                                   # a clean checkout reports them and skips them (empty: neither)
TABLE = ""                         # a table of its own in RESULTS ("<MARKER> TABLE"), its rows --variants, each
                                   # compared seed by seed with the first (e.g. mer_r1 against each GRPO option)
PLAN = False
REPORT = False
LAMBDA_FMT = 0.1                   # train_grpo.py's, to split the logged advantages into their terms
# before any run has finished here (bf16 autocast, 2 cores, three runners); "eval": a trained run's evaluation
ESTIMATE_S = {"sft": 960, "grpo": 5700, "eval": 1700}

# the variants whose advantage is A_dual + lambda_fmt A_fmt (+ calibration): the report splits it
split_variants = ("rd_ad", "mer_r1", "a1", "a2", "b1")
# the table always shows every finished run, also when this runner does a subset (--variants, --seeds)
table_variants, table_seeds = VARIANTS, SEEDS


def run_dirs(variants=None, seeds=None):
    """[(name, kind, variant, seed)] in running order: SFT, then seed-major (every variant of seed 0
    first), so that an unfinished table still compares the variants."""
    out = [("sft", "sft", "sft", None)]
    for s in str(seeds or SEEDS).split(","):
        for v in (variants or VARIANTS).split(","):
            out.append((f"{v}_s{s}", "grpo", v, int(s)))
    return out


def sh(cmd, log):
    """Run one command (from the repository root), its output appended to `log`; stop on failure."""
    with open(log, "a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        r = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    if r.returncode != 0:
        raise SystemExit(f"failed ({r.returncode}): {' '.join(cmd)}; see {log}")


def evaluate(ckpt, out, log):
    """Slow and fast on FINE (diagnostics on), then OTHER in both modes on OTHER_SAMPLES each.
    Each step writes its summary.json last, so an interrupted evaluation resumes at the step it was in."""
    py, threads = sys.executable, [f"--threads={THREADS}"] if THREADS else []
    common = [f"--ckpt={ckpt}", "--grpo_log=", f"--batch_size={EVAL_BATCH}", *threads]
    steps = [("fine", [f"--splits={FINE}", f"--max_samples={FINE_SAMPLES}"]),
             ("other", [f"--splits={OTHER}", "--diagnostics=False", f"--max_samples={OTHER_SAMPLES}"])]
    if TRANSFER:  # the other recipe's fine split: does what GRPO learned here cost the other data?
        steps.append(("transfer", [f"--splits={TRANSFER}", "--diagnostics=False"]))
    for sub, args in steps:
        if not os.path.exists(os.path.join(ROOT, out, sub, "summary.json")):
            sh([py, "evaluate.py", *args, f"--out_dir={out}/{sub}", *common], log)
    results = {**json.load(open(os.path.join(ROOT, out, "fine", "summary.json")))["results"],
               **json.load(open(os.path.join(ROOT, out, "other", "summary.json")))["results"]}
    return {spec: results[split_name(spec)] for spec in [FINE, *OTHER.split(",")]}  # keyed as FINE and OTHER


# what a finished run keeps in RECORDS: its result, logs and evaluation summaries (not its checkpoint)
RECORD_FILES = ("result.json", "commands.log", "log.jsonl", "completions.jsonl",
                "eval/fine/summary.json", "eval/other/summary.json", "eval/transfer/summary.json")


def record_path(name, *parts):
    """Where run NAME's record keeps a file (RECORDS/<the RUNS folder's name>/NAME/...)."""
    return os.path.join(ROOT, RECORDS, os.path.basename(RUNS), name, *parts)


def run_file(name, *parts):
    """A file of run NAME: in RUNS when it is there, else in the run's record (RECORDS) when it is there."""
    path = os.path.join(ROOT, RUNS, name, *parts)
    kept = record_path(name, *parts) if RECORDS else path
    return kept if not os.path.exists(path) and os.path.exists(kept) else path


def record(name):
    """Copy the RECORD_FILES of RUNS/NAME into its record."""
    if not RECORDS:
        return
    for part in RECORD_FILES:
        src, dst = os.path.join(ROOT, RUNS, name, part), record_path(name, part)
        if os.path.isfile(src):
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            shutil.copyfile(src, dst)


def transfer_f1(name, mode="slow"):
    """EW-F1 of a run on TRANSFER (RUNS/NAME/eval/transfer), or None before it is evaluated."""
    path = run_file(name, "eval", "transfer", "summary.json")
    if not (TRANSFER and os.path.isfile(path)):
        return None
    return json.load(open(path))["results"][split_name(TRANSFER)][mode]["scores"]["f1"]


def train(name, kind, variant, seed, log):
    """The training command of one run (its checkpoint: RUNS/NAME/last)."""
    out, threads = f"{RUNS}/{name}", [f"--threads={THREADS}"] if THREADS else []
    if kind == "sft":
        sh([sys.executable, "train_sft.py", SFT_CONFIG, f"--out_dir={out}", *threads], log)
    else:  # a variant may carry settings of train_grpo.py: mer_r1+eta_high=0.28+importance=sequence
        sh([sys.executable, "train_grpo.py", GRPO_CONFIG, f"--init={RUNS}/sft/last", f"--variant={variant.split('+')[0]}",
            *[f"--{kv}" for kv in settings(variant)], f"--seed={seed}", f"--out_dir={out}", *threads], log)


def settings(variant):
    """The key=value settings of a variant's runs, in the order given to train_grpo.py: PINNED, then its own."""
    return [kv for kv in PINNED[RECIPE].split("+") + variant.split("+")[1:] if kv]


def finished():
    """{name: result} of the runs that left a result file."""
    out = {}
    for name, *_ in run_dirs(table_variants, table_seeds):
        path = run_file(name, "result.json")
        if os.path.isfile(path):
            out[name] = json.load(open(path))
    return out


def estimate(kind, done, trained=False):
    """Seconds for a run of this kind (only its evaluation once it has `trained`): the median of
    those finished here, else ESTIMATE_S."""
    key = "eval_seconds" if trained else "seconds"
    times = sorted(r[key] for r in done.values() if r["kind"] == kind and key in r)
    return times[len(times) // 2] if times else ESTIMATE_S["eval" if trained else kind]


def take_lock(lock):
    """True when this runner now holds `lock` (a file of "host pid"). A lock left by a runner that was
    killed on this host (its process is gone) is taken over; one from another host is respected."""
    me = f"{socket.gethostname()} {os.getpid()}"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            holder = open(lock).read().split()
            if len(holder) != 2 or holder[0] != socket.gethostname() or not holder[1].isdigit():
                return False  # another host's, or one being written right now
            if pid_alive(int(holder[1])):
                return False
            os.remove(lock)
            continue
        os.write(fd, me.encode())
        os.close(fd)
        return True
    return False


def drop_optimizer(ckpt):
    """Delete a finished run's optimizer state (1 GB for SmolLM2) and its line in checksums.json, so
    the model still loads and verifies (evaluate.py, predict.py); resuming it is then impossible."""
    state, sums = os.path.join(ckpt, "trainer_state.pt"), os.path.join(ckpt, "checksums.json")
    if os.path.isfile(state):
        os.remove(state)
    if os.path.isfile(sums):
        saved = json.load(open(sums))
        if saved.pop("trainer_state.pt", None) is not None:
            json.dump(saved, open(sums, "w"), indent=1)


def start_workers():
    """JOBS - 1 more runners on the same folder (each skips the runs another one holds)."""
    args = [a for a in sys.argv[1:] if not a.startswith("--jobs=")]
    return [subprocess.Popen([sys.executable, os.path.abspath(__file__), *args, "--jobs=1", "--worker=True"], cwd=ROOT)
            for _ in range(JOBS - 1)]


def run_all():
    workers, sft = [], os.path.join(ROOT, RUNS, "sft")
    sft_trained = lambda: any(os.path.isfile(os.path.join(sft, f)) for f in ("trained", "result.json"))  # noqa: E731
    done = lambda n: os.path.isfile(run_file(n, "result.json"))  # noqa: E731  (here or recorded)
    for name, kind, variant, seed in run_dirs():
        folder = os.path.join(ROOT, RUNS, name)
        if kind == "grpo" and not workers and sft_trained():
            workers = start_workers()
        # a recorded SFT run is trained again (not evaluated) when a GRPO run still needs its checkpoint
        need_sft = kind == "sft" and not sft_trained() and not all(done(n) for n, k, *_ in run_dirs() if k == "grpo")
        recorded = done(name)
        if recorded and not need_sft:
            continue
        if kind == "grpo" and not sft_trained():
            print(f"{name}: waiting for the SFT run (run the runner without a subset first)")
            return
        os.makedirs(folder, exist_ok=True)
        lock = os.path.join(folder, "runner.lock")
        if not take_lock(lock):
            print(f"{name}: another runner has it ({lock}: host and process)")
            continue
        try:
            t0 = time.time()
            print(f"{name}: training ({time.strftime('%H:%M')})", flush=True)
            log = os.path.join(folder, "commands.log")
            ckpt, trained = f"{RUNS}/{name}/last", os.path.join(folder, "trained")
            if not os.path.isfile(trained):
                train(name, kind, variant, seed, log)
                open(trained, "w").close()
            if kind == "sft":
                workers = start_workers()
            if recorded:  # the SFT's result is in its record
                continue
            print(f"{name}: evaluating", flush=True)
            t1 = time.time()
            scores = evaluate(ckpt, f"{RUNS}/{name}/eval", log)
            if not KEEP_OPTIMIZER:
                drop_optimizer(os.path.join(ROOT, ckpt))
            result = {"name": name, "kind": kind, "variant": variant, "seed": seed,
                      "seconds": round(time.time() - t0), "eval_seconds": round(time.time() - t1),
                      "results": scores}
            tmp = os.path.join(folder, "result.json.tmp")
            json.dump(result, open(tmp, "w"), indent=1)
            os.replace(tmp, os.path.join(folder, "result.json"))
            record(name)
            print(f"{name}: done in {result['seconds'] / 60:.1f} min", flush=True)
        finally:
            os.remove(lock)
    failed = sum(w.wait() != 0 for w in workers)
    if failed:
        raise SystemExit(f"{failed} of the {len(workers)} other runners failed (their output is above)")


def plan():
    done = finished()
    todo = [(n, estimate(k, done, os.path.isfile(os.path.join(ROOT, RUNS, n, "trained"))))
            for n, k, _, _ in run_dirs() if n not in done]
    total = sum(s for _, s in todo)
    print(f"{len(done)} runs finished, {len(todo)} to go, about {total / 3600:.1f} h on this machine")
    for n, s in todo:
        print(f"  {n:12s} ~{s / 60:.0f} min")


# ---------------------------------------------------------------------------------------
# The report: Table-4 style, mean +- std over seeds, training curves, diagnostics

def mean_std(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return None, None
    m = sum(xs) / len(xs)
    return m, (sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) ** 0.5 if len(xs) > 1 else 0.0


def cell(xs):
    m, s = mean_std(xs)
    return "-" if m is None else f"{m:.2f} ± {s:.2f}" if len(xs) > 1 else f"{m:.2f}"


def log_records(name):
    """The records of a run's log.jsonl ([] before it has one; also while it trains)."""
    path = run_file(name, "log.jsonl")
    return read_log(path) if os.path.isfile(path) else []


def curves(name):
    """(steps, R_R, R_P, format, KL) of a GRPO run's training steps."""
    rows = [r for r in log_records(name) if "step" in r and "event" not in r]
    return tuple([r[k] for r in rows] for k in ("step", "recall", "precision", "format", "kl"))


def validation(name):
    """{step: (val F1, P, R)} of a GRPO run: its held-out samples scored greedily (VAL_SAMPLES)."""
    return {r["step"]: (r["val_f1"], r["val_precision"], r["val_recall"])
            for r in log_records(name) if r.get("event") == "validation"}


def plot(groups):
    """Fig.-7-style R_R and R_P per step, averaged over seeds and smoothed over 5 steps, and the
    held-out EW-F1 (the validation samples) at each of its steps, averaged over seeds."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(1, 3, figsize=(15, 3.5))
    for variant, names in groups.items():
        runs = [curves(n) for n in names]
        runs = [r for r in runs if r[0]]
        if not runs:
            continue
        vals = [v for v in map(validation, names) if v]
        steps = sorted(set.intersection(*(set(v) for v in vals))) if vals else []
        ax[2].plot(steps, [sum(v[s][0] for v in vals) / len(vals) for s in steps], marker="o", label=variant)
        ax[2].set_title("held-out EW-F1 (greedy, slow)")
        ax[2].set_xlabel("step")
        n = min(len(r[0]) for r in runs)
        for a, k, title in ((ax[0], 1, "R_R (recall reward)"), (ax[1], 2, "R_P (precision reward)")):
            mean = [sum(r[k][i] for r in runs) / len(runs) for i in range(n)]
            smooth = [sum(mean[max(0, i - 4):i + 1]) / len(mean[max(0, i - 4):i + 1]) for i in range(n)]
            a.plot(runs[0][0][:n], smooth, label=variant)
            a.set_title(title)
            a.set_xlabel("step")
    ax[0].legend(fontsize=8)
    fig.tight_layout()
    png = "training_curves" + "".join(f"_{k}" for k in (RECIPE, TABLE) if k and k != "template") + ".png"  # one per table
    path = os.path.join(os.path.dirname(os.path.join(ROOT, RESULTS)), png)
    fig.savefig(path, dpi=100)
    return os.path.basename(path)


def variant_setting(variant, key):
    """A train_grpo.py setting of a variant's runs: after its `+` (mer_r1+scale_rewards=none) or PINNED,
    else in GRPO_CONFIG, else train_grpo.py's default (None when none of them sets it)."""
    given = dict(kv.split("=", 1) for kv in settings(variant))
    if key.lower() in given:
        return given[key.lower()]
    for path in (GRPO_CONFIG, "train_grpo.py"):
        m = re.search(rf"^{key} = (\S+)", open(os.path.join(ROOT, path)).read(), re.M)
        if m:
            return ast.literal_eval(m.group(1))
    return None


def advantage_split(names, scale="group", prompts=1):
    """Where a run's advantages come from, over the completions it logged (completions.jsonl):
    the shares of the squared advantage from A_dual (Eq. 5), lambda_fmt A_fmt and the rest (the
    calibration terms, Eq. 12), how often the calibration flips an advantage's sign, and the share
    of groups (every step, log.jsonl) whose R_R, R_P and format are all tied. `scale` is the runs'
    SCALE_REWARDS; under "batch" the std spans a micro-batch, the `prompts` groups logged in a row."""
    import torch
    import rewards
    sq, flips, n, tied, runs = {"dual": 0.0, "fmt": 0.0, "cali": 0.0, "all": 0.0}, 0, 0, [], 0
    per_block = int(prompts) if scale == "batch" else 1
    for name in names:
        if not os.path.isfile(run_file(name, "completions.jsonl")):
            continue
        runs += 1
        blocks = {}
        for line in open(run_file(name, "completions.jsonl")):
            c = json.loads(line)
            blocks.setdefault((c["step"], c["group"] // per_block), {}).setdefault(c["group"], []).append(c)
        for block in blocks.values():
            col = lambda k: torch.tensor([[c[k] for c in g] for _, g in sorted(block.items())])  # noqa: E731
            total = col("advantage").flatten()
            dual = rewards.dual_advantage(col("recall"), col("precision"), scale).flatten()
            fmt = LAMBDA_FMT * rewards.group_normalize(col("format"), scale=scale).flatten()
            for k, a in (("dual", dual), ("fmt", fmt), ("cali", total - dual - fmt), ("all", total)):
                sq[k] += (a ** 2).sum().item()
            flips += ((dual + fmt).sign() * total.sign() < 0).sum().item()
            n += len(total)
        tied += [r["tied_groups"] for r in map(json.loads, open(run_file(name, "log.jsonl"))) if "tied_groups" in r]
    if not n:
        return None
    shares = " | ".join(f"{100 * sq[k] / sq['all']:.1f}%" for k in ("dual", "fmt", "cali"))
    return f"{runs} | {n} | {shares} | {100 * flips / n:.1f}% | {100 * sum(tied) / len(tied):.1f}%"


def report():
    done = finished()
    rows = [("SFT init", ["sft"])]
    for v in table_variants.split(","):
        names = [f"{v}_s{s}" for s in str(table_seeds).split(",") if f"{v}_s{s}" in done]
        if names:
            rows.append((v, names))
    get = lambda n, split, mode, key: (done[n]["results"].get(split, {}).get(mode, {}).get("scores", {})  # noqa: E731
                                       .get(key) if n in done else None)
    diag = lambda n, mode, key: done[n]["results"][FINE][mode].get(key) if n in done else None  # noqa: E731
    basic, sentiment = OTHER.split(",")
    lines = [f"| variant | seeds | {FINE} slow F1 | P | R | {FINE} fast F1 | P | R | {basic} HIT slow | fast "
             f"| {sentiment} WAF slow | fast |", "|---" * 12 + "|"]
    for label, names in rows:
        vals = [cell([get(n, FINE, m, k) for n in names]) for m in ("slow", "fast") for k in ("f1", "precision", "recall")]
        vals += [cell([get(n, basic, m, "hit") for n in names]) for m in ("slow", "fast")]
        vals += [cell([get(n, sentiment, m, "waf") for n in names]) for m in ("slow", "fast")]
        lines.append(f"| {label} | {len([n for n in names if n in done])} | " + " | ".join(vals) + " |")
    first = table_variants.split(",")[0]  # baseline in Table 4
    gain = ["", f"Slow-mode EW-F1 on {FINE} against the SFT init and, seed by seed (same prompts), against "
            f"`{first}` (mean ± std of the differences):", ""]
    sft = get("sft", FINE, "slow", "f1")
    base = {done[n]["seed"]: get(n, FINE, "slow", "f1") for n in dict(rows).get(first, [])}
    for label, names in rows[1:]:
        slow = {done[n]["seed"]: get(n, FINE, "slow", "f1") for n in names}
        d = [f1 - sft for f1 in slow.values() if sft is not None]
        m, s = mean_std(d)
        line = f"- {label}: {m:+.2f} ± {s:.2f} over {len(d)} seeds" if m is not None else f"- {label}: -"
        paired = [f1 - base[seed] for seed, f1 in slow.items() if seed in base]
        if label != first and paired:
            m, s = mean_std(paired)
            line += f"; against `{first}` {m:+.2f} ± {s:.2f} over {len(paired)} seeds"
        gain.append(line)
    if transfer_f1("sft") is not None:
        moved = [transfer_f1(n) - transfer_f1("sft") for _, names in rows[1:] for n in names if transfer_f1(n) is not None]
        m, sd = mean_std(moved)
        gain.append(f"- on `{TRANSFER}` (slow EW-F1, the other data): SFT {transfer_f1('sft'):.2f}; the GRPO runs evaluated "
                    f"there move it by " + (f"{m:+.2f} ± {sd:.2f} over {len(moved)} runs" if moved else "-"))
    dl = ["", f"Section-3 diagnostics on {FINE} (Eq. 1-2, Fig. 8; mean over seeds):", "",
          "| variant | conf_gt fast | conf_gt slow | margin fast | margin slow | retained hit-rate | categories/answer slow |",
          "|---|---|---|---|---|---|---|"]
    for label, names in rows:
        vals = [cell([diag(n, m, k) for n in names]) for k in ("conf_gt", "margin") for m in ("fast", "slow")]
        vals.append(cell([done[n]["results"][FINE].get("retained_hit_rate") for n in names if n in done]))
        vals.append(cell([diag(n, "slow", "avg_categories") for n in names]))
        dl.append(f"| {label} | " + " | ".join(vals) + " |")
    tr = ["", "Training rewards per block of 10 steps (mean over the seeds' runs, finished or still training):",
          "", "| variant | runs | steps | R_R | R_P | format | KL |", "|---|---|---|---|---|---|---|"]
    training = {v: [f"{v}_s{s}" for s in str(table_seeds).split(",")] for v in table_variants.split(",")}
    for label, names in training.items():
        runs = [r for r in (curves(n) for n in names) if r[0]]
        if not runs:
            continue
        n = min(len(r[0]) for r in runs)
        for b in range(0, n, 10):
            e = min(n, b + 10)
            vals = [sum(sum(r[k][b:e]) / (e - b) for r in runs) / len(runs) for k in (1, 2, 3, 4)]
            tr.append(f"| {label} | {len(runs)} | {b + 1}-{e} | " + " | ".join(f"{v:.3f}" for v in vals[:3])
                      + f" | {vals[3]:.4f} |")
    held_out = {label: [v for v in map(validation, names) if v] for label, names in training.items()}
    val_steps = sorted({s for vals in held_out.values() for v in vals for s in v})
    vl = ["", "Held-out curve: greedy slow-mode EW-F1 (P / R) of the VAL_SAMPLES validation samples (training "
          "data the GRPO never drew, not a test split) at each validation step, mean ± std over the runs:", "",
          "| variant | runs | " + " | ".join(f"step {s}" for s in val_steps) + " |", "|---" * (2 + len(val_steps)) + "|"]
    for label, vals in held_out.items():
        if vals:
            cells = [(f"{cell([v[s][0] for v in vals if s in v])} ({cell([v[s][1] for v in vals if s in v])} / "
                      f"{cell([v[s][2] for v in vals if s in v])})") if any(s in v for v in vals) else "-" for s in val_steps]
            vl.append(f"| {label} | {len(vals)} | " + " | ".join(cells) + " |")
    picture = plot(training)
    al = ["", "Where the advantage comes from (the logged completions, every LOG_COMPLETIONS_EVERY steps; share "
          "of the squared advantage; the cross terms make up the rest):", "", "| variant | runs | completions | A_dual | format | calibration "
          "| sign flipped by calibration | groups with tied R_R, R_P, format |", "|---|---|---|---|---|---|---|---|"]
    for label, names in training.items():
        split = advantage_split(names, variant_setting(label, "SCALE_REWARDS"), variant_setting(label, "PROMPTS")) \
            if label.split("+")[0] in split_variants else None
        if split:
            al.append(f"| {label} | {split} |")
    text = lines + gain + dl + (vl if val_steps else []) + tr + al
    if picture:
        text += ["", f"![R_R and R_P over training steps]({picture})"]
    return "\n".join(text) + "\n"


if __name__ == "__main__":
    # bare --plan / --report read as --plan=True / --report=True
    configure(globals(), [a + "=True" if a in ("--plan", "--report") else a for a in sys.argv[1:]])
    if RECIPE not in RECIPES:
        raise SystemExit(f"--recipe={RECIPE!r}: choose {' or '.join(RECIPES)}")
    RUNS, SFT_CONFIG, GRPO_CONFIG, FINE, FINE_SAMPLES, OTHER, OTHER_SAMPLES, MARKER = RECIPES[RECIPE]
    TRANSFER = "test_fine" if RECIPE == "real" else ""
    if TABLE:
        table_variants, table_seeds, MARKER = VARIANTS, SEEDS, f"{MARKER} {TABLE}"
    if PLAN:
        plan()
    else:
        if not REPORT:
            run_all()
        if WORKER:
            raise SystemExit(0)
        names = dict.fromkeys(n for n, *_ in run_dirs(table_variants, table_seeds) + run_dirs())  # each once
        for name in names:  # also the runs finished before RECORDS was set
            if os.path.isfile(os.path.join(ROOT, RUNS, name, "result.json")):
                record(name)
        table = report()
        # the generated part sits between two markers; the text around it is written by hand
        path = os.path.join(ROOT, RESULTS)
        old = open(path).read() if os.path.isfile(path) else "# Results\n"
        if f"<!-- {MARKER} -->" not in old:
            old += f"\n<!-- {MARKER} -->\n<!-- /{MARKER} -->\n"
        head, _, rest = old.partition(f"<!-- {MARKER} -->")
        tail = rest.partition(f"<!-- /{MARKER} -->")[2]
        with open(path, "w") as f:
            f.write(head + f"<!-- {MARKER} -->\n" + table + f"<!-- /{MARKER} -->" + tail)
        print(table)
