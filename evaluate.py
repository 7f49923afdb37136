"""MER-UniBench metrics (Eq. 36-40, WAF, the sentiment mapping), Section 3's diagnostics, the
Table-3 means, and the evaluation script (the model side lives in mer/generation.py).

Evaluate a model on the bundled test splits in both modes (default checkpoint: out/grpo/last,
else out/sft/last, else the base smollm2):
    python evaluate.py
    python evaluate.py --ckpt=out/sft/last --splits=test_fine --modes=slow
    python evaluate.py --splits=goemotions/test_fine,goemotions/test_basic,goemotions/test_sentiment
    python evaluate.py --splits=ovmerd:/data/ovmerd,mer2023:/data/mer2023,mosi:/data/mosi
    python evaluate.py --splits=basic:my_clips.jsonl   # TASK: says how a .jsonl is scored (else fine,
                                                       # or sentiment when its samples have only valence)
It writes OUT_DIR/preds_{split}_{mode}.csv (name,openset,mode,text), labels_{split}.csv,
summary.json and, with matplotlib installed, diagnostics.png and training.png.

Score predictions that already exist (no model needed):
    python evaluate.py --preds=PRED.csv --labels=LABELS.csv --task=fine
    python evaluate.py --preds=PRED.csv --labels=LABELS.csv --task=basic --wheels=path/to/official
Both CSVs have the columns `name,openset` (for --task=sentiment the labels have `name,valence`).
The last line printed is one JSON object with the scores in percent. The sentiment mapping of
emotion words is POSITIVE/NEGATIVE below (offline and deterministic).

Draw the training curves of a run at any time (training.png next to the log):
    python evaluate.py --plot=out/grpo/log.jsonl
"""
import json
import math
import os
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: idle threads sleep, a busy CPU costs 1.5x not 2.8x

import rewards  # noqa: E402
import wheel  # noqa: E402
from mer import checkpoints, data, generation, models, plots, prompts, run  # noqa: E402

# harness
CKPT = ""           # checkpoint folder or model name; empty: out/grpo/last, else out/sft/last, else smollm2
SPLITS = "test_fine,test_basic,test_sentiment"  # bundled splits, .jsonl files, KIND:DIR, TASK:SPEC (mer.data.load_samples)
MODES = "fast,slow"
OUT_DIR = "out/eval"
MAX_SAMPLES = 0     # per split (0: all)
BATCH_SIZE = 16
MAX_NEW_TOKENS = 192  # slow mode; fast mode stops at the answer
FAST_MAX_NEW_TOKENS = 48
MAX_PROMPT_TOKENS = 1024  # a longer text prompt gets its subtitle cut, with a warning (0: no limit)
DIAGNOSTICS = True  # confidences (Eq. 1, 2) at the model's own answer words, read while decoding
JUDGE = ""          # a model that maps emotion words to sentiment (paper: Qwen2.5-7B-Instruct); empty: wheel mapping
GRPO_LOG = "out/grpo/log.jsonl"  # plotted as training dynamics when present
PLOT = ""          # a log.jsonl: only draw its training curves (training.png next to it), at any time
PRECISION = "auto"  # auto | bf16 | fp32
THREADS = 0
SKIP_MISSING_MEDIA = False
# score-only inputs
PREDS = ""          # CSV name,openset of predictions
LABELS = ""         # CSV name,openset (fine, basic) or name,valence (sentiment)
TASK = "fine"       # fine | basic | sentiment
WHEELS = ""         # folder of wheels: ours (data/wheels) when empty, or the official files


# ---------------------------------------------------------------------------------------
# Metrics: pure functions of {name: [words]} dicts and a Wheels object

def ew_precision_recall(preds, labels, wheels, k):
    """Eq. (36)/(37) for wheel k: P = mean_i |G n Y^| / |Y^|, R = mean_i |G n Y^| / |G|.

    Samples whose ground truth maps to nothing in wheel k are skipped; an empty mapped
    prediction counts P = R = 0. A label with no prediction counts as an empty prediction.
    Returns (P, R, n samples scored)."""
    p_sum = r_sum = n = 0
    for name, gt_words in labels.items():
        gt = wheel.map_words(gt_words, wheels, k)
        if not gt:
            continue
        pred = wheel.map_words(preds.get(name, []), wheels, k)
        n += 1
        if pred:
            p_sum += len(gt & pred) / len(pred)
            r_sum += len(gt & pred) / len(gt)
    return (p_sum / n, r_sum / n, n) if n else (0.0, 0.0, 0)


def ew_f1(p, r):
    """Eq. (38): F = 2PR / (P + R) from the averaged P and R (0 when both are 0)."""
    return 0.0 if p + r == 0 else 2 * p * r / (p + r)


def ew_scores(preds, labels, wheels):
    """Eq. (39): EW-F1, precision and recall averaged over the wheels, in percent."""
    per = [ew_precision_recall(preds, labels, wheels, k) for k in range(len(wheels.level1))]
    return {"f1": 100 * sum(ew_f1(p, r) for p, r, _ in per) / len(per),
            "precision": 100 * sum(p for p, _, _ in per) / len(per),
            "recall": 100 * sum(r for _, r, _ in per) / len(per),
            "n": len(labels), "n_per_wheel": [n for _, _, n in per]}


def hit_rate(preds, labels, wheels):
    """Eq. (40): HIT^k = mean_i 1[G_k(y_i) in G_k(Y^_i)], averaged over wheels, in percent.
    `labels` holds one word per sample; samples whose label maps to nothing are skipped."""
    rates, counts = [], []
    for k in range(len(wheels.level1)):
        hits = n = 0
        for name, words in labels.items():
            gt = wheel.G_w(words[0], wheels, k) if words else None
            if gt is None:
                continue
            n += 1
            hits += gt in wheel.map_words(preds.get(name, []), wheels, k)
        rates.append(hits / n if n else 0.0)
        counts.append(n)
    return {"hit": 100 * sum(rates) / len(rates), "n": len(labels), "n_per_wheel": counts}


def weighted_f1(y_true, y_pred):
    """Support-weighted mean of the per-class F1 scores (sklearn's average='weighted')."""
    total, score = len(y_true), 0.0
    for c in set(y_true):
        tp = sum(t == c and p == c for t, p in zip(y_true, y_pred))
        fp = sum(t != c and p == c for t, p in zip(y_true, y_pred))
        fn = sum(t == c and p != c for t, p in zip(y_true, y_pred))
        f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
        score += f1 * sum(t == c for t in y_true) / total
    return score


# Default sentiment mapping (offline, deterministic): the polarity of a word is the sign of the sum,
# over the wheels, of the polarity of its level-1 category. Covers our wheels and the official ones.
POSITIVE = {"happy", "joyful", "joy", "powerful", "peaceful", "trusting", "loving", "proud", "interested",
            "anticipating", "genius"}
NEGATIVE = {"mad", "angry", "anger", "scared", "fearful", "fear", "afraid", "sad", "disgusted", "disgust", "bad",
            "ashamed"}


def sentiment_score(words, wheels):
    """Predicted sentiment of a list of emotion words: 1 positive, -1 negative, 0 neutral (no
    polar word, or as many positive as negative). Surprise-like categories are neutral."""
    total = 0
    for w in words:
        cats = [wheel.G_w(w, wheels, k) for k in range(len(wheels.level1))]
        polarity = sum((c in POSITIVE) - (c in NEGATIVE) for c in cats)
        total += (polarity > 0) - (polarity < 0)
    return (total > 0) - (total < 0)


def waf(pred_scores, true_valences):
    """Sentiment WAF (MER-UniBench): drop samples with true valence 0, then the weighted F1 of
    (true > 0) against (pred > 0), in percent; a neutral prediction (0) counts as negative."""
    pairs = [(t > 0, p > 0) for p, t in zip(pred_scores, true_valences) if t != 0]
    if not pairs:
        return 0.0
    return 100 * weighted_f1([t for t, _ in pairs], [p for _, p in pairs])


def refuse_all_neutral(valences, where):
    """WAF leaves out valence 0: a split whose every valence is 0 scores nothing (not 0.00)."""
    if not any(v != 0 for v in valences):
        raise SystemExit(f"{where}: every valence is 0 (neutral), and the sentiment score leaves neutral samples "
                         f"out, so nothing can be scored")


# ---------------------------------------------------------------------------------------
# Files

def _is_number(text):
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def report_mismatch(preds, labels, preds_path, labels_path):
    """Print to stderr the names that only one side has (never silently ignored)."""
    missing = [n for n in labels if n not in preds]
    extra = [n for n in preds if n not in labels]
    if missing:
        print(f"warning: {len(missing)} labelled samples have no prediction in {preds_path} and score as "
              f"empty predictions: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}", file=sys.stderr)
    if extra:
        print(f"warning: {len(extra)} predictions have no label in {labels_path} and are not scored: "
              f"{', '.join(extra[:5])}{' ...' if len(extra) > 5 else ''}", file=sys.stderr)
    return missing, extra


def score_files(preds_path, labels_path, task, wheels_dir=""):
    """The score-only command: scores of a prediction CSV against a label CSV, in percent."""
    wheels = wheel.load_wheels(wheels_dir or None)
    preds = {n: wheel.string_to_list(v) for n, v in data.read_name_column_csv(preds_path, "openset").items()}
    if task == "sentiment":
        raw = data.read_name_column_csv(labels_path, "valence")
        bad = [n for n, v in raw.items() if not _is_number(v)]
        if bad:
            raise SystemExit(f"{labels_path}: valence of {bad[0]!r} is {raw[bad[0]]!r}, not a finite number")
        valences = {n: float(v) for n, v in raw.items()}
        refuse_all_neutral(valences.values(), labels_path)
        report_mismatch(preds, valences, preds_path, labels_path)
        names = list(valences)
        scores = [sentiment_score(preds.get(n, []), wheels) for n in names]
        return {"waf": round(waf(scores, [valences[n] for n in names]), 4), "n": len(names)}
    labels = {n: wheel.string_to_list(v) for n, v in data.read_name_column_csv(labels_path, "openset").items()}
    report_mismatch(preds, labels, preds_path, labels_path)
    if task not in ("fine", "basic"):
        raise SystemExit(f"--task must be fine, basic or sentiment, not {task!r}")
    s = ew_scores(preds, labels, wheels)
    h = hit_rate(preds, labels, wheels) if task == "basic" else None
    scored = h["n_per_wheel"] if h else s["n_per_wheel"]
    report_skipped(scored, len(labels), labels_path)
    if task == "fine":
        return {"f1": round(s["f1"], 4), "precision": round(s["precision"], 4), "recall": round(s["recall"], 4),
                "n": s["n"], "n_scored_per_wheel": scored}
    return {"hit": round(h["hit"], 4), "f1": round(s["f1"], 4), "n": len(labels), "n_scored_per_wheel": scored}


def report_skipped(scored, n, labels_path):
    """Samples whose label maps to nothing in a wheel are not scored there (MER-UniBench's rule):
    say how many, and refuse when no sample is scored at all (a score of 0 would mean nothing)."""
    if not any(scored):
        raise SystemExit(f"{labels_path}: no label maps to a category in any wheel (empty, 'neutral' or unknown "
                         f"words), so nothing can be scored; check the labels or pass --wheels=DIR")
    if min(scored) < n:
        print(f"warning: {labels_path}: per wheel {scored} of {n} samples are scored; the others' labels map to "
              f"nothing there and are skipped", file=sys.stderr)


# ---------------------------------------------------------------------------------------
# Diagnostics (Section 3): pure functions

def answer_category_confidences(word_logprobs, word_tables):
    """{category: conf} of one answer in one wheel: Eq. (1) at the first token of each answer word,
    from the next-token log-probs at those words (`word_logprobs` [n_words, vocab]; `word_tables[j]`
    the V(c) table for word j in context), averaged over the word positions."""
    per_word = [rewards.category_confidences(word_logprobs[j], word_tables[j]) for j in range(len(word_logprobs))]
    return {c: sum(float(p[c]) for p in per_word) / len(per_word) for c in per_word[0]}


def answer_confidences(word_logprobs, word_tables, gt):
    """Eq. (1) and (2) for one answer in one wheel (answer_category_confidences): (conf_gt, margin),
    the mean conf over ground-truth categories and Eq. (2). None when the answer has no word or
    the ground truth no category."""
    if not gt or len(word_logprobs) == 0:
        return None
    conf = answer_category_confidences(word_logprobs, word_tables)
    pos = [conf[c] for c in gt if c in conf]
    margin = rewards.confidence_margin(conf, gt)
    if not pos or margin is None:
        return None
    return sum(pos) / len(pos), margin


def retained_hit_rate(fast_preds, slow_preds, labels, wheels):
    """Fig. 8: of the ground-truth categories that fast thinking hits, the fraction that slow thinking
    keeps, pooled over samples, averaged over wheels, in percent."""
    rates = []
    for k in range(len(wheels.level1)):
        kept = hit = 0
        for name, gt_words in labels.items():
            gt = wheel.map_words(gt_words, wheels, k)
            fast_hit = gt & wheel.map_words(fast_preds.get(name, []), wheels, k)
            hit += len(fast_hit)
            kept += len(fast_hit & wheel.map_words(slow_preds.get(name, []), wheels, k))
        if hit:
            rates.append(kept / hit)
    return 100 * sum(rates) / len(rates) if rates else 0.0


def average_categories(preds, names, wheels):
    """Fig. 3b: the mean number of level-1 categories per prediction, averaged over wheels."""
    per_wheel = [sum(len(wheel.map_words(preds.get(n, []), wheels, k)) for n in names) / len(names)
                 for k in range(len(wheels.level1))]
    return sum(per_wheel) / len(per_wheel)


def confidence_diagnostics(tokenizer, samples, teacher, task, wheels):
    """Fig. 3c/3d: mean conf on ground-truth categories (Eq. 1) and mean margin (Eq. 2), over the
    samples whose answer parses, averaged over the wheels (`teacher`: word_logprobs per sample)."""
    tables = prompts.category_tables(tokenizer, wheels)
    conf_gt, margin = [], []
    for s, found in zip(samples, teacher):
        if found is None:
            continue
        words, lp = found
        gt_words = data.label_words(s, task)
        per_wheel = [answer_confidences(lp, [tables[(k, w.space)] for w in words], wheel.map_words(gt_words, wheels, k))
                     for k in range(len(wheels.level1))]
        per_wheel = [p for p in per_wheel if p is not None]
        if per_wheel:
            conf_gt.append(sum(c for c, _ in per_wheel) / len(per_wheel))
            margin.append(sum(m for _, m in per_wheel) / len(per_wheel))
    return {"conf_gt": sum(conf_gt) / len(conf_gt) if conf_gt else None,
            "margin": sum(margin) / len(margin) if margin else None, "n_confidence": len(conf_gt)}


def score(task, preds, samples, wheels, sentiments=None):
    """Scores of one split in percent: fine -> f1/precision/recall; basic -> hit/f1; sentiment -> waf.
    `preds` {name: [words]}; `sentiments` {name: -1/0/1} overrides the wheel mapping (judge)."""
    names = [s["name"] for s in samples]
    if task == "sentiment":
        scores = [sentiments[n] if sentiments else sentiment_score(preds.get(n, []), wheels) for n in names]
        return {"waf": waf(scores, [s["valence"] for s in samples]), "n": len(names)}
    labels = {s["name"]: data.label_words(s, task) for s in samples}
    if task == "basic":
        h = hit_rate(preds, labels, wheels)
        return {"hit": h["hit"], "f1": ew_scores(preds, labels, wheels)["f1"], "n": len(names),
                "n_scored_per_wheel": h["n_per_wheel"]}
    s = ew_scores(preds, labels, wheels)
    return {"f1": s["f1"], "precision": s["precision"], "recall": s["recall"], "n": len(names),
            "n_scored_per_wheel": s["n_per_wheel"]}


def main_metric(task):
    """The metric a task is ranked by in the summary table."""
    return {"fine": "f1", "basic": "hit", "sentiment": "waf"}[task]


def table_means(results, mode):
    """Table 3's R-Mean (the recognition splits) and Mean (all splits) of one mode, two ways: with F1
    for the basic-emotion splits ("f1": the paper's "unified F1 metrics") and with their hit-rate
    ("hit": MER-UniBench's main metric). Fine-grained splits give EW-F1, sentiment WAF, in both."""
    out = {}
    for basic in ("f1", "hit"):
        vals, rec = [], []
        for r in results.values():
            task = r["task"]
            v = r[mode]["scores"][basic if task == "basic" else main_metric(task)]
            vals.append(v)
            if task != "sentiment":
                rec.append(v)
        out[f"r_mean_{basic}"] = sum(rec) / len(rec) if rec else None
        out[f"mean_{basic}"] = sum(vals) / len(vals)
    return out


def table(results, modes):
    """A Table-3-style markdown table: splits as columns (basic-emotion splits with HIT and F1), one
    row per mode, then R-Mean and Mean F1-based (the paper's Table 3) and HIT-based (MER-UniBench)."""
    cols = []
    for name, r in results.items():
        cols += [(name, main_metric(r["task"]))] + ([(name, "f1")] if r["task"] == "basic" else [])
    label = {"f1": "F1", "hit": "HIT", "waf": "WAF"}
    lines = ["| mode | " + " | ".join(f"{n} ({label[m]})" for n, m in cols)
             + " | R-Mean (F1) | Mean (F1) | R-Mean (HIT) | Mean (HIT) |", "|---" * (len(cols) + 5) + "|"]
    fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    for mode in modes:
        m = table_means(results, mode)
        vals = [results[n][mode]["scores"][k] for n, k in cols]
        lines.append(f"| {mode} | " + " | ".join(fmt(v) for v in vals + [m["r_mean_f1"], m["mean_f1"], m["r_mean_hit"],
                                                                         m["mean_hit"]]) + " |")
    return "\n".join(lines)


def evaluate(model, tokenizer, splits, modes, wheels, out_dir, autocast, judge=None, processor=None, head=None):
    """Run every split in every mode, write predictions and labels; after each split, summary.json
    (`head`, then the results and means of the splits done: a later split that fails loses
    nothing). Returns the summary."""
    os.makedirs(out_dir, exist_ok=True)
    results, t_start = {}, time.time()
    diagnostic_ids = prompts.table_token_ids(prompts.category_tables(tokenizer, wheels))  # what Eq. (1) reads
    for spec in splits:
        samples = data.load_samples(spec, SKIP_MISSING_MEDIA)
        samples = prompts.fit_prompts(samples[:MAX_SAMPLES] if MAX_SAMPLES else samples, tokenizer, MAX_PROMPT_TOKENS)
        name, task = data.split_name(spec), data.task_of(spec, samples)
        names = [s_["name"] for s_ in samples]
        if len(set(names)) < len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise SystemExit(f"{spec}: sample name {dup!r} appears {names.count(dup)} times (samples "
                             f"{[i + 1 for i, n in enumerate(names) if n == dup]}); names must be unique")
        unmapped = data.report_unmapped(spec, samples, wheels, task) if task != "sentiment" else None
        if task == "sentiment":
            bad = [s["name"] for s in samples if "valence" not in s]
            if bad:
                raise SystemExit(f"{spec}: sentiment samples need 'valence'; {bad[0]!r} has none")
            refuse_all_neutral([s["valence"] for s in samples], spec)
            data.write_csv(os.path.join(out_dir, f"labels_{name}.csv"), ["name", "valence"],
                      [[s["name"], s["valence"]] for s in samples])
        else:
            data.write_csv(os.path.join(out_dir, f"labels_{name}.csv"), ["name", "openset"],
                      [[s["name"], s.get("basic") or s["openset"] if task == "basic" else s["openset"]] for s in samples])
        results[name] = {"task": task} if unmapped is None else {"task": task, "unmapped_label_words": unmapped}
        for mode in modes:
            t0 = time.time()
            limit = MAX_NEW_TOKENS if mode == "slow" else FAST_MAX_NEW_TOKENS
            diagnose = DIAGNOSTICS and task != "sentiment"
            outputs = generation.generate(model, tokenizer, samples, mode, limit, BATCH_SIZE, autocast, processor,
                                          diagnostic_ids if diagnose else None, f"{name} {mode}")
            texts = generation.completion_texts(tokenizer, [c for _, c, _ in outputs], mode)
            opensets = [", ".join(wheel.parse_answer(t)) for t in texts]
            data.write_csv(os.path.join(out_dir, f"preds_{name}_{mode}.csv"), ["name", "openset", "mode", "text"],
                      [[s["name"], o, mode, t] for s, o, t in zip(samples, opensets, texts)])
            # score exactly what the CSV holds, so the score-only command reproduces these numbers
            preds = {s["name"]: wheel.string_to_list(o) for s, o in zip(samples, opensets)}
            sentiments = None
            if task == "sentiment" and judge is not None:
                judged = generation.judge_sentiment(*judge, [preds[s["name"]] for s in samples])
                sentiments = {s["name"]: v for s, v in zip(samples, judged)}
            entry = {"scores": score(task, preds, samples, wheels, sentiments),
                     "format": sum(rewards.format_reward(t, wheel.parse_answer(t), s.get("subtitle", ""),
                                                         require_think=mode == "slow") for s, t in zip(samples, texts))
                               / len(samples) * 100,
                     "avg_categories": average_categories(preds, [s["name"] for s in samples], wheels),
                     "seconds": round(time.time() - t0, 1), "preds": preds}
            if diagnose:
                entry.update(confidence_diagnostics(tokenizer, samples, [t for _, _, t in outputs], task, wheels))
            results[name][mode] = entry
        if "fast" in modes and "slow" in modes and task != "sentiment":
            labels = {s["name"]: data.label_words(s, task) for s in samples}
            fast, slow = results[name]["fast"], results[name]["slow"]
            results[name]["delta_fast_minus_slow"] = {
                k: fast["scores"][k] - slow["scores"][k] for k in ("f1", "precision", "recall", "hit")
                if k in fast["scores"]}
            results[name]["retained_hit_rate"] = retained_hit_rate(fast["preds"], slow["preds"], labels, wheels)
        for mode in modes:
            results[name][mode].pop("preds")
        summary = {**(head or {}), "seconds": round(time.time() - t_start, 1), "results": results,
                   "means": {mode: table_means(results, mode) for mode in modes}}
        with open(os.path.join(out_dir, "summary.json.tmp"), "w") as f:
            json.dump(summary, f, indent=1)
        os.replace(os.path.join(out_dir, "summary.json.tmp"), os.path.join(out_dir, "summary.json"))
    return summary


def validate(model, tokenizer, samples, wheels, autocast, max_new_tokens, batch_size, processor=None):
    """Greedy slow-mode EW-F1, precision, recall and format (percent) of `samples` (fine task), no
    files written: the held-out learning curve of a GRPO run (train_grpo.py --val_samples)."""
    outputs = generation.generate(model, tokenizer, samples, "slow", max_new_tokens, batch_size, autocast, processor)
    texts = generation.completion_texts(tokenizer, [c for _, c, _ in outputs], "slow")
    preds = {s["name"]: wheel.parse_answer(t) for s, t in zip(samples, texts)}
    scores = score("fine", preds, samples, wheels)
    fmt = sum(rewards.format_reward(t, preds[s["name"]], s.get("subtitle", "")) for s, t in zip(samples, texts))
    return {"val_f1": scores["f1"], "val_precision": scores["precision"], "val_recall": scores["recall"],
            "val_format": 100 * fmt / len(samples)}


if __name__ == "__main__":
    run.configure(globals())
    if PLOT:
        path = plots.plot_training(PLOT, os.path.join(os.path.dirname(PLOT), "training.png"))
        print(f"wrote {path}" if path else "nothing written: matplotlib is not installed")
    elif PREDS or LABELS:
        if not (PREDS and LABELS):
            raise SystemExit("score-only mode needs both --preds=PRED.csv and --labels=LABELS.csv")
        print(json.dumps(score_files(PREDS, LABELS, TASK, WHEELS)))
    else:
        import torch
        splits, modes = [s for s in SPLITS.split(",") if s], [m for m in MODES.split(",") if m]
        bad = [m for m in modes if m not in prompts.PREFIX]
        run.check_settings([  # before any model loads
            (splits, "--splits: name at least one split"),
            (modes and not bad, f"--modes: {bad[0]!r} is not fast or slow" if bad else "--modes: fast, slow or both"),
            (MAX_SAMPLES >= 0 and THREADS >= 0, f"--max_samples={MAX_SAMPLES}, --threads={THREADS}: 0 (all, default) or more"),
            (min(BATCH_SIZE, MAX_NEW_TOKENS, FAST_MAX_NEW_TOKENS) >= 1,
             "--batch_size, --max_new_tokens and --fast_max_new_tokens must be >= 1"),
            (PRECISION in ("auto", "bf16", "fp32"), f"--precision={PRECISION!r}: choose auto, bf16 or fp32"),
            (not os.path.isfile(OUT_DIR), f"--out_dir={OUT_DIR}: a file, not a folder")])
        if THREADS:
            torch.set_num_threads(THREADS)
        ckpt = checkpoints.find_model(CKPT)
        bf16 = run.use_bf16(PRECISION)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        autocast = lambda: torch.autocast(device, dtype=torch.bfloat16, enabled=bf16)  # noqa: E731
        print(f"evaluating {ckpt} ({'bf16 autocast' if bf16 else 'fp32'}, {device})")
        model, tokenizer = models.load_model(ckpt)
        processor = models.load_processor(ckpt)
        model.to(device).eval()
        judge = None
        if JUDGE:
            judge_model, judge_tok = models.load_model(JUDGE)
            judge = (judge_model.to(device).eval(), judge_tok)
        summary = evaluate(model, tokenizer, splits, modes, wheel.load_wheels(WHEELS or None), OUT_DIR, autocast,
                           judge, processor, {"ckpt": ckpt, "wheels": WHEELS or "ours",
                                              "sentiment": JUDGE or "wheel mapping"})
        results = summary["results"]
        print(table(results, modes))
        for name, r in results.items():
            for mode in modes:
                d = r[mode]
                conf = "" if d.get("conf_gt") is None else f", conf_gt {d['conf_gt']:.2f}, margin {d['margin']:.2f}"
                print(f"{name} {mode}: format {d['format']:.1f}%, categories/answer {d['avg_categories']:.2f}{conf}")
            if "delta_fast_minus_slow" in r:
                deltas = ", ".join(f"{k} {v:+.2f}" for k, v in r["delta_fast_minus_slow"].items())
                print(f"{name} fast - slow: {deltas}; retained hit-rate {r['retained_hit_rate']:.1f}%")
        plots.plot_diagnostics(results, OUT_DIR)
        if os.path.isfile(GRPO_LOG):
            plots.plot_training(GRPO_LOG, os.path.join(OUT_DIR, "training.png"))
        print(f"wrote {OUT_DIR}/summary.json and the prediction CSVs ({summary['seconds']} s)")
