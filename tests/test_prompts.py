
import pytest

import mer.checkpoints, mer.data, mer.inputs, mer.models, mer.prompts, mer.run

TOK = mer.models.tiny_tokenizer()
SAMPLE = {"name": "s1", "video": "Ann smiles.", "audio": "Ann speaks with a bright tone.", "subtitle": "We won!",
          "openset": "happy, excited", "reason": "She smiles and her voice is bright."}


def test_slow_and_fast_prompts_differ_only_in_the_prefix():
    slow, fast = mer.prompts.prompt_text(SAMPLE, TOK, "slow"), mer.prompts.prompt_text(SAMPLE, TOK, "fast")
    assert slow.endswith("<|im_start|>assistant\n<think>")
    assert fast == slow[:-len("<think>")] + "<think></think><answer>"
    user = mer.prompts.build_chat(SAMPLE)[1]["content"]
    assert "Video clues: Ann smiles." in user and '"We won!"' in user and "<answer>" in user
    for placeholder in ("emotion1", "word1", "w1", "..."):   # nothing copyable as an answer
        assert placeholder not in user


def test_encode_sft_masks_the_prompt_only():
    prompt = TOK(mer.prompts.prompt_text(SAMPLE, TOK, "slow"), add_special_tokens=False)["input_ids"]
    assert mer.inputs.encode_prompts([SAMPLE], TOK, "slow") == ([prompt], {})
    ids, labels = mer.prompts.encode_sft(prompt, SAMPLE, TOK)
    assert ids[:len(prompt)] == prompt
    assert labels[:len(prompt)] == [-100] * len(prompt)
    target = labels[len(prompt):]
    assert -100 not in target and target == ids[len(prompt):]
    assert target[-1] == TOK.eos_token_id
    assert TOK.decode(target[:-1]) == "She smiles and her voice is bright.</think><answer>happy, excited</answer>"
    # over max_len only the completion is cut, never the prompt
    short_ids, short_labels = mer.prompts.encode_sft(prompt, SAMPLE, TOK, max_len=len(prompt) + 3)
    assert short_ids == ids[:len(prompt) + 3] and len(short_labels) == len(prompt) + 3


def test_over_long_prompts_get_their_subtitle_cut(capsys):
    short = dict(SAMPLE, name="short")
    long = dict(SAMPLE, name="long", subtitle="We won the match again and again! " * 200)
    n_short = len(TOK(mer.prompts.prompt_text(short, TOK))["input_ids"])
    limit = n_short + 20
    out = mer.prompts.fit_prompts([short, long], TOK, limit)
    assert out[0] is short
    n = len(TOK(mer.prompts.prompt_text(out[1], TOK))["input_ids"])
    assert limit - 3 <= n <= limit and long["subtitle"].startswith(out[1]["subtitle"].strip())
    assert "1 of 2 samples had prompts over max_prompt_tokens" in capsys.readouterr().err
    assert mer.prompts.fit_prompts([long], TOK, 0) == [long]                                      # 0: no limit
    with pytest.raises(SystemExit, match="'long': the prompt is .* without the subtitle; raise --max_prompt_tokens"):
        mer.prompts.fit_prompts([long], TOK, n_short - 10)


def test_encode_sft_fast_mode():
    prompt = TOK(mer.prompts.prompt_text(SAMPLE, TOK, "fast"), add_special_tokens=False)["input_ids"]
    ids, labels = mer.prompts.encode_sft(prompt, SAMPLE, TOK, mode="fast")
    assert labels[:len(prompt)] == [-100] * len(prompt)
    assert TOK.decode(labels[len(prompt):-1]) == "happy, excited</answer>"


# Qwen2's pre-tokenizer regex: punctuation glues to the letters after it, so ">happy" is one
# pre-token and BPE may merge it into one token
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
               r"\s*[\r\n]+|\s+(?!\S)|\s+")


def _qwen2_style_tokenizer():
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    words = ("happy", "angry", "relieved")
    texts = ([f"She smiles.</think><answer>{w}, sad</answer>" for w in words] + list(words)) * 50
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=400, special_tokens=["<|im_end|>"],
                                                       show_progress=False,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|im_end|>")


def test_tag_tokens_make_the_answer_start_a_token_boundary_under_qwen2_pre_tokenization():
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig
    import wheel
    tok = _qwen2_style_tokenizer()
    text = "She smiles.</think><answer>happy, sad</answer>"
    ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    # the failure: `<answer>` and the first word share a token, so there is no answer start
    assert ">happy" in [tok.decode([i]) for i in ids]
    assert mer.prompts.fast_answer(ids, tok) is None
    wheels = wheel.load_wheels()
    assert mer.prompts.answer_needs_tag_tokens(tok, wheels.vocab)
    assert not mer.prompts.answer_needs_tag_tokens(mer.models.tiny_tokenizer(), wheels.vocab)  # GPT-2's split: ">", "happy"
    model = AutoModelForCausalLM.from_config(LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32,
                                                         num_hidden_layers=1, num_attention_heads=2))
    before = model.get_input_embeddings().weight.detach().clone()
    head_before = model.get_output_embeddings().weight.detach().clone()
    pieces = tok("<answer>", add_special_tokens=False)["input_ids"]
    assert len(pieces) > 1
    assert mer.prompts.add_tag_tokens(model, tok) == 4 and mer.prompts.add_tag_tokens(model, tok) == 0
    ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert [tok.decode([i]) for i in ids][-7:] == ["</think>", "<answer>", "happy", ",", " sad", "</answer>", "<|im_end|>"]
    answer, words = mer.prompts.fast_answer(ids, tok)
    assert [w for w, _, _, _ in words] == ["happy", "sad"]
    j = words[0][1]
    assert tok.decode([ids[j]]) == "happy" and ids[j - 1] == tok.convert_tokens_to_ids("<answer>")
    # V(c) of Eq. (1), bare (right after <answer>), holds exactly that token
    assert not mer.prompts.answer_needs_tag_tokens(tok, wheels.vocab)
    assert ids[j] in mer.prompts.first_tokens(wheels, 1, tok, False)[wheel.G_w("happy", wheels, 1)]
    # new embedding rows start as the mean of the pieces the tag was cut into; old rows are kept
    emb = model.get_input_embeddings().weight
    assert torch.equal(emb[:len(before)], before)
    i = tok.convert_tokens_to_ids("<answer>")
    assert emb.shape[0] == len(tok) and i >= len(before)
    assert torch.allclose(emb[i], before[pieces].mean(0))
    assert torch.allclose(model.get_output_embeddings().weight[i], head_before[pieces].mean(0))


@pytest.mark.parametrize("max_len", [256, 300, 384])
def test_sft_warns_with_the_count_of_targets_it_cuts(max_len, capsys):
    samples = mer.data.load_split("train")[:40]
    cut = 0
    for s in samples:   # what collate does: a target is cut when it loses its end-of-turn token
        prompt = mer.inputs.encode_prompts([s], TOK, "slow")[0][0]
        ids, _ = mer.prompts.encode_sft(prompt, s, TOK, "slow", max_len)
        cut += ids[-1] != TOK.eos_token_id
    assert mer.prompts.warn_cut_targets(samples, TOK, max_len) == cut
    err = capsys.readouterr().err
    assert (f"warning: {cut} of 40 SFT targets are cut at --max_len={max_len}" in err) if cut else err == ""
    if max_len == 256:
        assert cut == 40       # the tiny tokenizer's prompts alone fill 256 tokens
