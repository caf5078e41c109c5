"""Object-detection answers Lucent would misread (analyzer/explain/image_detection.py check_detections): boxes
in pixels and class indexes beyond predictor.label_headers are refused naming the image and the detection."""

from __future__ import annotations

import numpy as np
import pytest

from analyzer.errors import UserError
from analyzer.explain.image_detection import check_detections
from container.image_demo import DETECTOR_SCRIPT, detector_config, write_detector_job
from tests.conftest import JobRoot


def test_fractions_within_the_tolerance_and_known_classes_pass():
    check_detections(np.array([[0, 0.9, 0.0, 0.1, 1.0, 0.5], [1, 0.4, -0.005, 0.2, 1.004, 0.9]]), ["a", "b"], "img")
    check_detections(np.array([[7, 0.9, 0.1, 0.1, 0.5, 0.5]]), [], "img")  # no label_headers: any class
    check_detections(np.zeros((0, 6)), ["a"], "img")


@pytest.mark.parametrize("row, says", [
    ([0, 0.9, 15, 10, 40, 30], "detection [0, 0.9, 15, 10, 40, 30] has box corners outside [0, 1]"),
    ([0, 0.9, -0.2, 0.1, 0.5, 0.5], "has box corners outside [0, 1]"),
    ([1, 0.9, 0.1, 0.1, 0.5, 0.5], "class index 1, which is not an index into predictor.label_headers (1 entries"),
    ([-1, 0.9, 0.1, 0.1, 0.5, 0.5], "class index -1"),
    ([0.5, 0.9, 0.1, 0.1, 0.5, 0.5], "class index 0.5"),
])
def test_pixels_and_unknown_classes_are_refused_by_name(row, says):
    with pytest.raises(UserError) as error:
        check_detections(np.array([[0, 0.8, 0.1, 0.1, 0.2, 0.2], row]), ["square"], "methods.shap: image a.png")
    assert str(error.value).startswith("methods.shap: image a.png: detection ")
    assert says in str(error.value)


def test_a_detector_answering_in_pixels_fails_the_job_naming_the_image(tmp_path):
    root = write_detector_job(tmp_path / "job", n_images=1, config=detector_config())
    script = root / "input" / "model" / "code" / "inference.py"
    pixels = DETECTOR_SCRIPT.replace("x0 / width, y0 / height, x1 / width, y1 / height",
                                     "float(x0), float(y0), float(x1), float(y1)")
    assert pixels != DETECTOR_SCRIPT
    script.write_text(pixels, encoding="utf-8")
    job = JobRoot(root)
    assert job.run() == 1
    image = sorted(p.name for p in job.data_dir.rglob("*") if p.is_file())[0]
    assert job.message.startswith("ClientError: methods.shap: image "), job.message
    assert image in job.message and "box corners outside [0, 1]" in job.message, job.message
    assert "analysis.json" not in job.output_files()
