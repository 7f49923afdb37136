"""MER-UniBench metrics (Eq. 36-40, WAF) and the evaluation command.

Score predictions that already exist (no model needed):
    python evaluate.py --preds=PRED.csv --labels=LABELS.csv --task=fine
    python evaluate.py --preds=PRED.csv --labels=LABELS.csv --task=basic --wheels=path/to/official
Both CSVs have the columns `name,openset` (for --task=sentiment the labels have `name,valence`).
The last line printed is one JSON object with the scores in percent. The sentiment mapping of
emotion words is POSITIVE/NEGATIVE below (offline and deterministic).
"""
import csv
import json
import sys

import wheel
from mer import configure

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


# ---------------------------------------------------------------------------------------
# Files

def read_name_column_csv(path, column):
    """{name: value} from a CSV with the columns `name` and `column`; errors name file and row."""
    try:
        f = open(path, newline="", encoding="utf-8")
    except OSError as e:
        raise SystemExit(f"{path}: cannot open ({e.strerror})")
    with f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "name" not in reader.fieldnames or column not in reader.fieldnames:
            raise SystemExit(f"{path}: needs the columns name,{column}; found {reader.fieldnames}")
        out = {}
        for i, row in enumerate(reader, start=2):
            name = (row["name"] or "").strip()
            if not name:
                raise SystemExit(f"{path}, row {i}: empty name; every row needs the sample's name")
            if name in out:
                raise SystemExit(f"{path}, row {i}: name {name!r} appears twice; keep one row per sample")
            out[name] = row[column] if row[column] is not None else ""
    if not out:
        raise SystemExit(f"{path}: no rows")
    return out


def _is_float(text):
    try:
        float(text)
        return True
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
    preds = {n: wheel.string_to_list(v) for n, v in read_name_column_csv(preds_path, "openset").items()}
    if task == "sentiment":
        raw = read_name_column_csv(labels_path, "valence")
        try:
            valences = {n: float(v) for n, v in raw.items()}
        except ValueError:
            bad = next(n for n, v in raw.items() if not _is_float(v))
            raise SystemExit(f"{labels_path}: valence of {bad!r} is {raw[bad]!r}, not a number")
        report_mismatch(preds, valences, preds_path, labels_path)
        names = list(valences)
        scores = [sentiment_score(preds.get(n, []), wheels) for n in names]
        return {"waf": round(waf(scores, [valences[n] for n in names]), 4), "n": len(names)}
    labels = {n: wheel.string_to_list(v) for n, v in read_name_column_csv(labels_path, "openset").items()}
    report_mismatch(preds, labels, preds_path, labels_path)
    if task == "fine":
        s = ew_scores(preds, labels, wheels)
        return {"f1": round(s["f1"], 4), "precision": round(s["precision"], 4), "recall": round(s["recall"], 4),
                "n": s["n"]}
    if task == "basic":
        h, s = hit_rate(preds, labels, wheels), ew_scores(preds, labels, wheels)
        return {"hit": round(h["hit"], 4), "f1": round(s["f1"], 4), "n": h["n"]}
    raise SystemExit(f"--task must be fine, basic or sentiment, not {task!r}")


if __name__ == "__main__":
    configure(globals())
    if PREDS or LABELS:
        if not (PREDS and LABELS):
            raise SystemExit("score-only mode needs both --preds=PRED.csv and --labels=LABELS.csv")
        print(json.dumps(score_files(PREDS, LABELS, TASK, WHEELS)))
    else:
        raise SystemExit("usage: python evaluate.py --preds=PRED.csv --labels=LABELS.csv --task=fine|basic|sentiment")
