"""Figures, when matplotlib is installed (it is optional): the training curves of a run's log.jsonl
(Fig. 7's rewards, KL, length, the held-out scores) and an evaluation's Section-3 diagnostics."""
import os
import sys

from mer.run import read_log


def pyplot():
    """matplotlib's pyplot (Agg), or None with a hint when it is not installed (it is optional)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        return plt
    except ImportError:
        print("(pip install matplotlib for the PNG figures)", file=sys.stderr)
        return None


TRAINING_PANELS = (("rewards", {"recall": "R_R", "precision": "R_P", "format": "format"}),
                   ("KL to the reference", {"kl": "KL"}), ("completion tokens", {"completion_len": "length"}),
                   ("token entropy (nats)", {"entropy": "entropy"}),
                   ("shares", {"clip_low": "clipped low", "clip_high": "clipped high", "truncated": "truncated",
                               "zero_std_groups": "zero-std groups"}),
                   ("SFT loss", {"loss": "loss"}))


def plot_training(log, path):
    """Fig.-7-style curves of a training log.jsonl as a PNG at `path` (GRPO: R_R, R_P and format,
    KL, completion length, the held-out scores when validated; SFT: the loss), during or after training. Returns `path`, or None
    without matplotlib."""
    if not os.path.isfile(log):
        raise SystemExit(f"{log}: no such file")
    records = read_log(log)
    rows = [r for r in records if "step" in r and "event" not in r]
    if not rows:
        raise SystemExit(f"{log}: no training step logged yet")
    grpo = "recall" in rows[0]
    panels = [(t, {k: v for k, v in keys.items() if k in rows[0]}, rows) for t, keys in TRAINING_PANELS
              if grpo != (t == "SFT loss") and any(k in rows[0] for k in keys)]  # older logs lack some keys
    val = [r for r in records if r.get("event") == "validation"]
    if val:  # train_grpo.py --val_samples: greedy slow mode on held-out samples
        panels.append(("held-out, greedy slow (%)", {"val_f1": "EW-F1", "val_precision": "P", "val_recall": "R"}, val))
    plt = pyplot()
    if plt is None:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.2), squeeze=False)
    for ax, (title, keys, points) in zip(axes[0], panels):
        for key, label in keys.items():
            ax.plot([r["step"] for r in points], [r[key] for r in points], label=label)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def plot_diagnostics(results, out_dir):
    """Fig. 3-style diagnostics of an evaluation's results (diagnostics.png in `out_dir`) when
    matplotlib exists: fast - slow, categories per answer, conf on the ground truth, margin."""
    names = [n for n, r in results.items() if r["task"] != "sentiment" and "slow" in r and "fast" in r]
    plt = pyplot() if names else None
    if plt is not None:
        fig, ax = plt.subplots(1, 4, figsize=(16, 3.5))
        x = range(len(names))
        for i, k in enumerate(("recall", "precision", "f1")):
            ax[0].bar([j + 0.25 * i for j in x], [results[n]["delta_fast_minus_slow"].get(k, 0) for n in names],
                      0.25, label=f"delta {k}")
        ax[0].set_title("(a) fast - slow")
        for col, (key, title) in enumerate((("avg_categories", "(b) categories per answer"),
                                             ("conf_gt", "(c) conf on ground truth"), ("margin", "(d) margin")), 1):
            for i, mode in enumerate(("fast", "slow")):
                ax[col].bar([j + 0.4 * i for j in x], [results[n][mode].get(key) or 0 for n in names], 0.4, label=mode)
            ax[col].set_title(title)
        for a in ax:
            a.set_xticks(list(x))
            a.set_xticklabels(names, fontsize=8)
            a.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, "diagnostics.png"), dpi=100)
