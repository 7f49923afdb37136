"""Memory of one GRPO update at Qwen2.5-0.5B's shape (hidden 896, 24 layers, vocabulary 151,936,
randomly initialised, fp32 on the CPU), by log-prob path:

  full     [rows, T, vocabulary] logits, then log_softmax (the path before chunking)
  chunked  the LM head CHUNK positions at a time, each chunk checkpointed (train_grpo.py's path)

One update = train_grpo.py's passes with fixed completions (no sampling): the policy's forward
over 2 prompts x G = 4 completions of T tokens (each prompt run once, its KV cache shared by its
G rows), the reference's forward, Eq. (3) with beta 0.04, the backward and an AdamW step. Each
(path, T) runs in its own process: a warm-up update at T = 8 allocates the optimizer state, then
the peak is reset (/proc/self/clear_refs) and one update at T is measured. "static" is the
resident memory before it (policy, reference, AdamW moments), "update" what the update adds at
its peak.

    python bench/memory.py                              # T = 128, 256, 512, both paths
    python bench/memory.py --lengths=128 --paths=chunked --threads=1
"""
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if "=" in a)
LENGTHS = [int(t) for t in args.get("lengths", "128,256,512").split(",")]
PATHS = args.get("paths", "full,chunked").split(",")
THREADS, CHUNK = int(args.get("threads", 0)), int(args.get("chunk", 1024))
PROMPTS, G, PROMPT_LEN = 2, 4, 96
SHAPE = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
             num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True, max_position_embeddings=4096)


def kb(key):
    """A field of /proc/self/status in kB (VmRSS: resident now, VmHWM: peak since the last reset)."""
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])


def one(path, length):
    """Measure one (path, T) in this process; print one JSON line."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM
    import mer
    import rewards
    if THREADS:
        torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    policy = Qwen2ForCausalLM(Qwen2Config(**SHAPE))
    ref = Qwen2ForCausalLM(Qwen2Config(**SHAPE)).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-6)
    ids = torch.randint(100, 150000, (PROMPTS, PROMPT_LEN))
    mask = torch.ones_like(ids)

    def logprobs(model, completion, c_mask):
        if path == "full":
            logits = mer.continuation_logits(model, ids, mask, {}, completion, c_mask, G).float()
            return rewards.token_logprobs(logits, completion)
        with mer.lm_head_off(model) as head:
            hidden = mer.continuation_logits(model, ids, mask, {}, completion, c_mask, G)
        return rewards.chunked_logprobs(hidden, head, completion, 1.0, CHUNK)

    def update(t):
        completion = torch.randint(100, 150000, (PROMPTS * G, t))
        c_mask = torch.ones_like(completion)
        logp = logprobs(policy, completion, c_mask)
        with torch.no_grad():
            ref_logp = logprobs(ref, completion, c_mask)
        loss, _ = rewards.grpo_loss(logp, logp.detach(), torch.randn(PROMPTS * G), c_mask, ref_logp, beta=0.04)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    update(8)
    static = kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS
    t0 = time.time()
    update(length)
    seconds = time.time() - t0
    print(json.dumps({"path": path, "T": length, "static_mb": static / 1024, "update_mb": (kb("VmHWM") - static) / 1024,
                      "peak_mb": kb("VmHWM") / 1024, "seconds": round(seconds, 1)}), flush=True)


def main():
    rows = []
    for length in LENGTHS:
        for path in PATHS:
            r = subprocess.run([sys.executable, __file__, f"--one={path},{length}", f"--threads={THREADS}",
                                f"--chunk={CHUNK}"], capture_output=True, text=True, cwd=ROOT)
            if r.returncode != 0:
                raise SystemExit(r.stderr[-3000:])
            rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    print(f"\nQwen2.5-0.5B shape (random), fp32, {PROMPTS} prompts x G = {G}, prompt {PROMPT_LEN} tokens, "
          f"chunk {CHUNK}, threads {THREADS or 'default'}\n")
    print("| T | path | static MB | update MB | peak MB | update s |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['T']} | {r['path']} | {r['static_mb']:.0f} | {r['update_mb']:.0f} | {r['peak_mb']:.0f} | "
              f"{r['seconds']} |")


if __name__ == "__main__":
    if "one" in args:
        p, t = args["one"].split(",")
        one(p, int(t))
    else:
        main()
