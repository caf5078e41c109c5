"""Image explanations end to end: `lucent run` on a folder of pictures, the demo model behind the built-in
model server, values checked against exact Shapley values by enumeration (docs/images.md)."""

from __future__ import annotations

import io
import itertools
import json
import logging
import math
import struct
import zlib
from pathlib import Path

import joblib
import numpy as np
import pytest
from PIL import Image

from analyzer.explain import shards
from analyzer.explain.checkpoint_store import FolderStore
from container.image_demo import DEMO_COMPACTNESS, LABELS, downsample, image_demo_config, write_image_demo_job
from container.job import SUCCESS_MESSAGE
from tests.conftest import JobRoot, run_crashing_after_shards

TOLERANCE = 1e-9


def _demo_job(tmp_path: Path, n_images: int = 2, **config: object) -> JobRoot:
    root = write_image_demo_job(tmp_path / "job", n_images=n_images, config=image_demo_config(**config))
    return JobRoot(root)


def _segments(image: np.ndarray) -> np.ndarray:
    from skimage.segmentation import slic

    labels = slic(image, n_segments=8, compactness=DEMO_COMPACTNESS, start_label=0, channel_axis=-1)
    return np.unique(labels, return_inverse=True)[1].reshape(labels.shape)


def _exact_shapley(score, image: np.ndarray, segments: np.ndarray, fill: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Shapley values by enumerating all 2^M coalitions (the oracle), and v(empty), v(all)."""
    m = int(segments.max()) + 1
    coalitions = np.array(list(itertools.product([0, 1], repeat=m)), dtype=bool)
    pictures = np.where(coalitions[:, segments][..., None], image[None], fill[None])
    values = score(pictures)  # (2^M, k)
    index = {tuple(c): i for i, c in enumerate(coalitions.astype(int).tolist())}
    phi = np.zeros((m, values.shape[1]))
    for c in coalitions:
        size = int(c.sum())
        for j in np.flatnonzero(~c):
            weight = math.factorial(size) * math.factorial(m - size - 1) / math.factorial(m)
            with_j = c.copy()
            with_j[j] = True
            phi[j] += weight * (values[index[tuple(with_j.astype(int))]] - values[index[tuple(c.astype(int))]])
    return phi, values[[0, -1]]


def _read(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_npy_job_equals_brute_force_enumeration(tmp_path):
    job = _demo_job(tmp_path)
    assert job.run() == 0, job.message
    assert job.message == SUCCESS_MESSAGE
    section = job.analysis()["explanations"]["lucent_image_shap"]
    assert section["label_headers"] == LABELS
    model = joblib.load(job.root / "input" / "model" / "model.joblib")

    def score(pictures: np.ndarray) -> np.ndarray:
        return model.predict_proba(downsample(pictures))

    assert [entry["image"] for entry in section["images"]] == ["image-0000.png", "image-0001.png"]
    for entry in section["images"]:
        image = _read(job.data_dir / entry["image"])
        segments = _segments(image)
        assert entry["n_segments"] == 8 == segments.max() + 1
        fill = np.broadcast_to(np.rint(image.reshape(-1, 3).mean(axis=0)).astype(np.uint8), image.shape)
        phi, (empty, full) = _exact_shapley(score, image, segments, fill)
        for c, label in enumerate(LABELS):
            np.testing.assert_allclose(entry["shap_values"][label], phi[:, c], rtol=0, atol=TOLERANCE)
            assert entry["lucent_stderr"][label] == [0.0] * 8  # all 254 coalitions: exact
        np.testing.assert_allclose([entry["reference"][label] for label in LABELS], empty, atol=TOLERANCE)
        np.testing.assert_allclose([entry["prediction"][label] for label in LABELS], full, atol=TOLERANCE)
        assert entry["predicted_label"] == LABELS[int(np.argmax(full))]

        # The pictures (spec 4.7): the segmented image, and the heatmap of the predicted label, where the
        # most positive segment is blue and the most negative red.
        outputs = set(job.output_files())
        assert {entry["segmented_image"], entry["heatmap"]} <= outputs
        heat = _read(job.output_dir / entry["heatmap"]).astype(int)
        assert heat.shape == image.shape
        top = phi[:, int(np.argmax(full))]
        strong = np.flatnonzero(np.abs(top) >= 0.3 * np.abs(top).max())  # coloured at >= 0.3 x 75 % opacity
        for segment in strong:
            red, _, blue = heat[segments == segment].mean(axis=0)
            assert np.sign(blue - red) == np.sign(top[segment]) and abs(blue - red) > 30, (segment, top, red, blue)
    for name in ("report.html", "report.pdf", "report.ipynb"):
        assert name in job.output_files()
    html = (job.output_dir / "report.html").read_text(encoding="utf-8")
    assert "image-0000.png" in html and "data:image/jpeg;base64," in html


def test_jpeg_requests_equal_brute_force_on_the_decoded_pictures(tmp_path):
    from analyzer.predict.image_requests import JPEG_QUALITY

    job = _demo_job(tmp_path, n_images=1, content_type="image/jpeg")
    assert job.run() == 0, job.message
    entry = job.analysis()["explanations"]["lucent_image_shap"]["images"][0]
    model = joblib.load(job.root / "input" / "model" / "model.joblib")

    def score(pictures: np.ndarray) -> np.ndarray:  # what the server sees: each picture through JPEG
        decoded = []
        for picture in pictures:
            buffer = io.BytesIO()
            Image.fromarray(picture).save(buffer, format="JPEG", quality=JPEG_QUALITY)
            decoded.append(np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")))
        return model.predict_proba(downsample(np.stack(decoded)))

    image = _read(job.data_dir / entry["image"])
    fill = np.broadcast_to(np.rint(image.reshape(-1, 3).mean(axis=0)).astype(np.uint8), image.shape)
    phi, _ = _exact_shapley(score, image, _segments(image), fill)
    for c, label in enumerate(LABELS):
        np.testing.assert_allclose(entry["shap_values"][label], phi[:, c], rtol=0, atol=TOLERANCE)


def test_unreadable_image_fails_naming_the_file(tmp_path):
    job = _demo_job(tmp_path)
    (job.data_dir / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a picture")
    assert job.run() == 1
    assert job.message.startswith("ClientError: ") and "broken.png" in job.message, job.message
    assert "analysis.json" not in job.output_files()


def png_header_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` RGB pixels, with one tiny compressed block of data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def test_a_picture_claiming_too_many_pixels_is_refused_before_decoding(tmp_path):
    # 10,000 x 10,000 = 100M pixels: past Pillow's decompression-bomb limit (89.5M), where Pillow only
    # warns and would decode 300 MB from a 100-byte file; under twice the limit, where it raises itself.
    assert Image.MAX_IMAGE_PIXELS < 100_000_000 < 2 * Image.MAX_IMAGE_PIXELS
    job = _demo_job(tmp_path)
    (job.data_dir / "bomb.png").write_bytes(png_header_claiming(10_000, 10_000))
    assert job.run() == 1
    assert job.message.startswith("ClientError: ") and "bomb.png" in job.message, job.message
    assert "10000 x 10000 pixels" in job.message, job.message
    assert "analysis.json" not in job.output_files()


def test_a_file_that_is_not_an_image_fails_naming_it(tmp_path):
    job = _demo_job(tmp_path)
    (job.data_dir / "notes.txt").write_text("hello", encoding="utf-8")
    assert job.run() == 1
    assert "notes.txt" in job.message and "not an image file" in job.message, job.message


def test_wrong_content_type_is_refused_naming_the_key(tmp_path):
    job = _demo_job(tmp_path, content_type="text/csv")
    assert job.run() == 1
    assert "predictor.content_type" in job.message and "text/csv" in job.message, job.message


def test_validate_reports_image_problems(tmp_path, capsys):
    job = _demo_job(tmp_path)
    job.write_config(json.dumps(image_demo_config(content_type="text/csv")))
    assert job.run(command="validate") == 1
    assert "predictor.content_type: text/csv cannot carry images" in capsys.readouterr().out
    job.write_config(json.dumps(image_demo_config()))
    (job.data_dir / "broken.png").write_bytes(b"not a picture")
    assert job.run(command="validate") == 1
    assert "broken.png" in capsys.readouterr().out
    (job.data_dir / "broken.png").unlink()
    detection = image_demo_config()
    detection["methods"]["shap"]["image_config"]["feature_extraction_method"] = "pixels"
    job.write_config(json.dumps(detection))
    assert job.run(command="validate") == 1
    assert "methods.shap.image_config.feature_extraction_method: 'pixels' is not supported" in capsys.readouterr().out
    job.write_config(json.dumps(image_demo_config()))
    assert job.run(command="validate") == 0
    assert job.output_files() == []


def _iou(a, b) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def test_object_detection_equals_brute_force_with_context(tmp_path):
    from container.image_demo import DETECTOR_SCRIPT, detector_config, write_detector_job

    context = 0.5
    job = JobRoot(write_detector_job(tmp_path / "job", n_images=2, config=detector_config(context=context)))
    assert job.run() == 0, job.message
    section = job.analysis()["explanations"]["lucent_image_shap"]
    assert section["model_type"] == "OBJECT_DETECTION" and section["context"] == context
    namespace: dict = {}
    exec(compile(DETECTOR_SCRIPT, "inference.py", "exec"), namespace)  # the model's own detect()
    model = joblib.load(job.root / "input" / "model" / "model.joblib")
    for entry in section["images"]:
        image = _read(job.data_dir / entry["image"])
        found = sorted((d for d in namespace["detect"](image, model) if d[1] >= 0.5), key=lambda d: -d[1])[:3]
        assert [(o["class_index"], o["confidence"], o["box"]) for o in entry["objects"]] == \
            [(d[0], d[1], d[2:]) for d in found]
        assert len(found) >= 1
        segments = _segments(image)
        fill = np.broadcast_to(np.rint(image.reshape(-1, 3).mean(axis=0)).astype(np.uint8), image.shape)
        height, width = image.shape[:2]
        for number, obj in enumerate(entry["objects"], start=1):
            x0, y0, x1, y1 = (obj["box"][0] * width, obj["box"][1] * height, obj["box"][2] * width,
                              obj["box"][3] * height)
            # Visible: the box widened by half its distance to each edge (pixel centres inside).
            ys, xs = np.mgrid[0:height, 0:width] + 0.5
            visible = ((ys >= y0 / 2) & (ys <= y1 + (height - y1) / 2) & (xs >= x0 / 2) & (xs <= x1 + (width - x1) / 2))

            def score(pictures, obj=obj, visible=visible, fill=fill):
                out = []
                for picture in pictures:
                    shown = np.where(visible[..., None], picture, fill)
                    matches = [d[1] for d in namespace["detect"](shown, model)
                               if d[0] == obj["class_index"] and _iou(d[2:], obj["box"]) >= 0.5]
                    out.append([max(matches, default=0.0)])
                return np.array(out)

            phi, (empty, full) = _exact_shapley(score, image, segments, fill)
            np.testing.assert_allclose(obj["shap_values"], phi[:, 0], rtol=0, atol=TOLERANCE)
            assert obj["reference"] == pytest.approx(empty[0], abs=TOLERANCE)
            assert obj["prediction"] == pytest.approx(full[0], abs=TOLERANCE)
            assert obj["heatmap"] == f"shap_{Path(entry['image']).stem}_box{number}_object.jpeg"
            assert obj["heatmap"] in job.output_files()
        assert entry["objects_image"] in job.output_files()
    assert "report.pdf" in job.output_files()


def test_a_crashed_image_job_resumes_from_the_checkpoint_store(tmp_path, monkeypatch, caplog):
    """Image SHAP keeps its shards' checkpoints in the store (``lucent.checkpoint_uri``) as tabular SHAP
    does, a folder per segment count, with the drawn seed: a rerun on a new machine (no work area) pulls
    them and scores only the rest; the values are those of an uninterrupted run (8 segments: every
    coalition, whatever the seed), and the store is emptied on success."""
    monkeypatch.setenv(shards.SHARD_ROWS_ENV, "300")  # 256 rows a picture at 8 segments: a shard per image
    reference = _demo_job(tmp_path / "reference", n_images=4)
    assert reference.run() == 0, reference.message

    store = FolderStore(tmp_path / "job" / "checkpoints")  # in the processing root: a folder outside it is refused
    config = image_demo_config()
    del config["methods"]["shap"]["seed"]  # drawn, and kept with the checkpoints
    config["lucent"] = {"checkpoint_uri": str(store.root)}
    job = JobRoot(write_image_demo_job(tmp_path / "job", n_images=4, config=config))
    assert run_crashing_after_shards(job, monkeypatch, 2) == 2
    kept = [name.split("/", 2)[2] for name in store.names("shap")]
    assert "seed.json" in kept
    done = sorted(name for name in kept if name != "seed.json")
    assert len(done) == 2 and all(name.startswith("segments-8/shard-") for name in done), kept
    work = job.output_dir / ".lucent-work"
    assert sorted(path.name for path in work.rglob("shard-*.npz")) == [name.split("/")[1] for name in done]
    shards.discard_entry(work)  # a new machine: nothing local

    with caplog.at_level(logging.INFO, logger="analyzer.explain.checkpoint_store"):
        assert job.run() == 0, job.message
    assert any("3 checkpoint file(s) downloaded" in record.getMessage() for record in caplog.records)
    ours = job.analysis()["explanations"]["lucent_image_shap"]["images"]
    theirs = reference.analysis()["explanations"]["lucent_image_shap"]["images"]
    assert ours == theirs
    assert store.names("shap") == [] and not work.exists()


def test_num_clusters_and_agg_method_are_logged_as_not_applying_to_images(tmp_path, caplog):
    """They were accepted silently; each now gets one log line, and the job still runs."""
    job = _demo_job(tmp_path, n_images=1, num_segments=4, scoring="in_process", num_clusters=3, agg_method="median")
    with caplog.at_level(logging.WARNING, logger="analyzer.explain.image_job"):
        assert job.run() == 0, job.message
    lines = [record.getMessage() for record in caplog.records if record.name == "analyzer.explain.image_job"]
    assert [line.split(" does not apply")[0] for line in lines if "does not apply to images" in line] == [
        "methods.shap.num_clusters (3)", "methods.shap.agg_method ('median')"]
