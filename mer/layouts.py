"""The real data layouts, read into samples (mer.data.load_samples dispatches here): MER-Caption+
(track2 labels, track3 reasons, subtitles, video/ and audio/), OV-MERD+, and the MER-UniBench
basic-emotion and sentiment sets (npz labels, transcripts, media). Errors name the file and row."""
import csv
import os
import sys

import wheel


def _read_csv(path, columns):
    """Rows of a CSV as dicts, checking the header; errors name the file."""
    if not os.path.isfile(path):
        raise SystemExit(f"{path}: no such file")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise SystemExit(f"{path}: missing column(s) {', '.join(missing)}; found {reader.fieldnames}")
        return [(i, row) for i, row in enumerate(reader, start=2)]


def _csv_column(path, column):
    """{name: value of column}; empty names and duplicates are errors naming file and row."""
    out = {}
    for i, row in _read_csv(path, ["name", column]):
        name = (row["name"] or "").strip()
        if not name:
            raise SystemExit(f"{path}, row {i}: empty name")
        if name in out:
            raise SystemExit(f"{path}, row {i}: name {name!r} appears twice")
        out[name] = (row[column] or "").strip()
    return out


def _media(root, folder, name, exts):
    for ext in exts:
        path = os.path.join(root, folder, name + ext)
        if os.path.isfile(path):
            return path
    return None


def _attach_media(samples, root, skip_missing_media, need_audio=True):
    """Add video_path/audio_path; a missing file is an error unless skip_missing_media."""
    kept, skipped = [], []
    for s in samples:
        video = _media(root, "video", s["name"], (".mp4", ".avi", ".mkv"))
        audio = _media(root, "audio", s["name"], (".wav", ".flac", ".mp3")) if need_audio else None
        missing = [f"video/{s['name']}.mp4" if video is None else None,
                   f"audio/{s['name']}.wav" if need_audio and audio is None else None]
        missing = [m for m in missing if m]
        if missing:
            if not skip_missing_media:
                raise SystemExit(f"{root}: sample {s['name']!r} has no {' / '.join(missing)}; "
                                 f"add the file, or pass --skip_missing_media=True to skip such samples")
            skipped.append(s["name"])
            continue
        s["video_path"] = video
        if audio:
            s["audio_path"] = audio
        kept.append(s)
    if skipped:
        print(f"{root}: skipped {len(skipped)} samples with missing media (first: {', '.join(skipped[:3])})",
              file=sys.stderr)
    return kept


def load_mercaptionplus(root, skip_missing_media=False, media=True):
    """MER-Caption+ training pool: track2 (openset) + track3 (reason) + subtitles + media paths."""
    openset = _csv_column(os.path.join(root, "track2_train_mercaptionplus.csv"), "openset")
    reason = _csv_column(os.path.join(root, "track3_train_mercaptionplus.csv"), "reason")
    subtitle = _csv_column(os.path.join(root, "subtitle_chieng.csv"), "english")
    samples = []
    for name, labels in openset.items():
        words = wheel.string_to_list(labels)
        if not words:
            raise SystemExit(f"{root}/track2_train_mercaptionplus.csv: sample {name!r} has no emotion words")
        samples.append({"name": name, "subtitle": subtitle.get(name, ""), "openset": ", ".join(words),
                        "reason": reason.get(name, "")})
    return _attach_media(samples, root, skip_missing_media) if media else samples


def load_ovmerd(root, skip_missing_media=False, media=True):
    """OV-MERD+: ovlabel.csv (name, openset), subtitle_eng.csv (name, sentence), video/."""
    labels = _csv_column(os.path.join(root, "ovlabel.csv"), "openset")
    subtitle = _csv_column(os.path.join(root, "subtitle_eng.csv"), "sentence")
    samples = [{"name": n, "subtitle": subtitle.get(n, ""), "openset": ", ".join(wheel.string_to_list(v))}
               for n, v in labels.items()]
    return _attach_media(samples, root, skip_missing_media, need_audio=False) if media else samples


# MER-UniBench basic-emotion and sentiment sets: label file, key, and the names of integer labels.
UNIBENCH = {
    "mer2023": ("label-6way.npz", "test1_corpus", None),
    "mer2024": ("label-6way.npz", "test1_corpus", None),
    "meld": ("label.npz", "test_corpus", ["anger", "joy", "sadness", "neutral", "disgust", "fear", "surprise"]),
    "iemocap": ("label_4way.npz", "whole_corpus", ["happy", "sad", "neutral", "anger"]),
    "mosi": ("label.npz", "test_corpus", None), "mosei": ("label.npz", "test_corpus", None),
    "sims": ("label.npz", "test_corpus", None), "simsv2": ("label.npz", "test_corpus", None),
}


def load_unibench(root, dataset, skip_missing_media=False, media=True):
    """A MER-UniBench basic (`emo`) or sentiment (`val`) set: npz labels + transcripts + media.
    IEMOCAP keeps Session 5 (its test set)."""
    import numpy as np
    if dataset not in UNIBENCH:
        raise SystemExit(f"unknown MER-UniBench set {dataset!r}; known: {', '.join(UNIBENCH)}")
    file, key, names = UNIBENCH[dataset]
    path = os.path.join(root, file)
    if not os.path.isfile(path):
        raise SystemExit(f"{path}: no such file")
    try:
        corpus = np.load(path, allow_pickle=True)[key].tolist()
    except KeyError:
        raise SystemExit(f"{path}: no key {key!r}")
    if not isinstance(corpus, dict):
        raise SystemExit(f"{path}: {key} must hold a dict name -> {{'emo': ...}} or {{'val': ...}}")
    transcript_path = os.path.join(root, "transcription-engchi-polish.csv")
    text = _csv_column(transcript_path, "english") if os.path.isfile(transcript_path) else {}
    samples = []
    for name, label in corpus.items():
        if dataset == "iemocap" and not str(name).startswith("Ses05"):
            continue
        where = f"{path}, sample {name!r}"
        if not isinstance(label, dict) or not ({"emo", "val"} & set(label)):
            raise SystemExit(f"{where}: label must be a dict with 'emo' or 'val', got {label!r}")
        s = {"name": str(name), "subtitle": text.get(str(name), "")}
        if "emo" in label:
            emo = label["emo"]
            if names is not None:
                if not (isinstance(emo, (int, np.integer)) and 0 <= emo < len(names)):
                    raise SystemExit(f"{where}: emo must be an integer 0..{len(names) - 1}, got {emo!r}")
                emo = names[int(emo)]
            s["basic"] = s["openset"] = str(emo).strip().lower()
        else:
            try:
                s["valence"] = float(label["val"])
            except (TypeError, ValueError):
                raise SystemExit(f"{where}: val must be a number, got {label['val']!r}")
        samples.append(s)
    if not samples:
        raise SystemExit(f"{path}: no samples")
    return _attach_media(samples, root, skip_missing_media) if media else samples
