"""Prompts and answers in token space: the chat prompt of a sample, slow and fast thinking (they
differ only in the forced assistant prefix), the format tags as tokens, SFT targets, and the
answer words of a completion located in its token ids (for the confidences of Eq. 1, 8, 9)."""
import bisect
import re
import sys
from collections import namedtuple

import torch

import wheel

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


def warn_cut_targets(samples, tokenizer, max_len, mode="slow"):
    """Count the SFT samples whose target encode_sft would cut at `max_len` (text prompts; media
    tokens are not counted) and warn once with the count: a cut target never shows the model the
    end of its answer. Returns the count."""
    def length(s):
        text = prompt_text(s, tokenizer, mode) + sft_target(s, mode)
        return len(tokenizer(text, add_special_tokens=False)["input_ids"]) + 1  # + the end-of-turn token
    cut = [s["name"] for s in samples if length(s) > max_len]
    if cut:
        print(f"warning: {len(cut)} of {len(samples)} SFT targets are cut at --max_len={max_len} (e.g. {cut[0]!r}): "
              f"the model never sees the end of their answers; raise --max_len", file=sys.stderr)
    return len(cut)


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


AnswerWord = namedtuple("AnswerWord", ["word", "token", "fast_token", "space"])
AnswerWord.__doc__ = """One answer word of a completion, located in its token ids: `token` indexes the token
holding its first letter in the completion, `fast_token` the same token in the answer alone (the
ids after `<answer>`, which Eq. 8's fast sequence reuses), `space` whether that token starts
before the letter (a space-prefixed token such as "Ġsad")."""


def answer_words(ids, tokenizer, prefix=""):
    """The words of a completion's last complete `<answer>` block, as wheel.parse_answer gives them,
    each an AnswerWord. `ids` are the completion's token ids after the forced `prefix` (e.g.
    "<think></think><answer>" in fast mode). None when there is no complete answer block or no
    token boundary right after `<answer>` (the fast sequence could not reuse the same ids)."""
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
    for piece in re.finditer("[^" + wheel.SEPARATORS[1:-1] + "]+", m.group(1)):  # as wheel.split_words cuts
        word = wheel.clean_word(piece.group())
        if not word or word in seen:
            continue
        seen.add(word)
        first_char = m.start(1) + piece.start() + re.search(r"\w", piece.group()).start()
        j = bisect.bisect_right(starts, first_char) - 1
        words.append(AnswerWord(word, j, j - answer_start, starts[j] < first_char))
    return words


def fast_answer(completion_ids, tokenizer):
    """Eq. (8): what the teacher-forced fast-mode pass feeds after the fast prompt (which ends in
    `<think></think><answer>`): the SAME answer token ids, copied from the sampled completion (never
    re-tokenised), up to the first token of the last answer word: the confidences are read there
    and no later token can change them. Returns (answer_ids, [AnswerWord]), or None when the
    completion has no usable answer."""
    words = answer_words(completion_ids, tokenizer)
    if not words:
        return None
    start = words[0].token - words[0].fast_token
    return list(completion_ids[start:words[-1].token + 1]), words


def first_tokens(wheels, k, tokenizer, leading_space):
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


def category_tables(tokenizer, wheels, ks=None):
    """V(c) of Eq. (1) for the wheels `ks` (default: all), for answer words with and without a
    leading space: {(wheel index, leading space): {category: first token ids}}. Index it with
    (k, AnswerWord.space)."""
    ks = range(len(wheels.level1)) if ks is None else ks
    return {(k, space): first_tokens(wheels, k, tokenizer, space) for k in ks for space in (False, True)}


def table_token_ids(tables):
    """Every token id that Eq. (1) reads through `tables` (category_tables), sorted: the ids whose
    log-probs decoding keeps for the diagnostics."""
    return sorted({i for table in tables.values() for ids in table.values() for i in ids})
