"""TRL's GRPOTrainer at the configuration of our GRPO step, for bench/bench_grpo.py.

    python bench/trl_grpo.py --model=DIR --steps=6 --out=trl.jsonl [--threads=N] [--bf16]

Same prompts (the bundled samples, as plain-text prompts that end in the forced `<think>`),
G = 4, 2 prompts per step, a fixed completion length (EOS suppressed), beta > 0 with a
reference model, one update per batch, per-sequence loss averaging ("grpo"), fp32 on the CPU.
Writes one JSON line per step: step_s, generate_s, cpu_s.
"""
import json
import os
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the training scripts, before torch loads
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

import mer.data, mer.prompts  # noqa: E402
import rewards  # noqa: E402
import wheel  # noqa: E402

args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if "=" in a)
MODEL, STEPS, OUT = args["model"], int(args.get("steps", 6)), args["out"]
TOKENS, G, PROMPTS = int(args.get("tokens", 64)), 4, 2
BF16 = "--bf16" in sys.argv
if int(args.get("threads", 0)):
    torch.set_num_threads(int(args["threads"]))

tokenizer = AutoTokenizer.from_pretrained(MODEL)
samples = mer.data.load_split("train")[:PROMPTS]
dataset = Dataset.from_list([{"prompt": mer.prompts.prompt_text(s, tokenizer, "slow"), "openset": s["openset"],
                              "subtitle": s["subtitle"]} for s in samples])
WHEELS = wheel.load_wheels()


def reward_f1_format(prompts, completions, openset, subtitle, **kw):
    """The baseline reward of our loop (R_F + R_fmt), computed by the same functions."""
    out = []
    for completion, labels, sub in zip(completions, openset, subtitle):
        text = mer.prompts.PREFIX["slow"] + completion
        words = wheel.parse_answer(text)
        gt = [wheel.map_words(wheel.split_words(labels), WHEELS, k) for k in range(5)]
        r_f = rewards.wheel_rewards([wheel.map_words(words, WHEELS, k) for k in range(5)], gt)[2]
        out.append(r_f + rewards.format_reward(text, words, sub))
    return out


config = GRPOConfig(
    output_dir=os.path.join(os.path.dirname(OUT), "trl_out"), per_device_train_batch_size=PROMPTS * G,
    num_generations=G, max_completion_length=TOKENS, generation_kwargs={"min_new_tokens": TOKENS},
    temperature=1.0, top_p=1.0, beta=0.04, epsilon=0.2, loss_type="grpo", num_iterations=1,
    learning_rate=1e-6, max_steps=STEPS, logging_steps=1, save_strategy="no", report_to=[], use_cpu=not
    torch.cuda.is_available(), bf16=BF16, fp16=False, gradient_accumulation_steps=1, seed=0,
    dataloader_num_workers=0, disable_tqdm=True, max_grad_norm=1.0, shuffle_dataset=False)
model = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32)
trainer = GRPOTrainer(model=model, reward_funcs=reward_f1_format, args=config, train_dataset=dataset,
                      processing_class=tokenizer)

timing = {"generate_s": 0.0}
inner_generate = trainer._generate


def timed_generate(*a, **k):
    t0 = time.time()
    out = inner_generate(*a, **k)
    timing["generate_s"] += time.time() - t0
    return out


trainer._generate = timed_generate
log = open(OUT, "w")


class StepTimer(TrainerCallback):
    def on_step_begin(self, *a, **k):
        timing.update(generate_s=0.0, t0=time.time(), c0=time.process_time())

    def on_step_end(self, args, state, control, **k):
        log.write(json.dumps({"step": state.global_step, "step_s": time.time() - timing["t0"],
                              "generate_s": timing["generate_s"], "cpu_s": time.process_time() - timing["c0"]}) + "\n")
        log.flush()


trainer.add_callback(StepTimer())
trainer.train()
