import json
import os

import pytest

import mer.checkpoints, mer.data, mer.inputs, mer.models, mer.prompts, mer.run

TOK = mer.models.tiny_tokenizer()
SAMPLE = {"name": "s1", "video": "Ann smiles.", "audio": "Ann speaks with a bright tone.", "subtitle": "We won!",
          "openset": "happy, excited", "reason": "She smiles and her voice is bright."}


def test_a_corrupt_checkpoint_is_found_and_named(tmp_path):
    model, tok = mer.models.load_model("tiny")
    path = str(tmp_path / "last")
    mer.checkpoints.save_checkpoint(path, model, tok, {"step": 1, "config": {}})
    assert set(json.load(open(os.path.join(path, "checksums.json")))) >= {"model.safetensors", "trainer_state.pt"}
    assert mer.checkpoints.find_checkpoint(path) == path
    weights = os.path.join(path, "model.safetensors")
    data = bytearray(open(weights, "rb").read())
    data[len(data) // 2] ^= 0x10                                                       # one flipped bit
    open(weights, "wb").write(bytes(data))
    with pytest.raises(SystemExit, match=r"last/model.safetensors: missing or not what was saved.*delete"):
        mer.checkpoints.find_checkpoint(path)
    mer.checkpoints.save_checkpoint(path + ".tmp2", model, tok, {"step": 1, "config": {}})
    os.replace(path + ".tmp2", path + ".old")                                           # an intact older one
    with pytest.raises(SystemExit, match=r"last.old is intact: move it over"):
        mer.checkpoints.find_checkpoint(path)
    os.remove(os.path.join(path + ".old", "trainer_state.pt"))                          # truncated: a file is gone
    with pytest.raises(SystemExit, match=r"last.old/trainer_state.pt: missing"):
        mer.checkpoints.verify_checkpoint(path + ".old")


def test_a_checkpoint_without_its_trainer_state_is_not_silently_restarted(tmp_path):
    model, tok = mer.models.load_model("tiny")
    path = str(tmp_path / "last")
    mer.checkpoints.save_checkpoint(path, model, tok, {"step": 3, "config": {}})
    assert mer.checkpoints.find_checkpoint(path) == path
    os.remove(os.path.join(path, "trainer_state.pt"))   # deleted to save disk, or before sharing
    with pytest.raises(SystemExit, match="last has no trainer_state.pt .* pass --resume=False"):
        mer.checkpoints.find_checkpoint(path)
    assert mer.checkpoints.find_checkpoint(str(tmp_path / "nothing")) is None


def test_non_finite_weights_are_never_saved(tmp_path):
    import torch
    model, tok = mer.models.load_model("tiny")
    path = str(tmp_path / "last")
    mer.checkpoints.save_checkpoint(path, model, tok, {"step": 1, "config": {}})
    before = open(os.path.join(path, "checksums.json")).read()
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    with pytest.raises(SystemExit, match="step 2: weights are not finite after the update .* lower --lr"):
        mer.checkpoints.save_checkpoint(path, model, tok, {"step": 2, "config": {}})
    assert open(os.path.join(path, "checksums.json")).read() == before   # the last good checkpoint stays


def test_resume_with_another_number_of_processes_is_refused():
    state = {"step": 4, "position": 4 * 16, "config": {"LR": 1e-5, "OUT_DIR": "a"}}
    mer.checkpoints.check_resume("last", state, {"LR": 1e-5, "OUT_DIR": "b"}, 16)        # same: resumes
    with pytest.raises(SystemExit, match="trained with 16 samples per step, this run takes 8: another number of processes"):
        mer.checkpoints.check_resume("last", state, {"LR": 1e-5}, 8)                     # 2 processes -> 1
    with pytest.raises(SystemExit, match="lr: 1e-05 in the checkpoint, 0.001 now"):
        mer.checkpoints.check_resume("last", state, {"LR": 1e-3}, 16)


def test_a_save_keeps_files_it_did_not_write_and_a_full_disk_is_named(tmp_path, monkeypatch, capsys):
    import errno
    import torch
    model, tok = mer.models.load_model("tiny")
    path = str(tmp_path / "last")
    mer.checkpoints.save_checkpoint(path, model, tok, {"step": 1, "config": {}})
    os.makedirs(os.path.join(path, "eval"))
    open(os.path.join(path, "eval", "summary.json"), "w").write("{}")       # evaluate.py --out_dir=RUN/last/eval
    open(os.path.join(path, "notes.txt"), "w").write("lr sweep, run 3")
    mer.checkpoints.save_checkpoint(path, model, tok, {"step": 2, "config": {}})
    assert open(os.path.join(path, "notes.txt")).read() == "lr sweep, run 3"
    assert os.path.isfile(os.path.join(path, "eval", "summary.json"))
    assert "kept eval, notes.txt" in capsys.readouterr().err
    assert "notes.txt" not in json.load(open(os.path.join(path, "checksums.json")))   # never blessed by a save
    assert mer.checkpoints.find_checkpoint(path) == path
    before = open(os.path.join(path, "checksums.json")).read()

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(SystemExit, match=r"no space left in .*: step 3 was not saved \(.*last kept as it was\)"):
        mer.checkpoints.save_checkpoint(path, model, tok, {"step": 3, "config": {}})
    assert not os.path.exists(path + ".tmp") and open(os.path.join(path, "checksums.json")).read() == before


def test_loading_verifies_what_it_loads_and_says_what_it_cannot(tmp_path, capsys):
    model, tok = mer.models.load_model("tiny")
    path = str(tmp_path / "last")
    mer.checkpoints.save_checkpoint(path, model, tok, {"step": 1, "config": {}})
    open(os.path.join(path, "README.md"), "a").write("my notes\n")           # an edited model card
    os.remove(os.path.join(path, "trainer_state.pt"))                         # optimizer deleted to share it
    assert mer.checkpoints.find_model(path) == path                           # evaluate / predict need neither
    mer.checkpoints.verify_model(path)                                        # nor does an --init
    weights = os.path.join(path, "model.safetensors")
    data = bytearray(open(weights, "rb").read())
    data[-100] ^= 1
    open(weights, "wb").write(bytes(data))
    with pytest.raises(SystemExit, match="last/model.safetensors: missing or not what was saved"):
        mer.checkpoints.verify_model(path)                                    # --init / --model are verified too
    mer.checkpoints.verify_model("tiny")                                      # a name: nothing to verify
    open(os.path.join(path, "checksums.json"), "w").write('{"model.safet')   # checksums.json itself damaged
    with pytest.raises(SystemExit, match=r"last/checksums.json: damaged .* delete it to load the folder unverified"):
        mer.checkpoints.find_model(path)
    os.remove(os.path.join(path, "checksums.json"))
    capsys.readouterr()
    assert mer.checkpoints.find_model(path) == path
    assert "has no checksums.json: its files cannot be verified" in capsys.readouterr().err


def test_a_reader_during_a_save_hears_retry_not_corrupt(tmp_path):
    model, tok = mer.models.load_model("tiny")
    path = str(tmp_path / "last")
    mer.checkpoints.save_checkpoint(path, model, tok, {"step": 1, "config": {}})
    os.makedirs(path + ".tmp")                                  # a save is writing its next checkpoint
    open(os.path.join(path, "model.safetensors"), "ab").write(b"x")   # and this reader sees a file mid-change
    with pytest.raises(SystemExit, match=r"last is being replaced by a save in progress .* retry in a moment"):
        mer.checkpoints.verify_checkpoint(path, retry_s=1.0)
