"""The Qwen2.5-Omni Thinker path, offline: a tiny random Thinker, a video and an audio file
written by the test, one SFT step and one GRPO step that move the vision and audio towers."""
import json
import os
import subprocess
import sys
import wave

import numpy as np
import pytest
import torch

av = pytest.importorskip("av")
pytest.importorskip("torchvision")

import mer.engine, mer.inputs, mer.models, mer.prompts  # noqa: E402
from conftest import ROOT, checkpointing_gaps, chunked_logprob_gaps, shared_prompt_gap  # noqa: E402

FRAMES = 16


def write_video(path, size=56, fps=8, audio=True):
    """16 frames whose grey level is 15 x frame index, with a 2 s 440 Hz tone (mpeg4 + aac)."""
    out = av.open(str(path), "w")
    video = out.add_stream("mpeg4", rate=fps)
    video.width = video.height = size
    video.pix_fmt = "yuv420p"
    sound = out.add_stream("aac", rate=16000) if audio else None
    if sound:
        sound.layout = "mono"
    for i in range(FRAMES):
        frame = av.VideoFrame.from_ndarray(np.full((size, size, 3), 15 * i, np.uint8), format="rgb24")
        for packet in video.encode(frame):
            out.mux(packet)
    for packet in video.encode():
        out.mux(packet)
    if sound:
        t = np.arange(16000 * FRAMES // fps) / 16000
        frame = av.AudioFrame.from_ndarray((0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None],
                                           format="flt", layout="mono")
        frame.sample_rate = 16000
        for packet in list(sound.encode(frame)) + list(sound.encode(None)):
            out.mux(packet)
    out.close()
    return str(path)


def write_wav(path, seconds=1.0, rate=8000):
    t = np.arange(int(rate * seconds)) / rate
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((0.3 * np.sin(2 * np.pi * 220 * t) * 32767).astype(np.int16).tobytes())
    return str(path)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("media")
    return {"video": write_video(d / "clip.mp4"), "silent": write_video(d / "silent.mp4", audio=False),
            "wav": write_wav(d / "voice.wav"), "dir": d}


@pytest.fixture(scope="module")
def omni_data(media):
    rows = [{"name": f"m{i}", "subtitle": sub, "openset": label, "reason": "I see.", "video_path": media["video"],
             **({"audio_path": media["wav"]} if i % 2 else {})}
            for i, (label, sub) in enumerate([("happy", "We won!"), ("sad", "He never came back."),
                                              ("angry", "You lied to me!"), ("happy, relieved", "It worked out.")])]
    path = media["dir"] / "omni.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_read_video_samples_frames_uniformly(media):
    frames = mer.inputs.read_video(media["video"])
    assert frames.shape == (8, 56, 56, 3) and frames.dtype == np.uint8
    # frames 0, 2, 4, 6, 9, 11, 13, 15 of 16 (mpeg4 is lossy: compare grey levels loosely)
    expected = 15 * np.linspace(0, FRAMES - 1, 8).round()
    assert np.abs(frames.reshape(8, -1).mean(1) - expected).max() < 6


def test_read_audio_resamples_to_16k(media):
    wave_8k = mer.inputs.read_audio(media["wav"])
    assert wave_8k.dtype == np.float32 and abs(len(wave_8k) - 16000) <= 64
    # a 220 Hz tone stays a 220 Hz tone at the new rate
    spectrum = np.abs(np.fft.rfft(wave_8k[:16000]))
    assert abs(np.argmax(spectrum) * 16000 / 16000 - 220) <= 1
    from_video = mer.inputs.read_audio(media["video"])
    assert abs(len(from_video) - 32000) < 2048   # 2 s of sound track (aac adds a little padding)


@pytest.mark.parametrize("kind,content,message", [
    ("missing", None, "no such video file"),
    ("garbage", b"this is not a video", "cannot decode the video"),
    ("empty", b"", "cannot decode the video"),
])
def test_bad_video_is_a_clear_error(tmp_path, kind, content, message):
    path = tmp_path / f"{kind}.mp4"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(SystemExit, match=f"{path}: {message}"):
        mer.inputs.read_video(str(path))


def test_bad_audio_is_a_clear_error(tmp_path, media):
    with pytest.raises(SystemExit, match="no such audio file"):
        mer.inputs.read_audio(str(tmp_path / "none.wav"))
    with pytest.raises(SystemExit, match="silent.mp4: no audio stream"):
        mer.inputs.read_audio(media["silent"])
    empty = tmp_path / "empty.wav"
    write_wav(empty, seconds=0)
    with pytest.raises(SystemExit, match="empty.wav: the audio is empty"):
        mer.inputs.read_audio(str(empty))


def test_one_function_turns_samples_into_inputs(media):
    model, tok = mer.models.load_model("tiny-omni")
    processor = mer.models.load_processor("tiny-omni")
    assert type(model).__name__ == "Qwen2_5OmniThinkerForConditionalGeneration"
    sample = {"name": "x", "subtitle": "We won!", "openset": "happy", "video_path": media["video"],
              "audio_path": media["wav"]}
    (slow, fast), inputs = mer.inputs.encode_prompts([sample, sample], tok, ["slow", "fast"], processor)
    video_tokens = int(inputs["video_grid_thw"][0].prod()) // 4
    assert slow.count(tok.convert_tokens_to_ids("<|VIDEO|>")) == video_tokens > 0
    assert slow.count(tok.convert_tokens_to_ids("<|AUDIO|>")) > 0
    assert set(inputs) == {"pixel_values_videos", "video_grid_thw", "video_second_per_grid", "input_features",
                           "feature_attention_mask"}
    # slow and fast share the prompt, media included, and differ only in the forced prefix
    assert tok.decode(slow).endswith('"We won!"\n' + mer.prompts.INSTRUCTION + "<|im_end|>\n<|im_start|>assistant\n<think>")
    common = len(slow) - len(tok("<think>", add_special_tokens=False)["input_ids"])
    assert fast[:common] == slow[:common] and tok.decode(fast[common:]) == "<think></think><answer>"
    ids, mask = mer.inputs.left_pad([slow, fast], tok.eos_token_id)
    logits = mer.engine.forward_logits(model, ids, mask, inputs, keep=3)
    assert logits.shape == (2, 3, len(tok)) and torch.isfinite(logits).all()
    # a text-only model gets the clues as text and no media
    text_tok = mer.models.tiny_tokenizer()
    (ids,), none = mer.inputs.encode_prompts([dict(sample, video="She smiles.")], text_tok, "slow", None)
    assert none == {} and "Video clues: She smiles." in text_tok.decode(ids)
    # audio alone, and a batch that mixes media and text, are refused in words that say which
    with pytest.raises(SystemExit, match="'y' has no video_path: audio without a video is not supported.*pass --video"):
        mer.inputs.encode_prompts([{"name": "y", "subtitle": "hm", "audio_path": media["wav"]}], tok, "slow", processor)
    with pytest.raises(SystemExit, match="'z' has no video_path: a batch is all multimodal or all text"):
        mer.inputs.encode_prompts([sample, {"name": "z", "subtitle": "hm"}], tok, "slow", processor)


def test_prompt_once_per_group_equals_the_full_sequences(media):
    # media shift the rope positions of the text after them (Qwen2.5-Omni's rope_deltas), and the
    # two prompts differ in length, so the shorter one is left-padded
    torch.manual_seed(0)
    model, tok = mer.models.load_model("tiny-omni")
    model.eval()
    processor = mer.models.load_processor("tiny-omni")
    samples = [{"name": "x", "subtitle": "We won!", "openset": "happy", "video_path": media["video"],
                "audio_path": media["wav"]},
               {"name": "y", "subtitle": "A much longer subtitle, so that the first prompt is padded.",
                "openset": "sad", "video_path": media["video"]}]
    prompts, inputs = mer.inputs.encode_prompts(samples, tok, "slow", processor)
    _, row_inputs = mer.inputs.encode_prompts([s for s in samples for _ in range(3)], tok, "slow", processor)
    ids, mask = mer.inputs.left_pad(prompts, tok.eos_token_id)
    assert mask[0, 0] == 0
    completion = torch.randint(20, 100, (6, 5))  # text tokens: ids below 10 are the special and media tokens
    c_mask = torch.ones_like(completion)
    c_mask[4, 2:] = 0
    assert shared_prompt_gap(model, ids, mask, inputs, row_inputs, completion, c_mask, n=3) < 1e-5
    # the GRPO log-prob path (LM head in chunks) equals full logits, in values and gradients
    model.train()
    lp_gap, grad_gap = chunked_logprob_gaps(model, ids, mask, inputs, completion, c_mask, n=3)
    assert lp_gap < 1e-5 and grad_gap < 1e-5
    # and gradient checkpointing changes neither (the towers run in the prompt pass, not checkpointed)
    lp_gap, grad_gap, calls, calls_checkpointed = checkpointing_gaps(model, ids, mask, inputs, completion, c_mask, n=3)
    assert lp_gap < 1e-5 and grad_gap < 1e-5 and (calls, calls_checkpointed) == (2, 3)


def test_lora_adapts_the_language_model_only_and_merges_into_a_plain_thinker(media, tmp_path):
    pytest.importorskip("peft")
    import copy
    torch.manual_seed(0)
    base, tok = mer.models.load_model("tiny-omni")
    processor = mer.models.load_processor("tiny-omni")
    model = mer.models.add_lora(copy.deepcopy(base), 4)
    adapted = {name.split(".lora_")[0] for name in mer.models.lora_state(model)}
    assert adapted and all(name.startswith("model.language_model.layers.") for name in adapted)
    assert {p.requires_grad for n, p in model.named_parameters()} == {True, False}
    assert all(("lora_" in n) == p.requires_grad for n, p in model.named_parameters())
    for name, p in mer.models.lora_state(model).items():
        if "lora_B" in name:
            p.normal_(0, 0.1)  # as if trained
    sample = {"name": "x", "subtitle": "We won!", "openset": "happy", "video_path": media["video"],
              "audio_path": media["wav"]}
    prompts, inputs = mer.inputs.encode_prompts([sample], tok, "slow", processor)
    ids = torch.tensor(prompts)
    with torch.no_grad():
        lora, plain = model(input_ids=ids, **inputs).logits, base(input_ids=ids, **inputs).logits
        with mer.models.adapters_off(model):
            off = model(input_ids=ids, **inputs).logits
        merged = copy.deepcopy(base)
        merged.load_state_dict(mer.models.merged_state_dict(model))
        folded = merged(input_ids=ids, **inputs).logits
    assert (lora - plain).abs().max() > 1e-3  # the adapters act on a prompt with media
    assert torch.equal(off, plain) and (folded - lora).abs().max() < 1e-5


def _tower_params(path):
    from safetensors.torch import load_file
    weights = load_file(os.path.join(path, "model.safetensors"))
    return {k: v for k, v in weights.items() if k.startswith(("visual.", "audio_tower."))}


def _run(script, *args):
    r = subprocess.run([sys.executable, os.path.join(ROOT, script), *args], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]


def test_sft_and_grpo_steps_move_the_towers(omni_data, tmp_path):
    base = _tower_params(mer.models.tiny_omni_dir())
    _run("train_sft.py", "--model=tiny-omni", f"--train={omni_data}", "--max_samples=0", f"--out_dir={tmp_path / 'sft'}",
         "--batch_size=4", "--max_steps=100", "--lr=3e-3", "--warmup_steps=2", "--precision=fp32", "--fast_fraction=0.25",
         "--save_every=1000", "--threads=1", "--tag_tokens=always")
    sft = _tower_params(tmp_path / "sft" / "last")
    # the tags became tokens of the checkpoint's processor (which encodes the prompts) and its model
    proc = mer.models.load_processor(str(tmp_path / "sft" / "last"))
    tag_ids = proc.tokenizer.convert_tokens_to_ids(list(mer.prompts.TAGS))
    assert len(set(tag_ids)) == 4 and min(tag_ids) >= 1024
    assert mer.models.load_model(str(tmp_path / "sft" / "last"))[0].get_input_embeddings().num_embeddings == 1028
    assert sum(not torch.equal(base[k], sft[k]) for k in base) >= len(base) - 2
    _run("train_grpo.py", f"--init={tmp_path / 'sft' / 'last'}", f"--train={omni_data}", "--skip_samples=0",
         f"--out_dir={tmp_path / 'grpo'}", "--max_steps=1", "--max_new_tokens=24", "--precision=fp32", "--lr=1e-3",
         "--threads=1", "--grad_checkpointing=True")
    rec = next(r for r in map(json.loads, open(tmp_path / "grpo" / "log.jsonl")) if "event" not in r)
    assert rec["zero_std_groups"] < 1 and rec["fast_s"] > 0
    grpo = _tower_params(tmp_path / "grpo" / "last")
    assert sum(not torch.equal(sft[k], grpo[k]) for k in sft) >= len(sft) - 2
    assert mer.models.load_processor(str(tmp_path / "grpo" / "last")) is not None
    # evaluation runs unchanged on the multimodal checkpoint, media in both modes and in the
    # teacher-forced diagnostics
    _run("evaluate.py", f"--ckpt={tmp_path / 'grpo' / 'last'}", f"--splits={omni_data}", f"--out_dir={tmp_path / 'ev'}",
         "--max_new_tokens=24", "--fast_max_new_tokens=8", "--batch_size=2")
    slow = json.load(open(tmp_path / "ev" / "summary.json"))["results"]["omni"]["slow"]
    assert slow["format"] > 0 and slow["n_confidence"] > 0 and slow["scores"]["n"] == 4


def test_predict_one_clip_with_media(media):
    r = subprocess.run([sys.executable, "predict.py", "--ckpt=tiny-omni", "--subtitle=We won!", f"--video={media['video']}",
                        f"--audio={media['wav']}", "--max_new_tokens=4"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "slow (thinking, then the answer):" in r.stdout and "wheel  category" in r.stdout
