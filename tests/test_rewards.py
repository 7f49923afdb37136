import math

import numpy as np
import pytest
import torch

import rewards
import rewards as R
from conftest import reference_advantages

# The log-probabilities below are float32 tensors: log(0.2 + 0.3) and log(0.25 + 0.25) agree only to
# float32 rounding (one ulp, 6e-8, on AVX-512 CPUs), so a gap that is 0 on paper is compared within
# this, far below the 0.1-sized errors a wrong id set or sign would make.
F32 = 1e-6


def test_category_log_confidence_unique_ids():
    logp = torch.log(torch.tensor([0.1, 0.2, 0.3, 0.4]))
    # ids 1 and 2, with 2 listed twice (two words sharing a first token): log(0.2 + 0.3)
    assert R.category_log_confidence(logp, [1, 2, 2]).item() == pytest.approx(math.log(0.5))
    batched = torch.log(torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.25, 0.25, 0.25, 0.25]]))
    assert R.category_log_confidence(batched, [0, 3]).tolist() == pytest.approx([math.log(0.5), math.log(0.5)])


def test_confidence_margin_top3_hard_negatives():
    conf = {"happy": -1.0, "sad": -2.0, "angry": -3.0, "scared": -4.0, "bad": -5.0, "surprised": -0.5}
    # G = {happy, sad}: mean -1.5; hard negatives surprised, angry, scared: mean -2.5
    assert R.confidence_margin(conf, {"happy", "sad"}) == pytest.approx(1.0)
    assert R.confidence_margin(conf, set()) is None
    assert R.confidence_margin({"happy": -1.0}, {"happy"}) is None


def test_recall_precision_f1():
    assert R.recall_precision_rewards({"happy", "sad", "angry"}, {"happy", "surprised"}) == (0.5, 1 / 3)
    assert R.recall_precision_rewards(set(), {"happy"}) == (0.0, 0.0)
    assert R.recall_precision_rewards(["happy", "happy"], ["happy"]) == (1.0, 1.0)
    assert R.f1_reward(0.5, 1 / 3) == pytest.approx(0.4)
    assert R.f1_reward(0.0, 0.0) == 0.0


def test_wheel_rewards_skip_wheels_without_ground_truth():
    pred = [{"happy"}, {"happy", "sad"}, {"joy"}]
    gt = [{"happy"}, {"happy"}, set()]   # third wheel: the ground truth maps to nothing
    r_r, r_p, r_f = R.wheel_rewards(pred, gt)
    assert (r_r, r_p) == (1.0, 0.75)
    assert r_f == pytest.approx((1.0 + 2 / 3) / 2)
    assert R.wheel_rewards([{"a"}], [set()]) == (0.0, 0.0, 0.0)


@pytest.mark.parametrize("text,words,subtitle,think,expected", [
    ("<think>She smiles.</think><answer>happy, relieved</answer>", ["happy", "relieved"], "", True, 1.0),
    ("<think>She smiles.</think>\n<answer>happy</answer>\n", ["happy"], "", True, 1.0),
    ("<think></think><answer>happy</answer>", ["happy"], "", True, 0.0),     # slow mode needs a thought
    ("<think></think><answer>happy</answer>", ["happy"], "", False, 1.0),    # fast mode
    ("<think>x</think><answer>emotion1, emotion2</answer>", ["emotion1", "emotion2"], "", True, 0.0),
    ("<think>x</think><answer>happy</answer> and more", ["happy"], "", True, 0.0),
    ("<think>x<answer>happy</answer>", ["happy"], "", True, 0.0),
    ("<think>x</think><answer></answer>", [], "", True, 0.0),
    ("<think>x</think><answer>i am not going back there</answer>", ["i am not going back there"],
     "Honestly, I am not going back there.", True, 0.0),
    ("<think>" + "she is very sad " * 5 + "</think><answer>sad</answer>", ["sad"], "", True, 0.0),
])
def test_format_reward(text, words, subtitle, think, expected):
    assert R.format_reward(text, words, subtitle, require_think=think) == expected


def test_group_normalize_hand_values_and_zero_variance():
    adv = R.group_normalize(torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.3, 0.3, 0.3, 0.3]]))
    expected = 0.5 / (0.5 + R.EPS)
    assert adv[0].tolist() == pytest.approx([expected, -expected, -expected, expected])
    assert adv[1].tolist() == [0.0, 0.0, 0.0, 0.0]
    assert torch.isfinite(adv).all()


def _norm(x):
    x = np.asarray(x, dtype=np.float64)
    s = x.std()
    return np.zeros_like(x) if s <= R.ZERO_STD else (x - x.mean()) / (s + R.EPS)


# completion 3 answers nothing (no E+, no E-); completion 1 has only E+, completion 4 only E-
GROUP = {"recall": [1.0, 0.5, 0.0, 0.5], "precision": [1.0, 0.5, 0.0, 1.0], "f1": [1.0, 0.5, 0.0, 2 / 3],
         "format": [1.0, 1.0, 0.0, 1.0], "cali_pos": [0.2, -0.1, 0.0, 0.0], "cali_neg": [0.0, 0.3, 0.0, -0.2],
         "has_pos": [1.0, 1.0, 0.0, 0.0], "has_neg": [0.0, 1.0, 0.0, 1.0]}


@pytest.mark.parametrize("variant", R.VARIANTS)
def test_every_variant_matches_its_definition(variant):
    lc, lf = 0.3, 0.2
    expected = reference_advantages(variant, {k: np.array(v) for k, v in GROUP.items()}, lc, lf, R.EPS, R.ZERO_STD)
    r = {k: torch.tensor([v]) for k, v in GROUP.items()}
    got = R.advantages(variant, r, lam_cali=lc, lam_fmt=lf)
    assert got.shape == (1, 4)
    assert got[0].tolist() == pytest.approx(expected.tolist(), abs=1e-5)
    # the completion with neither E+ nor E- gets no calibration advantage at all
    if variant in ("mer_r1", "a1", "a2", "b1"):
        assert (got - R.advantages("rd_ad", r, lam_cali=lc, lam_fmt=lf))[0, 2].item() == 0.0


def test_variant_advantages_on_a_hand_computed_group():
    # two completions: one with recall 1 and precision 1, one with recall 0 and precision 0
    ones = lambda *v: torch.tensor([list(v)])  # noqa: E731
    r = {"recall": ones(1.0, 0.0), "precision": ones(1.0, 0.0), "f1": ones(1.0, 0.0), "format": ones(1.0, 1.0),
         "cali_pos": ones(0.5, 0.0), "cali_neg": ones(0.0, 0.2), "has_pos": ones(1.0, 0.0), "has_neg": ones(0.0, 1.0)}
    a = 0.5 / (0.5 + R.EPS)  # a group of two values normalises to +-0.5 / (0.5 + eps)
    assert R.advantages("baseline", r)[0].tolist() == pytest.approx([a, -a])
    assert R.advantages("rd_ad", r)[0].tolist() == pytest.approx([2 * a, -2 * a])
    # each completion is alone in its E+ / E- group: A+ = A- = 0, so MER-R1 equals RD+AD here
    assert R.advantages("mer_r1", r)[0].tolist() == pytest.approx([2 * a, -2 * a])


def test_empty_calibration_sets_do_not_invert_the_incentive():
    # R+ usually < 0 (Finding 2): with R+ = 0 for an empty E+, the completion with no correct word
    # used to get the highest A+ (+1.73); masked, it gets 0 and the others tie at 0
    t = lambda v: torch.tensor([v])  # noqa: E731
    assert R.group_normalize(t([-0.5, -0.5, 0.0, -0.5]))[0, 2].item() == pytest.approx(1.732, abs=1e-3)
    assert R.group_normalize(t([-0.5, -0.5, 0.0, -0.5]), t([1, 1, 0, 1]))[0].tolist() == [0.0] * 4
    # R- = [(empty), 1, 1, 1]: the perfectly precise completion used to get A- = -1.73
    assert R.group_normalize(t([0.0, 1.0, 1.0, 1.0]))[0, 0].item() == pytest.approx(-1.732, abs=1e-3)
    assert R.group_normalize(t([0.0, 1.0, 1.0, 1.0]), t([0, 1, 1, 1]))[0].tolist() == [0.0] * 4
    # only one completion has E+: nothing to compare it with, A+ = 0 for all
    assert R.group_normalize(t([0.0, 0.0, 0.7, 0.0]), t([0, 0, 1, 0]))[0].tolist() == [0.0] * 4
    # masked normalisation runs over the present entries only: [1, 3] -> [-1, 1] (up to eps)
    got = R.group_normalize(t([1.0, 9.0, 3.0, 0.0]), t([1, 0, 1, 0]))[0].tolist()
    assert got == pytest.approx([-1 / (1 + R.EPS), 0.0, 1 / (1 + R.EPS), 0.0])
    # through advantages(): the empty-E+ completion's A+ is 0 (MER-R1 minus RD+AD = l_cali * A_cali)
    r = {"recall": t([0.5] * 4), "precision": t([0.5] * 4), "f1": t([0.5] * 4), "format": t([1.0] * 4),
         "cali_pos": t([-0.5, -0.5, 0.0, -0.5]), "cali_neg": t([0.0] * 4),
         "has_pos": t([1.0, 1.0, 0.0, 1.0]), "has_neg": t([0.0] * 4)}
    assert R.advantages("mer_r1", r)[0].tolist() == [0.0] * 4
    assert R.fill_missing(t([-0.5, -0.3, 0.0, 9.0]), t([1, 1, 0, 0]))[0].tolist() == pytest.approx([-0.5, -0.3, -0.4, -0.4])


def test_unknown_variant_is_an_error():
    with pytest.raises(ValueError, match="unknown variant"):
        R.advantages("mer-r2", {k: torch.tensor([v]) for k, v in GROUP.items()})


def test_zero_variance_groups_give_zero_advantage():
    r = {k: torch.full((2, 4), 0.5) for k in GROUP}
    for v in R.VARIANTS:
        assert R.advantages(v, r).abs().max().item() == 0.0


def test_group_stats_by_hand():
    t = lambda rows: torch.tensor(rows, dtype=torch.float32)  # noqa: E731
    r = {"recall": t([[1, 1, 1], [1, 0, 0]]), "precision": t([[0.5, 0.5, 0.5], [1, 0, 0]]),
         "format": t([[1, 1, 1], [1, 1, 0]]),
         "cali_pos": t([[0.4, 0, 0], [0.2, 0, -0.3]]), "has_pos": t([[1, 0, 0], [1, 0, 1]]),
         "cali_neg": t([[0, 0, 0], [0, 0, 0.3]]), "has_neg": t([[0, 0, 0], [0, 0, 1]])}
    # group 0 ties on R_R, R_P and format yet its calibration gives it advantages (zero_var 0)
    s = R.group_stats(r, t([[0.1, -0.05, -0.05], [1, -0.5, -0.5]]))
    assert s["recall"] == pytest.approx(4 / 6) and s["format"] == pytest.approx(5 / 6)
    assert s["cali_pos"] == pytest.approx((0.4 + 0.2 - 0.3) / 3)  # over the 3 completions with E+
    assert s["cali_neg"] == pytest.approx(0.3)                     # over the 1 with E-
    assert s["cali_coverage"] == pytest.approx(3 / 6)
    assert (s["tied_groups"], s["zero_std_groups"]) == (0.5, 0.0)
    del r["cali_pos"], r["cali_neg"], r["has_pos"], r["has_neg"]   # an uncalibrated variant
    s = R.group_stats(r, t([[0, 0, 0], [1, -0.5, -0.5]]))
    assert "cali_coverage" not in s and (s["tied_groups"], s["zero_std_groups"]) == (0.5, 0.5)


def _corr(a, b):
    return float(np.corrcoef(a, b)[0, 1])


def test_proposition_3_balanced_correlations(monkeypatch):
    rng = np.random.default_rng(0)
    monkeypatch.setattr(R, "EPS", 0.0)   # the proposition is exact for the pure z-score
    for _ in range(50):
        G = int(rng.integers(4, 64))
        r_r = rng.random(G)
        r_p = 0.6 * r_r + rng.random(G)
        a = R.dual_advantage(torch.tensor(r_r)[None], torch.tensor(r_p)[None])[0].double().numpy()
        rho = _corr(r_r, r_p)
        target = math.sqrt((1 + rho) / 2)
        assert _corr(r_r, a) == pytest.approx(target, abs=1e-5)
        assert _corr(r_p, a) == pytest.approx(target, abs=1e-5)


def test_proposition_1_sign_rule_by_simulation():
    rng = np.random.default_rng(1)
    cases = 0
    for mu_r, mu_p, s_r, s_p, rho in [(0.5, 0.8, 0.02, 0.01, 0.3), (0.8, 0.5, 0.01, 0.02, 0.0),
                                      (0.6, 0.6, 0.03, 0.01, -0.4), (0.4, 0.7, 0.005, 0.02, 0.5),
                                      (0.7, 0.3, 0.02, 0.01, 0.2)]:
        z1, z2 = rng.standard_normal((2, 20000))
        r_r = mu_r + s_r * z1
        r_p = mu_p + s_p * (rho * z1 + math.sqrt(1 - rho ** 2) * z2)
        r_f = 2 * r_r * r_p / (r_r + r_p)
        a_f = R.group_normalize(torch.tensor(r_f)[None])[0].double().numpy()
        tau = (s_r / mu_r ** 2) / (s_p / mu_p ** 2)
        assert abs(tau - 1) > 0.2
        assert (_corr(r_r, a_f) > _corr(r_p, a_f)) == (tau > 1)
        cases += 1
    assert cases == 5


def test_slow_fast_gap_and_calibration_rewards():
    assert R.slow_fast_gap(torch.tensor(-1.0), torch.tensor(-3.0)).item() == 2.0
    cats = ["happy", "sad", None, "angry"]
    assert R.split_correct_incorrect(cats, {"happy"}) == ([0], [1, 3])
    # R+ = Delta(happy) = 0.5; R- = mean(-(-1.0), -(2.0)) = -0.5; the unmapped word is ignored
    assert R.calibration_rewards([0.5, -1.0, 9.0, 2.0], cats, {"happy"}) == (0.5, -0.5, True, True)
    assert R.calibration_rewards([0.5, -1.0], ["sad", "angry"], {"happy"}) == (0.0, 0.25, False, True)
    assert R.calibration_rewards([0.5], ["happy"], {"happy"}) == (0.5, 0.0, True, False)
    assert R.calibration_rewards([], [], {"happy"}) == (0.0, 0.0, False, False)
    assert R.wheel_calibration_rewards([(0.5, 0.0, True, False), (0.1, -0.4, True, True), (0.0, 0.0, False, False)]) \
        == (pytest.approx(0.3), pytest.approx(-0.4), True, True)
    assert R.wheel_calibration_rewards([(0.0, 0.0, False, False)]) == (0.0, 0.0, False, False)


def test_completion_calibration_skips_wheels_whose_ground_truth_maps_to_nothing():
    slow = torch.log(torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1]]))
    fast = torch.log(torch.tensor([[0.25, 0.25, 0.25, 0.25], [0.1, 0.1, 0.1, 0.7]]))
    tables = [{"happy": [1, 2], "sad": [3]}] * 2
    # wheel 1 knows the ground truth (happy): word 0 is in E+, word 1 in E-
    #   Delta(happy) = log(0.5) - log(0.5) = 0; Delta(sad) at word 1 = log(0.1) - log(0.7)
    # wheel 2: the ground truth maps to nothing; without skipping, both words would land in E-
    r_pos, r_neg, has_pos, has_neg = R.completion_calibration(
        slow, fast, [1, 3], [["happy", "sad"], ["happy", "sad"]], [tables, tables], [{"happy"}, set()])
    assert (r_pos, has_pos, has_neg) == (pytest.approx(0.0, abs=F32), True, True)
    assert r_neg == pytest.approx(-(math.log(0.1) - math.log(0.7)))
    # no wheel knows the ground truth: no signal at all
    assert R.completion_calibration(slow, fast, [1, 3], [["happy", "sad"]], [tables], [set()]) == (0.0, 0.0, False, False)
    # two wheels with a ground truth: R+ averages over the wheels with E+ only (wheel 2 has none)
    r_pos, r_neg, has_pos, has_neg = R.completion_calibration(
        slow, fast, [1, 3], [["happy", "sad"], ["sad", "sad"]], [tables, tables], [{"happy"}, {"happy"}])
    assert has_pos and r_pos == pytest.approx(0.0, abs=F32)
    # R-: wheel 1 gives -Delta(word 1); wheel 2 the mean of -Delta over both words (sad has id 3)
    w1 = -math.log(0.1 / 0.7)
    w2 = -(math.log(0.4 / 0.25) + math.log(0.1 / 0.7)) / 2
    assert has_neg and r_neg == pytest.approx((w1 + w2) / 2)


def test_word_gaps_category_and_word_level():
    slow = torch.log(torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1]]))
    fast = torch.log(torch.tensor([[0.25, 0.25, 0.25, 0.25], [0.7, 0.1, 0.1, 0.1]]))
    cat_ids = [{"happy": [1, 2], "sad": [3]}] * 2
    gaps = R.word_gaps(slow, fast, [1, 3], ["happy", "sad"], cat_ids)
    assert gaps == pytest.approx([math.log(0.5) - math.log(0.5), math.log(0.1) - math.log(0.1)], abs=F32)
    gaps = R.word_gaps(slow, fast, [1, 0], ["happy", None], cat_ids)
    assert gaps == pytest.approx([0.0, 0.0], abs=F32)
    # the second word's table differs (its in-context first tokens): sad -> ids {0, 3}
    gaps = R.word_gaps(slow, fast, [1, 3], ["happy", "sad"], [cat_ids[0], {"sad": [0, 3]}])
    assert gaps[1] == pytest.approx(math.log(0.5) - math.log(0.8))
    word = R.word_gaps(slow, fast, [1, 3], ["happy", "sad"], cat_ids, word_level=True)
    assert word == pytest.approx([math.log(0.2) - math.log(0.25), 0.0])


def _direct_loss(logp, old, ref, adv, mask, eta, beta, aggregation):
    per_seq, all_terms, per_seq_terms = [], [], []
    for i in range(len(logp)):
        terms = []
        for t in range(len(logp[i])):
            if not mask[i][t]:
                continue
            r = math.exp(logp[i][t] - old[i][t])
            surrogate = min(r * adv[i], min(max(r, 1 - eta), 1 + eta) * adv[i])
            d = ref[i][t] - logp[i][t]
            terms.append(-surrogate + beta * (math.exp(d) - d - 1))
        per_seq.append(sum(terms) / len(terms))
        per_seq_terms.append(terms)
        all_terms += terms
    if aggregation == "constant":  # Dr. GRPO: each completion's token sum over a fixed length (here 4)
        return sum(sum(t) for t in per_seq_terms) / 4 / len(per_seq_terms)
    return sum(per_seq) / len(per_seq) if aggregation == "sequence" else sum(all_terms) / len(all_terms)


@pytest.mark.parametrize("aggregation", ["sequence", "token", "constant"])
def test_grpo_loss_equals_direct_computation(aggregation):
    logp = [[-1.0, -2.0, -0.5], [-0.3, -1.2, -4.0]]
    old = [[-1.0, -2.5, -0.1], [-0.3, -0.6, -4.0]]      # ratios e^0.5 and e^-0.6 fall outside the clip
    ref = [[-1.1, -1.9, -0.7], [-0.2, -1.0, -3.0]]
    adv = [1.5, -0.7]
    mask = [[1, 1, 1], [1, 1, 0]]
    t = lambda x: torch.tensor(x, dtype=torch.float64)
    loss, stats = R.grpo_loss(t(logp), t(old), t(adv), t(mask), ref_logp=t(ref), eta=0.2, beta=0.04,
                              aggregation=aggregation, max_len=4)
    assert loss.item() == pytest.approx(_direct_loss(logp, old, ref, adv, mask, 0.2, 0.04, aggregation))
    # clipped tokens: (0,1) ratio e^0.5 > 1.2 with A > 0; (1,1) ratio e^-0.6 < 0.8 with A < 0
    assert stats["clip_frac"] == pytest.approx(2 / 5)
    assert stats["kl"] > 0


def test_grpo_loss_ratio_one_gradient_is_advantage_weighted():
    logp = torch.tensor([[-1.0, -2.0], [-0.5, -0.5]], requires_grad=True)
    adv = torch.tensor([2.0, -1.0])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    loss, stats = R.grpo_loss(logp, logp.detach(), adv, mask)
    loss.backward()
    # d/dlogp of -(1/2) sum_i mean_t(r A) at r = 1 is -A_i / (2 |y_i|)
    assert logp.grad.flatten().tolist() == pytest.approx([-0.5, -0.5, 0.5, 0.0])
    assert stats == {"kl": 0.0, "clip_frac": 0.0, "ratio_dev": 0.0, "clip_low": 0.0, "clip_high": 0.0,
                     "entropy": pytest.approx((1.0 + 2.0 + 0.5) / 3)}   # -logp over the 3 masked-in tokens
    with pytest.raises(ValueError):
        R.grpo_loss(logp, logp, adv, mask, aggregation="batch")


# ---------------------------------------------------------------------------------------
# Options of other GRPO implementations (train_grpo.py: IMPORTANCE, ETA_HIGH, SCALE_REWARDS,
# MASK_TRUNCATED, SKIP_TIED_GROUPS): hand-computed values, and defaults that change nothing

def _loss_before(logp, old_logp, advantages, mask, ref_logp, eta, beta, aggregation, max_len):
    """grpo_loss as it was before the options: the reference for the defaults."""
    ratio = torch.exp(logp - old_logp)
    adv = advantages.unsqueeze(-1)
    per_token = -torch.min(ratio * adv, torch.clamp(ratio, 1 - eta, 1 + eta) * adv)
    kl = rewards.k3_kl(logp, ref_logp)
    per_token = per_token + beta * kl
    if aggregation == "sequence":
        return rewards.masked_mean(per_token, mask, dim=-1).mean()
    if aggregation == "token":
        return rewards.masked_mean(per_token, mask)
    return ((per_token * mask.to(per_token.dtype)).sum(-1) / max_len).mean()


@pytest.mark.parametrize("aggregation", ["sequence", "token", "constant"])
def test_the_defaults_reproduce_the_loss_bit_for_bit(aggregation):
    g = torch.Generator().manual_seed(0)
    logp = torch.randn(6, 9, generator=g) - 2
    old, ref = logp + 0.3 * torch.randn(6, 9, generator=g), logp + 0.2 * torch.randn(6, 9, generator=g)
    adv, mask = torch.randn(6, generator=g), (torch.rand(6, 9, generator=g) > 0.2).long()
    loss, stats = rewards.grpo_loss(logp, old, adv, mask, ref, 0.2, 0.04, aggregation, 12)
    assert torch.equal(loss, _loss_before(logp, old, adv, mask, ref, 0.2, 0.04, aggregation, 12))
    assert stats["clip_frac"] == pytest.approx(stats["clip_low"] + stats["clip_high"])


def test_scale_rewards_group_batch_none_by_hand():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 0.0]])
    # group: group 1 mean 0.5, std 0.5; group 2 mean 0.75, std sqrt(3)/4
    assert rewards.group_normalize(r)[0].tolist() == pytest.approx([0.5 / (0.5 + rewards.EPS), -0.5 / (0.5 + rewards.EPS)] * 1
                                                                   + [-0.5 / (0.5 + rewards.EPS), 0.5 / (0.5 + rewards.EPS)])
    # none (Dr. GRPO): only centred
    assert rewards.group_normalize(r, scale="none").flatten().tolist() == pytest.approx(
        [0.5, -0.5, -0.5, 0.5, 0.25, 0.25, 0.25, -0.75])
    # batch (Lite-PPO): centred by the group, divided by the std of all 8 rewards (mean 5/8, std sqrt(15)/8)
    std = (15 ** 0.5) / 8 + rewards.EPS
    assert rewards.group_normalize(r, scale="batch").flatten().tolist() == pytest.approx(
        [0.5 / std, -0.5 / std, -0.5 / std, 0.5 / std, 0.25 / std, 0.25 / std, 0.25 / std, -0.75 / std], rel=1e-6)
    # a tied group stays 0 in every scale
    tied = torch.tensor([[0.3, 0.3, 0.3]])
    assert all((rewards.group_normalize(tied, scale=s) == 0).all() for s in ("group", "batch", "none"))
    assert torch.equal(rewards.advantages("rd_ad", {"recall": r, "precision": r, "format": r}, scale="none"),
                       2 * rewards.group_normalize(r, scale="none") + 0.1 * rewards.group_normalize(r, scale="none"))


def test_sequence_importance_ratio_is_gspo_s():
    logp = torch.log(torch.tensor([[0.5, 0.25, 0.9]]))
    old = torch.log(torch.tensor([[0.25, 0.25, 0.1]]))
    mask = torch.tensor([[1, 1, 0]])
    # tokens 1-2 count: ratios 2 and 1, s = (2 * 1) ** (1 / 2)
    s = rewards.importance_ratio(logp, old, mask, "sequence")
    assert s.flatten().tolist() == pytest.approx([2 ** 0.5] * 3)
    assert rewards.importance_ratio(logp, old, mask, "token").flatten().tolist() == pytest.approx([2.0, 1.0, 9.0])
    # the clipped objective with s: A = 1, eta = 0.2 -> min(s, 1.2) = 1.2 for every token
    loss, _ = rewards.grpo_loss(logp, old, torch.tensor([1.0]), mask, None, 0.2, 0.0, "sequence", importance="sequence")
    assert loss.item() == pytest.approx(-1.2)


def test_on_policy_gspo_and_clip_higher_give_the_default_gradient():
    # one update per batch: old = the policy detached, every ratio is 1 and nothing clips, so GSPO's
    # s_i (whose gradient spreads 1/|y_i| over the |y_i| tokens of y_i) gives each token the gradient
    # of its own ratio, in every aggregation, and clip-higher has nothing to act on: both options only
    # matter at UPDATES_PER_BATCH > 1
    torch.manual_seed(0)
    base = torch.randn(3, 5)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0]])
    adv, ref = torch.tensor([1.0, -0.5, 2.0]), torch.randn(3, 5)
    for aggregation in ("sequence", "token", "constant"):
        grads = []
        for importance, eta_high in (("token", 0.0), ("sequence", 0.0), ("token", 0.28)):
            logp = base.clone().requires_grad_()
            loss, _ = rewards.grpo_loss(logp, logp.detach(), adv, mask, ref, 0.2, 0.04, aggregation,
                                        eta_high=eta_high, importance=importance)
            loss.backward()
            grads.append(logp.grad)
        assert torch.allclose(grads[1], grads[0], atol=1e-7) and torch.equal(grads[2], grads[0])
    # off-policy (a second update: old != policy) they differ
    logp, token = base.clone().requires_grad_(), base.clone().requires_grad_()
    old = base + 0.3 * torch.randn(3, 5)
    rewards.grpo_loss(logp, old, adv, mask, None, 0.2, 0.0, importance="sequence")[0].backward()
    rewards.grpo_loss(token, old, adv, mask, None, 0.2, 0.0)[0].backward()
    assert not torch.allclose(logp.grad, token.grad)


def test_clip_higher_and_the_clip_shares_by_hand():
    logp = torch.log(torch.tensor([[1.25, 1.0], [0.7, 1.0]]))   # ratios 1.25, 1.0 / 0.7, 1.0 against old = 0
    old = torch.zeros(2, 2)
    adv, mask = torch.tensor([1.0, -1.0]), torch.ones(2, 2)
    # symmetric eta 0.2: 1.25 clips at 1.2 (A > 0), 0.7 at 0.8 (A < 0)
    loss, s = rewards.grpo_loss(logp, old, adv, mask, None, 0.2, 0.0, "token")
    assert loss.item() == pytest.approx(-(1.2 + 1.0 - 0.8 - 1.0) / 4)
    assert (s["clip_low"], s["clip_high"], s["clip_frac"]) == (0.25, 0.25, 0.5)
    # clip-higher 0.28: 1.25 is inside the range, no longer clipped
    loss, s = rewards.grpo_loss(logp, old, adv, mask, None, 0.2, 0.0, "token", eta_high=0.28)
    assert loss.item() == pytest.approx(-(1.25 + 1.0 - 0.8 - 1.0) / 4)
    assert (s["clip_low"], s["clip_high"]) == (0.25, 0.0)
    # entropy estimate: the mean of -old_logp over the sampled tokens
    assert rewards.grpo_loss(logp, torch.log(torch.tensor([[0.5, 0.25], [0.5, 0.25]])), adv, mask)[1]["entropy"] == \
        pytest.approx((2 * 0.6931 + 2 * 1.3863) / 4, abs=1e-3)


def test_loss_rows_drop_truncated_completions_and_tied_groups():
    eos = 0
    completion = torch.tensor([[5, 0, 0], [5, 6, 7], [5, 6, 0], [5, 0, 0]])   # row 1 has no EOS: truncated
    adv = torch.tensor([[0.0, 0.0], [1.0, -1.0]])                             # group 0 tied
    assert rewards.loss_rows(adv, completion, eos) is None
    assert rewards.loss_rows(adv, completion, eos, mask_truncated=True).tolist() == [True, False, True, True]
    assert rewards.loss_rows(adv, completion, eos, skip_tied=True).tolist() == [False, False, True, True]
    # the loss over the kept rows only: sequence aggregation averages rows 2-3, not four rows
    logp, mask = torch.zeros(4, 3), torch.ones(4, 3)
    keep = rewards.loss_rows(adv, completion, eos, skip_tied=True)
    loss, _ = rewards.grpo_loss(logp, logp, adv.flatten(), mask, None, 0.2, 0.0, "sequence", keep=keep)
    assert loss.item() == pytest.approx(-(1.0 - 1.0) / 2)
    loss, _ = rewards.grpo_loss(logp, logp, torch.tensor([0.0, 0.0, 2.0, 1.0]), mask, None, 0.2, 0.0, "sequence", keep=keep)
    assert loss.item() == pytest.approx(-1.5)           # (2 + 1) / 2 kept rows, not / 4
    none, _ = rewards.grpo_loss(logp, logp, adv.flatten(), mask, None, keep=torch.zeros(4, dtype=torch.bool))
    assert none.item() == 0.0
