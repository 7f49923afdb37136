# SFT that leaves headroom for RL (configs/cpu_rl.py): the same data and schedule shape as the
# default, but a third of the steps, so the answer format is learned and the answers are not yet
# as good as the default SFT's.
#   python train_sft.py configs/cpu_rl_sft.py
OUT_DIR = "out/sft_rl"
MAX_STEPS = 20
WARMUP_STEPS = 3
