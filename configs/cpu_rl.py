# GRPO on a 2-core CPU from the headroom SFT of configs/cpu_rl_sft.py: 8 prompts x G = 4
# completions per step, 20 steps, lr 1e-5 (5x the paper's, for 20 steps instead of 3,262).
#   python train_sft.py configs/cpu_rl_sft.py && python train_grpo.py configs/cpu_rl.py
#   python evaluate.py --ckpt=out/grpo_rl/last --splits=test_fine
# experiments/ablation.py runs it for every variant and seed (RESULTS.md there). Slow test_fine
# EW-F1 over the SFT start's 67.78, three seeds: --variant=baseline +6.88 +- 1.16, rd +6.49
# +- 2.16, rd_ad +4.96 +- 4.51, mer_r1 +5.77 +- 3.82 (in rd_ad and mer_r1 one seed's answers
# grew longer; their other two gained 6-10 points).
OUT_DIR = "out/grpo_rl"
INIT = "out/sft_rl/last"
VARIANT = "mer_r1"
# 8 prompts per optimizer step, not 2: with 2, a step's gradient is set by which two samples it
# drew (RESULTS.md). At 8, the held-out curve of mer_r1's three seeds rose 60.9 -> 68.9 by step
# 20. Sampled and backpropagated 2 at a time: the same loss and update as PROMPTS = 8 (every term
# is a mean over equal micro-batches), at a quarter of the activations (PROMPTS = 8 in one
# micro-batch peaked at 11.6 GB RSS: too much for two runs side by side on 24 GB).
PROMPTS = 2
GRAD_ACCUM = 4
G = 4
MAX_STEPS = 20            # the held-out curve of a 60-step probe peaked here (RESULTS.md, "What was tried")
LR = 1e-5
# Without warmup, the first full-size steps from the SFT start knocked the answer format out
# (format 0.13-0.75 at steps 4-10) and the seeds that had not recovered by step 20 lost 10+ points
# (RESULTS.md, "Without warmup"); 5 steps of linear warmup kept a probe at 98-100% format.
WARMUP_STEPS = 5
BETA = 0.04
# Sampling closer to the greedy answer that evaluation reads: at 1.0 the groups of a 135M model
# are mostly tail samples, and what GRPO fixes there the greedy answer never said.
TEMPERATURE = 0.7
MAX_NEW_TOKENS = 128
SAVE_EVERY = 10
VAL_SAMPLES = 100         # held out of the GRPO pool, scored greedily at steps 0, 10, 20: the learning curve
VAL_EVERY = 10
