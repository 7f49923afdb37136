import copy
import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

import mer.data, mer.engine, mer.inputs, mer.models, mer.prompts, mer.run
import rewards
import wheel
from conftest import (ROOT, assert_tracker_equals_log, checkpointing_gaps, chunked_logprob_gaps, reference_advantages, shared_prompt_gap,
                      tracker_args)

SMALL = ["--max_samples=32", "--skip_samples=0", "--max_new_tokens=100", "--precision=fp32", "--save_every=100", "--threads=1"]


def _run(args, launcher=None):
    cmd = (launcher or [sys.executable]) + [os.path.join(ROOT, "train_grpo.py")] + args
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-4000:]
    return r


def _log(out):
    return [json.loads(l) for l in open(os.path.join(out, "log.jsonl"))]


def _steps(out):
    return [r for r in _log(out) if "event" not in r]


def _weights(path):
    return AutoModelForCausalLM.from_pretrained(path).state_dict()


def test_fast_answer_on_a_known_string():
    tok = mer.models.tiny_tokenizer()
    sample = {"name": "x", "subtitle": "We won!", "openset": "happy"}
    slow_prompt = tok(mer.prompts.prompt_text(sample, tok, "slow"), add_special_tokens=False)["input_ids"]
    fast_prompt = tok(mer.prompts.prompt_text(sample, tok, "fast"), add_special_tokens=False)["input_ids"]
    completion = tok("She smiles.</think><answer>happy, sad;happy, Very angry</answer>", add_special_tokens=False)["input_ids"]
    completion += [tok.eos_token_id]
    answer, words = mer.prompts.fast_answer(completion, tok)
    # the answer ids are copied, not re-tokenised, up to the first token of the last word
    start = words[0][1] - words[0][2]  # j - a: where the answer starts in the completion
    assert answer == completion[start:words[-1][1] + 1]
    assert tok.decode(completion[:start]) == "She smiles.</think><answer>"
    assert tok.decode(answer) == "happy, sad;happy, V"
    # the fast sequence differs from the slow one only in the think block
    fast_ids, slow_ids = fast_prompt + answer, slow_prompt + completion[:start + len(answer)]
    assert tok.decode(fast_ids) == tok.decode(slow_ids).replace("<think>She smiles.</think>", "<think></think>")
    assert [w for w, _, _, _ in words] == ["happy", "sad", "very angry"]
    wheels = wheel.load_wheels()
    for word, slow_j, a, space in words:
        assert completion[slow_j] == answer[a]
        first = tok.decode([completion[slow_j]])
        assert first.strip() and word.replace(" ", "").startswith(first.strip().lower())
        # the same first-token id is what V(c) holds for this word's category (Eq. 1 in context)
        if word in ("happy", "sad"):
            assert completion[slow_j] in mer.prompts.first_tokens(wheels, 1, tok, space)[word]
    assert tok.decode(completion[:words[1][1]]).endswith("happy,")
    assert tok.decode(completion[:words[2][1] + 1]).endswith("happy, sad;happy, V")
    assert mer.prompts.fast_answer(tok("no answer here", add_special_tokens=False)["input_ids"], tok) is None


def two_prompts_three_completions_each():
    """The tiny model, two prompts (the second left-padded) and 3 completions of 5 tokens for each,
    the second of which ends early."""
    torch.manual_seed(0)
    model, tok = mer.models.load_model("tiny")
    ids, mask = mer.inputs.left_pad([[5, 6, 7, 8, 9, 10, 11], [12, 13, 14]], tok.eos_token_id)
    completion = torch.randint(5, 100, (6, 5))
    c_mask = torch.ones_like(completion)
    c_mask[1, 3:] = 0
    return model, ids, mask, completion, c_mask


def test_prompt_once_per_group_equals_the_full_sequences():
    model, ids, mask, completion, c_mask = two_prompts_three_completions_each()
    model.eval()
    assert shared_prompt_gap(model, ids, mask, {}, {}, completion, c_mask, n=3) < 1e-5


def test_chunked_logprobs_equal_full_logits_in_values_and_gradients():
    model, ids, mask, completion, c_mask = two_prompts_three_completions_each()
    # 30 positions in chunks of 4 (the last one short); the tiny model ties its LM head to the embeddings
    lp_gap, grad_gap = chunked_logprob_gaps(model, ids, mask, {}, completion, c_mask, n=3)
    assert lp_gap < 1e-5 and grad_gap < 1e-5


def test_grad_checkpointing_gives_the_same_logprobs_and_gradients():
    model, ids, mask, completion, c_mask = two_prompts_three_completions_each()
    lp_gap, grad_gap, calls, calls_checkpointed = checkpointing_gaps(model, ids, mask, {}, completion, c_mask, n=3)
    assert lp_gap < 1e-5 and grad_gap < 1e-5
    # the prompt pass and the continuation; checkpointed, the continuation's layer runs again in the backward
    assert (calls, calls_checkpointed) == (2, 3)

    # full sequences, as in SFT
    labels = torch.randint(5, 100, (2, 6))

    def grads(m):
        m.zero_grad()
        m(input_ids=labels, labels=labels).loss.backward()
        return {k: p.grad.clone() for k, p in m.named_parameters() if p.grad is not None}
    model.train()
    checkpointed = copy.deepcopy(model)
    mer.models.enable_grad_checkpointing(checkpointed)
    g, g_c = grads(model), grads(checkpointed)
    assert max((g[k] - g_c[k]).abs().max().item() for k in g) < 1e-5


def test_sampler_greedy_equals_hf_generate_and_respects_min_and_eos():
    torch.manual_seed(0)
    model, tok = mer.models.load_model("tiny")
    model.eval()
    ids, mask = mer.inputs.left_pad([[5, 6, 7, 8, 9, 10, 11], [12, 13, 14]], tok.eos_token_id)
    eos = tok.eos_token_id
    with torch.no_grad():
        ours = mer.engine.sample(model, ids, mask, {}, 2, max_new=12, temperature=0, eos=eos)
        hf = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=12,
                            pad_token_id=eos, eos_token_id=None)[:, ids.shape[1]:]
    assert torch.equal(ours, hf.repeat_interleave(2, 0))
    # make EOS the greedy choice everywhere: it comes at min_new exactly, then pads the row
    model.lm_head.bias = torch.nn.Parameter(torch.zeros(len(tok)).index_fill(0, torch.tensor([eos]), 1e4))
    with torch.no_grad():
        ended = mer.engine.sample(model, ids, mask, {}, 1, max_new=10, min_new=4, temperature=0, eos=eos)
    assert ended.shape == (2, 5) and (ended[:, 4] == eos).all() and (ended[:, :4] != eos).all()
    with torch.no_grad():
        sampled = mer.engine.sample(model, ids, mask, {}, 3, max_new=10, min_new=10, temperature=1.0, eos=eos)
    assert sampled.shape == (6, 10) and (sampled != eos).all()


def test_next_token_top_p_keeps_the_smallest_set_reaching_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    torch.manual_seed(0)
    draws = lambda p: {mer.engine.next_token(logits, 1.0, p).item() for _ in range(300)}  # noqa: E731
    assert draws(0.0) == {0}           # top_p 0 keeps the most likely token (greedy), never the last id
    assert draws(0.5) == {0}           # 0.5 alone reaches 0.5
    assert draws(0.7) == {0, 1}        # 0.5 < 0.7 <= 0.8
    assert draws(0.9) == {0, 1, 2}
    assert draws(1.0) == {0, 1, 2, 3}
    assert mer.engine.next_token(logits, 0).item() == 0
    # draws follow the distribution, and a token of probability 0 never comes
    probs = torch.tensor([[0.1, 0.0, 0.6, 0.3]]).repeat(100000, 1)
    freq = torch.bincount(mer.engine.next_token(torch.log(probs)), minlength=4) / len(probs)
    assert freq[1] == 0 and torch.allclose(freq, probs[0], atol=0.005)


def test_completion_mask_from_first_eos():
    ids = torch.tensor([[5, 2, 2, 7], [1, 1, 1, 1], [2, 0, 0, 0]])
    assert rewards.completion_mask(ids, 2).tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]


def test_one_step_changes_weights_and_logs_finite_values(tiny_sft, tmp_path):
    _run([f"--init={tiny_sft}", f"--out_dir={tmp_path}", "--max_steps=2", *SMALL, *tracker_args()])
    log = _log(tmp_path)
    steps = [r for r in log if "event" not in r]
    assert len(steps) == 2
    assert_tracker_equals_log(tmp_path, "recall")   # --log_with: the same scalars in the tracker
    for rec in steps:
        for key in ("recall", "precision", "f1", "format", "cali_pos", "cali_neg", "kl", "clip_frac",
                    "completion_len", "zero_std_groups", "tied_groups", "cali_coverage", "generate_s", "fwd_bwd_s", "fast_s", "loss", "grad_norm"):
            assert math.isfinite(rec[key]), key
        assert rec["ratio_dev"] == 0.0  # each batch used once: ratio 1
    assert any(r["zero_std_groups"] < 1 for r in steps)
    before, after = _weights(tiny_sft), _weights(tmp_path / "last")
    assert any(not torch.equal(before[k], after[k]) for k in before)
    card = open(tmp_path / "last" / "README.md").read()
    assert card.startswith("# mer-r1 checkpoint: GRPO (variant `mer_r1`)") and "step 2 of 2" in card


# one variant per path through train_grpo.py: no fast pass, the fast pass, word-level confidences;
# every variant's definition is checked against the reference in test_rewards.py
@pytest.mark.parametrize("variant", ["baseline", "mer_r1", "a1"])
def test_each_variant_gives_its_advantage_in_the_run(tiny_sft, tmp_path, variant):
    # the logged rewards of every completion, through an independent numpy reference of the
    # variant's definition, must give the advantage the run trained with
    _run([f"--init={tiny_sft}", f"--out_dir={tmp_path}", "--max_steps=1", f"--variant={variant}", "--beta=0",
          "--log_completions_every=1", "--prompts=4", *SMALL])
    rec = _steps(tmp_path)[0]
    assert math.isfinite(rec["loss"]) and rec["kl"] == 0.0
    done = [json.loads(l) for l in open(tmp_path / "completions.jsonl")]
    assert len(done) == 4 * 4 and {d["step"] for d in done} == {1}
    for group in range(4):
        rows = [d for d in done if d["group"] == group]
        assert len({d["prompt"] for d in rows}) == 1 and len(rows) == 4
        g = {k: np.array([d[k] for d in rows]) for k in rows[0] if isinstance(rows[0][k], float)}
        expected = reference_advantages(variant, g, 0.1, 0.1, rewards.EPS, rewards.ZERO_STD)
        assert [d["advantage"] for d in rows] == pytest.approx(expected.tolist(), abs=1e-4)
    assert any(abs(d["advantage"]) > 0.1 for d in done)
    if variant in rewards.CALIBRATED:
        # answers start on a token boundary: they get a calibration signal
        assert rec["cali_coverage"] > 0 and all(k in done[0] for k in ("cali_pos", "has_pos", "has_neg"))
    else:
        assert "cali_pos" not in rec and "cali_pos" not in done[0]  # no fast pass for uncalibrated variants


def test_zero_variance_groups_give_zero_advantage_and_no_nan(tmp_path):
    # a random tiny model never answers: every reward is 0, every group has zero variance
    _run(["--init=tiny", f"--out_dir={tmp_path}", "--max_steps=1", "--max_new_tokens=16", *SMALL[:2], *SMALL[3:]])
    rec = _steps(tmp_path)[0]
    assert rec["zero_std_groups"] == 1.0 and rec["loss"] == 0.0 and rec["grad_norm"] == 0.0


@pytest.mark.parametrize("prompts,grad_accum", [(2, 1), (1, 2)])
def test_several_updates_per_batch(tiny_sft, tmp_path, prompts, grad_accum):
    _run([f"--init={tiny_sft}", f"--out_dir={tmp_path}", "--max_steps=1", "--updates_per_batch=3", "--lr=1e-3",
          f"--prompts={prompts}", f"--grad_accum={grad_accum}", *SMALL])
    rec = _steps(tmp_path)[0]
    # the old log-probs stay those of the sampling policy: by the 3rd update the ratio has left 1
    # and clipping engages (both would be 0 if the old log-probs were refreshed each update)
    assert math.isfinite(rec["loss"]) and rec["kl"] > 0
    assert rec["ratio_dev"] > 0.05 and 0 < rec["clip_frac"] <= 1
    # three optimizer steps on the batch, each over all its micro-batches (one per micro-batch: 6;
    # only the last micro-batch again: 1 + the steps its lone accumulation never completes)
    state = torch.load(tmp_path / "last" / "trainer_state.pt", weights_only=False)["optimizer"]["state"]
    assert {int(v["step"]) for v in state.values()} == {3}


def test_resume_reaches_the_same_weights(tiny_sft, tmp_path):
    args = [f"--init={tiny_sft}", "--max_steps=4", "--lr=1e-4", *SMALL]
    _run([f"--out_dir={tmp_path / 'full'}", *args])
    _run([f"--out_dir={tmp_path / 'cut'}", "--stop_after=2", *args])
    assert torch.load(tmp_path / "cut" / "last" / "trainer_state.pt", weights_only=False)["step"] == 2
    with open(tmp_path / "cut" / "log.jsonl", "a") as f:  # a step logged after the checkpoint, then a crash
        f.write(json.dumps({"step": 3, "loss": 0.0}) + "\n")
    _run([f"--out_dir={tmp_path / 'cut'}", *args])
    full, cut = _weights(tmp_path / "full" / "last"), _weights(tmp_path / "cut" / "last")
    assert all(torch.allclose(full[k], cut[k], atol=1e-6) for k in full)
    assert [r["step"] for r in _log(tmp_path / "cut") if "event" not in r] == [1, 2, 3, 4]
    # resuming with other settings is refused with the list of differences (MAX_STEPS may grow)
    r = subprocess.run([sys.executable, os.path.join(ROOT, "train_grpo.py"), f"--out_dir={tmp_path / 'cut'}", *args,
                        "--variant=baseline", "--beta=0.1"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode != 0 and "variant: 'mer_r1' in the checkpoint, 'baseline' now" in r.stderr
    assert "beta: 0.04 in the checkpoint, 0.1 now" in r.stderr and "--resume=False" in r.stderr
    _run([f"--out_dir={tmp_path / 'cut'}", *args, "--max_steps=5"])
    assert [r["step"] for r in _log(tmp_path / "cut") if "event" not in r] == [1, 2, 3, 4, 5]


def test_lora_trains_adapters_against_the_base_and_saves_merged_weights(tiny_sft, tmp_path):
    pytest.importorskip("peft")
    from safetensors.torch import load_file
    args = [f"--init={tiny_sft}", "--max_steps=2", "--lr=1e-2", "--lora_r=4", *SMALL]
    _run([f"--out_dir={tmp_path / 'full'}", *args])
    log = [r for r in _log(tmp_path / "full") if "event" not in r]
    # step 1 starts with B = 0 (policy = reference); at step 2 the reference is still the base model
    assert log[0]["kl"] == pytest.approx(0, abs=1e-7) and log[1]["kl"] > 1e-6
    init, merged = _weights(tiny_sft), _weights(tmp_path / "full" / "last")  # plain from_pretrained, no peft
    changed = {k for k in init if not torch.equal(init[k], merged[k])}
    targets = {k for k in init if re.match(mer.models.LORA_TARGETS, k.removesuffix(".weight"))}
    assert changed == targets and len(targets) == 2 * 7  # two layers x q, k, v, o, gate, up, down
    adapters = load_file(tmp_path / "full" / "last" / "adapters.safetensors")
    assert len(adapters) == 2 * len(targets)  # lora_A and lora_B of each
    # resuming loads the base and the saved adapters: the same merged weights as the uninterrupted run
    _run([f"--out_dir={tmp_path / 'cut'}", "--stop_after=1", *args])
    _run([f"--out_dir={tmp_path / 'cut'}", *args])
    cut = _weights(tmp_path / "cut" / "last")
    assert all(torch.allclose(merged[k], cut[k], atol=1e-6) for k in merged)


def test_two_processes_stay_in_sync(tiny_sft, tmp_path):
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    _run([f"--init={tiny_sft}", f"--out_dir={tmp_path}", "--max_steps=2", "--lr=1e-4", *SMALL], launcher)
    end = _log(tmp_path)[-1]
    assert end["event"] == "end" and end["world_size"] == 2 and end["engine"] == "MULTI_CPU"
    assert end["param_checksums"][0] == end["param_checksums"][1]
    init_sum = sum(v.double().sum().item() for v in _weights(tiny_sft).values())
    assert end["param_checksums"][0] != pytest.approx(init_sum, abs=1e-6)
    assert not os.path.exists(tmp_path / "lock")  # released before the processes end themselves


ZERO2 = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", os.path.join(ROOT, "configs", "zero2_cpu.yaml")]
DDP2 = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no"]


def test_zero2_on_two_cpu_processes_trains_as_ddp_does_and_resumes(tiny_sft, tmp_path):
    pytest.importorskip("deepspeed")  # .ci/run installs it; the first run builds one C++ op (~2 min)
    args = [f"--init={tiny_sft}", "--max_steps=2", "--lr=1e-4", *SMALL, "--save_every=1"]
    _run([f"--out_dir={tmp_path / 'ddp'}", *args], DDP2)
    _run([f"--out_dir={tmp_path / 'cut'}", *args, "--stop_after=1"], ZERO2)
    zero = _log(tmp_path / "cut")
    assert zero[0]["engine"] == zero[-1]["engine"] == "DEEPSPEED" and zero[-1]["world_size"] == 2
    sums = zero[-1]["param_checksums"]
    init_sum = sum(v.double().sum().item() for v in _weights(tiny_sft).values())
    assert sums[0] == sums[1] and sums[0] != pytest.approx(init_sum, abs=1e-6)           # moved, replicas agree
    # resumed from ZeRO's per-process optimizer partitions: the same as two uninterrupted steps
    _run([f"--out_dir={tmp_path / 'cut'}", *args], ZERO2)
    _run([f"--out_dir={tmp_path / 'whole'}", *args], ZERO2)
    whole, cut = _weights(tmp_path / "whole" / "last"), _weights(tmp_path / "cut" / "last")
    assert all(torch.equal(whole[k], cut[k]) for k in whole)
    assert _log(tmp_path / "cut")[-1]["param_checksums"] == _log(tmp_path / "whole")[-1]["param_checksums"]
    # and both steps as DDP takes them: the same sums of gradients, clipped Adam steps and weights, up
    # to fp32 summation order (DeepSpeed reduces and takes the norm by partitions: ~2e-6 apart)
    ddp, steps = _steps(tmp_path / "ddp"), _steps(tmp_path / "whole")
    assert len(ddp) == len(steps) == 2 and all(math.isfinite(b["loss"]) for b in steps) and ddp[0]["grad_norm"] > 1
    assert [b["grad_norm"] for b in steps] == pytest.approx([a["grad_norm"] for a in ddp], rel=1e-5)
    after_ddp = _weights(tmp_path / "ddp" / "last")
    assert all(torch.allclose(whole[k], after_ddp[k], atol=1e-7) for k in whole)
    assert _log(tmp_path / "whole")[-1]["param_checksums"][0] == \
        pytest.approx(_log(tmp_path / "ddp")[-1]["param_checksums"][0], rel=1e-6)


def test_zero2_bf16_reference_equals_the_policy_at_step_1(tiny_sft, tmp_path):
    # DeepSpeed's bf16 mode casts the policy's parameters but not its buffers: a reference cast whole
    # (RoPE's inv_freq too) gave KL 3.6e-4 at step 1, where policy and reference are the same weights
    pytest.importorskip("deepspeed")
    config = tmp_path / "zero2_bf16.yaml"
    config.write_text(open(os.path.join(ROOT, "configs", "zero2_cpu.yaml")).read().replace(
        "mixed_precision: 'no'", "mixed_precision: bf16"))
    _run([f"--init={tiny_sft}", f"--out_dir={tmp_path / 'out'}", "--max_steps=1", "--lr=1e-4", *SMALL],
         ZERO2[:-1] + [str(config)])
    log = _log(tmp_path / "out")
    assert log[0]["engine"] == "DEEPSPEED" and log[0]["mixed_precision"] == "bf16"
    assert _steps(tmp_path / "out")[0]["kl"] == 0.0
    assert all(torch.isfinite(w.float()).all() for w in _weights(tmp_path / "out" / "last").values())  # loads


def test_bad_settings_are_refused_before_models_load(tmp_path):
    r = subprocess.run([sys.executable, os.path.join(ROOT, "train_grpo.py"), "--g=1", "--temperature=0", "--prompts=0",
                        "--lr=-1", "--reward_wheels=1,7", "--precision=fp16", f"--out_dir={tmp_path}"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode != 0 and not os.listdir(tmp_path)
    for text in ("--g=1", "--temperature=0.0", "--prompts", "--lr", "--reward_wheels='1,7'", "--precision='fp16'"):
        assert text in r.stderr, text
    r = subprocess.run([sys.executable, os.path.join(ROOT, "train_grpo.py"), "--out_dir=/proc/no/such"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode != 0 and "/proc/no/such: cannot write here" in r.stderr
    r = subprocess.run([sys.executable, os.path.join(ROOT, "train_grpo.py"), "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--variant='mer_r1'" in r.stdout and "--g=4" in r.stdout


def test_non_finite_loss_stops_without_saving(tiny_sft, tmp_path):
    # a policy with one NaN weight gives a NaN loss at step 1: the run must stop, saving nothing
    model, tok = mer.models.load_model(tiny_sft)
    with torch.no_grad():
        model.model.norm.weight[0] = float("nan")
    model.save_pretrained(tmp_path / "bad")
    tok.save_pretrained(tmp_path / "bad")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "train_grpo.py"), f"--init={tmp_path / 'bad'}",
                        f"--out_dir={tmp_path / 'out'}", "--max_steps=2", "--save_every=1", "--max_new_tokens=8",
                        *SMALL[:2], *SMALL[3:]], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode != 0 and "step 1: non-finite loss" in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / "out" / "last").exists()


def test_grad_clip_zero_means_no_clipping(tiny_sft, tmp_path):
    _run([f"--init={tiny_sft}", f"--out_dir={tmp_path}", "--max_steps=1", "--lr=1e-3", "--grad_clip=0", *SMALL])
    rec = _steps(tmp_path)[0]
    before, after = _weights(tiny_sft), _weights(tmp_path / "last")
    assert rec["grad_norm"] > 0 and any(not torch.equal(before[k], after[k]) for k in before)


def test_a_second_run_into_the_same_out_dir_is_refused(tiny_sft, tmp_path):
    other = subprocess.Popen(["sleep", "60"])  # another live process holds the folder
    (tmp_path / "lock").write_text(str(other.pid))
    r = subprocess.run([sys.executable, os.path.join(ROOT, "train_grpo.py"), f"--init={tiny_sft}", f"--out_dir={tmp_path}",
                        "--max_steps=1", *SMALL], capture_output=True, text=True, cwd=ROOT)
    other.kill()
    assert r.returncode != 0 and f"in use by process {other.pid}" in r.stderr
    assert "Loading weights" not in r.stderr  # refused before the model loads
    (tmp_path / "lock").write_text("999999999")  # a dead process's lock is taken over
    _run(["--init=tiny", f"--out_dir={tmp_path}", "--max_steps=1", "--max_new_tokens=8", *SMALL[:2], *SMALL[3:]])
    assert not (tmp_path / "lock").exists()


@pytest.mark.parametrize("signum", ["SIGINT", "SIGTERM"])  # Ctrl-C, and what Slurm and Kubernetes send
def test_ctrl_c_saves_at_a_step_boundary_and_resumes_like_an_uninterrupted_run(tiny_sft, tmp_path, signum):
    import signal
    import time
    args = [f"--init={tiny_sft}", "--max_steps=4", "--lr=1e-4", "--updates_per_batch=2", *SMALL]
    _run([f"--out_dir={tmp_path / 'full'}", *args])
    cut = tmp_path / "cut"
    p = subprocess.Popen([sys.executable, os.path.join(ROOT, "train_grpo.py"), f"--out_dir={cut}", *args],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while not (cut / "log.jsonl").exists() or not _steps(cut):
        assert p.poll() is None, p.communicate()[1][-2000:]
        time.sleep(0.05)
    time.sleep(0.3)  # somewhere inside step 2
    p.send_signal(getattr(signal, signum))
    out, err = p.communicate(timeout=600)
    assert p.returncode == 130, err[-2000:]
    saved = torch.load(cut / "last" / "trainer_state.pt", weights_only=False)["step"]
    assert f"interrupted: saved step {saved} in {cut}/last; run again to resume" in out
    assert 1 <= saved <= 4 and [r["step"] for r in _log(cut) if "event" not in r] == list(range(1, saved + 1))
    _run([f"--out_dir={cut}", *args])
    full, resumed = _weights(tmp_path / "full" / "last"), _weights(cut / "last")
    assert all(torch.allclose(full[k], resumed[k], atol=1e-6) for k in full)



def test_a_tracker_that_is_not_installed_is_a_clear_error():
    for name, message in (("mlflow", "the mlflow package is not installed \\(pip install mlflow\\)"),
                          ("tensorbord", "'tensorbord': not a tracker accelerate knows")):
        with pytest.raises(SystemExit, match=message):
            mer.run.trackers(name)
    assert mer.run.trackers("") is None


def test_validation_scores_the_held_out_samples_as_evaluate_does(tiny_sft, tmp_path):
    """--val_samples holds out the last N samples: never a training prompt, scored greedily in slow
    mode before the first step and every --val_every steps, with the numbers evaluate.py gives."""
    _run([f"--init={tiny_sft}", f"--out_dir={tmp_path / 'run'}", "--max_steps=3", "--val_samples=6", "--val_every=2",
          "--log_completions_every=1", "--lr=0", *SMALL, "--max_samples=12"])
    log = _log(tmp_path / "run")
    val = [r for r in log if r.get("event") == "validation"]
    assert [r["step"] for r in val] == [0, 2, 3]  # before training, every 2 steps, at the end
    chosen = mer.data.select(mer.data.load_samples("train"), 0, 12)
    held_out = chosen[-6:]
    # 3 steps x 2 prompts: one epoch of the 6 samples left, none of the held-out ones
    trained = {json.loads(l)["prompt"] for l in open(tmp_path / "run" / "completions.jsonl")}
    assert trained == {s["name"] for s in chosen[:6]}
    with open(tmp_path / "val.jsonl", "w") as f:
        f.writelines(json.dumps(s) + "\n" for s in held_out)
    r = subprocess.run([sys.executable, os.path.join(ROOT, "evaluate.py"), f"--ckpt={tiny_sft}", "--modes=slow",
                        f"--splits={tmp_path / 'val.jsonl'}", f"--out_dir={tmp_path / 'eval'}", "--diagnostics=False",
                        "--precision=fp32", "--threads=1", "--grpo_log="], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    slow = json.load(open(tmp_path / "eval" / "summary.json"))["results"]["val"]["slow"]
    for key in ("f1", "precision", "recall"):  # lr 0: the policy is the checkpoint evaluate.py reads
        assert val[0][f"val_{key}"] == pytest.approx(slow["scores"][key]) == val[-1][f"val_{key}"]
    assert val[0]["val_format"] == pytest.approx(slow["format"])
    assert 0 < slow["scores"]["recall"] < 100


def _step2_rewards(samples, texts, wheels, ks):
    """train_grpo.py's step 2: answer words -> level-1 categories per reward wheel -> rewards."""
    words = [wheel.parse_answer(t) for t in texts]
    pred = [[wheel.map_words(w, wheels, k) for k in ks] for w in words]
    gt = [mer.data.label_categories(s, wheels, ks) for s in samples]
    return rewards.completion_rewards(texts, words, pred, gt, [s.get("subtitle", "") for s in samples])


def test_completion_rewards_hand_computed():
    wheels = wheel.load_wheels()
    sample = {"openset": "happy, sad", "subtitle": "I am fine."}
    texts = ["<think>She smiles, then frowns.</think><answer>joyful, angry</answer>",  # one hit of two, every wheel
             "<think></think><answer>calm</answer>"]  # empty think: format 0; calm is 'peaceful' on wheel 1 only
    r = _step2_rewards([sample, sample], texts, wheels, [0, 1, 2, 3, 4])
    assert r["format"] == [1.0, 0.0]
    assert r["recall"] == pytest.approx([0.5, (0 + 4 * 0.5) / 5])
    assert r["precision"] == pytest.approx([0.5, (0 + 4 * 1.0) / 5])
    assert r["f1"] == pytest.approx([0.5, (0 + 4 * (2 * 0.5 / 1.5)) / 5])  # per wheel, then averaged
    # the reward wheels chosen: on wheels 2-5 alone calm maps to happy
    assert _step2_rewards([sample], texts[1:], wheels, [1, 3])["precision"] == [1.0]
    assert mer.data.label_categories(sample, wheels, [0, 1]) == [{"joyful", "sad"}, {"happy", "sad"}]
