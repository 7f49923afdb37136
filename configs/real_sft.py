# The SFT start of the real-data recipe (configs/real_rl.py): the default SFT, unchanged (56 steps on
# our generator's samples, which carry reasons). It teaches the format and a vocabulary of emotion
# words; GoEmotions has labels but no reasons, so the real data reaches the model through GRPO's
# verifiable rewards only, as the paper's recipe intends (SFT on reasons, then RL on labels).
#   python train_sft.py configs/real_sft.py && python train_grpo.py configs/real_rl.py
OUT_DIR = "out/sft"
