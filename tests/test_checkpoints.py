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
