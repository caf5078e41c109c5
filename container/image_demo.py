"""The image demo: a CNN-free classifier that runs on CPU in seconds, served by Lucent's built-in server.

Synthetic pictures (``make_images``): a noisy background with one red square or one blue disc somewhere;
the label says which. The model is scikit-learn's logistic regression on the picture's pixels averaged
down to 8 x 8 (``downsample``), behind a ``code/inference.py`` whose ``predict_fn`` does the averaging:
requests are ``image/jpeg`` or ``image/png`` (one picture) or ``application/x-npy`` ``(n, height, width, 3)``
uint8, decoded by the server's default ``input_fn``; the answer is ``[[P(square), P(disc)], ...]``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

LABELS = ["square", "disc"]
GRID = 8  # the model sees the picture averaged over GRID x GRID blocks

# The model server's script (docs/model-server.md). The default input_fn decodes every image request into
# (n, height, width, 3) uint8; the default output_fn writes the scores as JSON.
IMAGE_INFERENCE_SCRIPT = f'''\
"""Serve the Lucent image demo's classifier: pictures in, [[P(square), P(disc)], ...] out (JSON)."""

import os

import joblib
import numpy as np

GRID = {GRID}


def downsample(images, grid=GRID):
    """(n, height, width, 3) uint8 -> (n, grid * grid * 3) block means in [0, 1]."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim == 3:
        images = images[None]
    _, height, width, _ = images.shape
    rows = (np.arange(grid) * height) // grid
    cols = (np.arange(grid) * width) // grid
    sums = np.add.reduceat(np.add.reduceat(images, rows, axis=1), cols, axis=2)
    counts = np.diff(np.append(rows, height))[:, None] * np.diff(np.append(cols, width))[None, :]
    return (sums / counts[None, :, :, None] / 255.0).reshape(len(images), -1)


def model_fn(model_dir):
    return joblib.load(os.path.join(model_dir, "model.joblib"))


def predict_fn(input_data, model):
    return model.predict_proba(downsample(input_data))
'''


def downsample(images: np.ndarray, grid: int = GRID) -> np.ndarray:
    """The demo model's features (the same function as in its inference script)."""
    namespace: dict = {}
    exec(compile(IMAGE_INFERENCE_SCRIPT, "inference.py", "exec"), namespace)  # noqa: S102 - our own constant
    return namespace["downsample"](images, grid)


def make_images(n: int, size: int = 64, seed: int = 0, width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``n`` pictures ``(n, size, width or size, 3)`` uint8 and their labels (0 = red square, 1 = blue disc)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=n)
    width = width or size
    images = np.empty((n, size, width, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:size, 0:width]
    for i in range(n):
        picture = rng.normal(150, 25, size=(size, width, 3))
        radius = rng.uniform(0.12, 0.22) * min(size, width)
        cy, cx = rng.uniform(radius, size - radius), rng.uniform(radius, width - radius)
        if labels[i] == 0:
            inside = (np.abs(yy - cy) <= radius) & (np.abs(xx - cx) <= radius)
            picture[inside] = (210, 40, 40)
        else:
            inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
            picture[inside] = (40, 60, 210)
        images[i] = np.clip(picture, 0, 255).astype(np.uint8)
    return images, labels


def train_image_model(n: int = 400, size: int = 64, seed: int = 0):
    """Logistic regression on the 8 x 8 block means of ``make_images`` pictures."""
    from sklearn.linear_model import LogisticRegression

    images, labels = make_images(n, size, seed)
    return LogisticRegression(C=1.0, max_iter=2000).fit(downsample(images), labels)


def write_image_model(model_dir: Path, model=None) -> Path:
    """A model folder for the built-in server: ``model.joblib`` and ``code/inference.py``."""
    import joblib

    model_dir = Path(model_dir)
    (model_dir / "code").mkdir(parents=True, exist_ok=True)
    joblib.dump(model if model is not None else train_image_model(), model_dir / "model.joblib")
    (model_dir / "code" / "inference.py").write_text(IMAGE_INFERENCE_SCRIPT, encoding="utf-8")
    return model_dir


def write_images(folder: Path, images: np.ndarray, fmt: str = "png") -> list[Path]:
    """One file per picture, ``image-0000.<fmt>``... (PNG: lossless, so the job sees the same pixels)."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(images):
        path = folder / f"image-{i:04d}.{fmt}"
        Image.fromarray(image).save(path, format="PNG" if fmt == "png" else "JPEG", quality=95)
        paths.append(path)
    return paths


# SLIC's compactness: the demo's flat, noisy pictures need a high one for about num_segments segments
# (at Clarify's default of 5, SLIC merges a noisy background into one or two segments).
DEMO_COMPACTNESS = 100


def image_demo_config(num_segments: int = 8, content_type: str = "application/x-npy", scoring: str = "server",
                      **shap: object) -> dict:
    """An analysis config explaining the demo model's pictures, scored by the built-in model server."""
    return {
        "dataset_type": "application/x-image",
        "methods": {
            "shap": {"image_config": {"model_type": "IMAGE_CLASSIFICATION", "num_segments": num_segments,
                                      "segment_compactness": DEMO_COMPACTNESS}, "seed": 0, **shap},
            "report": {"name": "report", "title": "Lucent demo: squares and discs"},
        },
        "predictor": {"content_type": content_type, "accept_type": "application/json", "label_headers": LABELS,
                      "lucent_scoring": scoring},
    }


def write_image_demo_job(root: Path, n_images: int = 6, size: int = 128, seed: int = 0,
                         config: dict | None = None, width: int | None = 64) -> Path:
    """Lay out a processing root: ``input/data/*.png``, ``input/model`` and ``input/config``. The default
    128 x 64 pictures make 8 SLIC segments (a 4 x 2 grid) at ``num_segments`` 8."""
    root = Path(root)
    images, _ = make_images(n_images, size, seed + 1, width)
    write_images(root / "input" / "data", images)
    write_image_model(root / "input" / "model", train_image_model(seed=seed))
    (root / "input" / "config").mkdir(parents=True, exist_ok=True)
    (root / "input" / "config" / "analysis_config.json").write_text(
        json.dumps(config or image_demo_config(), indent=2) + "\n", encoding="utf-8")
    return root


# The object-detection demo: a pixel classifier (logistic regression on RGB) marks "red square" pixels,
# each connected region of them is one detection, its confidence the mean pixel probability in its box.
# Answers {"prediction": [[class, confidence, xmin, ymin, xmax, ymax], ...]} (spec 5.3), one picture per request.
DETECTOR_SCRIPT = '''\
"""Serve the Lucent object-detection demo: one picture in, {"prediction": [[0, confidence, box...], ...]} out."""

import json
import os

import joblib
import numpy as np
from scipy import ndimage

MIN_PIXELS = 4


def model_fn(model_dir):
    return joblib.load(os.path.join(model_dir, "model.joblib"))


def detect(image, model):
    """Detections [0, confidence, xmin, ymin, xmax, ymax] of one (height, width, 3) uint8 picture."""
    height, width, _ = image.shape
    p = model.predict_proba(image.reshape(-1, 3).astype(np.float64) / 255.0)[:, 1].reshape(height, width)
    regions, count = ndimage.label(p > 0.5)
    found = []
    for region in range(1, count + 1):
        ys, xs = np.nonzero(regions == region)
        if len(ys) < MIN_PIXELS:
            continue
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        found.append([0, float(p[y0:y1, x0:x1].mean()), x0 / width, y0 / height, x1 / width, y1 / height])
    return found


def predict_fn(input_data, model):
    return [detect(image, model) for image in np.asarray(input_data)]


def output_fn(prediction, accept):
    return json.dumps({"prediction": prediction[0] if len(prediction) == 1 else prediction}), "application/json"
'''


def train_detector(seed: int = 0):
    """The detector's pixel classifier: red-square pixels against the noisy background and the blue discs."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(seed)
    square = np.clip(rng.normal((210, 40, 40), 20, size=(2000, 3)), 0, 255)
    other = np.clip(np.vstack([rng.normal(150, 25, size=(3000, 3)), rng.normal((40, 60, 210), 20, size=(1000, 3))]),
                    0, 255)
    pixels = np.vstack([square, other]) / 255.0
    return LogisticRegression(C=10.0, max_iter=2000).fit(pixels, np.r_[np.ones(len(square)), np.zeros(len(other))])


def detector_config(num_segments: int = 8, context: float = 1.0, **image: object) -> dict:
    """An analysis config explaining the detector's objects, scored by the built-in model server."""
    return {
        "dataset_type": "application/x-image",
        "probability_threshold": 0.5,
        "methods": {
            "shap": {"image_config": {"model_type": "OBJECT_DETECTION", "num_segments": num_segments,
                                      "segment_compactness": DEMO_COMPACTNESS, "context": context, "max_objects": 3,
                                      "iou_threshold": 0.5, **image}, "seed": 0},
            "report": {"name": "report", "title": "Lucent demo: red squares detected"},
        },
        "predictor": {"content_type": "image/png", "accept_type": "application/json", "probability": "prediction",
                      "label_headers": ["square"], "lucent_scoring": "server"},
    }


def write_detector_job(root: Path, n_images: int = 2, seed: int = 0, config: dict | None = None) -> Path:
    """A processing root for the detector: 128 x 64 pictures, each with a red square (and a blue disc)."""
    import joblib

    root = Path(root)
    rng = np.random.default_rng(seed + 7)
    pictures = []
    for _ in range(n_images):
        picture = rng.normal(150, 25, size=(128, 64, 3))
        y, x = rng.integers(8, 80), rng.integers(4, 36)
        picture[y:y + 24, x:x + 24] = (210, 40, 40)
        yy, xx = np.mgrid[0:128, 0:64]
        picture[(yy - (y + 60) % 118) ** 2 + (xx - 32) ** 2 <= 100] = (40, 60, 210)
        pictures.append(np.clip(picture, 0, 255).astype(np.uint8))
    write_images(root / "input" / "data", np.stack(pictures))
    (root / "input" / "model" / "code").mkdir(parents=True, exist_ok=True)
    joblib.dump(train_detector(seed), root / "input" / "model" / "model.joblib")
    (root / "input" / "model" / "code" / "inference.py").write_text(DETECTOR_SCRIPT, encoding="utf-8")
    (root / "input" / "config").mkdir(parents=True, exist_ok=True)
    (root / "input" / "config" / "analysis_config.json").write_text(
        json.dumps(config or detector_config(), indent=2) + "\n", encoding="utf-8")
    return root


def main(argv: list[str] | None = None) -> int:
    """``python -m container.image_demo [ROOT]``: lay out the image demo job in ROOT (default
    ``build/demo-image``) and run it with ``lucent run``; the pictures and the report land in ROOT/output."""
    import sys

    from container.cli import main as lucent

    args = sys.argv[1:] if argv is None else argv
    root = write_image_demo_job(Path(args[0] if args else "build/demo-image"), n_images=6)
    return lucent(["run", "--processing-root", str(root)])


__all__ = ["DETECTOR_SCRIPT", "IMAGE_INFERENCE_SCRIPT", "detector_config", "train_detector", "write_detector_job", "LABELS", "downsample", "image_demo_config", "make_images", "train_image_model",
           "main", "write_image_demo_job", "write_image_model", "write_images"]


if __name__ == "__main__":
    raise SystemExit(main())
