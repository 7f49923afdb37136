import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
OFFICIAL_WHEELS = os.path.join(ROOT, "..", "shared", "affectgpt-emotion-wheel")


def check_set():
    """(predictions, labels) of the public OV-MERD+ check set beside the official wheel files:
    AffectGPT's released predictions and the ground truth, as {name: [words]}."""
    import mer.data
    import wheel
    check = os.path.join(OFFICIAL_WHEELS, "check")
    return tuple({n: wheel.string_to_list(v) for n, v in
                  mer.data.read_name_column_csv(os.path.join(check, f), "openset").items()}
                 for f in ("affectgpt_ckpt60_preds.csv", "ovmerd_check_labels.csv"))


def shared_prompt_gap(model, ids, mask, media, row_media, completion, c_mask, n):
    """Largest difference between the logits that predict completion tokens when each prompt runs
    once for its n rows (mer.engine.continuation_logits, what GRPO trains with) and when every row runs
    its full sequence (mer.engine.forward_logits), over the positions whose token counts (c_mask = 1)."""
    import torch
    import mer.engine
    full_ids = torch.cat([ids.repeat_interleave(n, 0), completion], 1)
    full_mask = torch.cat([mask.repeat_interleave(n, 0), c_mask], 1)
    with torch.no_grad():
        full = mer.engine.forward_logits(model, full_ids, full_mask, row_media, keep=completion.shape[1] + 1)[:, :-1]
        shared = mer.engine.continuation_logits(model, ids, mask, media, completion, c_mask, n)
    assert shared.shape == full.shape
    return ((shared - full).abs() * c_mask[..., None]).max().item()


def chunked_logprob_gaps(model, ids, mask, media, completion, c_mask, n, temperature=0.7, chunk=4):
    """Largest differences, in log-probs and in the gradients of a weighted sum of them (relative to
    the largest gradient entry of the tensor when it is above 1: chunks change the fp32 summation
    order), between the GRPO path (LM head off, rewards.chunked_logprobs in chunks of `chunk`
    positions, each checkpointed) and full [rows, T, vocabulary] logits then token_logprobs."""
    import torch
    import mer.engine
    import rewards
    weights = torch.randn(completion.shape, generator=torch.Generator().manual_seed(1)) * c_mask

    def run(chunked):
        model.zero_grad()
        if chunked:
            with mer.engine.lm_head_off(model) as head:
                hidden = mer.engine.continuation_logits(model, ids, mask, media, completion, c_mask, n)
            logp = rewards.chunked_logprobs(hidden, head, completion, temperature, chunk)
        else:
            logits = mer.engine.continuation_logits(model, ids, mask, media, completion, c_mask, n)
            logp = rewards.token_logprobs(logits, completion, temperature)
        (logp * weights).sum().backward()
        return logp.detach(), {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}

    (lp_full, g_full), (lp_chunk, g_chunk) = run(False), run(True)
    assert set(g_full) == set(g_chunk) and any("lm_head" in k or "embed" in k for k in g_chunk)
    return ((lp_full - lp_chunk).abs() * c_mask).max().item(), max(
        ((g_full[k] - g_chunk[k]).abs().max() / g_full[k].abs().max().clamp(min=1.0)).item() for k in g_full)


def checkpointing_gaps(model, ids, mask, media, completion, c_mask, n):
    """The GRPO log-prob path (prompt cache, LM head in chunks) on `model` and on a copy with
    mer.models.enable_grad_checkpointing: the largest differences in log-probs and in gradients (relative,
    as above), and how often the first decoder layer's attention ran in each (forward, backward)."""
    import copy
    import torch
    import mer.engine, mer.models
    import rewards
    weights = torch.randn(completion.shape, generator=torch.Generator().manual_seed(1)) * c_mask

    def run(m):
        calls = []
        first = next(mod for name, mod in m.named_modules()  # the language model's, not a tower's
                     if name in ("model.layers.0.self_attn", "model.language_model.layers.0.self_attn"))
        hook = first.register_forward_pre_hook(lambda *a: calls.append(1))
        m.zero_grad()
        with mer.engine.lm_head_off(m) as head:
            hidden = mer.engine.continuation_logits(m, ids, mask, media, completion, c_mask, n)
        logp = rewards.chunked_logprobs(hidden, head, completion, 1.0, 4)
        (logp * weights).sum().backward()
        hook.remove()
        return logp.detach(), {k: p.grad.clone() for k, p in m.named_parameters() if p.grad is not None}, len(calls)

    model.train()
    checkpointed = copy.deepcopy(model)
    mer.models.enable_grad_checkpointing(checkpointed)
    (lp, g, calls), (lp_c, g_c, calls_c) = run(model), run(checkpointed)
    assert set(g) == set(g_c)
    return ((lp - lp_c).abs() * c_mask).max().item(), max(
        ((g[k] - g_c[k]).abs().max() / g[k].abs().max().clamp(min=1.0)).item() for k in g), calls, calls_c


def reference_advantages(variant, g, lam_cali, lam_fmt, eps, zero_std):
    """Every variant's advantage for one group, written out in numpy from the definitions (README's
    decisions): `g` maps reward names to arrays of G values; A+ (A-) is normalised over the
    completions with E+ (E-), a missing R+ / R- is its group's mean in the reward-space variants."""
    import numpy as np

    def norm(x, m=None):
        x = np.asarray(x, dtype=np.float64)
        m = np.ones(len(x), bool) if m is None else np.asarray(m, bool)
        out = np.zeros_like(x)
        if m.any() and x[m].std() > zero_std:
            out[m] = (x[m] - x[m].mean()) / (x[m].std() + eps)
        return out

    def fill(x, m):
        x, m = np.asarray(x, dtype=np.float64), np.asarray(m, bool)
        return np.where(m, x, x[m].mean() if m.any() else 0.0)

    dual = norm(g["recall"]) + norm(g["precision"])
    fmt = lam_fmt * norm(g["format"])
    if variant == "baseline":
        return norm(np.add(g["f1"], g["format"]))
    if variant == "rd":
        return norm(np.add(np.add(g["recall"], g["precision"]), g["format"]))
    if variant == "rd_ad":
        return dual + fmt
    has_pos, has_neg = np.asarray(g["has_pos"]) > 0, np.asarray(g["has_neg"]) > 0
    pos, neg = fill(g["cali_pos"], has_pos), fill(g["cali_neg"], has_neg)
    if variant in ("mer_r1", "a1"):
        return dual + lam_cali * (norm(g["cali_pos"], has_pos) + norm(g["cali_neg"], has_neg)) + fmt
    if variant == "a2":
        return dual + lam_cali * norm(g["cali_pos"], has_pos) + fmt
    if variant == "b1":
        return dual + lam_cali * norm(pos + neg, has_pos | has_neg) + fmt
    if variant == "b2":
        return norm(np.asarray(g["recall"]) + lam_cali * pos) + norm(np.asarray(g["precision"]) + lam_cali * neg) + fmt
    raise ValueError(variant)


def tracker_args():
    """--log_with=tensorboard when tensorboard is installed (CI installs it), else nothing."""
    import importlib.util
    return ["--log_with=tensorboard"] if importlib.util.find_spec("tensorboard") else []


def assert_tracker_equals_log(out, key):
    """The tensorboard scalars of a run equal its log.jsonl records (skipped without tensorboard)."""
    if not tracker_args():
        return
    import json
    import os
    import pytest
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    logged = [row for row in (json.loads(line) for line in open(os.path.join(out, "log.jsonl"))) if "event" not in row]
    events = EventAccumulator(os.path.join(out, "tracker")).Reload().Scalars(key)
    assert [e.step for e in events] == [row["step"] for row in logged]
    assert [e.value for e in events] == pytest.approx([row[key] for row in logged], rel=1e-6)


@pytest.fixture(scope="session")
def tiny_sft(tmp_path_factory):
    """A tiny model taught the answer format for a few seconds, so that sampled groups differ."""
    out = tmp_path_factory.mktemp("tiny_sft")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "train_sft.py"), "--model=tiny", f"--out_dir={out}",
                        "--max_samples=32", "--batch_size=8", "--max_steps=300", "--lr=3e-3", "--precision=fp32",
                        "--save_every=1000"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    return str(out / "last")
