import csv
import json
import os
import subprocess
import sys

import pytest

import evaluate as E
import wheel
from conftest import OFFICIAL_WHEELS, ROOT

OURS = wheel.load_wheels()


def test_ew_scores_hand_computed():
    labels = {"a": ["happy"], "b": ["furious", "sad"], "c": ["neutral"]}
    preds = {"a": ["joyful", "sad"], "b": ["angry"], "c": ["happy"]}
    # every wheel: a -> P 1/2, R 1; b -> P 1, R 1/2; c skipped (neutral maps to nothing)
    for k in range(5):
        assert E.ew_precision_recall(preds, labels, OURS, k) == (0.75, 0.75, 2)
    s = E.ew_scores(preds, labels, OURS)
    assert s["f1"] == pytest.approx(75.0) and s["precision"] == pytest.approx(75.0)
    assert s["n_per_wheel"] == [2] * 5


def test_ew_f1_is_f1_of_averages_not_average_of_f1():
    labels = {"a": ["happy"], "b": ["sad"]}
    preds = {"a": ["happy", "sad", "angry", "scared"], "b": []}
    p, r, n = E.ew_precision_recall(preds, labels, OURS, 1)
    assert (p, r, n) == (0.125, 0.5, 2)
    assert E.ew_f1(p, r) == pytest.approx(0.2)     # the mean per-sample F1 would be 0.2 too only by chance:
    assert E.ew_f1(0.0, 0.0) == 0.0
    preds["b"] = ["sad"]
    assert E.ew_precision_recall(preds, labels, OURS, 1)[:2] == (0.625, 1.0)


def test_hit_rate_skips_unmappable_labels():
    labels = {"a": ["happy"], "b": ["neutral"], "c": ["angry"], "d": ["sad"]}
    preds = {"a": ["glad", "sad"], "b": ["happy"], "c": ["calm"]}
    h = E.hit_rate(preds, labels, OURS)
    assert h["hit"] == pytest.approx(100 / 3) and h["n_per_wheel"] == [3] * 5


def test_waf_hand_computed():
    assert E.waf([1, 1, -1, 0, -1], [1, -1, 0, 2, -3]) == pytest.approx(50.0)
    assert E.waf([1, -1], [2, -2]) == pytest.approx(100.0)
    assert E.waf([0, 0], [1, -1]) == pytest.approx(100 * (0 * 0.5 + (2 / 3) * 0.5))
    assert E.sentiment_score(["happy", "relieved"], OURS) == 1
    assert E.sentiment_score(["happy", "sad"], OURS) == 0
    assert E.sentiment_score(["neutral"], OURS) == 0
    assert E.sentiment_score(["furious"], OURS) == -1


def _write(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return str(path)


def _run(*args):
    out = subprocess.run([sys.executable, os.path.join(ROOT, "evaluate.py"), *args], capture_output=True, text=True)
    return out


def test_score_only_command_fine_and_basic(tmp_path):
    preds = _write(tmp_path / "p.csv", ["name", "openset"], [["a", "['joyful', 'sad']"], ["b", "angry"], ["x", "sad"]])
    labels = _write(tmp_path / "l.csv", ["name", "openset"], [["a", "happy"], ["b", "[furious, sad]"], ["c", "sad"]])
    out = _run(f"--preds={preds}", f"--labels={labels}", "--task=fine")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    # a: P 1/2 R 1; b: P 1 R 1/2; c: no prediction -> 0, 0. P = R = 1/2 in every wheel
    assert result == {"f1": 50.0, "precision": 50.0, "recall": 50.0, "n": 3}
    assert "no prediction" in out.stderr and "c" in out.stderr and "no label" in out.stderr
    out = _run(f"--preds={preds}", f"--labels={labels}", "--task=basic")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["hit"] == pytest.approx(200 / 3, abs=1e-3) and result["n"] == 3


def test_score_only_command_sentiment(tmp_path):
    preds = _write(tmp_path / "p.csv", ["name", "openset"], [["a", "happy"], ["b", "sad"], ["c", "happy"]])
    labels = _write(tmp_path / "l.csv", ["name", "valence"], [["a", "1.5"], ["b", "-2"], ["c", "-1"], ["d", "0"]])
    out = _run(f"--preds={preds}", f"--labels={labels}", "--task=sentiment")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    # kept a, b, c: true [T, F, F], pred [T, F, T]: F1(T) = 2/3 (support 1), F1(F) = 2/3 (support 2)
    assert result == {"waf": pytest.approx(66.6667, abs=1e-3), "n": 4}


def test_score_only_bad_inputs(tmp_path):
    good = _write(tmp_path / "l.csv", ["name", "openset"], [["a", "happy"]])
    no_name = _write(tmp_path / "p.csv", ["name", "openset"], [["a", "happy"], ["", "sad"]])
    out = _run(f"--preds={no_name}", f"--labels={good}")
    assert out.returncode != 0 and "row 3" in out.stderr and "empty name" in out.stderr
    wrong_cols = _write(tmp_path / "w.csv", ["id", "label"], [["a", "happy"]])
    out = _run(f"--preds={wrong_cols}", f"--labels={good}")
    assert out.returncode != 0 and "name,openset" in out.stderr
    out = _run(f"--preds={good}", f"--labels={good}", "--task=fine", "--wheels=/nonexistent")
    assert out.returncode != 0 and "wheel1.csv" in out.stderr
    out = _run(f"--preds={good}", f"--labels={good}", "--tsk=fine")
    assert out.returncode != 0 and "unknown setting" in out.stderr


@pytest.mark.skipif(not os.path.isdir(OFFICIAL_WHEELS), reason="official wheel files not present")
def test_score_only_command_on_official_wheels(tmp_path):
    preds = _write(tmp_path / "p.csv", ["name", "openset"], [["a", "frustrated"], ["b", "happy, neutral"]])
    labels = _write(tmp_path / "l.csv", ["name", "openset"], [["a", "sad"], ["b", "neutral"]])
    out = _run(f"--preds={preds}", f"--labels={labels}", f"--wheels={OFFICIAL_WHEELS}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    # b is skipped in every wheel (neutral is unknown); a: "frustrated" -> sad in wheels 1, 2 and 4
    # (via "disappointed"), but mad in wheels 3 and 5: P = R = 3/5
    assert result == {"f1": 60.0, "precision": 60.0, "recall": 60.0, "n": 2}
