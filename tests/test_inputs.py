

import mer.checkpoints, mer.data, mer.inputs, mer.models, mer.prompts, mer.run

TOK = mer.models.tiny_tokenizer()
SAMPLE = {"name": "s1", "video": "Ann smiles.", "audio": "Ann speaks with a bright tone.", "subtitle": "We won!",
          "openset": "happy, excited", "reason": "She smiles and her voice is bright."}


def test_padding_both_sides():
    ids, mask = mer.inputs.left_pad([[5, 6, 7], [8]], 0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    ids, mask = mer.inputs.right_pad([[5, 6, 7], [8], []], 0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0], [0, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0], [0, 0, 0]]
