"""The plumbing the scripts share, one module per concern (the algorithm is in rewards.py and
the scripts; the wheels and answer parsing in wheel.py):

    run          configuration, settings checks, trackers, locks, interrupts, logs, timing
    checkpoints  save, checksums, find, verify, resume, RNG states, the model card
    data         samples: JSONL readers and checks, how a split is named and scored, selection, the
                 endless batch stream
    layouts      the real MER-Caption+ / OV-MERD+ / MER-UniBench layouts, read into samples
    prompts      chat prompts (slow and fast), format tags, SFT targets, answer words in token space
    inputs       samples -> model inputs: token ids and media tensors, video/audio decoding, padding
    models       load by name, the embedded SmolLM2 and tiny test models, LoRA, gradient checkpointing
    engine       forward passes: the prompt KV cache, continuation hidden states, log-probs, the sampler
    generation   greedy answers for evaluation, log-probs at their answer words, the sentiment judge
    plots        training curves and the Section-3 figure (matplotlib, optional)

Arrows point one way: scripts -> mer -> wheel, rewards.
"""
