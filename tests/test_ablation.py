"""experiments/ablation.py without models: resumability, locks, the seed statistics."""
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load():
    spec = importlib.util.spec_from_file_location("ablation", os.path.join(ROOT, "experiments", "ablation.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def ablation(tmp_path, monkeypatch):
    module = load()
    monkeypatch.setattr(module, "RUNS", str(tmp_path / "runs"))
    monkeypatch.setattr(module, "RECORDS", "")  # the tests that use records set them
    monkeypatch.setattr(module, "VARIANTS", "baseline,mer_r1")
    monkeypatch.setattr(module, "SEEDS", "0,1")
    calls = []
    monkeypatch.setattr(module, "train", lambda name, *a: calls.append(("train", name)))

    def evaluate(ckpt, out, log):
        calls.append(("evaluate", ckpt.split("/")[-2]))
        return {"test_fine": {"slow": {"scores": {"f1": 50.0}}}}
    monkeypatch.setattr(module, "evaluate", evaluate)
    module.calls = calls
    return module


def test_runs_sft_first_then_seed_major(ablation):
    names = [n for n, *_ in ablation.run_dirs()]
    assert names == ["sft", "baseline_s0", "mer_r1_s0", "baseline_s1", "mer_r1_s1"]


def test_finished_runs_are_skipped_and_trained_runs_only_evaluated(ablation):
    ablation.run_all()
    assert ablation.calls == [(k, n) for n in ("sft", "baseline_s0", "mer_r1_s0", "baseline_s1", "mer_r1_s1")
                              for k in ("train", "evaluate")]
    result = json.load(open(os.path.join(ablation.RUNS, "mer_r1_s0", "result.json")))
    assert (result["variant"], result["seed"], result["results"]["test_fine"]["slow"]["scores"]["f1"]) == ("mer_r1", 0, 50.0)
    assert not any(f.endswith("runner.lock") for _, _, fs in os.walk(ablation.RUNS) for f in fs)

    ablation.calls.clear()
    ablation.run_all()
    assert ablation.calls == []  # every run left its result

    # interrupted during its evaluation: the training is not repeated
    os.remove(os.path.join(ablation.RUNS, "baseline_s1", "result.json"))
    ablation.run_all()
    assert ablation.calls == [("evaluate", "baseline_s1")]


def test_records_survive_a_clean_checkout_and_a_recorded_sft_is_retrained_only_when_needed(ablation, tmp_path):
    ablation.RECORDS = str(tmp_path / "records")
    ablation.run_all()
    os.makedirs(os.path.join(ablation.RUNS, "mer_r1_s0", "eval", "fine"))
    json.dump({"results": {}}, open(os.path.join(ablation.RUNS, "mer_r1_s0", "eval", "fine", "summary.json"), "w"))
    open(os.path.join(ablation.RUNS, "mer_r1_s0", "log.jsonl"), "w").write('{"step": 1, "recall": 0.5}\n')
    ablation.record("mer_r1_s0")
    kept = os.path.join(ablation.RECORDS, "runs", "mer_r1_s0")
    assert sorted(os.path.relpath(os.path.join(d, f), kept) for d, _, fs in os.walk(kept) for f in fs) == \
        ["eval/fine/summary.json", "log.jsonl", "result.json"]
    recorded = ablation.finished()
    shutil.rmtree(ablation.RUNS)  # a clean checkout: checkpoints and run folders gone, the records kept
    assert ablation.finished() == recorded and len(recorded) == 5
    assert ablation.log_records("mer_r1_s0") == [{"step": 1, "recall": 0.5}]
    ablation.calls.clear()
    ablation.run_all()
    assert ablation.calls == []  # everything recorded: nothing trained, not even the SFT
    os.remove(os.path.join(ablation.RECORDS, "runs", "baseline_s1", "result.json"))
    ablation.run_all()  # a GRPO run to do: the SFT checkpoint is trained again, its evaluation is recorded
    assert ablation.calls == [("train", "sft"), ("train", "baseline_s1"), ("evaluate", "baseline_s1")]
    assert not os.path.exists(os.path.join(ablation.RUNS, "sft", "result.json"))
    assert ablation.finished() == recorded  # the SFT row still comes from its record
    assert os.path.isfile(os.path.join(ablation.RECORDS, "runs", "baseline_s1", "result.json"))
    ablation.RECORDS = ""  # no records: a clean folder runs everything
    shutil.rmtree(ablation.RUNS)
    ablation.calls.clear()
    ablation.run_all()
    assert len(ablation.calls) == 10


def test_plan_counts_a_trained_run_as_its_evaluation_only(ablation, capsys):
    ablation.run_all()
    for name in ("sft", "baseline_s0", "mer_r1_s0", "baseline_s1", "mer_r1_s1"):
        path = os.path.join(ablation.RUNS, name, "result.json")
        result = json.load(open(path))
        assert 0 <= result["eval_seconds"] <= result["seconds"]
        result["seconds"], result["eval_seconds"] = (600, 60) if name == "sft" else (6000, 1200)
        json.dump(result, open(path, "w"))
    os.remove(os.path.join(ablation.RUNS, "baseline_s1", "result.json"))  # trained, not evaluated
    os.remove(os.path.join(ablation.RUNS, "mer_r1_s1", "result.json"))
    os.remove(os.path.join(ablation.RUNS, "mer_r1_s1", "trained"))       # not trained
    capsys.readouterr()
    ablation.plan()
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "3 runs finished, 2 to go, about 2.0 h on this machine"  # 1200 + 6000 s
    assert out[1].split() == ["baseline_s1", "~20", "min"]
    assert out[2].split() == ["mer_r1_s1", "~100", "min"]


def test_grpo_runs_wait_for_the_sft_checkpoint(ablation):
    ablation.VARIANTS = "mer_r1"
    os.makedirs(os.path.join(ablation.RUNS, "sft"))
    open(os.path.join(ablation.RUNS, "sft", "runner.lock"), "w").write(f"{socket.gethostname()} {os.getpid()}")
    ablation.run_all()  # the SFT run is held by a live runner and not trained yet: nothing starts
    assert ablation.calls == []


def test_stale_locks_are_taken_over_live_and_foreign_ones_respected(tmp_path):
    ablation = load()
    lock, host = str(tmp_path / "runner.lock"), socket.gethostname()
    assert ablation.take_lock(lock)
    assert open(lock).read() == f"{host} {os.getpid()}"
    assert not ablation.take_lock(lock)  # held by a live process (this one)

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    open(lock, "w").write(f"{host} {gone.pid}")
    assert ablation.take_lock(lock)  # its runner was killed: taken over
    assert open(lock).read() == f"{host} {os.getpid()}"

    for other in (f"elsewhere-{host} {gone.pid}", "12345", ""):  # another host's, an old format, being written
        open(lock, "w").write(other)
        assert not ablation.take_lock(lock)
        assert open(lock).read() == other


def test_an_interrupted_evaluation_resumes_at_the_step_it_was_in(tmp_path, monkeypatch):
    ablation = load()
    monkeypatch.setattr(ablation, "TRANSFER", "test_fine")
    ran = []

    def sh(cmd, log):  # a step as evaluate.py ends it: summary.json written last
        out_dir = next(a for a in cmd if a.startswith("--out_dir=")).split("=", 1)[1]
        ran.append(os.path.basename(out_dir))
        os.makedirs(out_dir, exist_ok=True)
        splits = next(a for a in cmd if a.startswith("--splits=")).split("=", 1)[1].split(",")
        results = {ablation.split_name(s): f"{ran[-1]} {len(ran)}" for s in splits}
        json.dump({"results": results}, open(os.path.join(out_dir, "summary.json"), "w"))
    monkeypatch.setattr(ablation, "sh", sh)
    out = str(tmp_path / "run" / "eval")
    ablation.evaluate("ckpt/last", out, str(tmp_path / "log"))
    assert ran == ["fine", "other", "transfer"]

    ran.clear()
    for sub in ("other", "transfer"):  # killed inside the second step
        os.remove(os.path.join(out, sub, "summary.json"))
    scores = ablation.evaluate("ckpt/last", out, str(tmp_path / "log"))
    assert ran == ["other", "transfer"]  # the finished first step is not repeated
    assert (scores[ablation.FINE], scores[ablation.OTHER.split(",")[0]]) == ("fine 1", "other 1")


def test_mean_and_sample_std_over_seeds():
    ablation = load()
    m, s = ablation.mean_std([70.64, 67.20, 70.64])
    assert m == pytest.approx(69.4933, abs=1e-4)
    assert s == pytest.approx(1.98608, abs=1e-4)  # sample std (n - 1), as in the tables
    assert ablation.mean_std([None]) == (None, None)
    assert ablation.cell([1.0, 2.0, 3.0, 4.0]) == "2.50 ± 1.29"


def test_advantage_split_into_dual_format_and_calibration(ablation):
    # three groups of two, rewards and logged advantages chosen so the terms are known by hand:
    # A_dual = [2, -2], [0, 0], [1, -1] (format tied: A_fmt = 0), so calibration = logged - A_dual
    groups = [((1, 0), (1, 0), (2.1, -2.1)), ((1, 1), (1, 1), (0.1, -0.1)), ((1, 0), (0, 0), (-0.5, 0.5))]
    folder = os.path.join(ablation.RUNS, "mer_r1_s0")
    os.makedirs(folder)
    with open(os.path.join(folder, "completions.jsonl"), "w") as f:
        for g, (recall, precision, adv) in enumerate(groups):
            for i in range(2):
                f.write(json.dumps({"step": 10, "group": g, "recall": recall[i], "precision": precision[i],
                                    "format": 1.0, "advantage": adv[i]}) + "\n")
    with open(os.path.join(folder, "log.jsonl"), "w") as f:
        f.write(json.dumps({"event": "start"}) + "\n")
        f.write(json.dumps({"step": 1, "tied_groups": 0.5}) + "\n" + json.dumps({"step": 2, "tied_groups": 0.0}) + "\n")
    # squares: A_dual 8 + 0 + 2 = 10, calibration 0.02 + 0.02 + 4.5 = 4.54, total 8.82 + 0.02 + 0.5 = 9.34;
    # (EPS in the std makes A_dual 0.02% smaller: 107.02%, not 107.07%); the last group's calibration
    # flips both signs (2 of 6); tied groups (0.5 + 0) / 2
    assert ablation.advantage_split(["mer_r1_s0", "mer_r1_s1"]) == "1 | 6 | 107.0% | 0.0% | 48.6% | 33.3% | 25.0%"
    assert ablation.advantage_split(["mer_r1_s1"]) is None


def test_advantage_split_under_batch_scaling_normalises_over_the_micro_batch(ablation):
    # SCALE_REWARDS = "batch", PROMPTS = 2: groups 0 and 1 share one std. R_R [1, 0 | 1, 1] and R_P
    # [1, 0 | 0, 0] both have batch std sqrt(0.1875) = 0.4330, so A_dual = [2.3094, -2.3094 | 0, 0];
    # logged as the advantage, it is all of it (calibration 0). Normalised group by group (std 0.5
    # in group 0) it would be [2, -2], and calibration would seem to carry 1.8%.
    folder = os.path.join(ablation.RUNS, "mer_r1+scale_rewards=batch_s0")
    os.makedirs(folder)
    a = 1 / 0.1875 ** 0.5
    with open(os.path.join(folder, "completions.jsonl"), "w") as f:
        for g, recall, precision, adv in ((0, 1, 1, a), (0, 0, 0, -a), (1, 1, 0, 0.0), (1, 1, 0, 0.0)):
            f.write(json.dumps({"step": 10, "group": g, "recall": recall, "precision": precision, "format": 1.0,
                                "advantage": adv}) + "\n")
    with open(os.path.join(folder, "log.jsonl"), "w") as f:
        f.write(json.dumps({"step": 1, "tied_groups": 0.5}) + "\n")
    name = ["mer_r1+scale_rewards=batch_s0"]
    assert ablation.advantage_split(name, "batch", 2) == "1 | 4 | 100.0% | 0.0% | 0.0% | 0.0% | 50.0%"
    assert ablation.advantage_split(name, "group", 2).split(" | ")[2:5] == ["75.0%", "0.0%", "1.8%"]
    assert ablation.variant_setting("mer_r1+scale_rewards=batch", "SCALE_REWARDS") == "batch"
    assert ablation.variant_setting("mer_r1", "SCALE_REWARDS") == "group"  # train_grpo.py's default


def test_validation_curve_table_is_the_mean_and_std_over_runs(ablation, monkeypatch):
    # two mer_r1 runs with held-out scores at steps 0 and 10, one of them also at 20
    logs = {"mer_r1_s0": [(0, 60.0, 61.0, 59.0), (10, 64.0, 62.0, 66.0), (20, 67.0, 65.0, 69.0)],
            "mer_r1_s1": [(0, 60.0, 61.0, 59.0), (10, 68.0, 70.0, 66.0)]}
    for name, records in logs.items():
        os.makedirs(os.path.join(ablation.RUNS, name))
        with open(os.path.join(ablation.RUNS, name, "log.jsonl"), "w") as f:
            f.write(json.dumps({"step": 1, "recall": 0.5, "precision": 0.5, "format": 1.0, "kl": 0.0}) + "\n")
            for step, f1, p, r in records:
                f.write(json.dumps({"event": "validation", "step": step, "val_f1": f1, "val_precision": p,
                                    "val_recall": r}) + "\n")
    assert ablation.validation("mer_r1_s1") == {0: (60.0, 61.0, 59.0), 10: (68.0, 70.0, 66.0)}
    monkeypatch.setattr(ablation, "plot", lambda groups: None)  # no figure file from a test
    text = ablation.report()
    row = [l for l in text.splitlines() if l.startswith("| mer_r1 | 2 | 60.00")]
    # step 10: F1 (64 + 68) / 2 = 66, sample std 2.83; P 66 ± 5.66; R 66 ± 0; step 20 has one run
    assert row == ["| mer_r1 | 2 | 60.00 ± 0.00 (61.00 ± 0.00 / 59.00 ± 0.00) | 66.00 ± 2.83 (66.00 ± 5.66 / "
                   "66.00 ± 0.00) | 67.00 (65.00 / 69.00) |"], text


def test_gains_over_the_sft_and_over_baseline_seed_by_seed(ablation, monkeypatch):
    f1 = {"sft": 60.0, "baseline_s0": 64.0, "mer_r1_s0": 63.0, "baseline_s1": 66.0, "mer_r1_s1": 69.0}
    monkeypatch.setattr(ablation, "evaluate", lambda ckpt, out, log: {"test_fine": {
        m: {"scores": {"f1": f1[ckpt.split("/")[-2]]}} for m in ("slow", "fast")}})
    monkeypatch.setattr(ablation, "plot", lambda groups: None)
    ablation.run_all()
    lines = [l for l in ablation.report().splitlines() if l.startswith("- ")]
    # baseline 4, 6 over the SFT; mer_r1 3, 9 over the SFT and -1, +3 over baseline of its seed
    assert lines == ["- baseline: +5.00 ± 1.41 over 2 seeds",
                     "- mer_r1: +6.00 ± 4.24 over 2 seeds; against `baseline` +1.00 ± 2.83 over 2 seeds"]


def test_a_finished_run_without_its_optimizer_still_verifies(tmp_path):
    import mer.checkpoints
    ablation = load()
    ckpt = tmp_path / "last"
    ckpt.mkdir()
    (ckpt / "model.safetensors").write_bytes(b"weights")
    (ckpt / "trainer_state.pt").write_bytes(b"optimizer")
    json.dump(mer.checkpoints.file_checksums(str(ckpt)), open(ckpt / "checksums.json", "w"))
    os.remove(ckpt / "trainer_state.pt")
    assert mer.checkpoints.corrupt_files(str(ckpt)) == ["trainer_state.pt"]  # what deleting it alone did
    (ckpt / "trainer_state.pt").write_bytes(b"optimizer")
    ablation.drop_optimizer(str(ckpt))
    assert sorted(os.listdir(ckpt)) == ["checksums.json", "model.safetensors"]
    assert mer.checkpoints.corrupt_files(str(ckpt)) == []
    assert list(json.load(open(ckpt / "checksums.json"))) == ["model.safetensors"]


def test_a_variant_carries_train_grpo_settings_after_a_plus(monkeypatch):
    ablation, commands = load(), []
    monkeypatch.setattr(ablation, "sh", lambda cmd, log: commands.append(cmd))
    ablation.train("mer_r1+eta_high=0.28+importance=sequence_s1", "grpo", "mer_r1+eta_high=0.28+importance=sequence", 1, "x")
    cmd = commands[0]
    assert "--variant=mer_r1" in cmd and "--eta_high=0.28" in cmd and "--importance=sequence" in cmd and "--seed=1" in cmd
    assert [n for n, *_ in ablation.run_dirs("mer_r1,mer_r1+eta_high=0.28", "0")] == ["sft", "mer_r1_s0", "mer_r1+eta_high=0.28_s0"]
    # the real recipe's tables keep the settings they ran with; a variant's own come after them and win
    monkeypatch.setattr(ablation, "RECIPE", "real")
    ablation.train("mer_r1+beta=0.2_s1", "grpo", "mer_r1+beta=0.2", 1, "x")
    assert [a for a in commands[1] if a.startswith(("--beta", "--scale"))] == ["--scale_rewards=group", "--beta=0.04", "--beta=0.2"]
    assert ablation.variant_setting("mer_r1", "SCALE_REWARDS") == "group"  # not configs/real_rl.py's
    assert ablation.variant_setting("mer_r1+scale_rewards=none", "SCALE_REWARDS") == "none"


def test_an_options_table_compares_each_option_with_the_first_row(ablation, monkeypatch):
    # --table=options --variants=mer_r1,mer_r1+eta_high=0.28: its rows are those variants, and the
    # seed-by-seed differences are taken against mer_r1 (Table 4 takes them against baseline)
    f1 = {"sft": 60.0, "mer_r1_s0": 64.0, "mer_r1_s1": 66.0, "mer_r1+eta_high=0.28_s0": 65.0,
          "mer_r1+eta_high=0.28_s1": 69.0}
    monkeypatch.setattr(ablation, "evaluate", lambda ckpt, out, log: {"test_fine": {
        m: {"scores": {"f1": f1[ckpt.split("/")[-2]]}} for m in ("slow", "fast")}})
    monkeypatch.setattr(ablation, "plot", lambda groups: None)
    monkeypatch.setattr(ablation, "VARIANTS", "mer_r1,mer_r1+eta_high=0.28")
    monkeypatch.setattr(ablation, "table_variants", "mer_r1,mer_r1+eta_high=0.28")
    ablation.run_all()
    text = ablation.report()
    assert [l.split(" | ")[:3] for l in text.splitlines() if l.startswith("| mer_r1")][:2] == \
        [["| mer_r1", "2", "65.00 ± 1.41"], ["| mer_r1+eta_high=0.28", "2", "67.00 ± 2.83"]]
    # +1 and +3 over mer_r1 of the same seed
    assert [l for l in text.splitlines() if l.startswith("- ")] == [
        "- mer_r1: +5.00 ± 1.41 over 2 seeds",
        "- mer_r1+eta_high=0.28: +7.00 ± 2.83 over 2 seeds; against `mer_r1` +2.00 ± 1.41 over 2 seeds"]
