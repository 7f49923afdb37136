# The paper's GRPO recipe (Appendix C): the MER-Caption+ samples not used by SFT, 1 epoch,
# lr 2e-6, G = 4, lambda_cali = lambda_fmt = 0.1.
# accelerate launch --config_file configs/zero2.yaml train_grpo.py configs/grpo_paper.py \
#     --init=out/sft_paper/last --train=mercaptionplus:/data/mer2025
# The paper's batch: one completion per GPU x 16 GPUs x accumulation 2 = 32 completions
# = 8 prompt groups per step, 3,262 steps for ~26k prompts. Here a prompt's G completions stay on
# one process (its group statistics are local), so each process takes whole prompts:
# PROMPTS x G x processes x GRAD_ACCUM = 1 x 4 x 16 x 1 = 64 completions (16 prompts) per step,
# and one epoch of the remaining ~26.3k prompts is ~1,645 steps (MAX_STEPS = 0: computed).
OUT_DIR = "out/grpo_paper"
SKIP_SAMPLES = 5000
VARIANT = "mer_r1"
G = 4
PROMPTS = 1
GRAD_ACCUM = 1
EPOCHS = 1
MAX_STEPS = 0
LR = 2e-6
LAMBDA_CALI = 0.1
LAMBDA_FMT = 0.1
BETA = 0.04                 # not given in the paper
MAX_NEW_TOKENS = 512
TEMPERATURE = 1.0
PRECISION = "bf16"
SAVE_EVERY = 100
