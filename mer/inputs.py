"""Samples -> model inputs: prompt token ids and, for Qwen2.5-Omni, the media tensors its processor
makes from the decoded video frames and 16 kHz audio; left and right padding."""
import functools
import os

import torch

from mer.prompts import prompt_text

VIDEO_FRAMES = 8              # frames sampled uniformly over each video (an even number: 2 frames per patch)
VIDEO_SIZE = {"shortest_edge": 112 * 112, "longest_edge": 224 * 224}  # pixels per frame after resizing
AUDIO_RATE = 16000            # Whisper features want 16 kHz mono
AUDIO_SECONDS = 30            # longer audio is cut
MODEL_INPUTS = ("pixel_values_videos", "video_grid_thw", "video_second_per_grid", "input_features",
                "feature_attention_mask")


@functools.lru_cache(maxsize=16)  # a GRPO step encodes each sample twice (slow and fast prompt)
def read_video(path, n_frames=VIDEO_FRAMES):
    """n_frames RGB frames [n, H, W, 3] (uint8) sampled uniformly over a video, decoded with PyAV."""
    import av
    import numpy as np
    if not os.path.isfile(path):
        raise SystemExit(f"{path}: no such video file")
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise SystemExit(f"{path}: no video stream")
            total = sum(1 for packet in container.demux(video=0) if packet.size)
        if total == 0:
            raise SystemExit(f"{path}: the video has no frames")
        wanted = set(np.linspace(0, total - 1, n_frames).round().astype(int).tolist())
        frames = {}
        with av.open(path) as container:
            for i, frame in enumerate(container.decode(video=0)):
                if i in wanted:
                    frames[i] = frame.to_ndarray(format="rgb24")
    except av.FFmpegError as e:
        raise SystemExit(f"{path}: cannot decode the video ({e})")
    if not frames:
        raise SystemExit(f"{path}: no frame could be decoded")
    order = sorted(frames)
    picked = [frames[min(order, key=lambda j: abs(j - i))] for i in np.linspace(0, total - 1, n_frames).round()]
    return np.stack(picked)


@functools.lru_cache(maxsize=16)
def read_audio(path, seconds=AUDIO_SECONDS):
    """Mono float32 samples at 16 kHz (at most `seconds`), decoded and resampled with PyAV; a video
    file gives its sound track."""
    import av
    import numpy as np
    if not os.path.isfile(path):
        raise SystemExit(f"{path}: no such audio file")
    chunks = []
    try:
        with av.open(path) as container:
            if not container.streams.audio:
                raise SystemExit(f"{path}: no audio stream")
            resampler = av.AudioResampler(format="flt", layout="mono", rate=AUDIO_RATE)
            for frame in container.decode(audio=0):
                chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
            chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    except av.FFmpegError as e:
        raise SystemExit(f"{path}: cannot decode the audio ({e})")
    wave = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
    if wave.size == 0:
        raise SystemExit(f"{path}: the audio is empty (zero length)")
    return wave[:seconds * AUDIO_RATE].astype(np.float32)


def has_media(samples):
    """True when any sample points at a video or audio file."""
    return any(s.get("video_path") or s.get("audio_path") for s in samples)


def encode_prompts(samples, tokenizer, modes, processor=None):
    """Samples -> (prompt ids, media): one list of prompt token ids per sample (in its mode: one
    mode for all, or one per sample) and the media tensors the model takes with them.

    A text-only model (no processor) or samples without media get the clues as text and no media
    ({}). With a Qwen2.5-Omni processor and samples with `video_path` (and `audio_path`, else the
    video's sound track), the video frames and the 16 kHz audio go through the processor, which
    puts one placeholder token per video patch group / audio frame into the ids."""
    modes = [modes] * len(samples) if isinstance(modes, str) else list(modes)
    if processor is None or not has_media(samples):
        return [tokenizer(prompt_text(s, tokenizer, m), add_special_tokens=False)["input_ids"]
                for s, m in zip(samples, modes)], {}
    missing = [s["name"] for s in samples if not s.get("video_path")]
    if missing:
        audio_only = next((s for s in samples if s.get("audio_path") and not s.get("video_path")), None)
        raise SystemExit(f"sample {missing[0]!r} has no video_path: " + (
            "audio without a video is not supported (Qwen2.5-Omni gets the video's frames and its sound or the "
            "given audio); pass --video too, or clues as text (--audio_text)" if audio_only else
            "a batch is all multimodal or all text"))
    batch = processor(text=[prompt_text(s, tokenizer, m, media=True) for s, m in zip(samples, modes)],
                      videos=[read_video(s["video_path"]) for s in samples],
                      audio=[read_audio(s.get("audio_path") or s["video_path"]) for s in samples],
                      videos_kwargs={"size": VIDEO_SIZE, "do_sample_frames": False, "cap_pixels_per_frame": True},
                      padding=True, return_tensors="pt")
    ids = [row[mask.bool()].tolist() for row, mask in zip(batch["input_ids"], batch["attention_mask"])]
    return ids, {k: v for k, v in batch.items() if k in MODEL_INPUTS}


def left_pad(rows, pad, device="cpu"):
    """Left-padded ids and attention mask from a list of id lists (generation needs left padding)."""
    width = max(len(r) for r in rows)
    ids = torch.tensor([[pad] * (width - len(r)) + list(r) for r in rows], device=device)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
    return ids, mask


def right_pad(rows, pad, device="cpu"):
    """Right-padded ids and attention mask (teacher-forced continuations start at position 0):
    left_pad of the reversed rows, mirrored back."""
    ids, mask = left_pad([list(r)[::-1] for r in rows], pad, device)
    return ids.flip(1), mask.flip(1)


