"""Output agreement of pruned DB detectors with the original on held-out images.

    python tools/db_agreement.py ORIGINAL.onnx IMAGES.npz PRUNED.onnx...

For each pruned model: mean |p - p0| of the probability map, the share of pixels where
(p > 0.3) == (p0 > 0.3), and the IoU of the two text regions (p > 0.3), one JSON line each.
"""
import sys, json
import numpy as np, onnxruntime as ort
orig, data = sys.argv[1], sys.argv[2]
x = np.load(data)["x"]
def probs(path):
    s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return np.concatenate([s.run(None, {"x": x[i:i + 8]})[0] for i in range(0, len(x), 8)])
p0 = probs(orig)
for path in sys.argv[3:]:
    p = probs(path)
    a, b = p0 > 0.3, p > 0.3
    print(json.dumps({"model": path, "images": len(x), "mean_abs_diff": round(float(np.abs(p - p0).mean()), 4),
                      "agreement_at_0.3": round(float((a == b).mean()), 4),
                      "iou_at_0.3": round(float((a & b).sum() / max((a | b).sum(), 1)), 4),
                      "text_share_orig": round(float(a.mean()), 4), "text_share_pruned": round(float(b.mean()), 4)}))
