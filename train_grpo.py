"""GRPO with MER-R1: dual-objective advantages and slow-fast confidence calibration.

One device (CPU default: the SFT checkpoint of SmolLM2-135M, 20 steps):
    python train_grpo.py
    python train_grpo.py --variant=baseline --lr=1e-6
Many (see configs/ and README for the paper's 16-GPU recipe):
    accelerate launch --config_file configs/ddp.yaml train_grpo.py configs/grpo_paper.py

One step, in order (each numbered block below is one of these):
  1. sample G completions per prompt (slow mode: the prompt ends with `<think>`)
  2. rewards per completion: format, R_R, R_P, R_F (Eq. 4, 13), averaged over the wheels
  3. log-probs of the sampled tokens: policy (with grad), old policy, reference (beta > 0)
  4. teacher-forced fast-mode pass (Eq. 8): the same answer ids after `<think></think><answer>`;
     confidences (Eq. 1), gaps (Eq. 9), E+/E- (Eq. 10), R+ and R- (Eq. 11)
  5. advantages of VARIANT (Eq. 5, 12 or an ablation) and the loss (Eq. 3); optimizer step
  6. log
"""
import json
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: idle threads sleep, a busy CPU costs 1.5x not 2.8x

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

import evaluate  # noqa: E402  (its metrics score the held-out samples)
import rewards  # noqa: E402
import wheel  # noqa: E402
from mer import checkpoints, data, engine, inputs, models, prompts, run  # noqa: E402

# I/O
OUT_DIR = "out/grpo"
SAVE_EVERY = 10           # steps between checkpoints (and one at the end)
RESUME = True             # continue from OUT_DIR/last when it exists
STOP_AFTER = 0            # end this run after N steps (0: run to the end); a later run resumes
LOG_COMPLETIONS_EVERY = 10  # every N steps, each sampled completion goes to OUT_DIR/completions.jsonl (0: never)
LOG_WITH = ""             # also log to accelerate trackers: tensorboard, wandb, ... (comma-separated; empty: none)
# data
TRAIN = "train"           # a bundled split, a .jsonl file, or mercaptionplus:DIR
SKIP_SAMPLES = 1000       # drop the first N of a fixed shuffle: the samples SFT drew from
MAX_SAMPLES = 0           # then keep N of them (0: all)
SKIP_MISSING_MEDIA = False
MIX_TRAIN = ""            # a second pool (e.g. the bundled train) that supplies half of the prompts
MIX_SKIP_SAMPLES = 1000   # of that pool, drop the first N of the fixed shuffle (those the SFT saw)
VAL_SAMPLES = 0           # > 0: hold out the last N samples; their greedy slow-mode EW-F1 goes to log.jsonl
VAL_EVERY = 10            # steps between those scores (and one before the first step)
VAL_MAX_NEW_TOKENS = 192  # greedy slow-mode limit of those scores (evaluate.py's)
WHEELS = ""               # wheels for the rewards: ours (empty) or a folder of official files
REWARD_WHEELS = "1,2,3,4,5"  # which wheels the rewards average over
# model
INIT = "out/sft/last"     # the policy to start from (and the reference): a checkpoint, smollm2, tiny, tiny-omni
# GRPO
VARIANT = "mer_r1"        # baseline | rd | rd_ad | mer_r1 | a1 | a2 | b1 | b2 (Tables 4-5)
G = 4                     # completions per prompt (the paper's K)
PROMPTS = 2               # prompts per micro-batch and process
GRAD_ACCUM = 1            # micro-batches per optimizer step
UPDATES_PER_BATCH = 1     # optimizer steps on each sampled batch (1: ratio 1, no old-policy forward,
                          # so IMPORTANCE and ETA_HIGH change nothing: tests/test_rewards.py)
MAX_STEPS = 20            # optimizer steps (0: EPOCHS over the data)
EPOCHS = 1
LR = 2e-6
WARMUP_STEPS = 0
MIN_LR_RATIO = 1.0        # 1.0: constant LR after warmup
WEIGHT_DECAY = 0.0
GRAD_CLIP = 1.0
BETA = 0.04               # KL weight (0: no reference model is loaded)
ETA = 0.2                 # clip range of the ratio
LAMBDA_CALI = 0.1
LAMBDA_FMT = 0.1
AGGREGATION = "sequence"  # sequence (mean per completion, then over them) | token | constant (Dr. GRPO)
# options of other GRPO implementations (README, "Options"); the defaults are the paper's
IMPORTANCE = "token"      # token | sequence (GSPO's length-normalised ratio: ETA 0.2 never clips it; GSPO used 3e-4 / 4e-4)
ETA_HIGH = 0.0            # > 0: clip from above at 1 + ETA_HIGH (DAPO's clip-higher); 0: symmetric
SCALE_REWARDS = "group"   # group (GRPO) | batch (Lite-PPO) | none (Dr. GRPO): what divides R - group mean
MASK_TRUNCATED = False    # completions without EOS (cut at MAX_NEW_TOKENS) leave the loss (DAPO)
SKIP_TIED_GROUPS = False  # groups whose advantages are all 0 leave the loss (DAPO's dynamic sampling, no resampling)
# sampling
TEMPERATURE = 1.0
TOP_P = 1.0
MAX_NEW_TOKENS = 128
MAX_PROMPT_TOKENS = 1024  # a longer text prompt gets its subtitle cut, with a warning (0: no limit)
LOGPROB_CHUNK = 1024      # positions per chunk of the LM head in the log-prob passes (bounds the logits' memory)
MIN_NEW_TOKENS = 0        # EOS is suppressed until then (benchmarks set MIN = MAX for a fixed length)
# system
PRECISION = "auto"        # auto (bf16 autocast on GPUs and bf16-capable CPUs, else fp32) | bf16 | fp32
LORA_R = 0                # > 0: only rank-r adapters train (peft); the reference is the policy with them off
GRAD_CHECKPOINTING = False  # recompute each layer in the backward: less activation memory, ~1/3 more compute
THREADS = 0               # CPU threads (0: torch's default, one per physical core)
SEED = 0

run.configure(globals())
run.check_settings([
    (VARIANT in rewards.VARIANTS, f"--variant={VARIANT!r}: choose one of {', '.join(rewards.VARIANTS)}"),
    (G >= 2, f"--g={G}: a group needs at least 2 completions (one alone always has advantage 0)"),
    (min(PROMPTS, GRAD_ACCUM, UPDATES_PER_BATCH, MAX_NEW_TOKENS, LOGPROB_CHUNK, VAL_MAX_NEW_TOKENS) >= 1,
     "--prompts, --grad_accum, --updates_per_batch, --max_new_tokens, --logprob_chunk and --val_max_new_tokens "
     "must be >= 1"),
    (TEMPERATURE > 0, f"--temperature={TEMPERATURE}: GRPO needs sampled completions (greedy groups are identical)"),
    (min(LR, GRAD_CLIP, BETA, LORA_R, ETA) >= 0 and 0 < TOP_P <= 1,
     "--lr, --grad_clip, --beta, --lora_r, --eta must be >= 0 (0: no clipping, no LoRA), --top_p in (0, 1]"),
    *run.training_checks(LR, SAVE_EVERY, STOP_AFTER, WARMUP_STEPS, MIN_LR_RATIO, THREADS, MAX_STEPS, EPOCHS),
    (min(MAX_SAMPLES, SKIP_SAMPLES, MAX_STEPS, VAL_SAMPLES) >= 0 and VAL_EVERY >= 1,
     "--max_samples, --skip_samples, --max_steps, --val_samples must be >= 0, --val_every >= 1"),
    (all(k.strip() in ("1", "2", "3", "4", "5") for k in str(REWARD_WHEELS).split(",")),
     f"--reward_wheels={REWARD_WHEELS!r}: a comma-separated subset of 1,2,3,4,5"),
    (PRECISION in ("auto", "bf16", "fp32"), f"--precision={PRECISION!r}: choose auto, bf16 or fp32"),
    (AGGREGATION in ("sequence", "token", "constant"), f"--aggregation={AGGREGATION!r}: sequence, token or constant"),
    (IMPORTANCE in ("token", "sequence") and SCALE_REWARDS in ("group", "batch", "none") and ETA_HIGH >= 0,
     f"--importance={IMPORTANCE!r} (token | sequence), --scale_rewards={SCALE_REWARDS!r} (group | batch | none), "
     f"--eta_high={ETA_HIGH} (>= 0)"),
])
run.check_writable(OUT_DIR)
log_with = run.trackers(LOG_WITH)
settings = {k: v for k, v in globals().items() if k.isupper()}  # saved with each checkpoint, compared on resume

# ---------------------------------------------------------------------------------------
from accelerate.utils import gather_object  # noqa: E402

if THREADS:
    torch.set_num_threads(THREADS)
accelerator = run.make_accelerator(GRAD_ACCUM, log_with, OUT_DIR)
engine_info = run.check_engine(accelerator, GRAD_ACCUM, grad_clip=GRAD_CLIP, micro_batch=PROMPTS * G,
                               generates=True)  # what ran, for log.jsonl
device, master, rank = accelerator.device, accelerator.is_main_process, accelerator.process_index
bf16 = run.use_bf16(PRECISION)
autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)  # noqa: E731
torch.manual_seed(SEED + rank)  # ranks sample different completions

samples = data.load_samples(TRAIN, SKIP_MISSING_MEDIA, need=("openset",))
samples = data.select(samples, SKIP_SAMPLES, MAX_SAMPLES)
val, samples = samples[len(samples) - VAL_SAMPLES:] if VAL_SAMPLES else [], samples[:len(samples) - VAL_SAMPLES]
if not samples:
    raise SystemExit(f"{TRAIN}: no samples left after skip_samples={SKIP_SAMPLES} and val_samples={VAL_SAMPLES}")
wheels = wheel.load_wheels(WHEELS or None)
unmapped = data.report_unmapped(TRAIN, samples, wheels) if master else None
if MIX_TRAIN:  # the start's own data beside the new: GRPO on the new alone can unlearn the old
    mix = data.select(data.load_samples(MIX_TRAIN, SKIP_MISSING_MEDIA, need=("openset",)), MIX_SKIP_SAMPLES)
    samples = data.interleave(samples, mix)
reward_wheels = [int(k) - 1 for k in str(REWARD_WHEELS).split(",")]
calibrate = VARIANT in rewards.CALIBRATED
per_step = PROMPTS * GRAD_ACCUM * accelerator.num_processes

if master:  # claim the folder before minutes of loading; --init is verified like a resumed checkpoint
    run.take_lock(OUT_DIR)
    checkpoints.verify_model(INIT)
ckpt, state = checkpoints.resume_point(accelerator, OUT_DIR, RESUME, settings, per_step)
if INIT == "out/sft/last" and not os.path.isdir(INIT) and not ckpt:
    raise SystemExit(f"--init={INIT}: no such checkpoint; run `python train_sft.py` first, or pass --init=smollm2")
policy, tokenizer = models.load_model(INIT if LORA_R else ckpt or INIT)  # LoRA resumes INIT + its saved adapters
policy = models.add_lora(policy, LORA_R, ckpt) if LORA_R else policy
samples = prompts.fit_prompts(samples, tokenizer, MAX_PROMPT_TOKENS)
processor = models.load_processor(ckpt or INIT)  # None for text-only models
ref = models.load_model(INIT)[0].to(device).eval().requires_grad_(False) if BETA and not LORA_R else None
optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=LR, weight_decay=WEIGHT_DECAY)
step = state["step"] if ckpt else 0
if ckpt:
    checkpoints.set_rng_state(state["rng"][rank])
if GRAD_CHECKPOINTING:
    models.enable_grad_checkpointing(policy)
policy, optimizer = accelerator.prepare(policy, optimizer)
if ckpt:  # after prepare: under DeepSpeed each process takes its own ZeRO partition (checkpoints.optimizer_state)
    optimizer.load_state_dict(state["optimizer"])
if ref is not None:  # DeepSpeed's bf16 mode makes the policy's parameters bf16 (fp32 masters in ZeRO): the reference follows
    models.cast_parameters(ref, next(policy.parameters()).dtype)
eos = tokenizer.eos_token_id
tokenizer.padding_side = "left"
first_tokens = prompts.category_tables(tokenizer, wheels, reward_wheels)  # V(c) of Eq. (1) per reward wheel


def logprobs(model, ids, mask, media, completion, c_mask):
    """(log pi(completion token) under TEMPERATURE [rows, T], the hidden states behind them, LM head);
    each prompt runs once for its G rows."""
    with autocast():
        return engine.completion_logprobs(model, ids, mask, media, completion, c_mask, G, TEMPERATURE, LOGPROB_CHUNK)


def reference_logprobs(ids, mask, media, completion, c_mask):
    """log pi_ref of the sampled tokens (Eq. 3's KL): the reference, or with LoRA the policy, adapters off."""
    with torch.no_grad(), models.adapters_off(policy):
        return logprobs(policy if ref is None else ref, ids, mask, media, completion, c_mask)[0]


def calibration(gt, fast_ids, fast_mask, media, completions, slow_hidden, head):
    """Step 4 (Eq. 8-11): R+, R-, and whether E+ / E- exist, per completion, from the slow sequence (whose
    hidden states the policy pass computed) and a teacher-forced fast one: the SAME answer ids after
    `<think></think><answer>`, same media. No gradient: these are rewards. No usable answer: neither set."""
    built = [prompts.fast_answer(c, tokenizer) for c in completions]
    out = {k: [0.0] * len(completions) for k in ("cali_pos", "cali_neg", "has_pos", "has_neg")}
    if not any(built):
        return out
    # one row per completion, right-padded (a row without an answer is all padding)
    a_ids, a_mask = inputs.right_pad([b[0] if b else [] for b in built], eos, device)
    with torch.no_grad(), autocast(), engine.lm_head_off(accelerator.unwrap_model(policy)):
        fast_hidden = engine.continuation_logits(accelerator.unwrap_model(policy), fast_ids, fast_mask, media, a_ids,
                                                 a_mask, G)
    for i, b in enumerate(built):
        if not b:
            continue
        words = b[1]
        # fast_hidden[i, a] predicts answer token a; slow_hidden[i, j] predicts completion token j:
        # the full-vocabulary distribution is needed at these few positions only
        with torch.no_grad(), autocast():
            fast_lp = torch.log_softmax(head(fast_hidden[i, [w.fast_token for w in words]]).float(), -1)
            slow_lp = torch.log_softmax(head(slow_hidden[i, [w.token for w in words]].detach()).float(), -1)
        cats = [[wheel.G_w(w.word, wheels, k) for w in words] for k in reward_wheels]
        tables = [[first_tokens[(k, w.space)] for w in words] for k in reward_wheels]
        values = rewards.completion_calibration(slow_lp, fast_lp, [completions[i][w.token] for w in words],
                                                cats, tables, gt[i], word_level=VARIANT == "a1")
        for key, v in zip(out, values):
            out[key][i] = float(v)
    return out


def update(logp, old_logp, adv, c_mask, ref_logp, keep):
    """Eq. (3) on one micro-batch (the completions of `keep`, None: all), its backward and (on the last
    micro-batch) the clipped optimizer step: (loss, its statistics, the gradient norm or None)."""
    loss, s = rewards.grpo_loss(logp, old_logp, adv, c_mask, ref_logp, ETA, BETA, AGGREGATION, MAX_NEW_TOKENS,
                                ETA_HIGH, IMPORTANCE, keep)
    run.check_loss(accelerator, loss, step + 1, OUT_DIR)
    accelerator.backward(loss)  # divides by GRAD_ACCUM
    norm = None
    if accelerator.sync_gradients:
        norm = run.clip_and_check(accelerator, policy.parameters(), loss, GRAD_CLIP, step + 1, OUT_DIR)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss, s, norm


def validate():
    """The held-out curve: unlike a step's rewards, it does not depend on which prompts the step drew."""
    scores = evaluate.validate(accelerator.unwrap_model(policy), tokenizer, val, wheels, autocast,
                               VAL_MAX_NEW_TOKENS, 16, processor)
    log.write(json.dumps({"event": "validation", "step": step, **scores}) + "\n")
    accelerator.log(scores, step=step)


def save():
    states, optimizer_state = gather_object([checkpoints.rng_state()]), checkpoints.optimizer_state(accelerator, optimizer)
    if master:
        checkpoints.save_checkpoint(os.path.join(OUT_DIR, "last"), accelerator.unwrap_model(policy), tokenizer,
                                    {"optimizer": optimizer_state, "rng": states, "step": step,
                                     "position": step * per_step, "config": settings},
                                    processor, last=globals().get("rec"))
    accelerator.wait_for_everyone()


os.makedirs(OUT_DIR, exist_ok=True)
accelerator.init_trackers("tracker", config={k: str(v) for k, v in settings.items()})
log = run.open_log(accelerator, OUT_DIR, step, {**engine_info, "pool": len(samples)})
if unmapped is not None:
    log.write(json.dumps({"event": "data", "train": TRAIN, "unmapped_label_words": unmapped}) + "\n")
total_steps = MAX_STEPS or EPOCHS * len(samples) // per_step
if total_steps < 1:
    raise SystemExit(f"{TRAIN}: {len(samples)} samples make no full step of {per_step}; set --max_steps or use more data")
stop_at = min(total_steps, step + STOP_AFTER) if STOP_AFTER else total_steps
bar = tqdm(total=total_steps, initial=step, desc=f"grpo {VARIANT}", disable=not master)
warned_coverage = False
interrupted = run.interrupt_flag(OUT_DIR)
if val and master and step == 0:
    validate()
while step < stop_at:
    laps = run.Laps("generate_s", "fwd_bwd_s", "fast_s")
    lr = run.lr_at(step, LR, WARMUP_STEPS, total_steps, MIN_LR_RATIO) if WARMUP_STEPS else LR
    for group in optimizer.param_groups:
        group["lr"] = lr
    batch_all = [s for _, s in data.batch_at(samples, step * per_step, per_step, SEED, rank, accelerator.num_processes)]
    stats, kept = [], []
    for micro in range(GRAD_ACCUM):
        batch = batch_all[micro * PROMPTS:(micro + 1) * PROMPTS]
        # 1. sample G completions per prompt, slow mode
        rows = [s for s in batch for _ in range(G)]  # row i is completion i % G of prompt i // G
        slow_ids, media = inputs.encode_prompts(batch, tokenizer, "slow", processor)  # one row per prompt
        fast_ids, _ = inputs.encode_prompts(batch, tokenizer, "fast", processor)  # same media, other prefix
        media = {k: v.to(device) for k, v in media.items()}
        ids, mask = inputs.left_pad(slow_ids, eos, device)
        fast, fast_mask = inputs.left_pad(fast_ids, eos, device)
        with torch.no_grad(), autocast():
            completion = engine.sample(accelerator.unwrap_model(policy), ids, mask, media, G, MAX_NEW_TOKENS,
                                       MIN_NEW_TOKENS, TEMPERATURE, TOP_P, eos)
        c_mask = rewards.completion_mask(completion, eos)
        completions = [row[:int(n)].tolist() for row, n in zip(completion, c_mask.sum(1))]
        texts = [prompts.PREFIX["slow"] + tokenizer.decode(c, skip_special_tokens=True) for c in completions]
        laps.lap("generate_s")

        # 2. rewards: format, R_R, R_P, R_F per completion, on the level-1 categories of each reward wheel
        words = [wheel.parse_answer(t) for t in texts]
        pred = [[wheel.map_words(w, wheels, k) for k in reward_wheels] for w in words]
        gt = [data.label_categories(s, wheels, reward_wheels) for s in rows]
        r = rewards.completion_rewards(texts, words, pred, gt, [s.get("subtitle", "") for s in rows])

        # accumulate(): no gradient sync and no optimizer step until the last micro-batch; the policy
        # forward must sit inside it too. Its one pass gives the old log-probs and the slow hidden states.
        with accelerator.accumulate(policy):
            # 3. log-probs: policy (with grad), old (the same, detached: ratio 1 on a batch's first update), reference
            logp, hidden, head = logprobs(policy, ids, mask, media, completion, c_mask)
            old_logp = logp.detach()
            ref_logp = reference_logprobs(ids, mask, media, completion, c_mask) if BETA else None
            laps.lap("fwd_bwd_s")

            # 4. teacher-forced fast pass -> R+ and R- (Eq. 8-11)
            if calibrate:
                r.update(calibration(gt, fast, fast_mask, media, completions, hidden, head))
            laps.lap("fast_s")

            # 5. advantages within each prompt's group (rows of G), then Eq. (3) and the optimizer step
            grouped = {k: torch.tensor(v, device=device).view(-1, G) for k, v in r.items()}
            adv = rewards.advantages(VARIANT, grouped, LAMBDA_CALI, LAMBDA_FMT, SCALE_REWARDS).flatten()
            keep = rewards.loss_rows(adv.view(-1, G), completion, eos, MASK_TRUNCATED, SKIP_TIED_GROUPS)
            loss, s, grad_norm = update(logp, old_logp, adv, c_mask, ref_logp, keep)
        laps.lap("fwd_bwd_s")
        if UPDATES_PER_BATCH > 1:  # what this micro-batch's later updates reuse (only then: media can be large)
            kept.append((ids, mask, media, completion, c_mask, old_logp, adv, ref_logp, keep))
        if master and LOG_COMPLETIONS_EVERY and (step + 1) % LOG_COMPLETIONS_EVERY == 0:
            run.log_completions(OUT_DIR, accelerator.trackers, step + 1, rows, texts, c_mask, r, adv, micro * PROMPTS, G)
        means = rewards.group_stats(grouped, adv.view(-1, G))
        if master and calibrate and not (means["cali_coverage"] or warned_coverage):
            warned_coverage = run.warn_no_calibration(texts, step + 1)
        stats.append({"loss": loss.item(), **s, **means, "completion_len": c_mask.sum(1).float().mean().item(),
                      "truncated": 1 - (completion == eos).any(1).float().mean().item()})
    for _ in range(UPDATES_PER_BATCH - 1):  # the whole batch again, each micro-batch with its advantages, old log-probs
        for i, (ids, mask, media, completion, c_mask, old_logp, adv, ref_logp, keep) in enumerate(kept):
            with accelerator.accumulate(policy):  # and reference log-probs; the ratio has left 1
                loss, s, grad_norm = update(logprobs(policy, ids, mask, media, completion, c_mask)[0], old_logp, adv,
                                            c_mask, ref_logp, keep)
            stats[i].update(loss=loss.item(), **s)  # the loss and clipping of the batch's last update
            laps.lap("fwd_bwd_s")
    step += 1
    # 6. log (averaged over micro-batches and processes)
    rec = {k: sum(s[k] for s in stats) / len(stats) for k in stats[0]}
    rec = {k: accelerator.reduce(torch.tensor(v, device=device), "mean").item() for k, v in rec.items()}
    if master:
        rec = {"step": step, "lr": lr, "grad_norm": None if grad_norm is None else float(grad_norm), **rec,
               **laps.total()}
        log.write(json.dumps(rec) + "\n")
        log.flush()
        accelerator.log({k: v for k, v in rec.items() if isinstance(v, (int, float))}, step=step)
        bar.set_postfix(R=f"{rec['recall']:.2f}", P=f"{rec['precision']:.2f}", fmt=f"{rec['format']:.2f}",
                        kl=f"{rec['kl']:.1e}")
        bar.update(1)
        if val and (step % VAL_EVERY == 0 or step == stop_at):
            validate()
    stop_now = run.stop_requested(accelerator, interrupted)
    if step % SAVE_EVERY == 0 or step == stop_at or stop_now:
        save()
    if stop_now:  # every rank saw the request at the same step boundary
        run.stop(accelerator, log, step, OUT_DIR)
bar.close()
run.finish(accelerator, policy, log, step, engine_info, OUT_DIR)
