"""Running a script: configuration from config files and `--key=value`, settings checks, trackers,
the output folder's lock, Ctrl-C at step boundaries, the learning-rate schedule, precision,
per-step timing and the logs a training run writes besides its checkpoints."""
import ast
import atexit
import json
import math
import os
import signal
import sys
import time
import traceback
import types

import torch

import wheel


def configure(config, argv=None):
    """nanoGPT-style configuration. `config` is a script's globals(), whose UPPERCASE constants are
    the defaults; each item of argv, in order, is a config file (plain Python assignments) or
    `--key=value` (key in any case, value parsed as a Python literal, else kept as a string).
    Unknown keys and values of the wrong type are errors, so a typo never runs silently."""
    argv = sys.argv[1:] if argv is None else argv
    if "--help" in argv or "-h" in argv:
        print((config.get("__doc__") or "").strip() + "\n\nsettings (--key=value, or a config file: Python assignments, "
              "which may import and compute; its modules and functions are not settings):")
        for key, value in config.items():
            if key.isupper() and not key.startswith("_"):
                print(f"  --{key.lower()}={value!r}")
        raise SystemExit(0)
    for arg in argv:
        if arg.startswith("--"):
            key, sep, text = arg[2:].partition("=")
            if not sep:
                raise SystemExit(f"bad argument {arg!r}: write --{key}=VALUE")
            try:
                value = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                value = text
            _set(config, key, value, arg)
        else:
            if not os.path.isfile(arg):
                raise SystemExit(f"config file {arg!r} not found (arguments are a config file or --key=value)")
            values = {}
            try:  # one namespace, as a module runs: a comprehension sees the file's own names
                exec(compile(open(arg).read(), arg, "exec"), values)
            except Exception as e:
                line = getattr(e, "lineno", None) or traceback.extract_tb(e.__traceback__)[-1].lineno
                raise SystemExit(f"{arg}, line {line}: {type(e).__name__}: {e}")
            for key, value in values.items():  # imports and helpers may serve the assignments; they are not settings
                if not key.startswith("_") and not callable(value) and not isinstance(value, types.ModuleType):
                    _set(config, key, value, arg)


def _set(config, key, value, where):
    name = key.upper()
    if name not in config or not name.isupper() or name.startswith("_"):
        known = ", ".join(k.lower() for k in config if k.isupper() and not k.startswith("_"))
        raise SystemExit(f"{where}: unknown setting {key!r}; known: {known}")
    default = config[name]
    if default is not None and value is not None and not isinstance(value, type(default)):
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        elif isinstance(default, str):  # --reward_wheels=1,2 parses as a tuple: keep the commas
            value = ",".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)
        else:
            raise SystemExit(f"{where}: {key} must be of type {type(default).__name__} (like {default!r}), got {value!r}")
    config[name] = value


def check_settings(checks):
    """Refuse a bad configuration before any model loads: `checks` pairs a condition that must
    hold with the message printed when it does not (one line each, all of them at once)."""
    bad = [message for ok, message in checks if not ok]
    if bad:
        raise SystemExit("bad settings:\n  " + "\n  ".join(bad))


def training_checks(lr, save_every, stop_after, warmup, min_lr_ratio, threads, max_steps=1, epochs=1):
    """The settings checks both training scripts share (for check_settings): a finite learning rate
    (`--lr=1e999` parses as inf, and one step would make every weight NaN), checkpoints every
    >= 1 steps, a schedule that never turns into gradient ascent, threads >= 0, something to train."""
    return [(math.isfinite(lr) and lr >= 0, f"--lr={lr}: a finite number >= 0"),
            (max_steps > 0 or epochs > 0, f"--max_steps={max_steps} and --epochs={epochs}: nothing to train; set "
                                          f"--max_steps (steps) or --epochs (passes over the data, with --max_steps=0)"),
            (save_every >= 1, f"--save_every={save_every}: steps between checkpoints, at least 1"),
            (stop_after >= 0 and warmup >= 0, f"--stop_after={stop_after}, --warmup_steps={warmup}: 0 or more"),
            (0 <= min_lr_ratio <= 1, f"--min_lr_ratio={min_lr_ratio}: a share of --lr between 0 and 1"),
            (threads >= 0, f"--threads={threads}: 0 (torch's default) or more")]


def trackers(log_with):
    """The accelerate trackers named in `log_with` (comma-separated: tensorboard, wandb, mlflow, ...;
    empty: none), each checked to be installed; log.jsonl is written either way."""
    if not log_with:
        return None
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS, get_available_trackers
    names = [n.strip() for n in str(log_with).split(",") if n.strip()]
    for n in names:
        if n not in LOGGER_TYPE_TO_CLASS:
            raise SystemExit(f"--log_with={n!r}: not a tracker accelerate knows; choose from "
                             f"{', '.join(LOGGER_TYPE_TO_CLASS)}")
        if n not in [str(t) for t in get_available_trackers()]:
            raise SystemExit(f"--log_with={n}: the {n} package is not installed (pip install {n}); log.jsonl "
                             f"is written without it")
    return names


def check_writable(out_dir):
    """Make `out_dir` and make sure files can be written there, before any model loads."""
    try:
        os.makedirs(out_dir, exist_ok=True)
        probe = os.path.join(out_dir, f".write_test{os.getpid()}")
        open(probe, "w").close()
        os.remove(probe)
    except OSError as e:
        raise SystemExit(f"{out_dir}: cannot write here ({e.strerror}); pass another --out_dir")


def cpu_supports_bf16():
    """True when this CPU has native bf16 instructions (bf16 autocast then pays off)."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def use_bf16(precision):
    """PRECISION -> bf16 autocast or not: "auto" uses it on GPUs and on CPUs with native bf16."""
    return precision == "bf16" or (precision == "auto" and (torch.cuda.is_available() or cpu_supports_bf16()))


def lr_at(step, lr, warmup, total, min_ratio=0.1):
    """Linear warmup for `warmup` steps, then cosine decay to min_ratio * lr at `total`."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


class Laps:
    """Wall time of a step's phases: each lap(key) adds the time since the previous lap (or since
    the start) to `seconds[key]`; total() is the step's wall and CPU time so far."""

    def __init__(self, *keys):
        self.seconds = {k: 0.0 for k in keys}
        self.start = self.last = time.time()
        self.cpu = time.process_time()

    def lap(self, key):
        now = time.time()
        self.seconds[key] += now - self.last
        self.last = now

    def total(self):
        return {**{k: round(v, 3) for k, v in self.seconds.items()}, "step_s": round(time.time() - self.start, 3),
                "cpu_s": round(time.process_time() - self.cpu, 3)}


def make_accelerator(grad_accum, log_with, out_dir, environ=os.environ):
    """The training scripts' Accelerator. accelerate enables DeepSpeed only off the CPU, so a
    launcher config that asks for it on a machine without CUDA (configs/zero2_cpu.yaml) gets what
    DeepSpeed needs there first: its CPU accelerator and a gloo process group."""
    from accelerate import Accelerator, InitProcessGroupKwargs
    cpu_deepspeed = environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() in ("1", "true") and not torch.cuda.is_available()
    if cpu_deepspeed:
        environ.setdefault("DS_ACCELERATOR", "cpu")
    return Accelerator(cpu=not torch.cuda.is_available() and not cpu_deepspeed, gradient_accumulation_steps=grad_accum,
                       log_with=log_with, project_dir=out_dir,
                       kwargs_handlers=[InitProcessGroupKwargs(backend="gloo")] if cpu_deepspeed else None)


def check_engine(accelerator, grad_accum, environ=os.environ, grad_clip=None, micro_batch=None, generates=False):
    """The engine that runs is the one asked for, or the run stops before any model loads: a launcher
    config that asks for DeepSpeed or FSDP (ACCELERATE_USE_DEEPSPEED / ACCELERATE_USE_FSDP) and gets
    plain data parallel, FSDP itself (the loop runs the model's body and LM head outside its root
    forward, which FSDP does not allow), a gradient accumulation that differs from --grad_accum (a
    DeepSpeed config sets its own), under DeepSpeed a clipping other than --grad_clip (DeepSpeed
    clips inside its own step) and, for a script that `generates`, ZeRO-3 (it shards the weights that
    sampling reads whole). DeepSpeed is told the `micro_batch` (rows per process and micro-batch):
    there is no DataLoader to infer it from. Returns what ran, for log.jsonl."""
    engine = str(getattr(accelerator.distributed_type, "value", accelerator.distributed_type))
    asked = [name for name, key in (("DEEPSPEED", "ACCELERATE_USE_DEEPSPEED"), ("FSDP", "ACCELERATE_USE_FSDP"))
             if environ.get(key, "").lower() in ("1", "true")]
    if asked and engine != asked[0]:
        raise SystemExit(f"the accelerate config asks for {asked[0]}, but {engine} would run (accelerate enables "
                         f"DeepSpeed and FSDP only on an accelerator here); use configs/ddp.yaml on this machine")
    if engine == "FSDP":
        raise SystemExit("FSDP is not supported: sampling and the log-prob passes call the model's body and LM head "
                         "outside its root forward, which FSDP forbids; use configs/zero2.yaml (ZeRO-2) or DDP")
    if accelerator.gradient_accumulation_steps != grad_accum:
        raise SystemExit(f"--grad_accum={grad_accum}, but the accelerate config sets gradient accumulation to "
                         f"{accelerator.gradient_accumulation_steps}; make them agree")
    if engine == "DEEPSPEED":
        ds_clip = accelerator.state.deepspeed_plugin.deepspeed_config.get("gradient_clipping", "auto")
        ds_clip = 1.0 if ds_clip == "auto" else float(ds_clip)  # accelerate fills "auto" with 1.0
        if grad_clip is not None and ds_clip != grad_clip:
            raise SystemExit(f"--grad_clip={grad_clip}, but the DeepSpeed config clips at {ds_clip} (gradient_clipping; "
                             f"'auto' is 1.0); make them agree")
        if generates and getattr(accelerator.state.deepspeed_plugin, "zero_stage", 0) == 3:
            raise SystemExit("ZeRO-3 shards the policy, and this loop samples from the full model: use ZeRO-2 "
                             "(configs/zero2.yaml) or DDP")
        if micro_batch:
            accelerator.state.deepspeed_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = micro_batch
    return {"engine": engine, "world_size": accelerator.num_processes,
            "mixed_precision": str(accelerator.mixed_precision)}


def check_loss(accelerator, loss, step, out_dir):
    """Stop every process, before the backward, when any process's loss is not finite: under
    DeepSpeed the optimizer steps inside the backward, so a later check would come too late."""
    bad = accelerator.reduce(torch.tensor(float(not torch.isfinite(loss).all()), device=loss.device), "sum")
    if bad.item():
        stop_non_finite(loss, None, step, out_dir)


def stop_non_finite(loss, norm, step, out_dir):
    kept = f"{out_dir}/last keeps the last good checkpoint" if os.path.isdir(f"{out_dir}/last") else "no checkpoint saved yet"
    raise SystemExit(f"step {step}: non-finite loss ({loss.item()}) or gradient norm ({None if norm is None else float(norm)}); "
                     f"stopped without saving ({kept}); lower --lr, or resume to retry from the checkpoint")


def clip_and_check(accelerator, parameters, loss, clip, step, out_dir):
    """Clip the gradient norm (clip 0: no clipping, the norm is still measured) and stop the run,
    saving nothing, when the loss or the norm is not finite. Returns the norm (a float or None under
    DeepSpeed, which clips inside its own step)."""
    norm = accelerator.clip_grad_norm_(parameters, clip or float("inf"))
    if not (torch.isfinite(loss) and (norm is None or math.isfinite(float(norm)))):
        stop_non_finite(loss, norm, step, out_dir)
    return norm


# Ctrl-C, and what schedulers send before they kill a job: Slurm SIGTERM (or the signal of
# --signal=B:USR1@120), Kubernetes SIGTERM, a closed ssh session SIGHUP
STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP", "SIGUSR1")


def stop_requested(accelerator, interrupted):
    """True on every rank once any rank was interrupted (Ctrl-C, SIGTERM): all stop at one step boundary."""
    return accelerator.reduce(torch.tensor(float(bool(interrupted)), device=accelerator.device), "sum").item() > 0


def finish(accelerator, model, log, step, engine_info, out_dir):
    """The `end` event of log.jsonl, with every rank's weight checksum (replicas must agree), then `leave`."""
    from accelerate.utils import gather_object
    checksums = gather_object([sum(p.double().sum().item() for p in accelerator.unwrap_model(model).parameters())])
    if accelerator.is_main_process:
        log.write(json.dumps({"event": "end", "step": step, **engine_info, "param_checksums": checksums}) + "\n")
        print(f"done: {step} steps, checkpoint in {out_dir}/last")
    leave(accelerator, log, out_dir)


def stop(accelerator, log, step, out_dir):
    """An interrupt honoured at a step boundary, after the save: say where it resumes, then exit 130."""
    if accelerator.is_main_process:
        print(f"interrupted: saved step {step} in {out_dir}/last; run again to resume")
    leave(accelerator, log, out_dir, 130)


def leave(accelerator, log, out_dir, code=0):
    """A shutdown in step (finished, or interrupted and saved: exit `code`): no rank tears its gloo pairs
    down while a peer still sends. With several processes it then ends the process itself: the
    interpreter's own teardown (after the script's last line, no Python frame left) aborted rank 0
    about one run in 15 on a busy 2-core machine ("terminate called without an active exception",
    a C++ thread still joinable at exit)."""
    accelerator.wait_for_everyone()
    accelerator.end_training()
    if accelerator.num_processes > 1:  # everything is written; skip the teardown that can abort
        if log is not None:
            log.close()
        release_lock(out_dir)  # what the exit handlers would do
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    if code:
        raise SystemExit(code)


def interrupt_flag(out_dir):
    """Stop requests at step boundaries: returns a list that the first of STOP_SIGNALS fills (after
    saying so), so the loop can finish its step, save and exit; a second one leaves at once (exit
    130) without saving: a half-done step, its RNG state and optimizer moments, would not resume
    like an uninterrupted run."""
    flag = []

    def handler(signum, frame):
        if flag:
            print(f"\nleft without saving: {out_dir}/last keeps the last checkpoint", file=sys.stderr)
            raise SystemExit(130)
        flag.append(True)
        print(f"\n{signal.Signals(signum).name}: the current step finishes, then {out_dir}/last is saved "
              "(again: leave at once without saving)", file=sys.stderr)

    for name in STOP_SIGNALS:
        signal.signal(getattr(signal, name), handler)
    return flag


def pid_alive(pid):
    """True while process `pid` exists on this host (another user's counts)."""
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def take_lock(out_dir):
    """Hold `out_dir/lock` (this process's pid) while a run writes there; another live process's
    lock is an error naming it (the parent's is not: a launcher may reserve the folder for its
    child), a dead one's is taken over. Released when the process exits."""
    path = os.path.join(out_dir, "lock")
    try:
        pid = int(open(path).read().strip() or 0)
    except (OSError, ValueError):
        pid = 0
    if pid and pid not in (os.getpid(), os.getppid()) and pid_alive(pid):  # a dead run's lock is taken over
        raise SystemExit(f"{out_dir} is in use by process {pid} (lock file {path}); wait for it to end, or "
                         f"pass another --out_dir")
    with open(path, "w") as f:
        f.write(str(os.getpid()))
    atexit.register(release_lock, out_dir)


def release_lock(out_dir):
    """Remove `out_dir/lock` if this process holds it."""
    path = os.path.join(out_dir, "lock")
    if os.path.exists(path) and open(path).read().strip() == str(os.getpid()):
        os.remove(path)


def read_log(path):
    """The records of a log.jsonl. A last line cut by a crash or a full disk is dropped with a
    warning; a bad line before it is an error naming the file and line."""
    lines = [line for line in open(path) if line.strip()]
    records = []
    for i, line in enumerate(lines, start=1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i < len(lines):
                raise SystemExit(f"{path}, line {i}: not valid JSON; fix or delete that line")
            print(f"warning: {path}: the last line is cut short (a crash mid-write?); it is dropped", file=sys.stderr)
    return records


def open_log(accelerator, out_dir, step, start):
    """The main process's log.jsonl (None on the others), cut back to `step` (truncate_log: a resumed
    run rewrites what came after its checkpoint), its `start` event written first."""
    if not accelerator.is_main_process:
        return None
    truncate_log(out_dir, step)
    log = open(os.path.join(out_dir, "log.jsonl"), "a")
    log.write(json.dumps({"event": "start", "step": step, **start}) + "\n")
    return log


def truncate_log(out_dir, step, names=("log.jsonl", "completions.jsonl")):
    """Keep only the records of the run's logs up to `step` (the checkpoint a run resumes from), so
    that every step appears once after a resume. A run that starts at step 0 (--resume=False over
    an old run) moves the old logs to NAME.old, which its first save deletes: until then the old
    checkpoint keeps its log."""
    for name in names:
        path = os.path.join(out_dir, name)
        if not os.path.isfile(path):
            continue
        if step == 0:
            os.replace(path, path + ".old")
            continue
        keep = [json.dumps(r) + "\n" for r in read_log(path) if r.get("step", 0) <= step]
        with open(path + ".tmp", "w") as f:
            f.writelines(keep)
        os.replace(path + ".tmp", path)


def log_completions(out_dir, tracker_list, step, rows, texts, c_mask, r, adv, first_group, g):
    """Each completion of a GRPO step with its prompt, rewards, advantage and length: one JSON line
    each in out_dir/completions.jsonl, and a table in the trackers that take tables (e.g. wandb)."""
    recs = [{"step": step, "prompt": sample["name"], "group": first_group + i // g, "text": text,
             "length": int(c_mask[i].sum()), "advantage": float(adv[i]), **{k: v[i] for k, v in r.items()}}
            for i, (sample, text) in enumerate(zip(rows, texts))]
    with open(os.path.join(out_dir, "completions.jsonl"), "a") as f:
        f.writelines(json.dumps(rec) + "\n" for rec in recs)
    for tracker in tracker_list:
        if hasattr(tracker, "log_table"):
            tracker.log_table("completions", list(recs[0]), [list(rec.values()) for rec in recs], step=step)


def warn_no_calibration(texts, step):
    """Warn (once: returns True when it did) that completions answer but no answer got a
    calibration signal: no answer word maps to a wheel, or answers miss a token boundary."""
    answered = sum(bool(wheel.parse_answer(t)) for t in texts)
    if answered:
        print(f"warning: step {step}: {answered} completions answer, but none got a calibration signal "
              "(cali_coverage 0): no answer word maps to a wheel, or the answer does not start on a token "
              "boundary (see mer.prompts.add_tag_tokens)")
    return bool(answered)
