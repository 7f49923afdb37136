"""Ask a trained model about one clip: the slow answer with its thinking, the fast answer, the
level-1 categories their words map to in every wheel, and the Eq.-1 confidence of each of those
categories in both modes (the paper's slow-fast picture for one clip).

    python predict.py --ckpt=out/grpo/last --subtitle="You did this behind my back?" \
        --video_text="She frowns and crosses her arms." --audio_text="A sharp, raised voice."
    python predict.py --ckpt=out/grpo/last --sample=data/test_fine.jsonl:test_fine_00003
    python predict.py --sample=test_fine:test_fine_00003             # a bundled split by name
    python predict.py --ckpt=Qwen/Qwen2.5-Omni-7B --subtitle="..." --video=clip.mp4 --audio=clip.wav
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: idle threads sleep, a busy CPU costs 1.5x not 2.8x

import torch  # noqa: E402

import evaluate  # noqa: E402  (Eq. 1's confidences of an answer)
import wheel  # noqa: E402
from mer import checkpoints, data, generation, inputs, models, prompts, run  # noqa: E402

CKPT = ""            # a checkpoint folder or model name; empty: out/grpo/last, else out/sft/last, else smollm2
SAMPLE = ""          # FILE.jsonl:NAME or SPLIT:NAME: one sample of a data file (its labels are shown too)
SUBTITLE = ""        # or describe the clip here
VIDEO = ""           # a video file (Qwen2.5-Omni checkpoints)
AUDIO = ""           # an audio file (Qwen2.5-Omni; default: the video's sound track)
VIDEO_TEXT = ""      # clues as text, for text-only models
AUDIO_TEXT = ""
MAX_NEW_TOKENS = 192      # slow mode
FAST_MAX_NEW_TOKENS = 48  # fast mode, which ends at its answer
WHEELS = ""          # folder of wheels (empty: ours)
PRECISION = "auto"   # auto | bf16 | fp32
THREADS = 0


def clip_sample():
    """The sample to ask about, from --sample or from the clip flags; errors before a model loads."""
    if SAMPLE:
        spec, sep, name = SAMPLE.partition(".jsonl:")  # a sample name may hold ':' itself
        spec, name = (spec + ".jsonl", name) if sep else SAMPLE.partition(":")[::2]
        if not spec or not name:
            raise SystemExit(f"--sample={SAMPLE!r}: write FILE.jsonl:NAME or SPLIT:NAME")
        samples = data.load_samples(spec)
        found = [s for s in samples if s["name"] == name]
        if not found:
            raise SystemExit(f"{spec}: no sample named {name!r} (the first ones: "
                             f"{', '.join(s['name'] for s in samples[:3])})")
        return found[0]
    for flag, path in (("--video", VIDEO), ("--audio", AUDIO)):
        if path and not os.path.isfile(path):
            raise SystemExit(f"{flag}={path}: no such file")
    if not (SUBTITLE or VIDEO or AUDIO or VIDEO_TEXT or AUDIO_TEXT):
        raise SystemExit("nothing to ask about: pass --subtitle (and --video_text/--audio_text, or --video/--audio "
                         "for a Qwen2.5-Omni checkpoint), or --sample=FILE.jsonl:NAME")
    fields = {"subtitle": SUBTITLE, "video": VIDEO_TEXT, "audio": AUDIO_TEXT, "video_path": VIDEO,
              "audio_path": AUDIO}
    return {"name": "clip", **{k: v for k, v in fields.items() if v}}


def answer(model, tokenizer, processor, sample, mode, autocast, wheels):
    """(text after the prefix, answer words, {category: Eq.-1 conf} per wheel or None) of one mode:
    greedy, the log-probs at its answer words read while decoding (generation.generate)."""
    limit = MAX_NEW_TOKENS if mode == "slow" else FAST_MAX_NEW_TOKENS
    tables = prompts.category_tables(tokenizer, wheels)
    [(_, completion, teacher)] = generation.generate(model, tokenizer, [sample], mode, limit, 1, autocast, processor,
                                                     diagnostics=prompts.table_token_ids(tables))
    text = prompts.PREFIX[mode] + tokenizer.decode(completion, skip_special_tokens=True)
    conf = None
    if teacher is not None:
        words, lp = teacher
        conf = [evaluate.answer_category_confidences(lp, [tables[(k, w.space)] for w in words])
                for k in range(len(wheels.level1))]
    return text, wheel.parse_answer(text), conf


if __name__ == "__main__":
    run.configure(globals())
    run.check_settings([(min(MAX_NEW_TOKENS, FAST_MAX_NEW_TOKENS) >= 1, "--max_new_tokens, --fast_max_new_tokens: >= 1"),
                        (PRECISION in ("auto", "bf16", "fp32"), f"--precision={PRECISION!r}: choose auto, bf16 or fp32"),
                        (THREADS >= 0, f"--threads={THREADS}: 0 (torch's default) or more")])
    sample = clip_sample()
    ckpt = checkpoints.find_model(CKPT)
    if THREADS:
        torch.set_num_threads(THREADS)
    processor = models.load_processor(ckpt)
    if inputs.has_media([sample]) and processor is None:
        raise SystemExit(f"{ckpt} is a text-only model: describe the media with --video_text/--audio_text")
    model, tokenizer = models.load_model(ckpt)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    bf16 = run.use_bf16(PRECISION)
    autocast = lambda: torch.autocast(device, dtype=torch.bfloat16, enabled=bf16)  # noqa: E731
    model.to(device).eval()
    wheels = wheel.load_wheels(WHEELS or None)
    out = {mode: answer(model, tokenizer, processor, sample, mode, autocast, wheels) for mode in ("slow", "fast")}

    print(f"{ckpt} on {sample['name']}\n")
    for mode, (text, words, _) in out.items():
        print(f"{mode} ({'thinking, then the answer' if mode == 'slow' else 'answer only'}):\n  {text}")
        print(f"  answer words: {', '.join(words) or '(no parsable answer)'}\n")
    truth = wheel.string_to_list(sample.get("openset", ""))
    if truth:
        print(f"ground truth: {', '.join(truth)}\n")
    print("wheel  category       in slow  in fast  truth  conf slow  conf fast   (Eq. 1: log of the category's "
          "first-token probability at the answer words)")
    fmt = lambda conf, k, c: "-" if conf is None or c not in conf[k] else f"{conf[k][c]:.2f}"  # noqa: E731
    for k in range(len(wheels.level1)):
        cats = {m: wheel.map_words(words, wheels, k) for m, (_, words, _) in out.items()}
        gt = wheel.map_words(truth, wheels, k)
        for c in sorted(cats["slow"] | cats["fast"] | gt):
            marks = ["yes" if c in cats["slow"] else "", "yes" if c in cats["fast"] else "", "yes" if c in gt else ""]
            print(f"{k + 1:<6} {c:<14} {marks[0]:<8} {marks[1]:<8} {marks[2]:<6} {fmt(out['slow'][2], k, c):>9}  "
                  f"{fmt(out['fast'][2], k, c):>9}")
