"""Checkpoints: an HF-format folder (`from_pretrained` loads it) plus `trainer_state.pt` (optimizer,
RNG, step, data position), a model card and `checksums.json`, written atomically; finding the one
to resume or evaluate, verifying it, and refusing to resume it with other settings."""
import errno
import hashlib
import json
import os
import shutil
import sys
import time

import torch

from mer import models


def model_card(state, last=None):
    """README.md of a checkpoint folder: what it is, what it started from, where it stands, and
    every setting, so that a shared folder explains itself."""
    cfg = state.get("config", {})
    stage = f"GRPO (variant `{cfg['VARIANT']}`)" if "VARIANT" in cfg else "SFT"
    metrics = ", ".join(f"{k} {v:.4g}" for k, v in (last or {}).items() if isinstance(v, float))
    return "\n".join([
        f"# mer-r1 checkpoint: {stage}", "",
        f"- started from: `{cfg.get('INIT') or cfg.get('MODEL')}`; data: `{cfg.get('TRAIN')}`",
        f"- step {state.get('step')} of {cfg.get('MAX_STEPS') or 'one pass over the data'}",
        f"- last logged step: {metrics or '-'}", "",
        "Load with `transformers.AutoModelForCausalLM.from_pretrained(folder)` (a Qwen2.5-Omni Thinker: "
        "`Qwen2_5OmniThinkerForConditionalGeneration`), or score it with `python evaluate.py --ckpt=folder`. "
        "`trainer_state.pt` holds the optimizer and RNG states a run resumes from.", "",
        "## Settings", "", "```python", *[f"{k} = {v!r}" for k, v in cfg.items()], "```", ""])


def file_checksums(folder):
    """{file name: sha256} of the files of a checkpoint folder (checksums.json itself excepted)."""
    out = {}
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name != "checksums.json" and os.path.isfile(path):
            h = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 24), b""):
                    h.update(block)
            out[name] = h.hexdigest()
    return out


LOADED_ONLY = ("README.md", "trainer_state.pt")  # files a model is loaded without: evaluation and predict skip them


def corrupt_files(folder, skip=()):
    """Files of a checkpoint that are missing or differ from its checksums.json ([] without one;
    the names in `skip` are not checked). A checksums.json that is not the JSON a save wrote is
    an error naming it."""
    path = os.path.join(folder, "checksums.json")
    if not os.path.isfile(path):
        return []
    try:
        saved = json.load(open(path))
        assert isinstance(saved, dict)
    except (ValueError, AssertionError):
        raise SystemExit(f"{path}: damaged (not the JSON a save writes), so nothing in {folder} can be verified; "
                         f"delete it to load the folder unverified")
    now = file_checksums(folder)
    return [name for name, digest in saved.items() if name not in skip and now.get(name) != digest]


def verify_checkpoint(folder, skip=(), retry_s=5.0):
    """Stop with the name of the first corrupt or truncated file of a checkpoint; offer
    `folder.old` (what an interrupted save leaves) when it is intact. A folder without
    checksums.json is loaded with a warning. While a save replaces the folder (`folder.tmp`
    exists) a mismatch is retried for `retry_s`, then called a save in progress, never corrupt."""
    if not os.path.isfile(os.path.join(folder, "checksums.json")):
        if os.path.isdir(folder):
            print(f"warning: {folder} has no checksums.json: its files cannot be verified", file=sys.stderr)
        return
    bad = corrupt_files(folder, skip)
    waited = 0.0
    while bad and os.path.isdir(folder + ".tmp") and waited < retry_s:  # a save is writing: it renames soon
        time.sleep(0.5)
        waited += 0.5
        bad = corrupt_files(folder, skip) if os.path.isfile(os.path.join(folder, "checksums.json")) else bad
    if bad and os.path.isdir(folder + ".tmp"):
        raise SystemExit(f"{folder} is being replaced by a save in progress ({folder}.tmp exists); retry in a moment")
    if bad:
        old = folder + ".old"
        hint = (f"{old} is intact: move it over {folder} to go on from it" if os.path.isdir(old) and not
                corrupt_files(old, skip) else f"delete {folder} (or pass --resume=False) to start again")
        raise SystemExit(f"{os.path.join(folder, bad[0])}: missing or not what was saved (the checksum in "
                         f"checksums.json differs): the checkpoint is corrupt or truncated; {hint}")


def verify_model(name):
    """Verify a model folder given as --init / --model / --ckpt (a name like smollm2 or tiny: nothing
    to verify) on the files a load reads."""
    if os.path.isfile(os.path.join(name, "config.json")):
        verify_checkpoint(name, skip=LOADED_ONLY)


def save_checkpoint(path, model, tokenizer, state, processor=None, last=None):
    """Write an HF-format checkpoint (`from_pretrained` loads it; with the processor of a
    multimodal model) plus `trainer_state.pt` (optimizer, RNG, step, data position), a model
    card (`README.md`, with `last`: the last logged metrics) and `checksums.json` (verified on
    resume) atomically: into `path.tmp`, then renamed over `path`."""
    tmp, old = path + ".tmp", path + ".old"
    bad = [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:  # an update that made weights NaN or inf (an lr of 1e999 passes every loss check) is never saved
        raise SystemExit(f"step {state.get('step')}: weights are not finite after the update ({bad[0]}"
                         f"{f' and {len(bad) - 1} more' if len(bad) > 1 else ''}); nothing saved, "
                         f"{path if os.path.isdir(path) else 'no checkpoint'} kept; lower --lr")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        adapters = models.lora_state(model)
        model.save_pretrained(tmp, state_dict=models.merged_state_dict(model) if adapters else None)
        if adapters:  # resuming needs them apart from the merged weights
            from safetensors.torch import save_file
            save_file({k: v.contiguous() for k, v in adapters.items()}, os.path.join(tmp, "adapters.safetensors"))
        (processor or tokenizer).save_pretrained(tmp)
        torch.save(state, os.path.join(tmp, "trainer_state.pt"))
        with open(os.path.join(tmp, "README.md"), "w") as f:
            f.write(model_card(state, last))
        with open(os.path.join(tmp, "checksums.json"), "w") as f:
            json.dump(file_checksums(tmp), f, indent=1)
    except (OSError, RuntimeError) as e:  # torch.save reports a full disk as a RuntimeError
        shutil.rmtree(tmp, ignore_errors=True)
        if getattr(e, "errno", None) == errno.ENOSPC or "No space left" in str(e) or "failed writing" in str(e):
            raise SystemExit(f"no space left in {os.path.dirname(os.path.abspath(path))}: step {state.get('step')} "
                             f"was not saved ({path if os.path.isdir(path) else 'no checkpoint'} kept as it was); "
                             f"free some space and resume")
        raise
    if os.path.isdir(path):
        kept = sorted(n for n in os.listdir(path) if not os.path.exists(os.path.join(tmp, n)))
        for name in kept:  # a user's notes, an evaluation written inside: a save never deletes what it did not write
            shutil.move(os.path.join(path, name), os.path.join(tmp, name))
        if kept:
            print(f"{path}: kept {', '.join(kept)} (not written by the save, not in checksums.json)", file=sys.stderr)
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)
    for name in ("log.jsonl.old", "completions.jsonl.old"):  # an earlier run's logs (run.truncate_log): its checkpoint is gone now
        if os.path.isfile(os.path.join(os.path.dirname(path), name)):
            os.remove(os.path.join(os.path.dirname(path), name))


def find_checkpoint(path):
    """The checkpoint folder to resume from: `path`, or `path.old` if a save was interrupted;
    verified against its checksums. None when there is neither."""
    for p in (path, path + ".old"):
        if os.path.isfile(os.path.join(p, "trainer_state.pt")):
            verify_checkpoint(p)
            return p
    if os.path.isfile(os.path.join(path, "config.json")):  # a model without the state to resume it: never start over in silence
        raise SystemExit(f"{path} has no trainer_state.pt (the optimizer and RNG states a run resumes from), so it "
                         f"cannot be resumed; pass --resume=False to start again in this folder (its checkpoint is "
                         f"replaced at the first save) or another --out_dir")
    return None


def find_model(ckpt):
    """The checkpoint to evaluate or ask: `ckpt` (empty: out/grpo/last, else out/sft/last, else the
    base smollm2), or `ckpt.old` (what an interrupted save leaves) when `ckpt` is missing; a
    checkpoint whose files differ from its checksums is an error."""
    for path in [ckpt] if ckpt else ["out/grpo/last", "out/sft/last"]:
        for p in (path, path + ".old"):
            if os.path.isfile(os.path.join(p, "config.json")):
                if p != path:
                    print(f"{path} is missing; evaluating {p}, left by an interrupted save", file=sys.stderr)
                verify_checkpoint(p, skip=LOADED_ONLY)
                return p
    if ckpt and not os.path.exists(ckpt) and ckpt not in ("smollm2", "tiny", "tiny-omni") and (os.sep in ckpt or ckpt.startswith(".")):
        raise SystemExit(f"--ckpt={ckpt}: no such checkpoint folder")
    return ckpt or "smollm2"


RESUME_MAY_CHANGE = {"OUT_DIR", "MAX_STEPS", "EPOCHS", "STOP_AFTER", "SAVE_EVERY", "THREADS", "RESUME",
                     "LOG_COMPLETIONS_EVERY", "SKIP_MISSING_MEDIA"}


def check_resume(ckpt, state, config, per_step):
    """Refuse to resume `ckpt` (whose trainer state saved the settings `state["config"]`) with other
    settings (a different --variant or --init would silently continue the old run), listing every
    difference; the settings of RESUME_MAY_CHANGE may differ, and settings the checkpoint predates
    are not compared. Also refused: another number of samples per step, `per_step` (with the same
    settings: another number of processes), since each process resumes its own random state and
    takes its share of every batch."""
    saved = state.get("config", {})
    diff = [f"{k.lower()}: {saved[k]!r} in the checkpoint, {v!r} now" for k, v in config.items()
            if k.isupper() and k in saved and k not in RESUME_MAY_CHANGE and saved[k] != v]
    if diff:
        raise SystemExit(f"{ckpt} was trained with other settings:\n  " + "\n  ".join(diff)
                         + "\nresume with the same settings, or pass --resume=False to start again in this folder")
    if state.get("step") and "position" in state and state["position"] != state["step"] * per_step:
        raise SystemExit(f"{ckpt} was trained with {state['position'] // state['step']} samples per step, this run takes "
                         f"{per_step}: another number of processes; resume with the one it was trained with, or pass "
                         f"--resume=False")


def resume_point(accelerator, out_dir, resume, config, per_step):
    """(checkpoint folder, its trainer state) to resume from, or (None, None). Rank 0 decides and tells
    the others: a rank that cannot see the folder must not start over alone while rank 0 resumes."""
    from accelerate.utils import broadcast_object_list
    ckpt = find_checkpoint(os.path.join(out_dir, "last")) if resume and accelerator.is_main_process else None
    ckpt = broadcast_object_list([ckpt])[0]
    if not ckpt:
        return None, None
    state = torch.load(os.path.join(ckpt, "trainer_state.pt"), weights_only=False)
    check_resume(ckpt, state, config, per_step)
    if accelerator.is_main_process:
        print(f"resuming from {ckpt} at step {state['step']}")
    return ckpt, state


def optimizer_state(accelerator, optimizer):
    """The optimizer state a checkpoint saves (every process calls this). Under DeepSpeed ZeRO each
    process holds only its partition (of the fp32 master weights and Adam moments): the list of all
    partitions, in rank order, which ZeRO's load_state_dict takes back (each process picks its own)."""
    state = optimizer.state_dict()
    if str(getattr(accelerator.distributed_type, "value", accelerator.distributed_type)) != "DEEPSPEED":
        return state
    from accelerate.utils import gather_object
    to_cpu = lambda x: x.cpu() if torch.is_tensor(x) else {k: to_cpu(v) for k, v in x.items()} if isinstance(x, dict) \
        else type(x)(to_cpu(v) for v in x) if isinstance(x, (list, tuple)) else x  # noqa: E731
    return gather_object([to_cpu(state)])


def rng_state():
    """The torch (and CUDA) random states, to save in a checkpoint."""
    return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state):
    """Restore the random states saved by rng_state."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
