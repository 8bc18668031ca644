"""Synthetic document images for the PP-OCRv3 DB text detector, as .npz (x: N x 3 x 320 x 320).

    python tools/make_db_images.py N SEED OUT.npz

Light, slightly noisy paper with dark lines of random glyph blobs, normalised as PaddleOCR does
((x/255 - mean) / std, ImageNet statistics). Not real text: the detector fires on them, which
is enough to compare a pruned detector with the original (tools/db_agreement.py).
"""
import numpy as np, sys
def image(rng, size=320):
    img = np.full((size, size, 3), rng.uniform(180, 250), np.float32) + rng.normal(0, 6, (size, size, 3))
    ink = rng.uniform(0, 90, 3)
    y = int(rng.integers(5, 40))
    while y < size - 20:
        h = int(rng.integers(8, 24)); x = int(rng.integers(0, size // 3)); end = int(rng.integers(size // 2, size))
        while x < end:
            w = int(rng.integers(h // 3 + 1, h + 2))
            glyph = rng.random((h, w)) < rng.uniform(0.3, 0.6)
            glyph[:, :1] = glyph[:, -1:] = False
            sub = img[y:y + h, x:x + w]
            sub[glyph[:sub.shape[0], :sub.shape[1]]] = ink
            x += w + int(rng.integers(1, h // 2 + 2)) + (int(rng.integers(h, 2 * h)) if rng.random() < 0.15 else 0)
        y += h + int(rng.integers(6, 40))
    img = np.clip(img, 0, 255) / 255.0
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    return ((img - mean) / std).transpose(2, 0, 1).astype(np.float32)
n, seed, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
rng = np.random.default_rng(seed)
np.savez(out, x=np.stack([image(rng) for _ in range(n)]))
