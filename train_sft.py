"""Supervised fine-tuning: teach the `<think>{reason}</think><answer>{openset}</answer>` format.

One device (CPU default: SmolLM2-135M on the bundled train split, ~12 minutes on 2 cores):
    python train_sft.py
    python train_sft.py --max_steps=20 --lr=3e-5
The paper's recipe (5k samples, 2 epochs, lr 2e-5) on GPUs:
    accelerate launch train_sft.py configs/sft_paper.py --model=Qwen/Qwen2.5-Omni-7B --train=mercaptionplus:/data/mer
A run resumes from OUT_DIR/last when it exists (RESUME=True); Ctrl-C saves before exiting.
"""
import json
import os
import random
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: idle threads sleep, a busy CPU costs 1.5x not 2.8x

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from mer import checkpoints, data, inputs, models, prompts, run  # noqa: E402
import wheel  # noqa: E402

# I/O
OUT_DIR = "out/sft"
SAVE_EVERY = 25           # steps between checkpoints (and one at the end)
RESUME = True             # continue from OUT_DIR/last when it exists
STOP_AFTER = 0            # end this run after N steps (0: run to the end); a later run resumes
# data
TRAIN = "train"           # a bundled split, a .jsonl file, or mercaptionplus:DIR
SKIP_SAMPLES = 0          # drop the first N of a fixed shuffle (GRPO: the samples SFT used)
MAX_SAMPLES = 1000        # then keep N of them (0: all); GRPO skips these
SKIP_MISSING_MEDIA = False
LOG_WITH = ""             # also log to accelerate trackers: tensorboard, wandb, ... (comma-separated; empty: none)
WHEELS = ""               # wheels for the report of unmapped label words on real data (empty: ours)
MAX_LEN = 384             # tokens per sample (prompt + target)
MAX_PROMPT_TOKENS = 1024  # a longer text prompt gets its subtitle cut, with a warning (0: no limit)
FAST_FRACTION = 0.2       # share of samples trained in fast mode (answer right after <think></think><answer>)
TAG_TOKENS = "auto"       # make <think>, </think>, <answer>, </answer> single tokens: auto (when an answer
                          # would not start on a token boundary, e.g. Qwen2's tokenizer) | always | never
# model
MODEL = "smollm2"         # smollm2 | tiny | tiny-omni | a from_pretrained name or folder (Qwen/Qwen2.5-Omni-7B)
# optimizer
EPOCHS = 1
MAX_STEPS = 56            # optimizer steps (0: EPOCHS over the data)
BATCH_SIZE = 8            # samples per micro-batch and process
GRAD_ACCUM = 1            # micro-batches per optimizer step
LR = 5e-5
WARMUP_STEPS = 5
MIN_LR_RATIO = 0.1
WEIGHT_DECAY = 0.0
GRAD_CLIP = 1.0
# system
PRECISION = "auto"        # auto (bf16 autocast on GPUs and bf16-capable CPUs, else fp32) | bf16 | fp32
GRAD_CHECKPOINTING = False  # recompute each layer in the backward: less activation memory, ~1/3 more compute
THREADS = 0               # CPU threads (0: torch's default, one per physical core)
SEED = 0

run.configure(globals())
run.check_settings([
    (min(BATCH_SIZE, GRAD_ACCUM, MAX_LEN) >= 1, "--batch_size, --grad_accum and --max_len must be >= 1"),
    (LR >= 0 and GRAD_CLIP >= 0, "--lr and --grad_clip must be >= 0 (grad_clip 0: no clipping)"),
    (MAX_SAMPLES >= 0 and SKIP_SAMPLES >= 0 and MAX_STEPS >= 0, "--max_samples, --skip_samples, --max_steps must be >= 0"),
    (0 <= FAST_FRACTION <= 1, f"--fast_fraction={FAST_FRACTION}: a share between 0 and 1"),
    (PRECISION in ("auto", "bf16", "fp32"), f"--precision={PRECISION!r}: choose auto, bf16 or fp32"),
    *run.training_checks(LR, SAVE_EVERY, STOP_AFTER, WARMUP_STEPS, MIN_LR_RATIO, THREADS, MAX_STEPS, EPOCHS),
])
run.check_writable(OUT_DIR)
log_with = run.trackers(LOG_WITH)
settings = {k: v for k, v in globals().items() if k.isupper()}  # saved with each checkpoint, compared on resume

# ---------------------------------------------------------------------------------------

if THREADS:
    torch.set_num_threads(THREADS)
accelerator = run.make_accelerator(GRAD_ACCUM, log_with, OUT_DIR)
engine_info = run.check_engine(accelerator, GRAD_ACCUM, grad_clip=GRAD_CLIP, micro_batch=BATCH_SIZE)  # what ran
device, master = accelerator.device, accelerator.is_main_process
bf16 = run.use_bf16(PRECISION)
torch.manual_seed(SEED)

samples = data.load_samples(TRAIN, SKIP_MISSING_MEDIA, need=("openset",))
samples = data.select(samples, SKIP_SAMPLES, MAX_SAMPLES)
wheels = wheel.load_wheels(WHEELS or None)
unmapped = data.report_unmapped(TRAIN, samples, wheels) if master else None
if not samples:
    raise SystemExit(f"{TRAIN}: no samples left after skip_samples={SKIP_SAMPLES}")
missing = [s["name"] for s in samples if not s.get("reason") and FAST_FRACTION < 1]
if missing:
    raise SystemExit(f"{TRAIN}: {len(missing)} samples have no 'reason' (the SFT target), e.g. {missing[0]!r}")
per_step = BATCH_SIZE * GRAD_ACCUM * accelerator.num_processes
total_steps = MAX_STEPS or EPOCHS * len(samples) // per_step

if master:  # claim the folder before minutes of loading; --model is verified like a resumed checkpoint
    run.take_lock(OUT_DIR)
    checkpoints.verify_model(MODEL)
ckpt, state = checkpoints.resume_point(accelerator, OUT_DIR, RESUME, settings, per_step)
model, tokenizer = models.load_model(ckpt or MODEL)
samples = prompts.fit_prompts(samples, tokenizer, MAX_PROMPT_TOKENS)
if master:
    prompts.warn_cut_targets(samples, tokenizer, MAX_LEN, "fast" if FAST_FRACTION == 1 else "slow")
processor = models.load_processor(ckpt or MODEL)  # None for text-only models
if TAG_TOKENS not in ("auto", "always", "never"):
    raise SystemExit(f"--tag_tokens={TAG_TOKENS!r}: choose auto, always or never")
tags = TAG_TOKENS == "always" or (TAG_TOKENS == "auto" and prompts.answer_needs_tag_tokens(tokenizer, wheels.vocab))
if tags and prompts.add_tag_tokens(model, tokenizer) and processor is not None:
    processor.tokenizer = tokenizer  # prompts go through the processor's tokenizer, saved with it
optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
step = state["step"] if ckpt else 0
if ckpt:
    checkpoints.set_rng_state(state["rng"])
if GRAD_CHECKPOINTING:
    models.enable_grad_checkpointing(model)
model, optimizer = accelerator.prepare(model, optimizer)
if ckpt:  # after prepare: under DeepSpeed each process takes its own ZeRO partition (checkpoints.optimizer_state)
    optimizer.load_state_dict(state["optimizer"])


def batch_at(position):
    """This process's (sample, mode) pairs of the global batch at data position `position`; the
    mode is a fixed draw per position, so a resumed run sees the same batches."""
    return [(s, "fast" if random.Random(p).random() < FAST_FRACTION else "slow")
            for p, s in data.batch_at(samples, position, per_step, SEED, accelerator.process_index,
                                     accelerator.num_processes)]


def collate(batch):
    """Right-padded input_ids / attention_mask / labels (-100 on the prompt and on padding), and
    the media tensors of a multimodal model ({} for text)."""
    prompt_ids, media = inputs.encode_prompts([s for s, _ in batch], tokenizer, [m for _, m in batch], processor)
    encoded = [prompts.encode_sft(p, s, tokenizer, mode, MAX_LEN) for p, (s, mode) in zip(prompt_ids, batch)]
    width = max(len(ids) for ids, _ in encoded)
    pad = tokenizer.pad_token_id
    ids = torch.tensor([i + [pad] * (width - len(i)) for i, _ in encoded])
    mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i, _ in encoded])
    labels = torch.tensor([l + [-100] * (width - len(l)) for _, l in encoded])
    return ids.to(device), mask.to(device), labels.to(device), {k: v.to(device) for k, v in media.items()}


def save():
    optimizer_state = checkpoints.optimizer_state(accelerator, optimizer)  # every process: ZeRO's partitions
    if master:
        checkpoints.save_checkpoint(os.path.join(OUT_DIR, "last"), accelerator.unwrap_model(model), tokenizer,
                            {"optimizer": optimizer_state, "rng": checkpoints.rng_state(), "step": step,
                             "position": step * per_step, "config": settings},
                            processor, last=globals().get("rec"))
    accelerator.wait_for_everyone()


os.makedirs(OUT_DIR, exist_ok=True)
accelerator.init_trackers("tracker", config={k: str(v) for k, v in settings.items()})
log = run.open_log(accelerator, OUT_DIR, step, engine_info)
if unmapped is not None:
    log.write(json.dumps({"event": "data", "train": TRAIN, "unmapped_label_words": unmapped}) + "\n")
bar = tqdm(total=total_steps, initial=step, desc="sft", disable=not master)
if total_steps < 1:
    raise SystemExit(f"{TRAIN}: {len(samples)} samples make no full step of {per_step}; set --max_steps or use more data")
stop_at = min(total_steps, step + STOP_AFTER) if STOP_AFTER else total_steps
model.train()
interrupted = run.interrupt_flag(OUT_DIR)
while step < stop_at:
    t0 = time.time()
    lr = run.lr_at(step, LR, WARMUP_STEPS, total_steps, MIN_LR_RATIO)
    for group in optimizer.param_groups:
        group["lr"] = lr
    batch = batch_at(step * per_step)
    loss_sum, n_tokens = 0.0, 0
    for micro in range(GRAD_ACCUM):
        ids, mask, labels, media = collate(batch[micro * BATCH_SIZE:(micro + 1) * BATCH_SIZE])
        # accumulate(): no gradient sync and no optimizer step until the last micro-batch
        with accelerator.accumulate(model):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = model(input_ids=ids, attention_mask=mask, labels=labels, **media).loss
            run.check_loss(accelerator, loss, step + 1, OUT_DIR)
            accelerator.backward(loss)  # divides by GRAD_ACCUM
            if accelerator.sync_gradients:
                grad_norm = run.clip_and_check(accelerator, model.parameters(), loss, GRAD_CLIP, step + 1, OUT_DIR)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        loss_sum += loss.item() / GRAD_ACCUM
        n_tokens += int(mask.sum())
    step += 1
    loss_avg = accelerator.reduce(torch.tensor(loss_sum, device=device), "mean").item()
    if master:
        rec = {"step": step, "loss": loss_avg, "lr": lr, "grad_norm": None if grad_norm is None else float(grad_norm),
               "tokens": n_tokens, "step_s": round(time.time() - t0, 3)}
        log.write(json.dumps(rec) + "\n")
        log.flush()
        accelerator.log({k: v for k, v in rec.items() if isinstance(v, (int, float))}, step=step)
        bar.set_postfix(loss=f"{loss_avg:.3f}", lr=f"{lr:.1e}")
        bar.update(1)
    stop_now = run.stop_requested(accelerator, interrupted)
    if step % SAVE_EVERY == 0 or step == stop_at or stop_now:
        save()
    if stop_now:  # every rank saw the request at the same step boundary
        run.stop(accelerator, log, step, OUT_DIR)
bar.close()
run.finish(accelerator, model, log, step, engine_info, OUT_DIR)
