import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
OFFICIAL_WHEELS = os.path.join(ROOT, "..", "shared", "affectgpt-emotion-wheel")


def shared_prompt_gap(model, ids, mask, media, row_media, completion, c_mask, n):
    """Largest difference between the logits that predict completion tokens when each prompt runs
    once for its n rows (mer.continuation_logits, what GRPO trains with) and when every row runs
    its full sequence (mer.forward_logits), over the positions whose token counts (c_mask = 1)."""
    import torch
    import mer
    full_ids = torch.cat([ids.repeat_interleave(n, 0), completion], 1)
    full_mask = torch.cat([mask.repeat_interleave(n, 0), c_mask], 1)
    with torch.no_grad():
        full = mer.forward_logits(model, full_ids, full_mask, row_media, keep=completion.shape[1] + 1)[:, :-1]
        shared = mer.continuation_logits(model, ids, mask, media, completion, c_mask, n)
    assert shared.shape == full.shape
    return ((shared - full).abs() * c_mask[..., None]).max().item()
