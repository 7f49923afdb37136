"""Answers for evaluation and predict.py: greedy completions in slow or fast mode through the engine's
sampler (stopping at `</answer>`), the teacher-forced log-probs at the model's own answer words
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
             diagnostics=False, desc=""):
    """Greedy completions after the forced prefix of `mode`, batched by prompt length, each row
    ending at EOS or `</answer>` (a model that keeps talking after its answer costs time, not
    score). Returns, in sample order, (prompt_ids, completion_ids, teacher) with the completion
    cut after its first EOS and `teacher` the word_logprobs result (None without `diagnostics`)."""
    eos = tokenizer.eos_token_id
    lengths = [len(prompt_text(s, tokenizer, mode)) for s in samples]
    order = sorted(range(len(samples)), key=lambda i: lengths[i])
    out = [None] * len(samples)
    for b in tqdm(range(0, len(order), batch_size), desc=desc, leave=False):
        idx = order[b:b + batch_size]
        prompts, media = encode_prompts([samples[i] for i in idx], tokenizer, mode, processor)
        media = {k: v.to(model.device) for k, v in media.items()}
        ids, mask = left_pad(prompts, eos, model.device)
        with torch.no_grad(), autocast():
            completion = engine.sample(model, ids, mask, media, 1, max_new_tokens, temperature=0, eos=eos,
                                       stop_string="</answer>", tokenizer=tokenizer)
        n = rewards.completion_mask(completion, eos).sum(1)
        completions = [completion[row, :int(n[row])].tolist() for row in range(len(idx))]
        teacher = (word_logprobs(model, tokenizer, prompts, completions, mode, media, autocast) if diagnostics
                   else [None] * len(idx))
        for row, i in enumerate(idx):
            out[i] = (prompts[row], completions[row], teacher[row])
    return out


def completion_texts(tokenizer, completions, mode):
    """The whole assistant turn of each completion: the forced prefix of `mode`, then its text."""
    return [PREFIX[mode] + tokenizer.decode(c, skip_special_tokens=True) for c in completions]


def word_logprobs(model, tokenizer, prompts, completions, mode, media, autocast):
    """Teacher-forced pass over the model's own answers (one batch, with its media): for each
    completion, its answer words [AnswerWord] and the log-probs [n_words, vocab] at their first
    tokens, or None when the answer does not parse."""
    found = [answer_words(c, tokenizer, PREFIX[mode]) for c in completions]
    if not any(found):
        return [None] * len(completions)
    ids, mask = left_pad([p + c for p, c in zip(prompts, completions)], tokenizer.eos_token_id, model.device)
    keep = max(len(c) for c in completions) + 1
    with torch.no_grad(), autocast():
        logits = engine.forward_logits(model, ids, mask, media, keep).float()
    out = []
    for row, (words, c) in enumerate(zip(found, completions)):
        if not words:
            out.append(None)
            continue
        # completion token j is predicted at kept column keep - len(c) + j - 1
        cols = [keep - len(c) + w.token - 1 for w in words]
        out.append((words, torch.log_softmax(logits[row, cols], -1)))
    return out


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
