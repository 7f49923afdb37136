"""GRPO learns: one update moves log-probs with the advantages, and a short run raises a toy reward.

Both go through the functions train_grpo.py trains with (mer.engine.sample, rewards.completion_mask,
mer.engine.continuation_logits, rewards.token_logprobs, rewards.advantages, rewards.grpo_loss) on a tiny
random model; what they measure comes from an independent full-sequence forward."""
import torch

import mer.engine, mer.inputs, mer.models
import rewards

PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [12, 13, 14]]  # different lengths: the second is left-padded


def _setup(seed=0):
    torch.manual_seed(seed)
    model, tok = mer.models.load_model("tiny", seed=seed)
    ids, mask = mer.inputs.left_pad(PROMPTS, tok.eos_token_id)
    return model, tok.eos_token_id, ids, mask


def _sequence_logprobs(model, ids, mask, completion, c_mask, n):
    """Sum over each completion's real tokens of log pi(token), from full sequences (not the
    shared-prompt path): the independent measurement."""
    full_ids = torch.cat([ids.repeat_interleave(n, 0), completion], 1)
    full_mask = torch.cat([mask.repeat_interleave(n, 0), c_mask], 1)
    with torch.no_grad():
        logits = mer.engine.forward_logits(model, full_ids, full_mask, keep=completion.shape[1] + 1)[:, :-1]
    return (rewards.token_logprobs(logits.float(), completion) * c_mask).sum(1)


def _update(model, optimizer, ids, mask, completion, c_mask, adv, n):
    logits = mer.engine.continuation_logits(model, ids, mask, {}, completion, c_mask, n).float()
    logp = rewards.token_logprobs(logits, completion)
    loss, _ = rewards.grpo_loss(logp, logp.detach(), adv, c_mask)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def test_one_update_raises_positive_advantage_completions_and_lowers_negative_ones():
    model, eos, ids, mask = _setup()
    g = 4
    with torch.no_grad():
        completion = mer.engine.sample(model, ids, mask, {}, g, max_new=6, min_new=6, eos=eos)
    # rows 0 and 5 end after two tokens: what follows their EOS is not theirs and must not be trained
    completion[[0, 5], 2] = eos
    real = torch.ones_like(completion)
    real[[0, 5], 3:] = 0
    after_eos = 1 - real
    c_mask = rewards.completion_mask(completion, eos)
    # a different sign pattern in each group: row i belongs to prompt i // g
    adv = torch.tensor([1.5, -0.5, -0.5, -0.5, -1.0, 1.0, -1.0, 1.0])
    before = _sequence_logprobs(model, ids, mask, completion, real, g)
    before_after_eos = _sequence_logprobs(model, ids, mask, completion, after_eos, g)
    _update(model, torch.optim.SGD(model.parameters(), lr=0.05), ids, mask, completion, c_mask, adv, g)
    delta = _sequence_logprobs(model, ids, mask, completion, real, g) - before
    assert (delta[adv > 0] > 0).all(), delta
    assert (delta[adv < 0] < 0).all(), delta
    # tokens after EOS move only through shared weights, far less than the row's own tokens
    # (about 0.15 of them here; 0.8-1.3 when the mask lets them into the loss)
    moved = (_sequence_logprobs(model, ids, mask, completion, after_eos, g) - before_after_eos).abs()
    assert (moved[[0, 5]] < 0.3 * delta[[0, 5]].abs()).all(), (moved, delta)


def _toy_reward(completion, c_mask, prompt_of_row, vocab):
    """Per row: the share of its real tokens in its prompt's half of the vocabulary (prompt 0 wants
    ids below vocab / 2, prompt 1 ids above), so a row must be trained toward its own prompt."""
    wanted_low = (prompt_of_row == 0)[:, None]
    hit = torch.where(wanted_low, completion < vocab // 2, completion >= vocab // 2)
    return (hit * c_mask).sum(1) / c_mask.sum(1)


def test_a_short_run_raises_a_toy_reward():
    model, eos, ids, mask = _setup(seed=1)
    with torch.no_grad():  # a peaked start (as after SFT) instead of a near-uniform 1,028-way draw
        model.get_output_embeddings().weight.mul_(10)
    g, vocab = 8, model.config.vocab_size
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    prompt_of_row = torch.arange(len(PROMPTS)).repeat_interleave(g)
    means = []
    for step in range(10):
        with torch.no_grad():
            completion = mer.engine.sample(model, ids, mask, {}, g, max_new=8, min_new=8, eos=eos)
        c_mask = rewards.completion_mask(completion, eos)
        reward = _toy_reward(completion, c_mask, prompt_of_row, vocab)
        means.append(reward.mean().item())
        zeros = torch.zeros(len(PROMPTS), g)
        adv = rewards.advantages("baseline", {"f1": reward.view(-1, g), "format": zeros}).flatten()
        _update(model, optimizer, ids, mask, completion, c_mask, adv, g)
    # from near chance to nearly every token in the wanted half
    assert sum(means[:2]) / 2 < 0.7 and sum(means[-3:]) / 3 > 0.9, means


def test_gradient_accumulation_gives_the_full_batch_gradient():
    """configs/cpu_rl.py takes 8 prompts per step as 4 micro-batches of 2 (GRAD_ACCUM): with the
    "sequence" and "constant" aggregations the accumulated gradient of the micro-batch losses, each
    divided by the number of micro-batches (as accelerate's backward does), is the gradient of the
    whole batch's loss, also with ratios off 1 (clipping active) and the KL term on."""
    model, eos, ids, mask = _setup(seed=2)
    g, width = 4, 6
    with torch.no_grad():
        completion = mer.engine.sample(model, ids, mask, {}, g, max_new=width, min_new=width, eos=eos)
    completion[1, 3] = eos  # one shorter completion, so the per-sequence means differ in length
    c_mask = rewards.completion_mask(completion, eos)
    adv = torch.tensor([1.2, -0.3, 0.4, -1.3, -0.9, 0.6, 0.9, -0.6])
    noise = torch.randn(completion.shape, generator=torch.Generator().manual_seed(0))
    params = [p for p in model.parameters() if p.requires_grad]

    def grad(aggregation, parts):
        """Accumulated gradient over `parts`: lists of prompt indices, each one micro-batch."""
        model.zero_grad()
        for part in parts:
            rows = [p * g + j for p in part for j in range(g)]
            p_ids, p_mask = mer.inputs.left_pad([PROMPTS[p] for p in part], eos)
            logits = mer.engine.continuation_logits(model, p_ids, p_mask, {}, completion[rows], c_mask[rows], g).float()
            logp = rewards.token_logprobs(logits, completion[rows])
            old, ref = logp.detach() + 0.3 * noise[rows], logp.detach() - 0.2 * noise[rows]
            loss, s = rewards.grpo_loss(logp, old, adv[rows], c_mask[rows], ref, eta=0.2, beta=0.04,
                                        aggregation=aggregation, max_len=width)
            (loss / len(parts)).backward()
        assert s["clip_frac"] > 0
        return torch.cat([p.grad.flatten() for p in params]).clone()

    for aggregation in ("sequence", "constant"):
        whole, accumulated = grad(aggregation, [[0, 1]]), grad(aggregation, [[0], [1]])
        assert torch.allclose(whole, accumulated, rtol=1e-4, atol=1e-7), (aggregation, (whole - accumulated).abs().max())
        assert whole.abs().max() > 1e-3  # not two zero gradients
    # "token" weights each token by 1 / (all tokens of its micro-batch): not the same update
    whole, accumulated = grad("token", [[0, 1]]), grad("token", [[0], [1]])
    assert not torch.allclose(whole, accumulated, rtol=1e-3, atol=1e-6)
