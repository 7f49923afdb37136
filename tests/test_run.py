import json
import os

import pytest
import torch

import mer.checkpoints, mer.data, mer.inputs, mer.models, mer.prompts, mer.run

TOK = mer.models.tiny_tokenizer()
SAMPLE = {"name": "s1", "video": "Ann smiles.", "audio": "Ann speaks with a bright tone.", "subtitle": "We won!",
          "openset": "happy, excited", "reason": "She smiles and her voice is bright."}


def test_configure_overrides_and_errors(tmp_path):
    config = {"LR": 1e-5, "STEPS": 10, "MODEL": "smollm2", "BF16": False, "INIT": None}
    path = tmp_path / "c.py"
    path.write_text("LR = 2e-5\nsteps = 3\n")
    mer.run.configure(config, [str(path), "--model=tiny", "--steps=7", "--bf16=True", "--init=out/x", "--lr=1"])
    assert config == {"LR": 1.0, "STEPS": 7, "MODEL": "tiny", "BF16": True, "INIT": "out/x"}
    with pytest.raises(SystemExit, match="unknown setting 'lrr'"):
        mer.run.configure(config, ["--lrr=1"])
    with pytest.raises(SystemExit, match="steps must be of type int"):
        mer.run.configure(config, ["--steps=0.5"])
    with pytest.raises(SystemExit, match="write --lr=VALUE"):
        mer.run.configure(config, ["--lr"])
    with pytest.raises(SystemExit, match="not found"):
        mer.run.configure(config, ["nofile.py"])


def test_lr_schedule():
    assert mer.run.lr_at(0, 1.0, 4, 20) == 0.25
    assert mer.run.lr_at(3, 1.0, 4, 20) == 1.0
    assert mer.run.lr_at(4, 1.0, 4, 20) == pytest.approx(1.0)
    assert mer.run.lr_at(20, 1.0, 4, 20, min_ratio=0.1) == pytest.approx(0.1)
    assert mer.run.lr_at(12, 1.0, 4, 20, min_ratio=0.0) == pytest.approx(0.5)


def test_resume_truncates_both_logs(tmp_path):
    for name in ("log.jsonl", "completions.jsonl"):
        (tmp_path / name).write_text("".join(json.dumps({"step": s}) + "\n" for s in (1, 2, 3, 2, 3)))
    mer.run.truncate_log(str(tmp_path), 2)
    for name in ("log.jsonl", "completions.jsonl"):
        assert [json.loads(line)["step"] for line in open(tmp_path / name)] == [1, 2, 2]


def test_a_fresh_start_keeps_the_old_log_until_its_first_save(tmp_path):
    model, tok = mer.models.load_model("tiny")
    mer.checkpoints.save_checkpoint(str(tmp_path / "last"), model, tok, {"step": 5, "config": {}})
    old = "".join(json.dumps({"step": s}) + "\n" for s in (1, 2, 3, 4, 5))
    (tmp_path / "log.jsonl").write_text(old)
    mer.run.truncate_log(str(tmp_path), 0)                 # --resume=False: the new run starts, saves nothing yet
    assert not (tmp_path / "log.jsonl").exists() and (tmp_path / "log.jsonl.old").read_text() == old
    mer.checkpoints.save_checkpoint(str(tmp_path / "last"), model, tok, {"step": 1, "config": {}})
    assert not (tmp_path / "log.jsonl.old").exists()       # the old checkpoint is gone, and its log with it


@pytest.mark.parametrize("script", ["train_sft.py", "train_grpo.py", "evaluate.py", "predict.py", "bench/bandwidth.py",
                                    "bench/trl_grpo.py"])
def test_scripts_set_the_openmp_wait_policy_before_torch_loads(script):
    """OpenMP reads OMP_WAIT_POLICY once, when torch loads: the default must be set before the first
    import outside the standard library (bench/RESULTS.md, 'A shared CPU')."""
    import ast
    import sys
    tree = ast.parse(open(os.path.join(os.path.dirname(os.path.dirname(__file__)), script)).read())
    first_import, setdefault = None, None
    for node in tree.body:
        names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                 [node.module] if isinstance(node, ast.ImportFrom) else [])
        if first_import is None and any(n.split(".")[0] not in sys.stdlib_module_names for n in names):
            first_import = node.lineno
        if setdefault is None and "OMP_WAIT_POLICY" in ast.unparse(node) and "setdefault" in ast.unparse(node):
            setdefault = node.lineno
    assert setdefault is not None and first_import is not None and setdefault < first_import, (setdefault, first_import)


class FakeAccelerator:
    def __init__(self, engine="MULTI_CPU", accum=1, norm=1.0, ds_config=None, mixed_precision="no"):
        from types import SimpleNamespace
        self.distributed_type = SimpleNamespace(value=engine)
        self.gradient_accumulation_steps, self.num_processes, self.mixed_precision = accum, 2, mixed_precision
        self.norm = norm
        self.state = SimpleNamespace(deepspeed_plugin=SimpleNamespace(deepspeed_config=ds_config or {}))

    def reduce(self, tensor, op):
        return tensor

    def clip_grad_norm_(self, parameters, clip):
        return self.norm


def test_the_engine_that_runs_is_the_one_asked_for():
    assert mer.run.check_engine(FakeAccelerator(), 1, {}) == {"engine": "MULTI_CPU", "world_size": 2,
                                                                "mixed_precision": "no"}
    # a DeepSpeed config that accelerate did not enable (no CUDA here) is no longer plain DDP in silence
    with pytest.raises(SystemExit, match="asks for DEEPSPEED, but MULTI_CPU would run"):
        mer.run.check_engine(FakeAccelerator(), 1, {"ACCELERATE_USE_DEEPSPEED": "true"})
    assert mer.run.check_engine(FakeAccelerator("DEEPSPEED"), 1, {"ACCELERATE_USE_DEEPSPEED": "true"})["engine"] == "DEEPSPEED"
    with pytest.raises(SystemExit, match="asks for FSDP"):
        mer.run.check_engine(FakeAccelerator(), 1, {"ACCELERATE_USE_FSDP": "1"})
    with pytest.raises(SystemExit, match="FSDP is not supported"):
        mer.run.check_engine(FakeAccelerator("FSDP"), 1, {"ACCELERATE_USE_FSDP": "true"})
    with pytest.raises(SystemExit, match="--grad_accum=2, but the accelerate config sets gradient accumulation to 1"):
        mer.run.check_engine(FakeAccelerator(accum=1), 2, {})
    ds = {"ACCELERATE_USE_DEEPSPEED": "true"}
    assert mer.run.check_engine(FakeAccelerator("DEEPSPEED", ds_config={"gradient_clipping": "auto"}), 1, ds, 1.0)
    with pytest.raises(SystemExit, match=r"--grad_clip=0.5, but the DeepSpeed config clips at 1.0 \(gradient_clipping; 'auto' is 1.0\)"):
        mer.run.check_engine(FakeAccelerator("DEEPSPEED"), 1, ds, 0.5)
    with pytest.raises(SystemExit, match="--grad_clip=1.0, but the DeepSpeed config clips at 0.0"):
        mer.run.check_engine(FakeAccelerator("DEEPSPEED", ds_config={"gradient_clipping": 0.0}), 1, ds, 1.0)
    zero3 = FakeAccelerator("DEEPSPEED")
    zero3.state.deepspeed_plugin.zero_stage = 3
    assert mer.run.check_engine(zero3, 1, ds, 1.0, micro_batch=8)["engine"] == "DEEPSPEED"  # SFT does not sample
    assert zero3.state.deepspeed_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] == 8
    with pytest.raises(SystemExit, match="ZeRO-3 shards the policy"):
        mer.run.check_engine(zero3, 1, ds, 1.0, micro_batch=8, generates=True)


def test_a_non_finite_loss_stops_before_the_backward(tmp_path):
    mer.run.check_loss(FakeAccelerator(), torch.tensor(0.5), 3, str(tmp_path))
    with pytest.raises(SystemExit, match=r"step 3: non-finite loss \(inf\)"):
        mer.run.check_loss(FakeAccelerator(), torch.tensor(float("inf")), 3, str(tmp_path))


@pytest.mark.parametrize("norm", [1.5, torch.tensor(1.5), None])
def test_clip_and_check_takes_the_norm_deepspeed_returns(norm, tmp_path):
    loss, out = torch.tensor(0.3), str(tmp_path)
    assert mer.run.clip_and_check(FakeAccelerator(norm=norm), [], loss, 1.0, 1, out) is norm
    with pytest.raises(SystemExit, match=r"step 1: non-finite loss .*\(no checkpoint saved yet\); lower --lr"):
        mer.run.clip_and_check(FakeAccelerator(norm=norm), [], torch.tensor(float("nan")), 1.0, 1, out)
    os.makedirs(os.path.join(out, "last"))
    with pytest.raises(SystemExit, match=r"step 1: .*\(.*/last keeps the last good checkpoint\); lower --lr"):
        mer.run.clip_and_check(FakeAccelerator(norm=norm), [], torch.tensor(float("nan")), 1.0, 1, out)
    if norm is not None:
        with pytest.raises(SystemExit, match="non-finite"):
            mer.run.clip_and_check(FakeAccelerator(norm=float("inf")), [], loss, 1.0, 1, "out")


@pytest.mark.parametrize("script,arg,message", [
    ("train_grpo.py", "--lr=1e999", "--lr=inf: a finite number >= 0"),
    ("train_grpo.py", "--save_every=0", "--save_every=0: steps between checkpoints"),
    ("train_grpo.py", "--min_lr_ratio=-1", "--min_lr_ratio=-1.0: a share of --lr"),
    ("train_grpo.py", "--eta=-1", "--eta must be >= 0"),
    ("train_grpo.py", "--top_p=0", "--top_p in (0, 1]"),
    ("train_sft.py", "--stop_after=-1", "--stop_after=-1"),
    ("train_sft.py", "--threads=-1", "--threads=-1"),
    ("train_sft.py", "--epochs=0 --max_steps=0", "--max_steps=0 and --epochs=0: nothing to train"),
    ("train_grpo.py", "--epochs=0 --max_steps=0", "--max_steps=0 and --epochs=0: nothing to train"),
    ("evaluate.py", "--batch_size=0", "--batch_size, --max_new_tokens and --fast_max_new_tokens must be >= 1"),
    ("evaluate.py", "--max_samples=-1", "--max_samples=-1"),
    ("evaluate.py", "--modes=", "--modes: fast, slow or both"),
    ("evaluate.py", "--precision=fp16", "--precision='fp16'"),
    ("predict.py", "--max_new_tokens=0", "--max_new_tokens, --fast_max_new_tokens: >= 1"),
])
def test_nonsense_settings_are_refused_before_any_model_loads(script, arg, message):
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    extra = ["--subtitle=x"] if script == "predict.py" else []
    r = subprocess.run([sys.executable, os.path.join(root, script), *arg.split(), *extra], capture_output=True, text=True, cwd=root,
                       timeout=120)
    assert r.returncode != 0 and message in r.stderr, r.stderr[-1500:]
    assert "Loading weights" not in r.stderr


def test_a_log_cut_mid_line_is_read_without_its_last_line(tmp_path, capsys):
    path = tmp_path / "log.jsonl"
    path.write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "loss": 0.4}\n{"step": 3, "lo')
    assert mer.run.read_log(str(path)) == [{"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.4}]
    assert "the last line is cut short" in capsys.readouterr().err
    mer.run.truncate_log(str(tmp_path), 1, names=("log.jsonl",))   # what a resume does: no traceback
    assert path.read_text() == '{"step": 1, "loss": 0.5}\n'
    path.write_text('{"step": 1}\n{"ste\n{"step": 3}\n')                # a bad line inside is an error
    with pytest.raises(SystemExit, match="log.jsonl, line 2: not valid JSON"):
        mer.run.read_log(str(path))


def test_a_config_file_runs_as_one_module_and_its_errors_name_the_file_and_line(tmp_path):
    config = {"LR": 1e-5, "STEPS": 10, "NAME": "x"}
    path = tmp_path / "c.py"
    path.write_text("import math\nBASE = 2\nLR = math.sqrt(4) * 1e-6\nSTEPS = sum(BASE for _ in range(3))\n"
                    "def helper():\n    return 1\n")
    with pytest.raises(SystemExit, match="unknown setting 'BASE'"):   # plain names are still settings
        mer.run.configure(dict(config), [str(path)])
    path.write_text("import math\n_BASE = 2\nLR = math.sqrt(4) * 1e-6\nSTEPS = sum(_BASE for _ in range(3))\n")
    got = dict(config)
    mer.run.configure(got, [str(path)])
    assert got["LR"] == pytest.approx(2e-6) and got["STEPS"] == 6
    path.write_text("LR = 1e-5\nSTEPS = 1 / 0\n")
    with pytest.raises(SystemExit, match=r"c\.py, line 2: ZeroDivisionError"):
        mer.run.configure(dict(config), [str(path)])
    path.write_text("LR = (1e-5\n")
    with pytest.raises(SystemExit, match=r"c\.py, line 1: SyntaxError"):
        mer.run.configure(dict(config), [str(path)])
