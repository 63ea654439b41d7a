"""Classify images with the shipped student: onnxruntime, numpy and Pillow only.

As a command:

    python predict.py student.onnx image1.png image2.jpg ...

prints one line per image (the file, the predicted class, its probability, tab-separated) and
one line per input it could not read (the file and why). It exits 2 if any input failed.

From Python:

    from predict import Classifier
    # one dict per input: {"label", "probability", "probabilities"}
    results = Classifier("student.onnx").predict(["a.png", array])

An input is a file path or a uint8 array ``[H, W]``, ``[H, W, C]`` or ``[C, H, W]``. Everything the
model needs to know about its input (channels, size, value range, class names) is read from the
model file's metadata; images are scaled to [0, 1] here and the model normalises them itself.

Images are decoded by the pipeline's rules (a test holds this copy equal to them): EXIF
orientation applied; 8-bit modes through Pillow's ``convert`` (palette expanded, alpha dropped,
colour to gray by ITU-R 601-2 luma); 16- and 32-bit integer images as 16-bit (value / 257);
float images as [0, 1]; gray to colour by repeating the channel; images over Pillow's pixel
limit refused.
"""

import json
import sys
import warnings

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps

SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def decode(img, channels):
    """A Pillow image as uint8 ``[channels, H, W]``, by the pipeline's rules."""
    img = ImageOps.exif_transpose(img)
    if img.mode in SIXTEEN_BIT or img.mode.startswith("I;16"):
        gray = np.clip(np.rint(np.asarray(img, dtype=np.float64) / 257.0), 0, 255).astype(np.uint8)
    elif img.mode == "F":
        gray = np.clip(np.rint(np.asarray(img, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)
    else:
        array = np.asarray(img.convert("L" if channels == 1 else "RGB"), dtype=np.uint8)
        return np.ascontiguousarray(array[None] if channels == 1 else array.transpose(2, 0, 1))
    return np.ascontiguousarray(np.repeat(gray[None], channels, axis=0))


class Classifier:
    """The shipped ONNX student with its preprocessing; ``predict`` takes paths and arrays."""

    def __init__(self, model_path, *, threads=None):
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(
            str(model_path), options, providers=["CPUExecutionProvider"]
        )
        meta = self.session.get_modelmeta().custom_metadata_map
        spec = json.loads(meta["cskd.input"])
        self.input_name = spec["name"]
        self.classes = json.loads(meta["cskd.class_names"])
        self.channels, self.height, self.width = spec["shape"][1:]

    def pixels(self, item):
        """One input as float32 ``[C, H, W]`` in [0, 1] at the model's size; ValueError if
        unreadable."""
        if isinstance(item, np.ndarray):
            array = np.asarray(item)
            if array.dtype != np.uint8 or array.ndim not in (2, 3):
                raise ValueError(
                    f"an array must be uint8 [H, W], [H, W, C] or [C, H, W], not {array.dtype} "
                    f"{list(array.shape)}"
                )
            if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
                array = array.transpose(1, 2, 0)
            img = Image.fromarray(
                array[..., 0] if array.ndim == 3 and array.shape[-1] == 1 else array
            )
        else:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                    img = Image.open(item)
                limit = Image.MAX_IMAGE_PIXELS
                if limit and img.width * img.height > limit:
                    raise ValueError(
                        f"{img.width}x{img.height} pixels, over Pillow's limit of {limit:,}"
                    )
                img.load()
            except (OSError, SyntaxError, Image.DecompressionBombError) as exc:
                raise ValueError(f"not a readable image ({exc})") from None
        chw = decode(img, self.channels)
        if chw.shape[1:] != (self.height, self.width):
            hwc = chw[0] if self.channels == 1 else chw.transpose(1, 2, 0)
            resized = np.asarray(
                Image.fromarray(hwc).resize((self.width, self.height), Image.BILINEAR)
            )
            chw = resized[None] if self.channels == 1 else resized.transpose(2, 0, 1)
        return chw.astype(np.float32) / 255.0  # the model's range is [0, 1]

    def predict(self, items, *, batch_size=64):
        """One dict per input: ``label``, ``probability`` and ``probabilities`` (by class name).
        Raises ValueError naming the first input that cannot be read."""
        batch = []
        for position, item in enumerate(items):
            try:
                batch.append(self.pixels(item))
            except ValueError as exc:
                name = item if isinstance(item, str) else f"input {position}"
                raise ValueError(f"{name}: {exc}") from None
        return self._classify(batch, batch_size)

    def _classify(self, batch, batch_size):
        results = []
        for start in range(0, len(batch), batch_size):
            logits = self.session.run(
                None, {self.input_name: np.stack(batch[start : start + batch_size])}
            )[0]
            probs = np.exp(logits - logits.max(1, keepdims=True))
            probs /= probs.sum(1, keepdims=True)
            for p in probs:
                results.append(
                    {
                        "label": self.classes[int(p.argmax())],
                        "probability": float(p.max()),
                        "probabilities": dict(zip(self.classes, map(float, p), strict=True)),
                    }
                )
        return results


def main(argv):
    if len(argv) < 2:
        print(__doc__.split("From Python")[0].strip(), file=sys.stderr)
        return 2
    try:
        classifier = Classifier(argv[0])
    except Exception as exc:  # any reason the model cannot be loaded: one line, not a traceback
        print(
            f"{argv[0]}: cannot load the model "
            f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})",
            file=sys.stderr,
        )
        return 2
    failed = 0
    for path in argv[1:]:  # one at a time: a bad file costs its own line only
        try:
            (result,) = classifier._classify([classifier.pixels(path)], 1)
        except ValueError as exc:
            failed += 1
            print(f"{path}\terror\t{exc}", file=sys.stderr)
            continue
        print(f"{path}\t{result['label']}\t{result['probability']:.4f}", flush=True)
    return 2 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
