import csv
import os

import numpy as np
import pytest

import mer.checkpoints, mer.data, mer.inputs, mer.layouts, mer.models, mer.prompts, mer.run

TOK = mer.models.tiny_tokenizer()
SAMPLE = {"name": "s1", "video": "Ann smiles.", "audio": "Ann speaks with a bright tone.", "subtitle": "We won!",
          "openset": "happy, excited", "reason": "She smiles and her voice is bright."}


def test_bundled_splits():
    sizes = {s: len(mer.data.load_split(s)) for s in ("train", "test_fine", "test_basic", "test_sentiment")}
    assert sizes["train"] >= 3000 and min(sizes.values()) >= 200
    basic = mer.data.load_split("test_basic")
    assert all("," not in s["openset"] for s in basic)
    assert {s["valence"] for s in mer.data.load_split("test_sentiment")} == {-1, 0, 1}


def test_read_jsonl_errors(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"name": "a", "openset": "happy"}\n{"name": "b", "openset": \n')
    with pytest.raises(SystemExit, match="line 2: not valid JSON"):
        mer.data.read_jsonl(str(p))
    p.write_text('{"openset": "happy"}\n')
    with pytest.raises(SystemExit, match="line 1: each sample must be an object with a non-empty string 'name'"):
        mer.data.read_jsonl(str(p))
    p.write_text('{"name": "a"}\n')
    with pytest.raises(SystemExit, match=r"line 1 \(a\): needs 'openset'"):
        mer.data.read_jsonl(str(p))
    p.write_text("\n")
    with pytest.raises(SystemExit, match="no samples"):
        mer.data.read_jsonl(str(p))


@pytest.mark.parametrize("line, message", [
    ('{"name": "a", "openset": ["happy", "sad"]}', r"line 1 \(a\): 'openset' is \[\"happy\", \"sad\"\]; write it as one "
                                                   r"comma-separated string"),
    ('{"name": "a", "openset": null}', r"line 1 \(a\): 'openset' is null"),
    ('{"name": "a", "openset": "happy", "subtitle": 5}', r"'subtitle' is 5; write it as a string"),
    ('{"name": "a", "valence": NaN}', r"'valence' is NaN; it must be a finite number"),
    ('{"name": "a", "valence": "1"}', r"'valence' is \"1\""),
    ('{"name": 3, "openset": "happy"}', "non-empty string 'name'"),
])
def test_sample_fields_are_checked_when_loaded(tmp_path, line, message):
    p = tmp_path / "bad.jsonl"
    p.write_text(line + "\n")
    with pytest.raises(SystemExit, match=message):
        mer.data.read_jsonl(str(p))


def test_training_needs_openset_and_reads_bom_but_not_other_encodings(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_bytes(b'\xef\xbb\xbf{"name": "a", "openset": "happy"}\n{"name": "b", "valence": 1}\n')
    assert [s["name"] for s in mer.data.load_samples(str(p))] == ["a", "b"]   # the BOM is read, valence-only is fine
    with pytest.raises(SystemExit, match=r"line 2 \(b\): this run needs a non-empty 'openset'"):
        mer.data.load_samples(str(p), need=("openset",))
    with pytest.raises(SystemExit, match=r"line 2 \(b\): this run needs"):
        mer.data.load_samples(f"fine:{p}", need=("openset",))       # a TASK: prefix loads the same file
    p.write_bytes('{"name": "a", "openset": "happy"}\n{"name": "b", "openset": "gl\u00fccklich"}\n'.encode("latin-1"))
    with pytest.raises(SystemExit, match=r"d.jsonl, line 2: not UTF-8 \(byte 29 of the line is b'\\xfc'\)"):
        mer.data.read_jsonl(str(p))


def _csv(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def _mercaption(root, names=("a", "b"), media=("a", "b")):
    os.makedirs(root / "video", exist_ok=True)
    os.makedirs(root / "audio", exist_ok=True)
    _csv(root / "track2_train_mercaptionplus.csv", ["name", "openset"], [[n, "['happy', 'relieved']"] for n in names])
    _csv(root / "track3_train_mercaptionplus.csv", ["name", "reason"], [[n, f"reason {n}"] for n in names])
    _csv(root / "subtitle_chieng.csv", ["name", "english", "chinese"], [[n, f"line {n}", "x"] for n in names])
    for n in media:
        (root / "video" / f"{n}.mp4").write_bytes(b"0")
        (root / "audio" / f"{n}.wav").write_bytes(b"0")


def test_mercaptionplus_loader(tmp_path, capsys):
    _mercaption(tmp_path)
    samples = mer.data.load_samples(f"mercaptionplus:{tmp_path}")
    assert samples[0] == {"name": "a", "subtitle": "line a", "openset": "happy, relieved", "reason": "reason a",
                          "video_path": str(tmp_path / "video" / "a.mp4"), "audio_path": str(tmp_path / "audio" / "a.wav")}
    os.remove(tmp_path / "audio" / "b.wav")
    with pytest.raises(SystemExit, match="'b' has no audio/b.wav.*--skip_missing_media=True"):
        mer.data.load_samples(f"mercaptionplus:{tmp_path}")
    assert [s["name"] for s in mer.data.load_samples(f"mercaptionplus:{tmp_path}", skip_missing_media=True)] == ["a"]
    assert "skipped 1 samples with missing media" in capsys.readouterr().err


@pytest.mark.parametrize("file,rows,message", [
    ("track2_train_mercaptionplus.csv", [["a", "happy"], ["", "sad"]], r"track2_train_mercaptionplus.csv, row 3: empty name"),
    ("track2_train_mercaptionplus.csv", [["a", "happy"], ["a", "sad"]], r"row 3: name 'a' appears twice"),
    ("track2_train_mercaptionplus.csv", [["a", "[]"]], r"sample 'a' has no emotion words"),
])
def test_mercaptionplus_bad_rows(tmp_path, file, rows, message):
    _mercaption(tmp_path)
    _csv(tmp_path / file, ["name", "openset"], rows)
    with pytest.raises(SystemExit, match=message):
        mer.data.load_samples(f"mercaptionplus:{tmp_path}")


def test_mercaptionplus_bad_header(tmp_path):
    _mercaption(tmp_path)
    _csv(tmp_path / "track3_train_mercaptionplus.csv", ["name", "text"], [["a", "x"]])
    with pytest.raises(SystemExit, match="track3_train_mercaptionplus.csv: missing column\\(s\\) reason"):
        mer.data.load_samples(f"mercaptionplus:{tmp_path}")


def test_ovmerd_loader(tmp_path):
    os.makedirs(tmp_path / "video")
    _csv(tmp_path / "ovlabel.csv", ["name", "openset"], [["v1", "[angry, dissatisfied]"]])
    _csv(tmp_path / "subtitle_eng.csv", ["name", "sentence"], [["v1", "It's not easy."]])
    (tmp_path / "video" / "v1.mp4").write_bytes(b"0")
    assert mer.data.load_samples(f"ovmerd:{tmp_path}") == [
        {"name": "v1", "subtitle": "It's not easy.", "openset": "angry, dissatisfied",
         "video_path": str(tmp_path / "video" / "v1.mp4")}]


def _npz(path, key, corpus):
    np.savez(path, **{key: np.array(corpus, dtype=object)})


def test_unibench_loaders(tmp_path):
    _npz(tmp_path / "label.npz", "test_corpus", {"m1": {"emo": 1}, "m2": {"emo": 3}})
    _csv(tmp_path / "transcription-engchi-polish.csv", ["name", "english"], [["m1", "Great!"], ["m2", "Okay."]])
    samples = mer.layouts.load_unibench(str(tmp_path), "meld", media=False)
    assert samples == [{"name": "m1", "subtitle": "Great!", "basic": "joy", "openset": "joy"},
                       {"name": "m2", "subtitle": "Okay.", "basic": "neutral", "openset": "neutral"}]
    _npz(tmp_path / "label_4way.npz", "whole_corpus", {"Ses01F_x": {"emo": 0}, "Ses05M_y": {"emo": 3}})
    assert [(s["name"], s["basic"]) for s in mer.layouts.load_unibench(str(tmp_path), "iemocap", media=False)] == [("Ses05M_y", "anger")]
    _npz(tmp_path / "label.npz", "test_corpus", {"s1": {"val": -1.6}, "s2": {"val": 0.0}})
    assert [s["valence"] for s in mer.layouts.load_unibench(str(tmp_path), "mosi", media=False)] == [-1.6, 0.0]
    _npz(tmp_path / "label-6way.npz", "test1_corpus", {"x": {"emo": "Worried "}})
    assert mer.layouts.load_unibench(str(tmp_path), "mer2023", media=False)[0]["basic"] == "worried"


@pytest.mark.parametrize("corpus,message", [
    ({"m1": {"emo": 9}}, r"sample 'm1'.*emo must be an integer 0..6, got 9"),
    ({"m1": {"label": 1}}, r"sample 'm1'.*label must be a dict with 'emo' or 'val'"),
    ({"m1": {"val": "high"}}, r"sample 'm1'.*val must be a number"),
])
def test_unibench_bad_labels(tmp_path, corpus, message):
    _npz(tmp_path / "label.npz", "test_corpus", corpus)
    with pytest.raises(SystemExit, match=message):
        mer.layouts.load_unibench(str(tmp_path), "meld", media=False)
    with pytest.raises(SystemExit, match="no key 'test_corpus'"):
        _npz(tmp_path / "label.npz", "other", corpus)
        mer.layouts.load_unibench(str(tmp_path), "meld", media=False)


def test_unibench_missing_media_is_an_error(tmp_path):
    _npz(tmp_path / "label.npz", "test_corpus", {"s1": {"val": 1.0}})
    with pytest.raises(SystemExit, match="'s1' has no video/s1.mp4 / audio/s1.wav"):
        mer.data.load_samples(f"mosei:{tmp_path}")
    with pytest.raises(SystemExit, match="unknown data spec"):
        mer.data.load_samples(f"nope:{tmp_path}")


def test_batch_at_is_a_fixed_stream_split_over_ranks():
    samples = list("abcde")
    full = mer.data.batch_at(samples, 3, 4, seed=0)
    assert [p for p, _ in full] == [3, 4, 5, 6]
    assert full == mer.data.batch_at(samples, 3, 4, seed=0)           # a resumed run sees the same batch
    first_epoch = [s for _, s in mer.data.batch_at(samples, 0, 5, seed=0)]
    assert sorted(first_epoch) == samples                          # each epoch is a permutation
    assert mer.data.batch_at(samples, 3, 4, 0, rank=0, world=2) + mer.data.batch_at(samples, 3, 4, 0, rank=1, world=2) \
        == [full[0], full[2], full[1], full[3]]


def test_a_training_file_that_is_not_json_lines_is_named_as_typed(tmp_path):
    (tmp_path / "arr.jsonl").write_text('[{"name": "a", "subtitle": "x", "openset": "happy"}]\n')
    with pytest.raises(SystemExit, match=r"arr.jsonl, line 1: a JSON array; the file must hold JSON lines"):
        mer.data.load_samples(str(tmp_path / "arr.jsonl"))
    (tmp_path / "s.json").write_text('{"name": "a", "subtitle": "x", "openset": "happy"}\n')
    for spec, what in ((str(tmp_path), "a folder"), (str(tmp_path / "s.json"), r"not JSON lines \(.jsonl\)"),
                       ("tarin", "no bundled split of that name")):
        with pytest.raises(SystemExit, match=rf"^{spec}: {what}; pass a .jsonl file .*goemotions/train, .* train\) or KIND:DIR"):
            mer.data.load_samples(spec)
    with pytest.raises(SystemExit, match=r"unknown prefix 'fien:'; a .jsonl file may carry a TASK: prefix"):
        mer.data.load_samples(f"fien:{tmp_path / 'arr.jsonl'}")      # a typo, not "no such file"


def test_interleave_draws_half_from_each_pool():
    assert mer.data.interleave(list("abcde"), [1, 2]) == ["a", 1, "b", 2, "c", 1, "d", 2, "e", 1]
    assert mer.data.interleave([1], list("xyz")) == [1, "x", 1, "y", 1, "z"]
    pool = mer.data.interleave(list(range(100)), ["t"] * 7)
    drawn = [s for _, s in mer.data.batch_at(pool, 0, 200, seed=3)]  # one epoch's shuffle of the 200
    assert drawn.count("t") == 100 and sorted(x for x in drawn if x != "t") == list(range(100))


def test_training_counts_samples_whose_labels_map_to_nothing_and_refuses_when_none_map(capsys):
    import wheel
    wheels = wheel.load_wheels()
    samples = [{"name": "a", "openset": "happy, xyzzy"}, {"name": "b", "openset": "neutral；xyzzy"},
               {"name": "c", "openset": "dissatisfied"}]
    assert mer.data.report_unmapped("train", samples, wheels) is None
    assert "warning: train: 1 of 3 samples have labels that map to nothing in any wheel (e.g. 'b'" in capsys.readouterr().err
    assert mer.data.report_unmapped("train", [samples[0], samples[2]], wheels) is None
    assert capsys.readouterr().err == ""
    with pytest.raises(SystemExit, match="x.jsonl: no sample's labels map to a category in any wheel .* every reward would be 0"):
        mer.data.report_unmapped("x.jsonl", [samples[1], {"name": "d", "openset": ""}], wheels)
    assert mer.data.report_unmapped("goemotions/train", mer.data.load_split("goemotions/train")[:2000], wheels) is None


def test_real_layouts_report_their_unmapped_label_words(tmp_path, capsys):
    import wheel
    wheels = wheel.load_wheels()
    samples = [{"name": "a", "openset": "happy, xyzzy"}, {"name": "b", "openset": "dissatisfied"}]
    assert mer.data.report_unmapped("train", samples, wheels) is None          # bundled data: silent
    assert mer.data.report_unmapped("x.jsonl", samples, wheels) is None
    assert mer.data.report_unmapped(f"ovmerd:{tmp_path}", samples, wheels) == pytest.approx(1 / 3)
    err = capsys.readouterr().err
    assert "33.3% of the label words map to nothing" in err and "xyzzy" in err
    assert "warning" in err and "--wheels=DIR" in err and "wheel.py --coverage" in err
    mer.data.report_unmapped(f"ovmerd:{tmp_path}", samples[1:], wheels)
    err = capsys.readouterr().err
    assert "0.0% of the label words" in err and "warning" not in err


def test_a_name_used_twice_in_a_jsonl_file_is_refused(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"name": "a", "openset": "happy"}\n{"name": "b", "openset": "sad"}\n{"name": "a", "openset": "sad"}\n')
    with pytest.raises(SystemExit, match="d.jsonl, line 3: the name 'a' is taken by line 1"):
        mer.data.read_jsonl(str(path))


def test_missing_media_of_a_jsonl_file_is_found_before_any_model_loads(tmp_path, capsys):
    video = tmp_path / "here.mp4"
    video.write_bytes(b"x")
    path = tmp_path / "m.jsonl"
    path.write_text(f'{{"name": "a", "openset": "happy", "video_path": "{video}"}}\n'
                    f'{{"name": "b", "openset": "sad", "video_path": "{tmp_path / "gone.mp4"}"}}\n')
    with pytest.raises(SystemExit, match=r"m.jsonl \(b\): no such media file .*gone.mp4; .*--skip_missing_media=True"):
        mer.data.load_samples(str(path))
    assert [s["name"] for s in mer.data.load_samples(str(path), skip_missing_media=True)] == ["a"]
    assert "skipped 1 samples with missing media (first: b)" in capsys.readouterr().err
