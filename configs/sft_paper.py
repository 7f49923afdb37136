# The paper's SFT recipe (Appendix C): 5k random MER-Caption+ samples, 2 epochs, lr 2e-5.
# accelerate launch --config_file configs/ddp.yaml train_sft.py configs/sft_paper.py \
#     --model=Qwen/Qwen2.5-Omni-7B --train=mercaptionplus:/data/mer2025
OUT_DIR = "out/sft_paper"
MAX_SAMPLES = 5000          # GRPO then uses the rest (skip_samples=5000)
SKIP_SAMPLES = 0
EPOCHS = 2
MAX_STEPS = 0               # EPOCHS over the data
BATCH_SIZE = 2              # per GPU; not given in the paper (16 GPUs x 2 = 32 samples per step)
GRAD_ACCUM = 1
LR = 2e-5
WARMUP_STEPS = 10
MAX_LEN = 2048
FAST_FRACTION = 0.0         # the paper fine-tunes on think-then-answer targets only
PRECISION = "bf16"
SAVE_EVERY = 50
