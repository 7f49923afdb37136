"""Answers for evaluation and predict.py: greedy completions in slow or fast mode through the engine's
sampler (stopping at `</answer>`), the log-probs at the model's own answer words read while decoding
(Section 3's confidences), and the paper's LLM sentiment judge. Every limit is an argument."""
import re

import torch
from tqdm import tqdm

import rewards
from mer import engine
from mer.inputs import encode_prompts, left_pad
from mer.prompts import PREFIX, answer_words, prompt_text

JUDGE_PROMPT = ("Please assume the role of an expert in emotions. We provide a set of emotion words describing a "
                "character. Please choose the most likely sentiment from the candidates: [positive, negative, "
                "neutral].\nEmotion words: {words}\nAnswer with one word.")


def generate(model, tokenizer, samples, mode, max_new_tokens, batch_size, autocast, processor=None,
             diagnostics=None, desc=""):
    """Greedy completions after the forced prefix of `mode`, batched by prompt length, each row
    ending at EOS or `</answer>` (a model that keeps talking after its answer costs time, not
    score). Returns, in sample order, (prompt_ids, completion_ids, teacher) with the completion
    cut after its first EOS and `teacher` (see answer_logprobs) read at the token ids
    `diagnostics` (None: no diagnostics, teacher None)."""
    eos = tokenizer.eos_token_id
    lengths = [len(prompt_text(s, tokenizer, mode)) for s in samples]
    order = sorted(range(len(samples)), key=lambda i: lengths[i])
    keep_ids = None if diagnostics is None else torch.tensor(diagnostics, dtype=torch.long, device=model.device)
    out = [None] * len(samples)
    for b in tqdm(range(0, len(order), batch_size), desc=desc, leave=False):
        idx = order[b:b + batch_size]
        prompts, media = encode_prompts([samples[i] for i in idx], tokenizer, mode, processor)
        media = {k: v.to(model.device) for k, v in media.items()}
        ids, mask = left_pad(prompts, eos, model.device)
        with torch.no_grad(), autocast():
            completion = engine.sample(model, ids, mask, media, 1, max_new_tokens, temperature=0, eos=eos,
                                       stop_string="</answer>", tokenizer=tokenizer, keep_ids=keep_ids)
        if keep_ids is not None:
            completion, kept = completion
        n = rewards.completion_mask(completion, eos).sum(1)
        for row, i in enumerate(idx):
            c = completion[row, :int(n[row])].tolist()
            teacher = None if keep_ids is None else answer_logprobs(c, kept[row], keep_ids, tokenizer, mode)
            out[i] = (prompts[row], c, teacher)
    return out


def answer_logprobs(completion, kept, keep_ids, tokenizer, mode):
    """(answer words [AnswerWord], log-probs [n_words, vocabulary]) of one greedy completion, the
    next-token log-probs at the first token of each answer word: `kept` [T, K] holds them at the
    ids `keep_ids` for every completion position (engine.sample), the rest of the row is -inf, so
    Eq. (1) over ids among `keep_ids` reads the model's own values. None when the answer does not
    parse. Decoding computed these logits already: the numbers of a teacher-forced pass over prompt
    + completion, up to rounding (another batch and order of sums; in bf16 visibly so)."""
    words = answer_words(completion, tokenizer, PREFIX[mode])
    if not words:
        return None
    vocab = max(len(tokenizer), int(keep_ids.max()) + 1)
    lp = torch.full((len(words), vocab), -float("inf"))
    lp[:, keep_ids.cpu()] = kept[[w.token for w in words]].cpu()
    return words, lp


def completion_texts(tokenizer, completions, mode):
    """The whole assistant turn of each completion: the forced prefix of `mode`, then its text."""
    return [PREFIX[mode] + tokenizer.decode(c, skip_special_tokens=True) for c in completions]


def judge_sentiment(judge, tokenizer, word_lists, batch_size=16):
    """The paper's LLM sentiment mapping (Appendix B.1): 1 positive, -1 negative, 0 neutral/other."""
    eos = tokenizer.eos_token_id
    out = []
    for b in range(0, len(word_lists), batch_size):
        chats = [[{"role": "user", "content": JUDGE_PROMPT.format(words=", ".join(w) or "none")}]
                 for w in word_lists[b:b + batch_size]]
        rows = [tokenizer.apply_chat_template(c, tokenize=True, add_generation_prompt=True) for c in chats]
        rows = [r["input_ids"] if isinstance(r, dict) or hasattr(r, "keys") else r for r in rows]
        ids, mask = left_pad(rows, eos, judge.device)
        with torch.no_grad():
            replies = engine.sample(judge, ids, mask, None, 1, 8, temperature=0, eos=eos)
        out += [parse_sentiment(tokenizer.decode(r, skip_special_tokens=True)) for r in replies]
    return out


def parse_sentiment(text):
    """The first of positive / negative / neutral in a judge's reply: 1, -1 or 0 (0 when none)."""
    m = re.search(r"positive|negative|neutral", text.lower())
    return {"positive": 1, "negative": -1, "neutral": 0}[m.group()] if m else 0
