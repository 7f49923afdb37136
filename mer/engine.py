"""Forward passes over prompts and their continuations, one engine for training and evaluation:
the prompt's KV cache (computed once per group), the continuation's logits or last hidden states,
the log-probs of sampled tokens, and the sampler (GRPO's rollouts, greedy evaluation, predict.py).

Shapes: prompts are left-padded [prompts, P] with one row per prompt; a group's n continuations
are rows i * n .. i * n + n - 1 of [rows, T] (row i continues prompt i // n).
"""
import contextlib

import torch

import rewards
from mer.models import checkpointing_off, is_omni


def forward_logits(model, ids, mask, media=None, keep=0):
    """Logits of the last `keep` positions (all when 0) of whole left-padded sequences. A text model
    gets position ids that skip the left padding and computes its LM head only there; Qwen2.5-Omni
    derives its 3-D rope positions from the mask and the media grids itself."""
    if is_omni(model):
        logits = model(input_ids=ids, attention_mask=mask, **(media or {})).logits
        return logits[:, -keep:] if keep else logits
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=keep).logits


def read_only(cache):
    """`cache` as a fixed prefix: each layer's update returns prefix + new keys and values without
    storing them, so a layer recomputed by gradient checkpointing sees the same prefix again."""
    def update(key_states, value_states, layer_idx, *args, **kwargs):
        layer = cache.layers[layer_idx]
        return torch.cat([layer.keys, key_states], -2), torch.cat([layer.values, value_states], -2)
    cache.update = update
    return cache


def with_room(cache, extra):
    """`cache` changed so that its next `extra` positions are written into room reserved now: a
    decoding step then writes one position per layer, where appending by concatenation copies the
    whole cache (a quarter of a step's time at 8 rows of SmolLM2). Row selection acts on the room."""
    for layer in cache.layers:
        b, h, t, d = layer.keys.shape
        room = {"k": layer.keys.new_empty(b, h, t + extra, d), "v": layer.values.new_empty(b, h, t + extra, d), "n": t}
        room["k"][:, :, :t], room["v"][:, :, :t] = layer.keys, layer.values

        def update(keys, values, *args, layer=layer, room=room, **kwargs):
            n = room["n"] + keys.shape[-2]
            room["k"][:, :, room["n"]:n], room["v"][:, :, room["n"]:n], room["n"] = keys, values, n
            layer.keys, layer.values = room["k"][:, :, :n], room["v"][:, :, :n]
            return layer.keys, layer.values

        def select(indices, layer=layer, room=room):
            room["k"], room["v"] = room["k"][indices], room["v"][indices]
            layer.keys, layer.values = room["k"][:, :, :room["n"]], room["v"][:, :, :room["n"]]

        layer.update, layer.batch_select_indices = update, select
    return cache


def prompt_cache(model, ids, mask, media=None, n=1):
    """(KV cache, positions): the cache of left-padded prompts without their last token, for n rows
    per prompt, and the rope position of that last token in each row. The prompts run once, not n
    times: the cache is repeated after the forward (with its graph, when gradients are on). The
    caller feeds each prompt's last token first. A text model counts real tokens for positions;
    Qwen2.5-Omni shifts the text after media by the rope_deltas that this very forward sets."""
    # the body under the LM head; under DDP this pass skips the wrapper, which is fine: DDP syncs
    # gradients from hooks on the parameters, and the continuation goes through the wrapper
    body = getattr(model, "module", model).base_model
    ids, mask = ids[:, :-1], mask[:, :-1]
    with checkpointing_off(body):
        if is_omni(model):
            out = body(input_ids=ids, attention_mask=mask, use_cache=True, **(media or {}))
            position = mask.sum(1) + body.rope_deltas.view(-1).to(mask.device)
        else:
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            out = body(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
            position = mask.sum(1)
    out.cache.batch_repeat_interleave(n)
    return out.cache, position.repeat_interleave(n)


@contextlib.contextmanager
def lm_head_off(model):
    """Inside, the model returns its last hidden states where it returned logits (its LM head is an
    identity); yields the head, for a caller that applies it itself, in chunks or at a few
    positions. The forward still goes through the model (and its DDP wrapper, which must see it)."""
    inner = getattr(model, "module", model)
    head = inner.lm_head
    inner.lm_head = torch.nn.Identity()
    try:
        yield head
    finally:
        inner.lm_head = head


def continuation_logits(model, ids, mask, media, completion, c_mask, n):
    """Logits [rows, T, vocabulary] predicting each completion token (inside lm_head_off: the last
    hidden states [rows, T, hidden] instead), for n completions per left-padded prompt; c_mask
    marks the completions' real tokens. Each prompt runs once (prompt_cache) and its n rows
    continue from its last token. With gradients on, the cache keeps its graph: the gradient
    through the prompt is that of the full sequences."""
    cache, position = prompt_cache(model, ids, mask, media, n)
    cache = read_only(cache)  # one pass reads it: nothing to store, and checkpointing may recompute
    x = torch.cat([ids[:, -1:].repeat_interleave(n, 0), completion[:, :-1]], 1)
    x_mask = torch.cat([mask.repeat_interleave(n, 0), c_mask[:, :-1]], 1)
    positions = position[:, None] + torch.arange(x.shape[1], device=x.device)
    return model(input_ids=x, attention_mask=x_mask, position_ids=positions, cache=cache, use_cache=True).logits


def completion_logprobs(model, ids, mask, media, completion, c_mask, n, temperature=1.0, chunk=1024):
    """(log-probs, hidden states, LM head): log pi(completion token) under `temperature` [rows, T],
    from the last hidden states [rows, T, hidden] through the LM head `chunk` positions at a time
    (rewards.chunked_logprobs: no full-vocabulary logits of the whole batch). The hidden states
    and the head are returned for the few other positions a caller reads (Eq. 8's confidences)."""
    with lm_head_off(model) as head:
        hidden = continuation_logits(model, ids, mask, media, completion, c_mask, n)
    return rewards.chunked_logprobs(hidden, head, completion, temperature, chunk), hidden, head


def sample(model, ids, mask, media, n, max_new, min_new=0, temperature=1.0, top_p=1.0, eos=None,
           stop_string=None, tokenizer=None, keep_ids=None):
    """Token ids [rows, <= max_new] of n completions per left-padded prompt (row i continues prompt
    i // n), one token per forward from a KV cache; temperature 0 is greedy. A row ends at EOS or,
    with `stop_string`, at the first token that completes it in the decoded text (`tokenizer`),
    as generate(stop_strings=...) does; after its end a row holds EOS. Finished rows leave the
    batch: the cache, mask and positions keep the live rows only. EOS cannot be drawn before
    `min_new` tokens. Each step draws one uniform per row, live or not, so the same seed gives
    the same completions whichever rows have left. With `keep_ids` (token ids [K]) it returns
    (tokens, log-probs [rows, T, K]): each step's next-token log-probs at those ids, read from the
    logits the step computed anyway, so Section 3's diagnostics need no second pass (-inf after a
    row's end)."""
    cache, position = prompt_cache(model, ids, mask, media, n)
    cache = with_room(cache, max_new)
    rows = len(ids) * n
    mask = mask.repeat_interleave(n, 0)
    token = ids[:, -1].repeat_interleave(n)
    live = torch.arange(rows, device=ids.device)  # the output row of each batch row
    out = torch.full((rows, max_new), eos, dtype=torch.long, device=ids.device)
    new = [[] for _ in range(rows)]
    if keep_ids is not None:
        kept = torch.full((rows, max_new, len(keep_ids)), -float("inf"), device=ids.device)
    for t in range(max_new):
        logits = model(input_ids=token[:, None], attention_mask=mask, position_ids=(position + t)[:, None],
                       cache=cache, use_cache=True).logits[:, -1].float()
        if keep_ids is not None:
            kept[live, t] = logits.index_select(-1, keep_ids) - logits.logsumexp(-1, keepdim=True)
        if t < min_new:
            logits[:, eos] = -float("inf")
        u = torch.rand(rows, 1, dtype=torch.float64, device=ids.device)[live] if temperature else None
        token = next_token(logits, temperature, top_p, u)
        out[live, t] = token
        ended = token == eos
        if stop_string:
            for i, (row, tok) in enumerate(zip(live.tolist(), token.tolist())):
                new[row].append(tok)  # the string is at most len(stop_string) tokens back
                ended[i] |= stop_string in tokenizer.decode(new[row][-len(stop_string) - 1:], skip_special_tokens=True)
        if ended.all():
            out = out[:, :t + 1]
            break
        if ended.any():
            keep = (~ended).nonzero().squeeze(1)
            cache.batch_select_indices(keep)
            mask, position, token, live = mask[keep], position[keep], token[keep], live[keep]
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
    return out if keep_ids is None else (out, kept[:, :out.shape[1]])


def next_token(logits, temperature=1.0, top_p=1.0, u=None):
    """One token per row: argmax when temperature is 0, else a draw from softmax(logits / T),
    restricted to the smallest set of most likely tokens whose mass reaches top_p; `u` holds one
    uniform in [0, 1) per row (float64; default: drawn here)."""
    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits / temperature, -1)
    if top_p < 1:
        sorted_probs, order = probs.sort(-1, descending=True)
        outside = sorted_probs.cumsum(-1) - sorted_probs >= top_p  # the mass before it already reaches top_p
        outside[..., 0] = False  # the most likely token always stays (top_p <= 0 is greedy)
        probs = probs.scatter(-1, order, sorted_probs.masked_fill(outside, 0))
    # inverse CDF: one uniform per row, where torch.multinomial draws one random number per
    # vocabulary entry (6 of ~75 ms per decoding step at 8 rows x 49k tokens on our 2-core CPU)
    cdf = probs.double().cumsum(-1)  # float64: u * total never rounds up to the total
    u = torch.rand(len(cdf), 1, dtype=cdf.dtype, device=cdf.device) if u is None else u
    return torch.searchsorted(cdf, u * cdf[:, -1:], right=True).squeeze(-1).clamp(max=cdf.shape[-1] - 1)
