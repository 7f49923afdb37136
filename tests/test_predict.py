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
    # the oracle's next-token distribution is the same at every position: log_softmax(0, 1, ..., 9, -inf...)
    logp = torch.log_softmax(model(torch.zeros(1, 1, dtype=torch.long), logits_to_keep=1).logits[0, 0], -1)
    for mode in ("slow", "fast"):
        text, words, conf = predict.answer(model, tok, None, sample, mode, contextlib.nullcontext, OURS)
        assert words == ["happy", "excited"] and text.startswith(mer.prompts.PREFIX[mode]) and text.endswith("</answer>")
        for k in range(5):
            table = mer.prompts.first_tokens(OURS, k, tok, True)   # both words of the answer are after "<answer>"
            bare = mer.prompts.first_tokens(OURS, k, tok, False)   # or ", "
            for c in wheel.map_words(words, OURS, k):
                expected = (torch.logsumexp(logp[bare[c]], 0) + torch.logsumexp(logp[table[c]], 0)) / 2
                assert conf[k][c] == pytest.approx(float(expected), abs=1e-5)


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
