"""Emotion wheels: free-form emotion words -> level-1 categories (Eq. 35), and answer parsing.

    G_w(word) = F_l3^w( F_l2( F_l1(word) ) )                                  (Eq. 35)

F_l1 turns a surface form into lemmas, F_l2 turns lemmas into an ordered list of
candidate wheel words, F_l3^w returns the level-1 category of the first candidate
that wheel w contains (None when no candidate is in the wheel: the word is dropped).

Two sources of wheels share these three functions and differ only in their tables:
- ours, `data/wheels/` (the default): wheel1..5.csv, synonyms.csv. F_l1 is rule-based
  morphology (happiness -> happy, angrily -> angry, frustration -> frustrated) plus
  IRREGULAR below; F_l2 puts the lemma first, then its synonyms in file order.
- the official MER-UniBench files (a folder with wheel1..5.xlsx, synonym.xlsx,
  format.csv): F_l1 is format.csv inverted (surface form -> labels, unknown forms give
  nothing), F_l2 is synonym.xlsx merged over its eight runs, and the candidates are
  sorted alphabetically before F_l3, exactly as the official evaluator does (so
  "frustrated" -> sad in wheel 1 because "disappointed" sorts first).
"neutral" is in no wheel of either source: it always maps to nothing.
"""
import csv
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field

WHEELS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "wheels")
N_WHEELS = 5

# F_l1 for our wheels: forms that no suffix rule reaches.
IRREGULAR = {
    "anger": "angry", "fear": "fearful", "joy": "joyful", "sorrow": "sorrowful", "pride": "proud",
    "shame": "ashamed", "envy": "envious", "anxiety": "anxious", "guilt": "guilty", "hope": "hopeful",
    "love": "loving", "hate": "hateful", "hatred": "hateful", "rage": "furious", "fury": "furious",
    "contempt": "contemptuous", "scorn": "scornful", "gratitude": "grateful", "delight": "delighted",
    "terror": "terrified", "panic": "panicked", "grief": "grieving"
}
# (suffix, replacement) tried in order; the first candidate that is a known word wins.
SUFFIX_RULES = [
    ("iness", "y"), ("ily", "y"), ("ier", "y"), ("iest", "y"), ("ness", ""), ("fully", "ful"),
    ("ly", ""), ("ation", "ated"), ("ation", "ed"), ("ion", "ed"), ("ement", "ed"), ("ment", "ed"), ("ance", "ed"),
    ("osity", "ous"), ("ility", "ile"), ("ity", ""), ("edom", "ed"), ("ing", "ed"), ("ing", ""),
    ("faction", "fied"), ("ure", "ed"), ("ism", "al"),
    ("ed", ""), ("er", ""), ("est", ""), ("s", ""), ("y", ""), ("", "ed"), ("", "d"), ("", "ful"),
    ("", "y"), ("", "ous"),
]
# British spellings -> American (the wheels use American): humour -> humor, apologise -> apologize
SPELLING = [("our", "or"), ("isation", "ization"), ("ise", "ize"), ("ising", "izing"), ("yse", "yze"),
            ("lled", "led"), ("lling", "ling"), ("tre", "ter"), ("ll", "l")]
# generic nouns after an emotion word name the same emotion: "positive emotions", "low mood"
GENERIC_TAILS = ("emotions", "emotion", "feelings", "feeling", "moods", "mood", "attitude", "sentiment",
                 "state", "tone", "expression", "vibe")
INTENSIFIERS = ("very", "slightly", "extremely", "somewhat", "deeply", "mildly", "quite", "really",
                "a bit", "a little", "rather", "highly", "so", "too", "more", "most", "feeling")


@dataclass
class Wheels:
    """A set of wheels and the tables of F_l1 and F_l2."""
    source: str                      # the folder they were read from
    official: bool                   # official case3 rule: candidates sorted alphabetically
    level1: list                     # per wheel: {wheel word: level-1 category}
    synonyms: dict                   # F_l2 table: lemma -> list of wheel words
    forms: dict = field(default_factory=dict)   # official F_l1 table: surface form -> labels
    vocab: set = field(default_factory=set)     # ours: every word F_l1 may normalise to

    def categories(self, k):
        """The sorted level-1 categories of wheel k (0-based)."""
        return sorted(set(self.level1[k].values()))


def _clean(cell):
    return "" if cell is None else str(cell).strip().lower()


def wheel_from_rows(rows, path):
    """Rows `level1, level2, level3` (header first) -> {wheel word: level-1 category}.

    A blank cell repeats the value above it; every level-1, level-2 and level-3 value is a
    wheel word; when a word sits under two level-1 categories the row read last wins."""
    header = [_clean(c) for c in rows[0][:3]] if rows else []
    if header != ["level1", "level2", "level3"]:
        raise ValueError(f"{path}: the header must be level1,level2,level3, found {header}")
    mapping, last = {}, ["", "", ""]
    for i, row in enumerate(rows[1:], start=2):
        cells = [_clean(c) for c in list(row[:3]) + [None] * (3 - len(row[:3]))]
        if not any(cells):
            continue
        last = [cell or above for cell, above in zip(cells, last)]
        if not last[0]:
            raise ValueError(f"{path}, row {i}: no level-1 category above this row; fill in column level1")
        for word in last:
            if word:
                mapping[word] = last[0]
    if not mapping:
        raise ValueError(f"{path}: no wheel words")
    return mapping


def _read_csv_rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def _read_xlsx_rows(path):
    try:
        import openpyxl
    except ImportError:
        raise ImportError("reading the official .xlsx wheel files needs openpyxl: pip install openpyxl") from None
    sheet = openpyxl.load_workbook(path, read_only=True).active
    return [list(r) for r in sheet.iter_rows(values_only=True)]


def load_wheels(path=None):
    """Read our wheels (path None -> data/wheels) or a folder of official MER-UniBench files."""
    path = path or WHEELS_DIR
    if os.path.exists(os.path.join(path, "wheel1.xlsx")):
        return _load_official(path)
    if os.path.exists(os.path.join(path, "wheel1.csv")):
        return _load_ours(path)
    raise FileNotFoundError(f"{path}: no wheel1.csv (our format) nor wheel1.xlsx (official files) here; "
                            f"pass --wheels=DIR with one of them, or leave it out for data/wheels")


def _load_ours(path):
    level1 = [wheel_from_rows(_read_csv_rows(os.path.join(path, f"wheel{k}.csv")), f"wheel{k}.csv")
              for k in range(1, N_WHEELS + 1)]
    synonyms = {}
    syn_path = os.path.join(path, "synonyms.csv")
    for i, row in enumerate(csv.DictReader(open(syn_path, newline="", encoding="utf-8")), start=2):
        word = _clean(row.get("word"))
        if not word:
            raise ValueError(f"{syn_path}, row {i}: empty word")
        synonyms[word] = [s for s in (_clean(x) for x in (row.get("synonyms") or "").split(";")) if s]
    vocab = set().union(*[set(m) for m in level1], synonyms, *synonyms.values())
    return Wheels(path, False, level1, synonyms, vocab=vocab)


def _load_official(path):
    level1 = [wheel_from_rows(_read_xlsx_rows(os.path.join(path, f"wheel{k}.xlsx")), f"wheel{k}.xlsx")
              for k in range(1, N_WHEELS + 1)]
    # synonym.xlsx: eight runs of (word, "syn1, syn2, ..."), merged by set union.
    raw = defaultdict(set)
    for row in _read_xlsx_rows(os.path.join(path, "synonym.xlsx"))[1:]:
        for j in range(0, len(row) - 1, 2):
            word = _clean(row[j])
            if not word:
                continue
            raw[word].add(word)
            for syn in str(row[j + 1] or "").split(","):
                if _clean(syn):
                    raw[_clean(syn)].add(word)
    forms = defaultdict(list)
    with open(os.path.join(path, "format.csv"), newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            name = _clean(row["name"])
            for form in [name] + row["format"].split(","):  # the official loader maps each name to itself
                if _clean(form) and name not in forms[_clean(form)]:
                    forms[_clean(form)].append(name)
    return Wheels(path, True, level1, {k: sorted(v) for k, v in raw.items()}, forms=dict(forms))


def F_l1(word, wheels):
    """Eq. (35), F_l1: morphological normalisation. A surface form -> list of lemmas. With the
    official files, exactly the official lookup: lowercase and strip, nothing else."""
    if wheels.official:
        return wheels.forms.get(_clean(word), [])
    w = " ".join(_clean(word).split())
    for prefix in INTENSIFIERS:
        if w.startswith(prefix + " ") and w[len(prefix) + 1:] in wheels.vocab:
            w = w[len(prefix) + 1:]
    for tail in GENERIC_TAILS:
        if w.endswith(" " + tail):
            w = w[:-len(tail) - 1]
            break
    lemmas = _lemmas(w, wheels)
    if w not in wheels.vocab and len(lemmas) == 1:
        for british, american in SPELLING:
            variant = w.replace(british, american)
            if variant != w and (variant in wheels.vocab or len(_lemmas(variant, wheels)) > 1):
                return [w] + _lemmas(variant, wheels)
    return lemmas


def _lemmas(w, wheels):
    """Our F_l1 on a cleaned word: the word itself and, when a rule reaches a known word, its lemma.
    Keep the word itself: a wheel may list the noun ("excitement") while another lists only the
    adjective ("excited")."""
    if w in IRREGULAR:
        return [w, IRREGULAR[w]]
    for suffix, repl in SUFFIX_RULES:
        if w.endswith(suffix) and len(w) - len(suffix) >= 3:
            stem = w[:len(w) - len(suffix)]
            for cand in (stem + repl, stem[:-1] + repl if stem[-1] == stem[-2] else None):  # sadder -> sad
                if cand in wheels.vocab and cand != w:
                    return [w, cand]
    return [w]


def F_l2(lemmas, wheels):
    """Eq. (35), F_l2: synonym normalisation. Lemmas -> ordered candidate wheel words."""
    if wheels.official:
        return sorted({w for lemma in lemmas for w in wheels.synonyms.get(lemma, [])})
    out = []
    for lemma in lemmas:
        for w in [lemma] + wheels.synonyms.get(lemma, []):
            if w not in out:
                out.append(w)
    return out


def F_l3(candidates, wheels, k):
    """Eq. (35), F_l3^w: wheel lookup. The level-1 category of the first candidate in wheel k."""
    for w in candidates:
        if w in wheels.level1[k]:
            return wheels.level1[k][w]
    return None


def G_w(word, wheels, k):
    """Eq. (35): G_w = F_l3^w . F_l2 . F_l1. A free-form word -> level-1 category of wheel k, or None."""
    return F_l3(F_l2(F_l1(word, wheels), wheels), wheels, k)


def map_words(words, wheels, k):
    """The set of level-1 categories of wheel k that `words` map to (unknown words dropped)."""
    return {c for c in (G_w(w, wheels, k) for w in words) if c is not None}


ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.S)


def clean_word(word):
    """Lowercase, strip punctuation (keeping inner spaces, hyphens and apostrophes)."""
    w = re.sub(r"[^\w\s'-]", " ", word.lower())
    return " ".join(w.split()).strip("'- ")


# What separates emotion words, in labels and answers alike: commas (also the Chinese `，` that
# MER-UniBench labels use), semicolons, the Chinese enumeration comma `、`, newlines
SEPARATORS = r"[,;\n，、；]"


def split_words(text):
    """Split on SEPARATORS; clean; drop empties and duplicates, order kept."""
    out = []
    for piece in re.split(SEPARATORS, text):
        w = clean_word(piece)
        if w and w not in out:
            out.append(w)
    return out


def parse_answer(text):
    """The emotion words inside the last complete <answer>...</answer> of `text` ([] if none)."""
    found = ANSWER_RE.findall(text)
    return split_words(found[-1]) if found else []


def string_to_list(s):
    """The official label/prediction parser: strip one leading '[' and one trailing ']', split on
    quotes and commas, strip items, drop empty ones. "[a, b]", "['a', 'b']" and "a, b" agree.
    Like split_words, it also splits on the other SEPARATORS (the official parser splits on `,`
    only, so `a；b` or `a，b` would be one unknown word there and score nothing)."""
    s = str(s).strip()
    if s.startswith("["):
        s = s[1:]
    if s.endswith("]"):
        s = s[:-1]
    return [item.strip() for item in re.split(r"['\"]|" + SEPARATORS, s) if item.strip()]


def coverage(word_lists, wheels):
    """How much of a label vocabulary the wheels map: (share of word tokens that map to nothing in
    every wheel, {unmapped word: count}). `word_lists` holds one list of words per sample."""
    counts = {}
    for words in word_lists:
        for w in words:
            w = _clean(w)
            if w:
                counts[w] = counts.get(w, 0) + 1
    unmapped = {w: c for w, c in counts.items() if all(G_w(w, wheels, k) is None for k in range(len(wheels.level1)))}
    total = sum(counts.values())
    return (sum(unmapped.values()) / total if total else 0.0), unmapped


def blind_lists(word_lists, wheels):
    """Indices of the word lists none of whose words maps to a category in any wheel: samples with
    such labels get reward 0 whatever a model answers, and no metric scores them."""
    unmapped = coverage(word_lists, wheels)[1]
    return [i for i, words in enumerate(word_lists) if all(not _clean(w) or _clean(w) in unmapped for w in words)]


if __name__ == "__main__":
    # python wheel.py --coverage=LABELS.csv [--wheels=DIR]: the share of label words the wheels leave
    # unmapped (CSV with columns name,openset; openset parsed as the official evaluator does)
    import sys
    args = dict(a[2:].partition("=")[::2] for a in sys.argv[1:] if a.startswith("--"))
    if "coverage" not in args or set(args) - {"coverage", "wheels", "top"}:
        raise SystemExit("usage: python wheel.py --coverage=LABELS.csv [--wheels=DIR] [--top=30]")
    path = args["coverage"]
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or "openset" not in reader.fieldnames:
                raise SystemExit(f"{path}: needs a column openset; found {reader.fieldnames}")
            lists = [string_to_list(row["openset"] or "") for row in reader]
    except OSError as e:
        raise SystemExit(f"{path}: cannot open ({e.strerror})")
    wheels = load_wheels(args.get("wheels") or None)
    share, unmapped = coverage(lists, wheels)
    tokens = sum(len(l) for l in lists)
    print(f"{path}: {len(lists)} samples, {tokens} label words, {len(unmapped)} distinct words unmapped; "
          f"{100 * share:.1f}% of the words map to nothing in any wheel of {wheels.source}")
    for w, c in sorted(unmapped.items(), key=lambda t: (-t[1], t[0]))[:int(args.get("top", 30))]:
        print(f"  {c:5d}  {w}")
