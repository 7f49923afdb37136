import json
import os
import subprocess
import sys

import torch
from transformers import AutoModelForCausalLM

import mer.models
from conftest import ROOT, assert_tracker_equals_log, tracker_args

TINY = ["--model=tiny", "--max_samples=8", "--fast_fraction=0", "--batch_size=4", "--grad_accum=2", "--lr=3e-3", "--warmup_steps=1",
        "--precision=fp32", "--save_every=100"]


def _sft(out, *args):
    r = subprocess.run([sys.executable, os.path.join(ROOT, "train_sft.py"), f"--out_dir={out}", *TINY, *args],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    return [r for r in map(json.loads, open(os.path.join(out, "log.jsonl"))) if "event" not in r]


def _weights(path):
    return AutoModelForCausalLM.from_pretrained(path).state_dict()


def test_sft_lowers_loss_and_checkpoint_round_trips(tmp_path):
    # 8 samples, one global batch of 8: every step sees the same batch
    log = _sft(tmp_path / "a", "--max_steps=8", *tracker_args())
    assert [r["step"] for r in log] == list(range(1, 9))
    assert_tracker_equals_log(tmp_path / "a", "loss")   # --log_with: the same scalars in the tracker
    assert log[-1]["loss"] < log[0]["loss"] - 0.5
    ckpt = str(tmp_path / "a" / "last")
    trained = _weights(ckpt)
    model, tok = mer.models.load_model(ckpt)
    assert all(torch.equal(trained[k], v) for k, v in model.state_dict().items())
    init = mer.models.load_model("tiny")[0].state_dict()
    assert any(not torch.equal(init[k], v) for k, v in trained.items())
    assert tok.decode(tok("<think>x</think>")["input_ids"]) == "<think>x</think>"
    card = open(os.path.join(ckpt, "README.md")).read()   # the folder explains itself
    assert card.startswith("# mer-r1 checkpoint: SFT") and "started from: `tiny`" in card
    assert "step 8 of 8" in card and f"loss {log[-1]['loss']:.4g}" in card and "LR = " in card


def test_resume_reaches_the_same_weights(tmp_path):
    _sft(tmp_path / "full", "--max_steps=6")
    _sft(tmp_path / "cut", "--max_steps=6", "--stop_after=2")
    state = torch.load(tmp_path / "cut" / "last" / "trainer_state.pt", weights_only=False)
    assert state["step"] == 2 and state["position"] == 16
    log = _sft(tmp_path / "cut", "--max_steps=6")
    assert [r["step"] for r in log] == list(range(1, 7))
    full, cut = _weights(tmp_path / "full" / "last"), _weights(tmp_path / "cut" / "last")
    assert all(torch.allclose(full[k], cut[k], atol=1e-6) for k in full)


def test_sft_on_two_processes_keeps_the_replicas_equal(tmp_path):
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    r = subprocess.run([*launcher, os.path.join(ROOT, "train_sft.py"), f"--out_dir={tmp_path}", *TINY, "--max_steps=2",
                        "--threads=1"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    log = [json.loads(line) for line in open(tmp_path / "log.jsonl")]
    end = log[-1]
    assert end["event"] == "end" and end["engine"] == "MULTI_CPU" and end["world_size"] == 2 and end["step"] == 2
    assert end["param_checksums"][0] == end["param_checksums"][1]
    assert all(torch.isfinite(torch.tensor(rec["loss"])) for rec in log if "loss" in rec)
