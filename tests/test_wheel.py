import csv
import os

import pytest

import wheel
from conftest import OFFICIAL_WHEELS

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
