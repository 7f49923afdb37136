import csv
import json
import os
import subprocess
import sys

import pytest

import evaluate as E
import wheel
from conftest import OFFICIAL_WHEELS, ROOT, check_set

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
    assert E.ew_f1(p, r) == pytest.approx(0.2)
    assert E.ew_f1(0.0, 0.0) == 0.0
    preds["b"] = ["sad"]
    p, r, _ = E.ew_precision_recall(preds, labels, OURS, 1)
    assert (p, r) == (0.625, 1.0)
    # Eq. (38) is the F1 of the averages (2 x 0.625 / 1.625), not the mean of the per-sample
    # F1 scores (0.4 for a, 1.0 for b: 0.7)
    assert E.ew_f1(p, r) == pytest.approx(1.25 / 1.625)
    assert E.ew_scores(preds, labels, OURS)["f1"] == pytest.approx(100 * 1.25 / 1.625)


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
    assert result == {"f1": 50.0, "precision": 50.0, "recall": 50.0, "n": 3, "n_scored_per_wheel": [3] * 5}
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


def test_score_only_refuses_labels_that_score_nothing(tmp_path):
    preds = _write(tmp_path / "p.csv", ["name", "openset"], [["a", "happy"], ["b", "sad"]])
    labels = _write(tmp_path / "l.csv", ["name", "openset"], [["a", "neutral"], ["b", "xyzzy"]])
    for task in ("fine", "basic"):
        out = _run(f"--preds={preds}", f"--labels={labels}", f"--task={task}")
        assert out.returncode != 0 and "nothing can be scored" in out.stderr and "l.csv" in out.stderr


def test_evaluate_refuses_a_split_that_scores_nothing_in_every_label_task(tmp_path):
    rows = [{"name": "a", "subtitle": "ok", "openset": "neutral", "basic": "xyzzy"},
            {"name": "b", "subtitle": "hm", "openset": "xyzzy; neutral", "basic": "neutral"}]
    split = tmp_path / "s.jsonl"
    split.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for task in ("fine", "basic"):
        out = _run("--ckpt=tiny", f"--splits={task}:{split}", f"--out_dir={tmp_path / task}", "--threads=1")
        assert out.returncode != 0 and "no sample's labels map to a category in any wheel" in out.stderr, out.stderr[-800:]
        assert not (tmp_path / task / f"preds_s_{'slow' if task == 'fine' else 'fast'}.csv").exists()


def test_nothing_to_score_is_refused_not_scored_zero(tmp_path):
    preds = _write(tmp_path / "p.csv", ["name", "openset"], [["a", "happy"], ["b", "sad"]])
    labels = _write(tmp_path / "v.csv", ["name", "valence"], [["a", "0"], ["b", "0.0"]])
    out = _run(f"--preds={preds}", f"--labels={labels}", "--task=sentiment")
    assert out.returncode != 0 and "v.csv: every valence is 0 (neutral)" in out.stderr and "nothing can be scored" in out.stderr
    split = tmp_path / "val.jsonl"
    split.write_text('{"name": "a", "subtitle": "x", "valence": 1}\n')
    with pytest.raises(SystemExit, match=r"val.jsonl: no sample has 'openset' labels \(valence only\? give the split the prefix sentiment:"):
        mer.data.report_unmapped(f"fine:{split}", mer.data.load_samples(f"fine:{split}"), wheel.load_wheels())
    with pytest.raises(SystemExit, match=r"--ckpt=.*nowhere: no such checkpoint folder"):
        mer.checkpoints.find_model(str(tmp_path / "nowhere"))   # evaluate.py and predict.py, before anything loads


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


@pytest.mark.parametrize("content, message", [
    (b"name,openset\ns0,sad\ns1,happy, joyful\n", r"p.csv, row 3: 3 fields for a header of 2; put words that contain "
                                                   r"commas in quotes"),
    (b'name,openset\ns0,"sad\ns1,happy\n', r"p.csv, line \d: .*a quote opened there is never closed"),
    (b"name,openset\ns0,sad\ns1,fr\xf6hlich\n", r"p.csv, line 3: not UTF-8 \(byte b'\\xf6'\)"),
])
def test_score_only_csv_reader_names_file_and_row(tmp_path, content, message):
    (tmp_path / "p.csv").write_bytes(content)
    with pytest.raises(SystemExit, match=message):
        mer.data.read_name_column_csv(str(tmp_path / "p.csv"), "openset")


def test_score_only_csv_reader_reads_bom_and_quoted_commas_and_refuses_non_finite_valence(tmp_path):
    (tmp_path / "p.csv").write_bytes(b'\xef\xbb\xbfname,openset\r\ns0,"happy, joyful"\r\n\r\n')
    assert mer.data.read_name_column_csv(str(tmp_path / "p.csv"), "openset") == {"s0": "happy, joyful"}
    for bad in ("nan", "inf", "-inf", "high"):
        (tmp_path / "l.csv").write_text(f"name,valence\ns0,{bad}\n")
        with pytest.raises(SystemExit, match=f"valence of 's0' is '{bad}', not a finite number"):
            E.score_files(str(tmp_path / "p.csv"), str(tmp_path / "l.csv"), "sentiment")


def test_task_comes_from_a_prefix_the_bundled_name_or_the_fields():
    fine, senti = [{"name": "a", "openset": "happy", "valence": 1}], [{"name": "a", "valence": 1}]
    assert mer.data.task_of("my_sentiment_probe.jsonl", fine) == "fine"       # the file name is not read
    assert mer.data.task_of("anything.jsonl", senti) == "sentiment"          # valence without openset
    assert mer.data.task_of("basic:my.jsonl", fine) == "basic" and mer.data.task_of("sentiment:my.jsonl", fine) == "sentiment"
    assert [mer.data.task_of(s, fine) for s in ("test_fine", "test_basic", "test_sentiment")] == ["fine", "basic", "sentiment"]
    assert mer.data.task_of("mosi:/data/mosi", fine) == "sentiment" and mer.data.task_of("mer2023:/d", fine) == "basic"


@pytest.mark.skipif(not os.path.isdir(OFFICIAL_WHEELS), reason="official wheel files not present")
def test_score_only_command_on_official_wheels(tmp_path):
    preds = _write(tmp_path / "p.csv", ["name", "openset"], [["a", "frustrated"], ["b", "happy, neutral"]])
    labels = _write(tmp_path / "l.csv", ["name", "openset"], [["a", "sad"], ["b", "neutral"]])
    out = _run(f"--preds={preds}", f"--labels={labels}", f"--wheels={OFFICIAL_WHEELS}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    # b is skipped in every wheel (neutral is unknown); a: "frustrated" -> sad in wheels 1, 2 and 4
    # (via "disappointed"), but mad in wheels 3 and 5: P = R = 3/5
    assert result == {"f1": 60.0, "precision": 60.0, "recall": 60.0, "n": 2, "n_scored_per_wheel": [1] * 5}
    assert "[1, 1, 1, 1, 1] of 2 samples are scored" in out.stderr


@pytest.mark.skipif(not os.path.isdir(OFFICIAL_WHEELS), reason="official wheel files not present")
def test_official_regression_on_the_public_check_set():
    preds, labels = check_set()
    s = E.ew_scores(preds, labels, wheel.load_wheels(OFFICIAL_WHEELS))
    # the official evaluator's figures for AffectGPT's released predictions
    assert (round(s["f1"], 4), round(s["precision"], 4), round(s["recall"], 4)) == (61.7384, 57.9527, 66.1346)
    assert s["n_per_wheel"] == [327, 328, 324, 327, 316]


def test_table_means_f1_based_and_hit_based():
    results = {"test_fine": {"task": "fine", "slow": {"scores": {"f1": 80.0, "precision": 0, "recall": 0}}},
               "test_basic": {"task": "basic", "slow": {"scores": {"hit": 90.0, "f1": 60.0}}},
               "test_sentiment": {"task": "sentiment", "slow": {"scores": {"waf": 70.0}}}}
    m = E.table_means(results, "slow")
    # F1-based (Table 3): (80 + 60) / 2 and (80 + 60 + 70) / 3; HIT-based: 90 replaces 60
    assert m == {"r_mean_f1": 70.0, "mean_f1": 70.0, "r_mean_hit": 85.0, "mean_hit": 80.0}
    rows = E.table(results, ["slow"]).splitlines()
    assert rows[0].startswith("| mode | test_fine (F1) | test_basic (HIT) | test_basic (F1) | test_sentiment (WAF) |")
    assert rows[2] == "| slow | 80.00 | 90.00 | 60.00 | 70.00 | 70.00 | 70.00 | 85.00 | 80.00 |"


# ---------------------------------------------------------------------------------------
# Diagnostics and the generation harness

import math
from types import SimpleNamespace

import torch

import mer.checkpoints, mer.data, mer.generation, mer.models, mer.plots, mer.prompts


def test_answer_confidences_hand_computed():
    tables = [{"happy": [0, 1], "sad": [2], "angry": [3], "scared": [4], "bad": [5]}] * 2
    p = torch.log(torch.tensor([[0.3, 0.2, 0.1, 0.1, 0.2, 0.1], [0.1, 0.1, 0.4, 0.2, 0.1, 0.1]]))
    conf_gt, margin = E.answer_confidences(p, tables, {"happy"})
    happy = (math.log(0.5) + math.log(0.2)) / 2
    sad, angry, scared = (math.log(0.1) + math.log(0.4)) / 2, (math.log(0.1) + math.log(0.2)) / 2, \
        (math.log(0.2) + math.log(0.1)) / 2   # bad = log 0.1 is not among the top-3 negatives
    assert conf_gt == pytest.approx(happy)
    assert margin == pytest.approx(happy - (sad + angry + scared) / 3)
    assert E.answer_confidences(p, tables, set()) is None
    assert E.answer_confidences(p[:0], tables, {"happy"}) is None


def test_retained_hit_rate_and_average_categories():
    labels = {"a": ["happy", "sad"], "b": ["angry"]}
    fast = {"a": ["happy", "sad"], "b": ["angry"]}
    slow = {"a": ["happy"], "b": []}
    assert E.retained_hit_rate(fast, slow, labels, OURS) == pytest.approx(100 / 3)
    assert E.retained_hit_rate(fast, fast, labels, OURS) == 100.0
    assert E.average_categories({"a": ["happy", "glad", "sad"], "b": []}, ["a", "b"], OURS) == 1.0


def test_parse_sentiment():
    assert [mer.generation.parse_sentiment(t) for t in ("Positive.", "negative", "It is neutral", "unsure")] == [1, -1, 0, 0]


class Oracle(torch.nn.Module):
    """Stands in for a checkpoint: answers the label of the sample whose subtitle is in the prompt
    (or `wrong` for the samples in `miss`), with a reasoning block in slow mode. It decodes through
    the engine's sampler: its "KV cache" holds each row's tokens, and each step's logits are a
    fixed distribution (0, 1, ..., 9 on the first ten ids) with the next token of the row's scripted
    completion raised to 30, so the script wins and the other log-probs are known in closed form."""
    config = SimpleNamespace(model_type="oracle")

    def __init__(self, tok, answers, miss=(), wrong="angry"):
        super().__init__()
        self.tok, self.answers, self.miss, self.wrong = tok, answers, set(miss), wrong

    @property
    def device(self):
        return torch.device("cpu")

    @property
    def base_model(self):
        return self

    def script(self, prompt):
        text = self.tok.decode(prompt)
        subtitle = next(s for s in self.answers if f'"{s}"' in text)
        answer = self.wrong if subtitle in self.miss else self.answers[subtitle]
        completion = answer + "</answer>" if text.endswith("<answer>") else f"I see.</think><answer>{answer}</answer>"
        return self.tok(completion, add_special_tokens=False)["input_ids"] + [self.tok.eos_token_id]

    def forward(self, input_ids, attention_mask=None, position_ids=None, logits_to_keep=0, cache=None, use_cache=False):
        if use_cache and cache is None:  # the prompt pass: the cache is the rows' tokens so far
            return SimpleNamespace(cache=RowCache([ids[m.bool()].tolist() for ids, m in zip(input_ids, attention_mask)]))
        if cache is not None:  # one decoding step: the row's first token completes its prompt
            logits = torch.zeros(input_ids.shape[0], 1, len(self.tok))
            for i, token in enumerate(input_ids[:, 0].tolist()):
                row = cache.rows[i]
                row["ids"].append(token)
                if row["prompt"] is None:
                    row["prompt"] = len(row["ids"])
                done = len(row["ids"]) - row["prompt"]
                script = self.script(row["ids"][:row["prompt"]])
                logits[i, 0, :10] = torch.arange(10.0)
                logits[i, 0, script[min(done, len(script) - 1)]] = 30.0
            return SimpleNamespace(logits=logits)
        logits = torch.zeros(input_ids.shape[0], logits_to_keep or input_ids.shape[1], len(self.tok))
        logits[..., :10] = torch.arange(10.0)   # a fixed, non-uniform distribution
        return SimpleNamespace(logits=logits)


class RowCache:
    """The Oracle's stand-in for a KV cache: each row's tokens, repeated and selected as the engine does."""
    layers = ()  # no keys or values to make room for

    def __init__(self, rows):
        self.rows = [{"ids": r, "prompt": None} for r in rows]

    def batch_repeat_interleave(self, n):
        self.rows = [{"ids": list(r["ids"]), "prompt": r["prompt"]} for r in self.rows for _ in range(n)]

    def batch_select_indices(self, keep):
        self.rows = [self.rows[i] for i in keep.tolist()]


def _splits(tmp_path):
    fine = [{"name": f"f{i}", "subtitle": f"fine line {i}", "openset": o} for i, o in
            enumerate(["happy, excited", "sad", "angry, disappointed", "worried", "surprised, happy", "calm"])]
    basic = [{"name": f"b{i}", "subtitle": f"basic line {i}", "openset": o, "basic": o} for i, o in
             enumerate(["happy", "sad", "neutral", "worried", "surprise", "angry"])]
    senti = [{"name": f"s{i}", "subtitle": f"senti line {i}", "openset": o, "valence": v} for i, (o, v) in
             enumerate([("happy", 1), ("sad", -1), ("angry", -1), ("relieved", 1), ("calm", 0)])]
    paths = []  # the task comes from a TASK: prefix (file names are not read for it)
    for name, rows, task in (("fine", fine, ""), ("my_basic", basic, "basic:"), ("my_sentiment", senti, "sentiment:")):
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        paths.append(task + str(path))
    answers = {r["subtitle"]: r["openset"] for r in fine + basic + senti}
    return paths, answers


def test_oracle_checkpoint_scores_100(tmp_path, monkeypatch):
    paths, answers = _splits(tmp_path)
    tok = mer.models.tiny_tokenizer()
    monkeypatch.setattr(E, "BATCH_SIZE", 4)
    results = E.evaluate(Oracle(tok, answers), tok, paths, ["fast", "slow"], OURS, str(tmp_path / "out"),
                         contextlib_null)["results"]
    for mode in ("fast", "slow"):
        assert results["fine"][mode]["scores"]["f1"] == pytest.approx(100.0)
        assert results["my_basic"][mode]["scores"]["hit"] == pytest.approx(100.0)
        assert results["my_sentiment"][mode]["scores"]["waf"] == pytest.approx(100.0)
        assert results["fine"][mode]["format"] == 100.0
    assert results["fine"]["retained_hit_rate"] == 100.0
    assert results["fine"]["delta_fast_minus_slow"] == {"f1": 0.0, "precision": 0.0, "recall": 0.0}
    assert results["fine"]["slow"]["n_confidence"] == 6   # every answer parses and every label maps
    assert math.isfinite(results["fine"]["slow"]["conf_gt"])


def contextlib_null():
    import contextlib
    return contextlib.nullcontext()


def test_harness_scores_equal_the_score_only_command(tmp_path, monkeypatch):
    paths, answers = _splits(tmp_path)
    tok = mer.models.tiny_tokenizer()
    monkeypatch.setattr(E, "BATCH_SIZE", 4)
    miss = {"fine line 1", "fine line 4", "basic line 0", "senti line 1"}
    out = tmp_path / "out"
    results = E.evaluate(Oracle(tok, answers, miss), tok, paths, ["fast", "slow"], OURS, str(out), contextlib_null)["results"]
    fine = results["fine"]["slow"]["scores"]
    assert 0 < fine["f1"] < 100
    for name, task in (("fine", "fine"), ("my_basic", "basic"), ("my_sentiment", "sentiment")):
        r = _run(f"--preds={out / f'preds_{name}_slow.csv'}", f"--labels={out / f'labels_{name}.csv'}", f"--task={task}")
        cli = json.loads(r.stdout.strip().splitlines()[-1])
        for key, value in cli.items():
            assert value == pytest.approx(results[name]["slow"]["scores"][key], abs=1e-4), (name, key)
    rows = list(csv.DictReader(open(out / "preds_fine_slow.csv")))
    assert rows[1] == {"name": "f1", "openset": "angry", "mode": "slow",
                       "text": "<think>I see.</think><answer>angry</answer>"}


def test_a_failing_later_split_keeps_the_summary_of_the_splits_done(tmp_path, monkeypatch):
    paths, answers = _splits(tmp_path)
    (tmp_path / "broken.jsonl").write_text('{"name": "x", "openset": ["sad"]}\n')
    tok = mer.models.tiny_tokenizer()
    monkeypatch.setattr(E, "BATCH_SIZE", 4)
    with pytest.raises(SystemExit, match="broken.jsonl, line 1 \\(x\\): 'openset' is"):
        E.evaluate(Oracle(tok, answers), tok, [paths[0], str(tmp_path / "broken.jsonl")], ["slow"], OURS,
                   str(tmp_path / "out"), contextlib_null, head={"ckpt": "oracle"})
    summary = json.load(open(tmp_path / "out" / "summary.json"))
    assert summary["ckpt"] == "oracle" and list(summary["results"]) == ["fine"]
    assert summary["results"]["fine"]["slow"]["scores"]["f1"] == pytest.approx(100.0)
    assert summary["means"]["slow"]["mean_f1"] == pytest.approx(100.0)


def test_evaluate_finds_the_checkpoint_an_interrupted_save_left(tmp_path, monkeypatch, capsys):
    model, tok = mer.models.load_model("tiny")
    mer.checkpoints.save_checkpoint(str(tmp_path / "last"), model, tok, {"step": 1, "config": {}})
    os.replace(tmp_path / "last", tmp_path / "last.old")
    assert mer.checkpoints.find_model(str(tmp_path / "last")) == str(tmp_path / "last.old")
    assert "last is missing; evaluating" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)
    os.makedirs("out/grpo")
    os.replace(tmp_path / "last.old", tmp_path / "out" / "grpo" / "last.old")
    assert mer.checkpoints.find_model("") == "out/grpo/last.old"                      # not a silent fall back to out/sft/last
    (tmp_path / "out" / "grpo" / "last.old" / "config.json").write_text("{}")
    with pytest.raises(SystemExit, match="config.json: missing or not what was saved"):
        mer.checkpoints.find_model("")


def test_plot_training_of_a_grpo_and_an_sft_log(tmp_path):
    pytest.importorskip("matplotlib")
    grpo, sft = tmp_path / "grpo.jsonl", tmp_path / "sft.jsonl"
    grpo.write_text("".join(json.dumps({"step": s, "recall": 0.5, "precision": 0.4, "format": 1.0, "kl": 0.01,
                                        "completion_len": 60, "loss": 0.1}) + "\n" for s in (1, 2)))
    sft.write_text(json.dumps({"step": 1, "loss": 2.0}) + "\n" + json.dumps({"event": "data"}) + "\n")
    for log in (grpo, sft):
        png = str(log) + ".png"
        assert mer.plots.plot_training(str(log), png) == png and open(png, "rb").read(4) == b"\x89PNG"
    width = lambda png: int.from_bytes(open(png, "rb").read(24)[16:20], "big")  # noqa: E731 (IHDR)
    assert width(str(grpo) + ".png") == 3 * 450  # rewards, KL, length: 4.5 inches at 100 dpi each
    with open(grpo, "a") as f:  # --val_samples: the held-out scores get a fourth panel
        f.writelines(json.dumps({"event": "validation", "step": s, "val_f1": 50.0, "val_precision": 40.0,
                                 "val_recall": 60.0, "val_format": 100.0}) + "\n" for s in (0, 2))
    assert width(mer.plots.plot_training(str(grpo), str(tmp_path / "val.png"))) == 4 * 450
    (tmp_path / "empty.jsonl").write_text(json.dumps({"event": "data"}) + "\n")
    with pytest.raises(SystemExit, match="no training step logged yet"):
        mer.plots.plot_training(str(tmp_path / "empty.jsonl"), str(tmp_path / "e.png"))


def test_harness_bad_inputs(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "notamodel").mkdir()
    r = _run(f"--ckpt={tmp_path / 'notamodel'}")
    assert r.returncode != 0 and "not a model folder" in r.stderr
    r = _run("--ckpt=tiny", f"--splits={tmp_path / 'empty.jsonl'}", f"--out_dir={tmp_path / 'o'}")
    assert r.returncode != 0 and "empty.jsonl: no samples" in r.stderr
    r = _run("--ckpt=tiny", "--modes=medium", f"--out_dir={tmp_path / 'o'}")
    assert r.returncode != 0 and "'medium' is not fast or slow" in r.stderr


def test_harness_command_on_the_tiny_model(tmp_path):
    r = _run("--ckpt=tiny", "--max_samples=4", "--max_new_tokens=8", "--fast_max_new_tokens=4",
             f"--out_dir={tmp_path}", "--splits=test_fine,test_sentiment")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "| fast |" in r.stdout and "| slow |" in r.stdout
    summary = json.load(open(tmp_path / "summary.json"))
    assert set(summary["results"]) == {"test_fine", "test_sentiment"}


@pytest.mark.parametrize("mode", ["fast", "slow"])
def test_answer_logprobs_read_at_the_first_token_of_each_word(mode):
    tok = mer.models.tiny_tokenizer()
    body = "angry, very sad;calm</answer>" if mode == "fast" else "Hm.</think><answer>angry, very sad;calm</answer>"
    completion = tok(body, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    keep = torch.tensor([3, 9, 40, 41])
    # kept[t] = the log-probs decoding step t read at `keep`: distinct per step, so a row read at
    # the wrong step shows
    kept = -torch.arange(len(completion), dtype=torch.float)[:, None] - torch.tensor([0.1, 0.2, 0.3, 0.4])
    words, lp = mer.generation.answer_logprobs(completion, kept, keep, tok, mode)
    assert [w.word for w in words] == ["angry", "very sad", "calm"]
    assert lp.shape == (3, len(tok))
    for w, row in zip(words, lp):
        assert tok.decode([completion[w.token]]).strip()[0].lower() == w.word[0]
        assert row[keep].tolist() == kept[w.token].tolist()
        assert torch.isinf(row).sum() == len(tok) - 4                 # -inf at every id not kept
    assert mer.generation.answer_logprobs(tok("no answer", add_special_tokens=False)["input_ids"], kept, keep, tok,
                                          mode) is None
