import contextlib
import subprocess
import sys

import pytest
import torch

import mer.models, mer.prompts
import predict
import wheel
from conftest import ROOT
from test_evaluate import Oracle

OURS = wheel.load_wheels()


def _run(*args):
    return subprocess.run([sys.executable, "predict.py", *args], capture_output=True, text=True, cwd=ROOT)


def test_answers_and_eq1_confidences_of_one_clip():
    tok = mer.models.tiny_tokenizer()
    sample = {"name": "clip", "subtitle": "fine line 0", "openset": "happy, excited"}
    model = Oracle(tok, {"fine line 0": "happy, excited"})
    for mode in ("slow", "fast"):
        text, words, conf = predict.answer(model, tok, None, sample, mode, contextlib.nullcontext, OURS)
        assert words == ["happy", "excited"] and text.startswith(mer.prompts.PREFIX[mode]) and text.endswith("</answer>")
        completion = tok(text[len(mer.prompts.PREFIX[mode]):], add_special_tokens=False)["input_ids"]
        found = mer.prompts.answer_words(completion, tok, mer.prompts.PREFIX[mode])
        # the oracle's log-probs where word j starts: 0..9 on the first ten ids, 30 on the word's first token
        logps = []
        for w in found:
            logits = torch.full((len(tok),), 0.0)
            logits[:10] = torch.arange(10.0)
            logits[completion[w.token]] = 30.0
            logps.append((torch.log_softmax(logits, -1), w.space))
        for k in range(5):
            tables = {space: mer.prompts.first_tokens(OURS, k, tok, space) for space in (False, True)}
            for c in wheel.map_words(words, OURS, k):
                expected = sum(torch.logsumexp(lp[tables[space][c]], 0) for lp, space in logps) / len(logps)
                assert conf[k][c] == pytest.approx(float(expected), abs=1e-5)
        assert any(conf[k][c] > -1 for k in range(5) for c in wheel.map_words(words, OURS, k))  # the 30 counts


def test_predict_command_on_the_tiny_model(monkeypatch):
    r = _run("--ckpt=tiny", "--subtitle=We won the final!", "--video_text=She jumps.", "--max_new_tokens=6")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "slow (thinking, then the answer):\n  <think>" in r.stdout and "fast (answer only):" in r.stdout
    assert "wheel  category" in r.stdout
    monkeypatch.setattr(predict, "SAMPLE", "test_fine:test_fine_00000")
    assert predict.clip_sample()["openset"] == "happy"


def test_a_sample_name_with_a_colon_is_reachable(monkeypatch, tmp_path):
    path = tmp_path / "clips.jsonl"
    path.write_text('{"name": "ep1:12:03", "subtitle": "hi", "openset": "calm"}\n')
    monkeypatch.setattr(predict, "SAMPLE", f"{path}:ep1:12:03")
    assert predict.clip_sample()["openset"] == "calm"
    monkeypatch.setattr(predict, "SAMPLE", f"fine:{path}:ep1:12:03")
    assert predict.clip_sample()["name"] == "ep1:12:03"


@pytest.mark.parametrize("flags, message", [
    ({}, "nothing to ask about"),
    ({"VIDEO": "/nonexistent/clip.mp4"}, "--video=/nonexistent/clip.mp4: no such file"),
    ({"SAMPLE": "test_fine:nope"}, "test_fine: no sample named 'nope'"),
    ({"SAMPLE": "test_fine"}, "write FILE.jsonl:NAME"),
])
def test_predict_bad_inputs_before_a_model_loads(monkeypatch, flags, message):
    for k, v in flags.items():
        monkeypatch.setattr(predict, k, v)
    with pytest.raises(SystemExit, match=message):
        predict.clip_sample()
