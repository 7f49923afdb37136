"""Samples: the bundled JSONL splits, `.jsonl` files and the real MER-Caption+ / OV-MERD+ /
MER-UniBench layouts, each sample checked when read (errors name the file, row and fix); a fixed
random selection, and the endless stream of batches a training run (and its resume) draws from.

A sample is a dict: `name`, `subtitle`, `openset` (comma-separated emotion words) and, when
known, `video`/`audio` (clues as text), `reason`, `basic`, `valence`, `video_path`, `audio_path`.
"""
import csv
import io
import json
import math
import os
import random
import sys

import wheel
from mer import layouts

DATA_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data")
TEXT_FIELDS = ("subtitle", "openset", "reason", "basic", "video", "audio", "video_path", "audio_path")


def check_sample(s, where, need=()):
    """Field checks of one sample, before any model loads (errors name `where`, the file and line):
    a non-empty string `name`; string text fields; `openset` (or a finite `valence`); and the
    non-empty fields of `need` (training needs `openset`)."""
    if not isinstance(s, dict) or not isinstance(s.get("name"), str) or not s["name"].strip():
        raise SystemExit(f"{where}: each sample must be an object with a non-empty string 'name'")
    for k in TEXT_FIELDS:
        if k in s and not isinstance(s[k], str):
            hint = "one comma-separated string of emotion words" if k in ("openset", "basic") else "a string"
            raise SystemExit(f"{where} ({s['name']}): {k!r} is {json.dumps(s[k])[:60]}; write it as {hint}")
    v = s.get("valence")
    if "valence" in s and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)):
        raise SystemExit(f"{where} ({s['name']}): 'valence' is {json.dumps(v)[:60]}; it must be a finite number")
    if "openset" not in s and "valence" not in s:
        raise SystemExit(f"{where} ({s['name']}): needs 'openset' (emotion words) or 'valence'")
    for k in need:
        if not s.get(k, "").strip():
            raise SystemExit(f"{where} ({s['name']}): this run needs a non-empty {k!r}")


def read_jsonl(path, need=()):
    """Samples from a JSONL file (UTF-8, a BOM is allowed), each checked by check_sample."""
    if not os.path.isfile(path):
        raise SystemExit(f"{path}: no such file")
    samples, lines = [], {}
    with open(path, "rb") as f:
        for i, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8-sig" if i == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise SystemExit(f"{path}, line {i}: not UTF-8 (byte {e.start + 1} of the line is "
                                 f"{raw[e.start:e.start + 1]!r}); save the file as UTF-8")
            if not line.strip():
                continue
            try:
                s = json.loads(line)
            except json.JSONDecodeError as e:
                raise SystemExit(f"{path}, line {i}: not valid JSON ({e.msg})")
            if isinstance(s, list):
                raise SystemExit(f"{path}, line {i}: a JSON array; the file must hold JSON lines: one sample object "
                                 f"per line")
            check_sample(s, f"{path}, line {i}", need)
            if s["name"] in lines:
                raise SystemExit(f"{path}, line {i}: the name {s['name']!r} is taken by line {lines[s['name']]}; "
                                 f"names must be unique")
            lines[s["name"]] = i
            samples.append(s)
    if not samples:
        raise SystemExit(f"{path}: no samples")
    return samples


def load_split(split, need=()):
    """A bundled split by name (train, test_fine, test_basic, test_sentiment) or a JSONL path."""
    path = split if split.endswith(".jsonl") else os.path.join(DATA_DIR, f"{split}.jsonl")
    if not split.endswith(".jsonl") and not os.path.isfile(path):  # name what was typed, not the path tried
        bundled = sorted(os.path.relpath(os.path.join(d, f), DATA_DIR)[:-6] for d, _, fs in os.walk(DATA_DIR)
                         for f in fs if f.endswith(".jsonl"))
        what = "a folder" if os.path.isdir(split) else "not JSON lines (.jsonl)" if os.path.isfile(split) else \
            "no bundled split of that name"
        raise SystemExit(f"{split}: {what}; pass a .jsonl file (one sample object per line), a bundled split "
                         f"({', '.join(bundled)}) or KIND:DIR for a real layout")
    return read_jsonl(path, need)


def read_name_column_csv(path, column):
    """{name: value} from a CSV with the columns `name` and `column` (UTF-8, a BOM is allowed);
    errors name the file and row: bytes that are not UTF-8, a quote left open, a row with more
    fields than the header (an unquoted comma inside the words), an empty or repeated name."""
    try:
        data = open(path, "rb").read()
    except OSError as e:
        raise SystemExit(f"{path}: cannot open ({e.strerror})")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise SystemExit(f"{path}, line {line}: not UTF-8 (byte {data[e.start:e.start + 1]!r}); save the file as UTF-8")
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        rows = list(reader)
    except csv.Error as e:
        raise SystemExit(f"{path}, line {reader.line_num}: {e}: a quote opened there is never closed")
    header = [h.strip() for h in rows[0]] if rows else []
    if "name" not in header or column not in header:
        raise SystemExit(f"{path}: needs the columns name,{column}; found {header}")
    out = {}
    for i, row in enumerate(rows[1:], start=2):
        if not any(f.strip() for f in row):
            continue
        if len(row) != len(header):
            raise SystemExit(f"{path}, row {i}: {len(row)} fields for a header of {len(header)}; put words that "
                             f"contain commas in quotes, e.g. s1,\"happy, joyful\"")
        row = dict(zip(header, row))
        name = row["name"].strip()
        if not name:
            raise SystemExit(f"{path}, row {i}: empty name; every row needs the sample's name")
        if name in out:
            raise SystemExit(f"{path}, row {i}: name {name!r} appears twice; keep one row per sample")
        out[name] = row[column]
    if not out:
        raise SystemExit(f"{path}: no rows")
    return out


def check_media_paths(samples, spec, skip_missing_media=False):
    """The samples whose `video_path` / `audio_path` files exist, checked before any model loads: a
    missing file is an error naming the sample, unless skip_missing_media (skipped and counted)."""
    kept, skipped = [], []
    for s in samples:
        missing = [s[k] for k in ("video_path", "audio_path") if s.get(k) and not os.path.isfile(s[k])]
        if missing and not skip_missing_media:
            raise SystemExit(f"{spec} ({s['name']}): no such media file {missing[0]}; fix the path, or pass "
                             f"--skip_missing_media=True to skip such samples")
        (skipped if missing else kept).append(s)
    if skipped:
        print(f"{spec}: skipped {len(skipped)} samples with missing media (first: {skipped[0]['name']})", file=sys.stderr)
        if not kept:
            raise SystemExit(f"{spec}: every sample's media is missing")
    return kept


TASKS = ("fine", "basic", "sentiment")  # a `TASK:` prefix on a split names how evaluate.py scores it


def load_samples(spec, skip_missing_media=False, need=()):
    """Samples from a spec: a bundled split (`train`, `test_fine`, ...), a `.jsonl` path, or a real
    layout written `KIND:DIR` with KIND mercaptionplus, ovmerd or a MER-UniBench set (mer2023, meld, ...).
    A `TASK:` prefix (fine, basic, sentiment) only tells evaluate.py how to score. Every sample is
    checked (check_sample), with the fields of `need` required non-empty."""
    kind, sep, root = spec.partition(":")
    if kind in TASKS:
        return load_samples(root, skip_missing_media, need)
    if sep and spec.endswith(".jsonl") and not os.path.isfile(spec) and os.path.isfile(root):
        raise SystemExit(f"{spec}: unknown prefix {kind + ':'!r}; a .jsonl file may carry a TASK: prefix with TASK in "
                         f"{', '.join(TASKS)}")
    if not sep or spec.endswith(".jsonl"):
        return check_media_paths(load_split(spec, need), spec, skip_missing_media)
    if kind == "mercaptionplus":
        samples = layouts.load_mercaptionplus(root, skip_missing_media)
    elif kind == "ovmerd":
        samples = layouts.load_ovmerd(root, skip_missing_media)
    elif kind in layouts.UNIBENCH:
        samples = layouts.load_unibench(root, kind, skip_missing_media)
    else:
        raise SystemExit(f"unknown data spec {spec!r}: use a split name, a .jsonl file, KIND:DIR with KIND in "
                         f"mercaptionplus, ovmerd, {', '.join(layouts.UNIBENCH)}, or TASK:SPEC with TASK in {', '.join(TASKS)}")
    for s in samples:
        check_sample(s, root, need)
    return samples


# How evaluate.py scores a split: MER-UniBench's sets by name, bundled splits by their suffix
UNIBENCH_TASK = {"ovmerd": "fine", "mer2023": "basic", "mer2024": "basic", "meld": "basic", "iemocap": "basic",
                 "mosi": "sentiment", "mosei": "sentiment", "sims": "sentiment", "simsv2": "sentiment"}


def split_name(spec):
    """A short name for a split spec (it names the prediction files): the kind of KIND:DIR, the
    file name of a .jsonl, or the bundled split with `/` as `_` (goemotions/test_fine ->
    goemotions_test_fine)."""
    if spec.endswith(".jsonl"):
        return os.path.splitext(os.path.basename(spec))[0]
    return spec.partition(":")[0].replace("/", "_")


def task_of(spec, samples):
    """fine | basic | sentiment: a `TASK:` prefix says it; else the MER-UniBench set's task, or a
    bundled split's suffix (test_basic, goemotions/test_sentiment, ...); else the samples' fields
    (only `valence`, no `openset`: sentiment; else fine)."""
    prefix = spec.partition(":")[0]
    if prefix in TASKS:
        return prefix
    if ":" in spec and prefix in UNIBENCH_TASK:
        return UNIBENCH_TASK[prefix]
    if ":" not in spec and not spec.endswith(".jsonl"):
        for task in TASKS:
            if spec.endswith("_" + task):
                return task
    return "sentiment" if all("openset" not in s for s in samples) else "fine"


def label_categories(sample, wheels, ks):
    """The level-1 categories of a sample's `openset` labels, one set per wheel in `ks` (the
    ground truth G of the rewards)."""
    return [wheel.map_words(wheel.split_words(sample["openset"]), wheels, k) for k in ks]


def label_words(sample, task):
    """The ground-truth words of a sample: its basic label for basic tasks, else its openset."""
    return wheel.split_words(sample.get("basic") or sample["openset"] if task == "basic" else sample["openset"])


def write_csv(path, header, rows):
    """Write a CSV atomically (temp file, then rename)."""
    tmp = path + ".tmp"
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    os.replace(tmp, path)


UNMAPPED_WARN = 0.10  # above this share of unmapped label words, the real-data report warns


def report_unmapped(spec, samples, wheels, task="fine"):
    """Warn with a count when some samples' labels map to nothing in any wheel (their rewards are 0
    whatever the model answers) and refuse when no sample's do. For a real layout (`KIND:DIR`) also
    print the share of label words that map to nothing, warn above UNMAPPED_WARN with the fix, and
    return that share; None for bundled splits and .jsonl files."""
    if samples and not any(s.get("openset") or s.get("basic") for s in samples):
        raise SystemExit(f"{spec}: no sample has 'openset' labels (valence only? give the split the prefix sentiment:)")
    lists = [wheel.split_words((s.get("basic") if task == "basic" else None) or s.get("openset") or "") for s in samples]
    blind = wheel.blind_lists(lists, wheels)
    if samples and len(blind) == len(samples):
        raise SystemExit(f"{spec}: no sample's labels map to a category in any wheel of {wheels.source} (e.g. "
                         f"{samples[0]['name']!r}: {samples[0].get('openset')!r}), so nothing can be scored and "
                         f"every reward would be 0; check the labels, or pass --wheels=DIR with the official files")
    if blind:
        s = samples[blind[0]]
        print(f"warning: {spec}: {len(blind)} of {len(samples)} samples have labels that map to nothing in any wheel "
              f"(e.g. {s['name']!r}: {s.get('openset')!r}); their rewards are 0 whatever the model answers",
              file=sys.stderr)
    if ":" not in spec or spec.endswith(".jsonl"):
        return None
    share, unmapped = wheel.coverage([words for words in lists if words], wheels)
    top = ", ".join(w for w, _ in sorted(unmapped.items(), key=lambda t: -t[1])[:8])
    print(f"{spec}: {100 * share:.1f}% of the label words map to nothing in the wheels of {wheels.source}"
          + (f" (most frequent: {top})" if top else ""), file=sys.stderr)
    if share > UNMAPPED_WARN:
        print(f"warning: {spec}: over {100 * UNMAPPED_WARN:.0f}% of the label words are invisible to the rewards and "
              f"metrics; extend data/wheels (python wheel.py --coverage=LABELS.csv lists them) or pass "
              f"--wheels=DIR with the official MER-UniBench files", file=sys.stderr)
    return share


def select(samples, skip=0, take=0, seed=0):
    """A fixed random subset: shuffle with `seed`, drop the first `skip`, keep `take` (0: all).
    SFT takes the first N (take=N) and GRPO the rest (skip=N), as in the paper's split."""
    if not skip and not take:
        return samples
    order = list(samples)
    random.Random(seed).shuffle(order)
    order = order[skip:]
    return order[:take] if take else order


def interleave(a, b):
    """a0, b0, a1, b1, ...: the shorter list cycled to the longer one's length, so that a shuffled
    stream over the result (batch_at) takes half of its samples from each."""
    n = max(len(a), len(b))
    return [s for i in range(n) for s in (a[i % len(a)], b[i % len(b)])]


def batch_at(samples, position, count, seed, rank=0, world=1):
    """(position, sample) pairs for data positions position .. position + count - 1 of an endless
    stream that visits the samples in a fixed shuffle per epoch; this process keeps every
    world-th one from `rank`. It depends on (position, seed) only, so a resumed run sees the
    same batches."""
    out, orders = [], {}
    for p in range(position + rank, position + count, world):
        epoch, i = divmod(p, len(samples))
        if epoch not in orders:
            orders[epoch] = list(range(len(samples)))
            random.Random(seed + epoch).shuffle(orders[epoch])
        out.append((p, samples[orders[epoch][i]]))
    return out

