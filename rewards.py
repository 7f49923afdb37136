"""Rewards, advantages, confidences and the GRPO loss of MER-R1: pure functions.

Everything here takes lists, sets or tensors and returns numbers or tensors; no model,
no tokenizer. Equation numbers are those of the paper (see README's table).
Group-shaped tensors are [n_groups, G]: one row per prompt, one column per completion.
"""
import re

import torch

EPS = 1e-4           # added to the group std (Eq. 5, 14): a tiny spread stays finite
ZERO_STD = 1e-8      # below this a group counts as zero-variance and gets advantage 0
VARIANTS = ("baseline", "rd", "rd_ad", "mer_r1", "a1", "a2", "b1", "b2")
CALIBRATED = ("mer_r1", "a1", "a2", "b1", "b2")   # the variants that need the fast-mode pass


# ---------------------------------------------------------------------------------------
# Section 3: confidences

def category_log_confidence(logprobs, first_token_ids):
    """Eq. (1): conf^m(c) = log sum_{e in V(c)} p^m(e), p^m(e) the probability of e's first token.

    `logprobs` [..., vocab] are next-token log-probabilities; `first_token_ids` the first token
    ids of the words of category c. Words sharing a first token count once (unique ids)."""
    ids = torch.tensor(sorted(set(first_token_ids)), dtype=torch.long, device=logprobs.device)
    return torch.logsumexp(logprobs.index_select(-1, ids), dim=-1)


def category_confidences(logprobs, category_token_ids):
    """Eq. (1) for every category: {category: conf} from {category: first token ids}."""
    return {c: category_log_confidence(logprobs, ids) for c, ids in category_token_ids.items() if ids}


def confidence_margin(conf, gt, n_hard=3):
    """Eq. (2): gamma = mean_{c in G} conf(c) - mean_{c in H} conf(c), H the top-3 non-ground-truth
    categories by confidence (hard negatives). None when G or H is empty."""
    pos = [float(conf[c]) for c in gt if c in conf]
    neg = sorted((float(v) for c, v in conf.items() if c not in gt), reverse=True)[:n_hard]
    if not pos or not neg:
        return None
    return sum(pos) / len(pos) - sum(neg) / len(neg)


# ---------------------------------------------------------------------------------------
# Section 4.2: rewards

def recall_precision_rewards(pred, gt):
    """Eq. (4): R_R = |Y^ n G| / |G|, R_P = |Y^ n G| / |Y^| on sets of level-1 categories.
    An empty prediction (or an empty ground truth) gives (0, 0)."""
    pred, gt = set(pred), set(gt)
    if not pred or not gt:
        return 0.0, 0.0
    hit = len(pred & gt)
    return hit / len(gt), hit / len(pred)


def f1_reward(r_r, r_p):
    """Eq. (13): R_F = 2 R_R R_P / (R_R + R_P), 0 when both are 0."""
    return 0.0 if r_r + r_p == 0 else 2 * r_r * r_p / (r_r + r_p)


def wheel_rewards(pred_per_wheel, gt_per_wheel):
    """Eq. (4) and (13) per wheel, averaged over the wheels whose ground-truth set is not empty.

    Both arguments are lists (one entry per wheel) of category sets. Returns (R_R, R_P, R_F);
    (0, 0, 0) when no wheel knows the ground truth."""
    per = [recall_precision_rewards(p, g) for p, g in zip(pred_per_wheel, gt_per_wheel) if g]
    if not per:
        return 0.0, 0.0, 0.0
    r_r = sum(r for r, _ in per) / len(per)
    r_p = sum(p for _, p in per) / len(per)
    r_f = sum(f1_reward(r, p) for r, p in per) / len(per)
    return r_r, r_p, r_f


PLACEHOLDER_RE = re.compile(r"^(emotion|word|label|w|e)\s*\d*$|\.\.\.|^emotions?$")
FORMAT_RE = re.compile(r"^<think>(.*?)</think>\s*<answer>(.*?)</answer>\s*$", re.S)


def has_repetition(text, n=4, max_repeats=3):
    """True when some word n-gram occurs more than `max_repeats` times (a decoding loop)."""
    words = text.lower().split()
    counts = {}
    for i in range(len(words) - n + 1):
        gram = tuple(words[i:i + n])
        counts[gram] = counts.get(gram, 0) + 1
        if counts[gram] > max_repeats:
            return True
    return False


def format_reward(text, answer_words, subtitle="", require_think=True, max_words=8):
    """R_fmt: 1.0 for `<think>...</think><answer>w1, w2</answer>` and nothing else, else 0.0.

    `text` is the whole assistant turn (forced prefix included), `answer_words` its parsed
    answer. Besides the tags, a usable answer has 1..max_words short words, no placeholder
    ("emotion1", "..."), is not the subtitle copied, and the turn has no repetition loop.
    `require_think` asks for a non-empty think block (slow thinking)."""
    m = FORMAT_RE.match(text.strip())
    if not m or not answer_words or len(answer_words) > max_words:
        return 0.0
    think, answer = m.group(1).strip(), m.group(2).strip()
    if require_think and not think:
        return 0.0
    if any(PLACEHOLDER_RE.search(w) or len(w.split()) > 3 for w in answer_words):
        return 0.0
    if subtitle and len(answer) > 12 and answer.lower() in subtitle.lower():
        return 0.0
    if has_repetition(text):
        return 0.0
    return 1.0


def completion_rewards(texts, answer_words, pred, gt, subtitles):
    """Step 2 of the GRPO loop: format, R_R, R_P, R_F (Eq. 4, 13) of each completion, as lists.
    Completion i is the whole assistant turn texts[i] with its parsed answer words
    answer_words[i]; pred[i] and gt[i] hold, per reward wheel, the level-1 categories of its
    answer and of its sample's labels; subtitles[i] is its sample's subtitle (format_reward)."""
    r = {"format": [], "recall": [], "precision": [], "f1": []}
    for text, words, p, g, subtitle in zip(texts, answer_words, pred, gt, subtitles):
        for key, v in zip(r, (format_reward(text, words, subtitle), *wheel_rewards(p, g))):
            r[key].append(v)
    return r


# ---------------------------------------------------------------------------------------
# Group normalisation and the advantages (Eq. 5, 12, 14 and the ablations)

def group_normalize(rewards, mask=None, scale="group"):
    """Eq. (5)/(14): (R - mean) / (std + eps) within each group (last dim), population std.
    A zero-variance group gets advantage exactly 0, never NaN. With `mask` (same shape, 1 where
    the reward exists), mean and std run over the masked entries only and the others get 0:
    a completion without a reward is neither pushed up nor down. `scale` (SCALE_REWARDS):
      "group"  divide by the group's std (GRPO, the paper)
      "batch"  divide by the std of the rewards over the whole batch (Lite-PPO, arXiv 2508.08221:
               group mean, batch std)
      "none"   only subtract the group mean (Dr. GRPO, arXiv 2503.20783: no std bias)"""
    rewards = rewards.double()
    mask = torch.ones_like(rewards) if mask is None else mask.double()
    count = mask.sum(-1, keepdim=True).clamp(min=1)
    mean = (rewards * mask).sum(-1, keepdim=True) / count
    std = (((rewards - mean) ** 2 * mask).sum(-1, keepdim=True) / count).sqrt()
    if scale == "group":
        adv = (rewards - mean) / (std + EPS)
    elif scale == "batch":
        total = mask.sum().clamp(min=1)
        batch_mean = (rewards * mask).sum() / total
        adv = (rewards - mean) / ((((rewards - batch_mean) ** 2 * mask).sum() / total).sqrt() + EPS)
    elif scale == "none":
        adv = rewards - mean
    else:
        raise ValueError(f"scale must be 'group', 'batch' or 'none', not {scale!r}")
    return torch.where((std > ZERO_STD) & (mask > 0), adv, torch.zeros_like(adv)).float()


def fill_missing(rewards, mask):
    """Rewards with each masked-out entry replaced by the mean of its group's present ones (0 when
    none is present): for the reward-space variants (B1, B2) a missing calibration reward then
    favours no completion over another."""
    rewards, mask = rewards.double(), mask.double()
    mean = (rewards * mask).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1)
    return torch.where(mask > 0, rewards, mean.expand_as(rewards)).float()


def dual_advantage(r_recall, r_precision, scale="group"):
    """Eq. (5): A_dual = A_R + A_P, each group-normalised on its own."""
    return group_normalize(r_recall, None, scale) + group_normalize(r_precision, None, scale)


def total_advantage(a_dual, a_cali, a_fmt, lam_cali, lam_fmt):
    """Eq. (12): A = A_dual + lambda_cali A_cali + lambda_fmt A_fmt."""
    return a_dual + lam_cali * a_cali + lam_fmt * a_fmt


def advantages(variant, r, lam_cali=0.1, lam_fmt=0.1, scale="group"):
    """The advantage of every ablation of Tables 4-5, from group-shaped rewards.

    `r` holds tensors [n_groups, G]: "recall", "precision", "f1", "format", and for the
    calibrated variants "cali_pos" (R+), "cali_neg" (R-) with "has_pos", "has_neg" (1 where E+ /
    E- is non-empty in some wheel). A+ (A-) is normalised over the completions that have E+ (E-);
    the others get A+ = 0 (A- = 0): an empty set is no evidence either way (Eq. 11 is undefined
    there), and scoring it 0 would reward completions with no correct word whenever R+ < 0.
      baseline  norm(R_F + R_fmt)
      rd        norm(R_R + R_P + R_fmt)                                    (Ex1, reward split)
      rd_ad     A_dual + l_fmt A_fmt                                       (Ex2, Eq. 5)
      mer_r1    A_dual + l_cali (A+ + A-) + l_fmt A_fmt                    (Ex3, Eq. 12)
      a1        as mer_r1; the confidences are word-level (see word_gaps)
      a2        A_dual + l_cali A+ + l_fmt A_fmt                           (no precision calibration)
      b1        A_dual + l_cali norm(R+ + R-) + l_fmt A_fmt                (reward-space calibration)
      b2        norm(R_R + l_cali R+) + norm(R_P + l_cali R-) + l_fmt A_fmt (mixed space)
    In b1 and b2 a missing R+ (R-) is replaced by its group's mean over the present ones
    (fill_missing), and b1 normalises over the completions with E+ or E-. `scale`: see group_normalize."""
    def norm(x, mask=None):
        return group_normalize(x, mask, scale)
    if variant == "baseline":
        return norm(r["f1"] + r["format"])
    if variant == "rd":
        return norm(r["recall"] + r["precision"] + r["format"])
    a_fmt = norm(r["format"])
    if variant == "rd_ad":
        return dual_advantage(r["recall"], r["precision"], scale) + lam_fmt * a_fmt
    if variant not in CALIBRATED:
        raise ValueError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    has_pos = r.get("has_pos", torch.ones_like(r["cali_pos"]))
    has_neg = r.get("has_neg", torch.ones_like(r["cali_neg"]))
    pos, neg = fill_missing(r["cali_pos"], has_pos), fill_missing(r["cali_neg"], has_neg)
    if variant == "b2":
        return (norm(r["recall"] + lam_cali * pos) + norm(r["precision"] + lam_cali * neg) + lam_fmt * a_fmt)
    a_dual = dual_advantage(r["recall"], r["precision"], scale)
    if variant in ("mer_r1", "a1"):
        a_cali = norm(r["cali_pos"], has_pos) + norm(r["cali_neg"], has_neg)
    elif variant == "a2":
        a_cali = norm(r["cali_pos"], has_pos)
    else:  # b1
        a_cali = norm(pos + neg, ((has_pos + has_neg) > 0).float())
    return total_advantage(a_dual, a_cali, a_fmt, lam_cali, lam_fmt)


def group_stats(r, adv):
    """What a step logs of its group-shaped rewards `r` and advantages `adv`: the mean of each
    reward, except R+ (R-), averaged where E+ (E-) exists, with `cali_coverage` the share of
    completions with either; `zero_std_groups`, the share of groups whose advantages are all 0;
    `tied_groups`, the share whose R_R, R_P and format all tie (calibration aside)."""
    out = {k: v.float().mean().item() for k, v in r.items()}
    if "has_pos" in r:
        for key, has in (("cali_pos", "has_pos"), ("cali_neg", "has_neg")):
            out[key] = (r[key] * r[has]).sum().item() / max(1.0, r[has].sum().item())
        out["cali_coverage"] = ((r["has_pos"] + r["has_neg"]) > 0).float().mean().item()
    tied = torch.stack([(r[k] == r[k][:, :1]).all(1) for k in ("recall", "precision", "format")]).all(0)
    out["zero_std_groups"] = (adv == 0).all(1).float().mean().item()
    out["tied_groups"] = tied.float().mean().item()
    return out


# ---------------------------------------------------------------------------------------
# Section 4.3: slow-fast confidence calibration

def slow_fast_gap(conf_slow, conf_fast):
    """Eq. (9): Delta(e) = conf_slow(c(e)) - conf_fast(c(e))."""
    return conf_slow - conf_fast


def split_correct_incorrect(word_categories, gt):
    """Eq. (10): indices of answer words whose category is in G (E+) and not in G (E-).
    Words mapping to no category (None) are in neither set."""
    pos = [i for i, c in enumerate(word_categories) if c is not None and c in gt]
    neg = [i for i, c in enumerate(word_categories) if c is not None and c not in gt]
    return pos, neg


def calibration_rewards(deltas, word_categories, gt):
    """Eq. (11): R+ = mean_{E+} Delta(e), R- = mean_{E-} (-Delta(e)); an empty set gives 0.
    Returns (R+, R-, |E+| > 0, |E-| > 0)."""
    pos, neg = split_correct_incorrect(word_categories, gt)
    r_pos = sum(float(deltas[i]) for i in pos) / len(pos) if pos else 0.0
    r_neg = sum(-float(deltas[i]) for i in neg) / len(neg) if neg else 0.0
    return r_pos, r_neg, bool(pos), bool(neg)


def word_gaps(slow_logprobs, fast_logprobs, word_first_ids, word_categories, category_token_ids,
              word_level=False):
    """Eq. (1) + (9) for each answer word e of one completion, in one wheel.

    slow_logprobs/fast_logprobs [n_words, vocab]: next-token log-probs at the position of each
    word's first token, in the slow and the fast sequence (Eq. 8). `category_token_ids[j]` maps
    each category to the first-token ids of its wheel words as they would appear at word j
    (in context: space-prefixed after ", ", bare right after "<answer>"). conf(c(e)) sums the
    category's first-token probabilities (Eq. 1); with `word_level` (ablation A1) it is
    log p(first token of e). A word with no category gets Delta = 0 (and is ignored later)."""
    gaps = []
    for j, (tok, cat) in enumerate(zip(word_first_ids, word_categories)):
        if cat is None:
            gaps.append(0.0)
        elif word_level:
            gaps.append(float(slow_fast_gap(slow_logprobs[j, tok], fast_logprobs[j, tok])))
        else:
            ids = category_token_ids[j][cat]
            gaps.append(float(slow_fast_gap(category_log_confidence(slow_logprobs[j], ids),
                                            category_log_confidence(fast_logprobs[j], ids))))
    return gaps


def wheel_calibration_rewards(per_wheel):
    """Eq. (11) averaged over wheels: `per_wheel` is a list of (R+, R-, has_pos, has_neg).
    R+ is averaged over the wheels where E+ is not empty, R- where E- is not empty (0 if none).
    Returns (R+, R-, has_pos, has_neg): has_pos is True when some wheel has a non-empty E+."""
    pos = [r for r, _, has, _ in per_wheel if has]
    neg = [r for _, r, _, has in per_wheel if has]
    return (sum(pos) / len(pos) if pos else 0.0), (sum(neg) / len(neg) if neg else 0.0), bool(pos), bool(neg)


def completion_calibration(slow_logprobs, fast_logprobs, word_first_ids, categories, tables, gt, word_level=False):
    """Eq. (1) and (9)-(11) for one completion, over several wheels: (R+, R-, has_pos, has_neg).

    slow_logprobs/fast_logprobs [n_words, vocab] are the next-token log-probs at each answer
    word's first token in the slow and the fast sequence, word_first_ids those tokens. Per wheel
    k: categories[k][j] is word j's category (None: unmapped), tables[k][j] the V(c) table for
    word j in context (see word_gaps), gt[k] the ground-truth categories. A wheel where the
    ground truth maps to nothing is skipped (every mapped word would otherwise land in E-), as
    R_R, R_P and the evaluator skip it; the rest are averaged (wheel_calibration_rewards)."""
    per_wheel = []
    for cats, tabs, g in zip(categories, tables, gt):
        if not g:
            continue
        gaps = word_gaps(slow_logprobs, fast_logprobs, word_first_ids, cats, tabs, word_level)
        per_wheel.append(calibration_rewards(gaps, cats, g))
    return wheel_calibration_rewards(per_wheel)


# ---------------------------------------------------------------------------------------
# Eq. (3): the clipped GRPO objective with a k3 KL penalty

def k3_kl(logp, ref_logp):
    """Per-token k3 estimator of KL(pi_theta || pi_ref): exp(ref - logp) - (ref - logp) - 1 >= 0."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


def masked_mean(x, mask, dim=None):
    """Mean of x over the positions where mask is 1 (along dim, or over everything)."""
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def importance_ratio(logp, old_logp, mask, importance="token"):
    """The importance ratio of each completion token [B, T]: "token" r_t = pi(y_t) / pi_old(y_t)
    (GRPO, Eq. 3); "sequence" the length-normalised sequence ratio of GSPO (arXiv 2507.18071),
    s_i = (pi(y_i) / pi_old(y_i))^(1 / |y_i|) = exp(mean_t log r_t), the same for every token of y_i."""
    if importance == "token":
        return torch.exp(logp - old_logp)
    if importance == "sequence":
        return torch.exp(masked_mean(logp - old_logp, mask, dim=-1)).unsqueeze(-1).expand_as(logp)
    raise ValueError(f"importance must be 'token' or 'sequence', not {importance!r}")


def loss_rows(adv, completion, eos, mask_truncated=False, skip_tied=False):
    """Which completions enter the loss ([B] bool), or None when all do: without the truncated
    ones (no EOS: they hit MAX_NEW_TOKENS; DAPO, arXiv 2503.14476, masks them out of the loss) and
    without the groups whose advantages are all 0 (`adv` [groups, G]; DAPO's dynamic sampling drops
    them, so they do not dilute the mean and the KL term acts on the informative groups only)."""
    if not (mask_truncated or skip_tied):
        return None
    keep = torch.ones(completion.shape[0], dtype=torch.bool, device=completion.device)
    if mask_truncated:
        keep &= (completion == eos).any(1)
    if skip_tied:
        keep &= (adv != 0).any(1).repeat_interleave(adv.shape[1])
    return keep


def grpo_loss(logp, old_logp, advantages, mask, ref_logp=None, eta=0.2, beta=0.0, aggregation="sequence",
              max_len=None, eta_high=0.0, importance="token", keep=None):
    """Eq. (3): L = -(1/K) sum_i min(r A, clip(r, 1-eta, 1+eta) A) + beta KL(pi_theta || pi_ref).

    Per-token ratios r = exp(logp - old_logp) (importance "sequence": GSPO's, see importance_ratio)
    and per-token k3 KL, over completion tokens (`mask` [B, T]); `advantages` [B] is broadcast over
    each completion's tokens. `eta_high` > 0 clips from above at 1 + eta_high instead of 1 + eta
    (DAPO's clip-higher). `keep` [B] (loss_rows): only these completions enter the loss. aggregation:
      "sequence"  mean over each completion's tokens, then over completions: the 1/K form with a
                  per-sequence token mean, which weights each token of completion i by 1/|y_i|
      "token"     one mean over all completion tokens of the batch
      "constant"  each completion's token sum divided by `max_len` (MAX_NEW_TOKENS; default the
                  width T), then the mean over completions (Dr. GRPO: no length bias)
    Returns (loss, stats): the mean KL, the share of tokens clipped below (A < 0) and above (A > 0)
    and both (clip_frac), the mean |ratio - 1| and the token entropy of the sampling policy,
    estimated as the mean of -old_logp over the sampled tokens (E_y~pi[-log pi(y)] = H(pi): no
    full-vocabulary pass)."""
    ratio = importance_ratio(logp, old_logp, mask, importance)
    adv = advantages.unsqueeze(-1)
    high = 1 + (eta_high or eta)
    per_token = -torch.min(ratio * adv, torch.clamp(ratio, 1 - eta, high) * adv)
    kl = k3_kl(logp, ref_logp) if ref_logp is not None else torch.zeros_like(logp)
    if beta:
        per_token = per_token + beta * kl
    rows = slice(None) if keep is None else keep
    loss_mask = mask if keep is None else mask * keep.unsqueeze(-1).to(mask.dtype)
    if keep is not None and not keep.any():
        loss = (per_token * 0).sum()  # nothing to learn from this batch: a zero with a graph
    elif aggregation == "sequence":
        loss = masked_mean(per_token, mask, dim=-1)[rows].mean()
    elif aggregation == "token":
        loss = masked_mean(per_token, loss_mask)
    elif aggregation == "constant":
        loss = ((per_token * mask.to(per_token.dtype)).sum(-1) / (max_len or per_token.shape[-1]))[rows].mean()
    else:
        raise ValueError(f"aggregation must be 'sequence', 'token' or 'constant', not {aggregation!r}")
    low_clip, high_clip = (ratio < 1 - eta) & (adv < 0), (ratio > high) & (adv > 0)
    stats = {"kl": float(masked_mean(kl.detach(), mask)), "clip_frac": float(masked_mean((low_clip | high_clip).float(), mask)),
             "clip_low": float(masked_mean(low_clip.float(), mask)), "clip_high": float(masked_mean(high_clip.float(), mask)),
             "ratio_dev": float(masked_mean((ratio.detach() - 1).abs(), mask)),
             "entropy": float(masked_mean(-old_logp.detach(), mask))}
    return loss, stats


def token_logprobs(logits, tokens, temperature=1.0):
    """log pi(token) under temperature-scaled logits (the distribution that sampled them)."""
    return torch.log_softmax(logits / temperature, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def chunked_logprobs(hidden, head, tokens, temperature=1.0, chunk=1024):
    """token_logprobs from the last hidden states [rows, T, H] and the LM head, `chunk` positions at
    a time, so that the [rows, T, vocabulary] logits never exist at once (at Qwen's 151,936-token
    vocabulary they would dominate the memory of a step). With gradients each chunk is
    checkpointed: its logits are freed after the forward and recomputed in the backward."""
    from torch.utils.checkpoint import checkpoint
    flat_h, flat_t = hidden.reshape(-1, hidden.shape[-1]), tokens.reshape(-1)

    def piece(h, t):
        return token_logprobs(head(h).float(), t, temperature)

    out = [checkpoint(piece, flat_h[s:s + chunk], flat_t[s:s + chunk], use_reentrant=False)
           if torch.is_grad_enabled() else piece(flat_h[s:s + chunk], flat_t[s:s + chunk])
           for s in range(0, flat_h.shape[0], chunk)]
    return torch.cat(out).view(tokens.shape)


def completion_mask(completion_ids, eos_id):
    """1 for every completion token up to and including the first EOS, 0 after it; all 1 when
    there is no EOS. Built from the EOS position, never by comparing with the pad id (pad and
    EOS are the same token in many tokenizers)."""
    is_eos = completion_ids == eos_id
    length = completion_ids.shape[1]
    first = torch.where(is_eos.any(1), is_eos.int().argmax(1), torch.full_like(is_eos[:, 0], length - 1, dtype=torch.long))
    return (torch.arange(length, device=completion_ids.device)[None] <= first[:, None]).long()
