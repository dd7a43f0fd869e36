"""Contrastive training and fine-tuning of edgeclip models (`edgeclip train`). Imports torch.

- `data`: batch sources (the synthetic world, a CSV/JSONL of image-caption pairs, a folder of captioned images),
  each a pure function of (seed, step) so that a resumed run sees exactly the batches an uninterrupted one would.
- `loop`: the training loop (AdamW, warmup + cosine, clipping, atomic checkpoints, exact resume).
- `evaluate`: zero-shot accuracy on the world's fixed evaluation sets.
"""
