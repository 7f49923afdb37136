import csv
import os

import pytest

import wheel
from conftest import OFFICIAL_WHEELS, check_set

OURS = wheel.load_wheels()


def test_our_wheels_sizes():
    words = set()
    for k in range(5):
        assert len(OURS.categories(k)) >= 6
        assert len(OURS.level1[k]) >= 60
        words |= set(OURS.level1[k])
    assert len(words) >= 250
    assert all(wheel.G_w("neutral", OURS, k) is None for k in range(5))


@pytest.mark.parametrize("form,lemma", [
    ("happier", "happy"), ("happiness", "happy"), ("angrily", "angry"), ("frustration", "frustrated"),
    ("sadder", "sad"), ("disappointment", "disappointed"), ("excitement", "excited"), ("nervousness", "nervous"),
    ("curiosity", "curious"), ("hostility", "hostile"), ("boredom", "bored"), ("anger", "angry"),
    ("loneliness", "lonely"), ("hopefully", "hopeful"), ("annoyance", "annoyed"),
])
def test_F_l1_morphology(form, lemma):
    assert wheel.F_l1(form, OURS)[-1] == lemma


def test_F_l1_keeps_known_words_and_drops_intensifiers():
    assert wheel.F_l1("Happy ", OURS) == ["happy"]
    assert wheel.F_l1("very  happy", OURS) == ["happy"]
    assert wheel.F_l1("blorf", OURS) == ["blorf"]


def test_F_l2_word_first_then_synonyms():
    assert wheel.F_l2(["happy"], OURS) == ["happy", "joyful", "cheerful", "glad", "pleased", "content"]
    assert wheel.F_l2(["blorf"], OURS) == ["blorf"]


def test_G_w_hand_checked():
    # wheel1 has no "happy": the synonym "joyful" is its level-1 category
    assert [wheel.G_w("happy", OURS, k) for k in range(5)] == ["joyful", "happy", "happy", "joyful", "happy"]
    assert [wheel.G_w("frustration", OURS, k) for k in range(5)] == ["mad", "angry", "angry", "angry", "sad"]
    assert wheel.G_w("joyful", OURS, 1) == "happy"   # level-3 word
    assert wheel.G_w("let down", OURS, 1) == "angry"  # level-2 group
    assert wheel.G_w("blorf", OURS, 0) is None
    assert wheel.map_words(["happy", "glad", "blorf", "furious"], OURS, 1) == {"happy", "angry"}


def test_parse_answer():
    text = "<think>she smiles</think><answer>Happy, Excited;  relieved.\nhappy, 'calm'</answer>"
    assert wheel.parse_answer(text) == ["happy", "excited", "relieved", "calm"]
    assert wheel.parse_answer("<answer>a</answer> <answer>sad , , sad</answer>") == ["sad"]
    assert wheel.parse_answer("<think>x</think><answer>unfinished") == []
    assert wheel.parse_answer("<answer></answer>") == []


def test_string_to_list():
    assert wheel.string_to_list("[a, b]") == ["a", "b"]
    assert wheel.string_to_list("['a', 'b']") == ["a", "b"]
    assert wheel.string_to_list("a, b") == ["a", "b"]
    assert wheel.string_to_list('["happy and sad"]') == ["happy and sad"]
    assert wheel.string_to_list("") == []


def _write_xlsx(path, rows):
    openpyxl = pytest.importorskip("openpyxl")
    book = openpyxl.Workbook()
    for row in rows:
        book.active.append(row)
    book.save(path)


def test_official_loader_on_fixture(tmp_path):
    # Two tiny wheels in the official layout: blank cells carry forward, trailing spaces and
    # capitals are cleaned, the row read last wins for a word under two categories.
    wheels = [
        [("level1", "level2", "level3"), ("Mad", "Frustrated ", "Annoyed"), (None, None, "Disappointed"),
         ("Sad", "Lonely", "Isolated"), (None, None, "Disappointed")],
        [("level1", "level2", "level3"), ("Happy", "Cheerful", "Glad"), ("Sad", "Hurt", "Disappointed")],
    ]
    for k in range(5):
        _write_xlsx(tmp_path / f"wheel{k + 1}.xlsx", wheels[k % 2])
    _write_xlsx(tmp_path / "synonym.xlsx", [
        tuple(f"{a}_run{i}" for i in range(1, 3) for a in ("word", "synonym")),
        ("frustrated", "annoyed, Disappointed", "frustrated", "irritated"),
        ("disappointed", "let down, Frustrated", "disappointed", "dismayed"),
        ("glad", "happy", "Glad", "pleased"),
    ])
    with open(tmp_path / "format.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["name", "format"])
        w.writerow(["frustrated", "frustrated,frustration"])
        w.writerow(["happy", "happy,happier"])
        w.writerow(["pleased", "pleased"])
    ow = wheel.load_wheels(str(tmp_path))
    assert ow.official
    assert ow.level1[0] == {"mad": "mad", "frustrated": "mad", "annoyed": "mad", "disappointed": "sad",
                            "sad": "sad", "lonely": "sad", "isolated": "sad"}
    assert ow.synonyms["annoyed"] == ["frustrated"]
    assert ow.synonyms["frustrated"] == ["disappointed", "frustrated"]
    assert ow.synonyms["disappointed"] == ["disappointed", "frustrated"]
    # "frustration" -> label frustrated -> {disappointed, frustrated} (frustrated is a synonym of
    # disappointed); sorted, "disappointed" comes first and sits under sad
    assert wheel.G_w("frustration", ow, 0) == "sad"
    assert wheel.G_w("happier", ow, 1) == "happy"      # happy -> glad (a wheel-2 word)
    assert wheel.G_w("happier", ow, 0) is None         # glad is not in wheel 1: dropped
    assert wheel.G_w("neutral", ow, 0) is None          # unknown surface form: dropped


official = pytest.mark.skipif(not os.path.isdir(OFFICIAL_WHEELS), reason="official wheel files not present")


@official
def test_official_files_known_mappings():
    ow = wheel.load_wheels(OFFICIAL_WHEELS)
    assert [len(m) for m in ow.level1] == [114, 126, 78, 102, 77]
    assert len(ow.synonyms) == 1255
    # format.csv holds 7,385 non-empty surface forms; the official loader also maps every name to
    # itself, which adds exactly one form: "no words", the one name whose format cell is empty
    assert len(ow.forms) == 7386 and ow.forms["no words"] == ["no words"]
    # the official lookup only lowercases and strips: punctuation makes a form unknown
    assert wheel.G_w(" Happy ", ow, 0) == wheel.G_w("happy", ow, 0) == "happy"
    assert wheel.G_w("happy.", ow, 0) is None and wheel.G_w("very  happy", ow, 0) is None
    assert wheel.G_w("frustrated", ow, 0) == "sad"
    assert wheel.G_w("happy", ow, 4) == "powerful"
    assert all(wheel.G_w("neutral", ow, k) is None for k in range(5))
    assert [wheel.G_w("fear", ow, k) for k in range(1, 5)] == ["happy", "joyful", "genius", "joyful"]


# ---------------------------------------------------------------------------------------
# The grown vocabulary (data/wheels/synonyms.csv groups, spelling, generic tails)

def _synonym_rows():
    with open(os.path.join(wheel.WHEELS_DIR, "synonyms.csv"), newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_every_table_word_maps_where_its_table_says():
    rows = _synonym_rows()
    assert {r["group"] for r in rows} == {"core", "morphology", "valence", "social", "physical", "multiword"}
    every_wheel_word = set().union(*[set(m) for m in OURS.level1])
    for r in rows:
        chain = [r["word"]] + r["synonyms"].split(";")
        # every anchor of a grown row is a word of some wheel (F_l2 does not chain synonyms)
        assert r["group"] == "core" or all(a in every_wheel_word for a in chain[1:]), r
        for k in range(5):
            # the first word of the row's chain that wheel k holds decides; only when none does may
            # F_l1's lemma (morphology) decide
            first = next((OURS.level1[k][a] for a in chain if a in OURS.level1[k]), None)
            if first is not None:
                assert wheel.G_w(r["word"], OURS, k) == first, (r["word"], k)
    # every wheel word maps to its own category in its own wheel
    for k in range(5):
        for word, cat in OURS.level1[k].items():
            assert wheel.G_w(word, OURS, k) == cat, (word, k)


def test_no_word_sits_under_two_categories_of_one_wheel():
    for k in range(1, 6):
        with open(os.path.join(wheel.WHEELS_DIR, f"wheel{k}.csv"), newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))[1:]
        claims = {}
        for row in rows:
            for word in row:
                if word.strip():
                    claims.setdefault(word.strip().lower(), set()).add(row[0].strip().lower())
        assert not {w: c for w, c in claims.items() if len(c) > 1}, k


@pytest.mark.parametrize("word,same_as", [
    ("humour", "humor"), ("apologise", "apologize"), ("positive emotions", "positive"), ("low mood", "low"),
    ("questioning feeling", "questioning"), ("skepticism", "skeptical"), ("dissatisfaction", "dissatisfied"),
    ("displeasure", "displeased"), ("very dissatisfied", "dissatisfied"), ("looking forward to", "eager"),
    ("under pressure", "pressured"), ("self-blame", "guilty"), ("honoured", "honored"),
])
def test_spelling_morphology_and_phrases(word, same_as):
    # the word maps somewhere, and wherever its counterpart maps, to the same category
    got = [wheel.G_w(word, OURS, k) for k in range(5)]
    want = [wheel.G_w(same_as, OURS, k) for k in range(5)]
    assert any(got) and all(g == w for g, w in zip(got, want) if w), (got, want)


def test_valence_and_social_words_take_their_emotion():
    assert wheel.G_w("positive", OURS, 1) == "happy" and wheel.G_w("negative", OURS, 1) == "bad"
    assert wheel.G_w("dissatisfied", OURS, 0) == "mad" and wheel.G_w("friendly", OURS, 3) == "loving"
    assert wheel.G_w("humorous", OURS, 0) == "joyful" and wheel.G_w("accusation", OURS, 1) == "angry"
    # states with no emotion of their own belong nowhere
    assert all(wheel.G_w(w, OURS, k) is None for w in ("neutral", "emotional", "open") for k in range(5))


def test_coverage_command_on_a_fixture(tmp_path):
    import subprocess
    import sys
    from conftest import ROOT
    path = tmp_path / "labels.csv"
    path.write_text('name,openset\na,"[happy, xyzzy]"\nb,"[\'dissatisfied\', \'xyzzy\', \'qwerty\']"\nc,sad\n')
    share, unmapped = wheel.coverage([["happy", "xyzzy"], ["dissatisfied", "xyzzy", "qwerty"], ["sad"]], OURS)
    assert share == pytest.approx(3 / 6) and unmapped == {"xyzzy": 2, "qwerty": 1}
    out = subprocess.run([sys.executable, os.path.join(ROOT, "wheel.py"), f"--coverage={path}"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "3 samples, 6 label words, 2 distinct words unmapped; 50.0%" in lines[0]
    assert lines[1].split() == ["2", "xyzzy"] and lines[2].split() == ["1", "qwerty"]
    bad = subprocess.run([sys.executable, os.path.join(ROOT, "wheel.py"), "--coverage=/nonexistent.csv"],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "/nonexistent.csv" in bad.stderr


@official
def test_our_wheels_on_the_public_check_labels():
    import evaluate as E
    preds, labels = check_set()
    share, _ = wheel.coverage(labels.values(), OURS)
    assert share <= 0.05   # the official files leave 13.0% unmapped
    assert abs(E.ew_scores(preds, labels, OURS)["f1"] - 61.7384) <= 1.0


def test_one_label_parser_for_rewards_metrics_and_the_score_only_command():
    import mer.data
    wheels = wheel.load_wheels()
    handmade = ["happy，sad", "angry；worried、surprised", "joyful; calm", "['happy', 'sad']", "Happy, excited"]
    assert wheel.split_words("angry；worried、surprised") == ["angry", "worried", "surprised"]
    assert wheel.string_to_list("happy，sad") == ["happy", "sad"]
    labels = handmade + [s["openset"] for split in ("train", "test_fine", "test_basic", "goemotions/test_fine")
                         for s in mer.data.load_split(split)]
    for text in labels:
        for k in range(5):  # the ground truth the reward uses (split_words) is what the metric scores
            assert wheel.map_words(wheel.split_words(text), wheels, k) == \
                wheel.map_words(wheel.string_to_list(text), wheels, k), (text, k)
