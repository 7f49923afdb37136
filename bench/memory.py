"""Memory of one GRPO update at Qwen2.5-0.5B's shape (hidden 896, 24 layers, vocabulary 151,936,
randomly initialised, fp32 on the CPU), by log-prob path:

  full     [rows, T, vocabulary] logits, then log_softmax (the path before chunking)
  chunked  the LM head CHUNK positions at a time, each chunk checkpointed (train_grpo.py's path)
  checkpointed  chunked + gradient checkpointing of every layer (GRAD_CHECKPOINTING = True)
  lora     chunked + rank-8 adapters (LORA_R = 8): no reference copy, AdamW for the adapters only

One update = train_grpo.py's passes with fixed completions (no sampling): the policy's forward
over 2 prompts x G = 4 completions of T tokens (each prompt run once, its KV cache shared by its
G rows), the reference's forward, Eq. (3) with beta 0.04, the backward and an AdamW step. Each
(path, T) runs in its own process: a warm-up update at T = 8 allocates the optimizer state, then
the peak is reset (/proc/self/clear_refs) and one update at T is measured. "static" is the
resident memory before it (policy, reference, AdamW moments), "update" what the update adds at
its peak.

    python bench/memory.py                              # T = 128, 256, 512, every path
    python bench/memory.py --lengths=128 --paths=chunked --threads=1
    python bench/memory.py --device=cuda --bf16=1    # on a GPU: torch.cuda.max_memory_allocated, bf16 autocast

On a GPU, "static" and "update" are the allocator's figures (memory_allocated before the update,
max_memory_allocated during it minus that), not the process's resident memory.
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
PATHS = args.get("paths", "full,chunked,checkpointed,lora").split(",")
THREADS, CHUNK = int(args.get("threads", 0)), int(args.get("chunk", 1024))
DEVICE, BF16 = args.get("device", "cpu"), bool(int(args.get("bf16", 0)))
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
    import mer.engine, mer.models
    import rewards
    if THREADS:
        torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    with torch.device(DEVICE):  # initialised where they run: much faster on a GPU
        policy = Qwen2ForCausalLM(Qwen2Config(**SHAPE))
        ref = None if path == "lora" else Qwen2ForCausalLM(Qwen2Config(**SHAPE)).eval().requires_grad_(False)
    if path == "checkpointed":
        mer.models.enable_grad_checkpointing(policy)
    if path == "lora":
        mer.models.add_lora(policy, 8)
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-6)
    ids = torch.randint(100, 150000, (PROMPTS, PROMPT_LEN), device=DEVICE)
    mask = torch.ones_like(ids)
    gpu = DEVICE.startswith("cuda")

    def logprobs(model, completion, c_mask):
        with torch.autocast(torch.device(DEVICE).type, dtype=torch.bfloat16, enabled=BF16):
            if path == "full":
                logits = mer.engine.continuation_logits(model, ids, mask, {}, completion, c_mask, G).float()
                return rewards.token_logprobs(logits, completion)
            with mer.engine.lm_head_off(model) as head:
                hidden = mer.engine.continuation_logits(model, ids, mask, {}, completion, c_mask, G)
            return rewards.chunked_logprobs(hidden, head, completion, 1.0, CHUNK)

    def update(t):
        completion = torch.randint(100, 150000, (PROMPTS * G, t), device=DEVICE)
        c_mask = torch.ones_like(completion)
        logp = logprobs(policy, completion, c_mask)
        with torch.no_grad(), mer.models.adapters_off(policy):
            ref_logp = logprobs(policy if ref is None else ref, completion, c_mask)
        loss, _ = rewards.grpo_loss(logp, logp.detach(), torch.randn(PROMPTS * G, device=DEVICE), c_mask, ref_logp,
                                    beta=0.04)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    update(8)
    if gpu:
        torch.cuda.synchronize()
        static = torch.cuda.memory_allocated() / 1024
        torch.cuda.reset_peak_memory_stats()
    else:
        static = kb("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # VmHWM := VmRSS
    t0 = time.time()
    update(length)
    if gpu:
        torch.cuda.synchronize()
    seconds = time.time() - t0
    peak = torch.cuda.max_memory_allocated() / 1024 if gpu else kb("VmHWM")
    print(json.dumps({"path": path, "T": length, "static_mb": static / 1024, "update_mb": (peak - static) / 1024,
                      "peak_mb": peak / 1024, "seconds": round(seconds, 2)}), flush=True)


def main():
    rows = []
    for length in LENGTHS:
        for path in PATHS:
            r = subprocess.run([sys.executable, __file__, f"--one={path},{length}", f"--threads={THREADS}",
                                f"--chunk={CHUNK}", f"--device={DEVICE}", f"--bf16={int(BF16)}"],
                               capture_output=True, text=True, cwd=ROOT)
            if r.returncode != 0:
                raise SystemExit(r.stderr[-3000:])
            rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    print(f"\nQwen2.5-0.5B shape (random), {'bf16 autocast' if BF16 else 'fp32'}, {DEVICE}, {PROMPTS} prompts x G = {G}, "
          f"prompt {PROMPT_LEN} tokens, "
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
