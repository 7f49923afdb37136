"""Convert GoEmotions (Demszky et al., ACL 2020; Apache-2.0) into our sample format.

    python data/make_goemotions.py --src=../shared/goemotions     # writes data/goemotions/

GoEmotions is real Reddit comments, each labelled with one or more of 27 emotion categories or
`neutral`. The comment becomes the `subtitle` (there are no video or audio clues), and its labels
give three views, as MER-UniBench scores its sets:

- fine (`openset` = its category names, EW-F1): `train.jsonl`, `dev_fine.jsonl`, `test_fine.jsonl`
- basic (`basic` = the authors' Ekman group, hit-rate): `test_basic.jsonl`, comments whose
  categories fall in exactly one Ekman group
- sentiment (`valence` +1 / -1 from the authors' positive / negative groups, WAF):
  `test_sentiment.jsonl`, comments whose categories are all positive or all negative (ambiguous
  categories and mixed comments dropped)

Comments labelled `neutral` only are left out of every file: `neutral` maps to no category of
any wheel, so they can be neither scored nor rewarded (every completion of such a prompt would get
R_R = R_P = 0). `neutral` beside other labels is kept in `openset` (it maps to nothing, as in
MER-UniBench). The counts of what was dropped go to data/goemotions/README.md.
"""
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(HERE, "..", "..", "shared", "goemotions")
OUT = os.path.join(HERE, "goemotions")


def read_split(src, split, names):
    """[(comment id, text, [category names])] of one TSV split (text, comma-separated ids, comment id)."""
    path = os.path.join(src, f"{split}.tsv")
    rows = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, start=1):
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 3:
                raise SystemExit(f"{path}, line {i}: expected text<TAB>label ids<TAB>id, got {len(parts)} fields")
            text, ids, cid = parts
            rows.append((cid, text, [names[int(j)] for j in ids.split(",")]))
    return rows


def sample(cid, text, labels):
    return {"name": f"goemo_{cid}", "subtitle": text, "openset": ", ".join(labels)}


def write(path, samples):
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(s, ensure_ascii=False) + "\n" for s in samples)
    return len(samples)


def main(src=SRC, out=OUT):
    names = [n.strip() for n in open(os.path.join(src, "emotions.txt")) if n.strip()]
    ekman = {c: group for group, cats in json.load(open(os.path.join(src, "ekman_mapping.json"))).items() for c in cats}
    polarity = {c: {"positive": 1, "negative": -1}.get(group, 0)
                for group, cats in json.load(open(os.path.join(src, "sentiment_dict.json"))).items() for c in cats}
    os.makedirs(out, exist_ok=True)
    counts = {}
    for split in ("train", "dev", "test"):
        rows = read_split(src, split, names)
        scored = [r for r in rows if set(r[2]) != {"neutral"}]
        counts[split] = {"comments": len(rows), "neutral_only": len(rows) - len(scored)}
        if split != "test":
            counts[split]["fine"] = write(os.path.join(out, "train.jsonl" if split == "train" else "dev_fine.jsonl"),
                                          [sample(*r) for r in scored])
            continue
        counts[split]["fine"] = write(os.path.join(out, "test_fine.jsonl"), [sample(*r) for r in scored])
        basic = []
        for cid, text, labels in scored:
            groups = {ekman[c] for c in labels if c in ekman}
            if len(groups) == 1:
                basic.append({**sample(cid, text, labels), "basic": groups.pop()})
        counts[split]["basic"] = write(os.path.join(out, "test_basic.jsonl"), basic)
        sentiment = []
        for cid, text, labels in scored:
            signs = {polarity.get(c, 0) for c in labels if c != "neutral"}
            if signs in ({1}, {-1}):
                sentiment.append({**sample(cid, text, labels), "valence": float(signs.pop())})
        counts[split]["sentiment"] = write(os.path.join(out, "test_sentiment.jsonl"), sentiment)
    return counts


if __name__ == "__main__":
    args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
    print(json.dumps(main(args.get("src", SRC), args.get("out", OUT)), indent=1))
