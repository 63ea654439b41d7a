"""Classify image files with the shipped student: onnxruntime, numpy and Pillow only.

    python predict.py student.onnx image1.png image2.jpg ...

Prints one line per image: the file, the predicted class name, its probability.
Everything the model needs to know about its input (channels, size, value range,
class names) is read from the model file's metadata; the images are scaled to
[0, 1] here and the model normalises them itself, so do not normalise again.
"""

import json
import sys

import numpy as np
import onnxruntime as ort
from PIL import Image


def main(model_path, image_paths):
    session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    spec = json.loads(meta["cskd.input"])
    classes = json.loads(meta["cskd.class_names"])
    channels, height, width = spec["shape"][1:]
    batch = []
    for path in image_paths:
        with Image.open(path) as img:
            img = img.convert("L" if channels == 1 else "RGB").resize((width, height), Image.BILINEAR)
            x = np.asarray(img, dtype=np.float32) / 255.0  # the model's range is [0, 1]
        batch.append(x[None] if channels == 1 else x.transpose(2, 0, 1))
    logits = session.run(None, {spec["name"]: np.stack(batch)})[0]
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    for path, p in zip(image_paths, probs, strict=True):
        print(f"{path}\t{classes[int(p.argmax())]}\t{float(p.max()):.4f}")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2:])
