"""The one decoder (mer.engine.sample): greedy outputs equal Hugging Face `generate`, rows that end
(EOS, `</answer>`) leave the batch without changing any row's tokens, and sampling draws the same
completions for the same seed whichever rows have left."""
import pytest
import torch

import mer.data
import mer.engine
import mer.inputs
import mer.models
import mer.prompts


def hf_greedy(model, ids, mask, max_new, eos, media=None, stop=None, tok=None):
    """The reference: `generate` with greedy decoding, cut at the prompt, padded with EOS."""
    extra = {"stop_strings": [stop], "tokenizer": tok} if stop else {}
    out = model.generate(input_ids=ids, attention_mask=mask, **(media or {}), do_sample=False, max_new_tokens=max_new,
                         pad_token_id=eos, eos_token_id=eos, **extra)
    return out[:, ids.shape[1]:]


def no_drop_sample(model, ids, mask, media, n, max_new, temperature, eos):
    """The sampler before finished rows left the batch: every row decodes until the last one ends."""
    cache, position = mer.engine.prompt_cache(model, ids, mask, media, n)
    mask = mask.repeat_interleave(n, 0)
    token = ids[:, -1].repeat_interleave(n)
    done = torch.zeros_like(token, dtype=torch.bool)
    out = []
    for t in range(max_new):
        logits = model(input_ids=token[:, None], attention_mask=mask, position_ids=(position + t)[:, None],
                       cache=cache, use_cache=True).logits[:, -1].float()
        token = mer.engine.next_token(logits, temperature).masked_fill(done, eos)
        out.append(token)
        done |= token == eos
        if done.all():
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
    return torch.stack(out, 1)


def rows_per_forward(model):
    """A list that gets the batch size of every decoding forward (one new token per row)."""
    sizes = []
    model.register_forward_pre_hook(lambda m, a, kw: sizes.append(kw["input_ids"].shape[0])
                                    if kw.get("input_ids") is not None and kw["input_ids"].shape[1] == 1 else None,
                                    with_kwargs=True)
    return sizes


def test_greedy_equals_generate_with_stop_strings_and_rows_that_end_early(tiny_sft):
    model, tok = mer.models.load_model(tiny_sft)
    model.eval()
    eos = tok.eos_token_id
    samples = mer.data.load_split("test_fine")[:6]
    for mode, limit in (("slow", 160), ("fast", 48)):
        prompts, _ = mer.inputs.encode_prompts(samples, tok, mode)
        ids, mask = mer.inputs.left_pad(prompts, eos)
        sizes = rows_per_forward(model)
        with torch.no_grad():
            ours = mer.engine.sample(model, ids, mask, {}, 1, limit, temperature=0, eos=eos, stop_string="</answer>",
                                     tokenizer=tok)
            hf = hf_greedy(model, ids, mask, limit, eos, stop="</answer>", tok=tok)
            ours_eos = mer.engine.sample(model, ids, mask, {}, 1, limit, temperature=0, eos=eos)
            hf_eos = hf_greedy(model, ids, mask, limit, eos)
        model._forward_pre_hooks.clear()
        assert torch.equal(ours, hf[:, :ours.shape[1]]) and (hf[:, ours.shape[1]:] == eos).all()
        assert torch.equal(ours_eos, hf_eos[:, :ours_eos.shape[1]]) and (hf_eos[:, ours_eos.shape[1]:] == eos).all()
        texts = [tok.decode(r, skip_special_tokens=True) for r in ours]
        lengths = (ours != eos).sum(1)
        stopped = [t.endswith("</answer>") and n < limit for t, n in zip(texts, lengths.tolist())]
        assert any(stopped), texts                                   # rows stopped at their answer's end
        assert all(s or n == limit or eos in r.tolist() for s, n, r in zip(stopped, lengths.tolist(), ours))
        assert len(set(lengths.tolist())) > 1                         # rows of different lengths
        # the batch shrank as rows ended: step t decoded exactly the rows still going at t
        # a row's last decoding step: its `>` of </answer>, else the EOS it drew, else the limit
        last = [n - 1 if stop or eos not in r.tolist() else r.tolist().index(eos)
                for r, n, stop in zip(ours, lengths.tolist(), stopped)]
        assert sizes[:ours.shape[1]] == [sum(t <= e for e in last) for t in range(ours.shape[1])]


def test_kept_logprobs_equal_a_teacher_forced_pass_up_to_each_rows_end(tiny_sft):
    model, tok = mer.models.load_model(tiny_sft)
    model.eval()
    eos = tok.eos_token_id
    prompts, _ = mer.inputs.encode_prompts(mer.data.load_split("test_fine")[:6], tok, "slow")
    ids, mask = mer.inputs.left_pad(prompts, eos)
    with torch.no_grad():
        plain = mer.engine.sample(model, ids, mask, {}, 1, 120, temperature=0, eos=eos, stop_string="</answer>",
                                  tokenizer=tok)
        keep = torch.tensor(sorted(set(plain.flatten().tolist()) | set(range(0, len(tok), 7))))
        ours, kept = mer.engine.sample(model, ids, mask, {}, 1, 120, temperature=0, eos=eos,
                                       stop_string="</answer>", tokenizer=tok, keep_ids=keep)
        assert torch.equal(ours, plain) and kept.shape == (6, ours.shape[1], len(keep))
        ends = []
        for row, p in enumerate(prompts):
            r = ours[row].tolist()
            text_end = [tok.decode(r[:j + 1], skip_special_tokens=True).endswith("</answer>") for j in range(len(r))]
            end = min([j for j, e in enumerate(text_end) if e] + [j for j, t in enumerate(r) if t == eos] + [len(r) - 1])
            ends.append(end)
            logits = model(input_ids=torch.tensor([p + r[:end]])).logits[0, len(p) - 1:].float()
            teacher = torch.log_softmax(logits, -1)[:, keep]          # predicts completion tokens 0 .. end
            assert torch.allclose(kept[row, :end + 1], teacher, atol=1e-4), row
            assert torch.isinf(kept[row, end + 1:]).all()              # nothing after the row left
    assert len(set(ends)) > 1, ends                                     # rows of different lengths


def test_sampling_gives_the_same_completions_when_finished_rows_leave(tiny_sft):
    model, tok = mer.models.load_model(tiny_sft)
    model.eval()
    eos = tok.eos_token_id
    samples = mer.data.load_split("test_fine")[:3]
    ids, mask = mer.inputs.left_pad(mer.inputs.encode_prompts(samples, tok, "slow")[0], eos)
    with torch.no_grad():
        torch.manual_seed(123)
        ours = mer.engine.sample(model, ids, mask, {}, 4, 100, temperature=1.0, eos=eos)
        torch.manual_seed(123)
        before = no_drop_sample(model, ids, mask, {}, 4, 100, 1.0, eos)
    assert torch.equal(ours, before)
    ends = (ours == eos).float().argmax(1)
    assert ends.min() < ends.max() - 10, ends                   # rows of very different lengths


def eos_that_ends_one_row(rows):
    """(token, row, step): a token that `rows[row]` first emits at `step` (> 0, before the last step)
    and no other row emits at all: made the EOS, it ends that row early and no other."""
    for row, r in enumerate(rows.tolist()):
        others = {t for i, o in enumerate(rows.tolist()) if i != row for t in o}
        for step in range(1, len(r) - 1):
            if r[step] not in r[:step] and r[step] not in others:
                return r[step], row, step
    raise AssertionError(f"no token ends one row alone: {rows}")


def test_greedy_equals_generate_on_tiny_omni_with_media(tmp_path):
    from test_omni import write_video, write_wav
    torch.manual_seed(0)
    model, tok = mer.models.load_model("tiny-omni")
    model.eval()
    with torch.no_grad():  # at its initial scale the random model repeats one pair of tokens whatever the input
        for p in model.parameters():
            p.mul_(4)
    processor = mer.models.load_processor("tiny-omni")
    video, wav = write_video(tmp_path / "clip.mp4"), write_wav(tmp_path / "voice.wav")
    samples = [{"name": "x", "subtitle": "We won!", "openset": "happy", "video_path": video, "audio_path": wav},
               {"name": "y", "subtitle": "A much longer subtitle, so that the first prompt is padded.",
                "openset": "sad", "video_path": video}]
    prompts, media = mer.inputs.encode_prompts(samples, tok, "slow", processor)
    ids, mask = mer.inputs.left_pad(prompts, tok.eos_token_id)
    with torch.no_grad():
        free = mer.engine.sample(model, ids, mask, media, 1, 10, temperature=0, eos=tok.eos_token_id)
        assert torch.equal(free, hf_greedy(model, ids, mask, 10, tok.eos_token_id, media))
        eos, row, step = eos_that_ends_one_row(free)    # one row ends early, the other goes on
        ours = mer.engine.sample(model, ids, mask, media, 1, 10, temperature=0, eos=eos)
        hf = hf_greedy(model, ids, mask, 10, eos, media)
    assert torch.equal(ours, hf) and ours.shape == (2, 10)
    assert (ours[row, step:] == eos).all() and (ours[1 - row] != eos).all()


@pytest.mark.parametrize("n", [1, 3])
def test_a_row_that_ends_first_leaves_and_the_others_keep_their_tokens(n):
    torch.manual_seed(0)
    model, tok = mer.models.load_model("tiny")
    model.eval()
    ids, mask = mer.inputs.left_pad([[5, 6, 7, 8, 9, 10, 11], [12, 13, 14], [20, 21, 22, 23]], tok.eos_token_id)
    with torch.no_grad():
        free = mer.engine.sample(model, ids, mask, {}, n, 12, temperature=0, eos=tok.eos_token_id)
        eos, row, step = eos_that_ends_one_row(free[::n])
        sizes = rows_per_forward(model)
        ours = mer.engine.sample(model, ids, mask, {}, n, 12, temperature=0, eos=eos)
        hf = hf_greedy(model, ids, mask, 12, eos).repeat_interleave(n, 0)
    assert torch.equal(ours, hf) and (ours[row * n:(row + 1) * n, step:] == eos).all()
    assert sizes[:12] == [3 * n] * (step + 1) + [2 * n] * (11 - step)  # its n rows left after its EOS
