"""Image requests: the encoder's bodies (npy batches, one JPEG / PNG per request), the built-in server's
default input_fn reading them back, and in-process scoring giving the server's values."""

from __future__ import annotations

import io

import numpy as np
import pytest

from analyzer.config.model import Predictor
from analyzer.media import JPEG, NPY, PNG
from analyzer.predict.encode import RequestEncoder
from analyzer.predict.image_requests import ImageRecords
from container.image_demo import image_demo_config, make_images, write_image_demo_job
from container.sidecar import codecs
from tests.conftest import JobRoot
from tests.test_image_job import png_header_claiming


def _images(n: int = 3) -> np.ndarray:
    return make_images(n, size=32, seed=5)[0]


def test_npy_body_is_the_batch_and_cut_follows_the_payload_limit():
    images = _images(5)
    records = RequestEncoder(Predictor(content_type=NPY), ["image"]).encode(images)
    assert isinstance(records, ImageRecords) and len(records) == 5
    body = bytes(records.body(1, 4))
    np.testing.assert_array_equal(np.load(io.BytesIO(body)), images[1:4])
    np.testing.assert_array_equal(codecs.decode(bytearray(body), NPY), images[1:4])  # the server's input_fn
    per_image = 32 * 32 * 3
    assert records.cut(0, 100, 2 * per_image + 128) == 2  # two images fit in the payload, not three
    assert records.cut(0, 100, 10**9) == 5


def test_png_request_round_trips_exactly_and_jpeg_closely():
    images = _images(2)
    png = RequestEncoder(Predictor(content_type=PNG), ["image"]).encode(images)
    assert png.cut(0, 100, 10**9) == 1  # one image per request
    np.testing.assert_array_equal(codecs.decode(bytearray(png.body(1, 2)), PNG), images[1:2])
    smooth = np.zeros((2, 32, 48, 3), dtype=np.uint8)
    smooth[..., 0] = np.linspace(0, 255, 48).astype(np.uint8)
    smooth[1, ..., 2] = 200
    jpeg = RequestEncoder(Predictor(content_type=JPEG), ["image"]).encode(smooth)
    decoded = codecs.decode(bytearray(jpeg.body(1, 2)), "image/jpeg; charset=binary")
    assert decoded.shape == (1, 32, 48, 3) and decoded.dtype == np.uint8
    assert np.abs(decoded.astype(int) - smooth[1:]).max() < 8  # lossy, but the same picture
    with pytest.raises(ValueError, match="one request body"):
        jpeg.body(0, 2)


@pytest.mark.parametrize("content_type", [JPEG, PNG])
def test_server_refuses_a_body_that_is_not_an_image(content_type):
    with pytest.raises(codecs.CodecError, match=f"malformed {content_type} body") as raised:
        codecs.decode(bytearray(b"GIF89a not what it says"), content_type)
    assert raised.value.status == 400


def test_server_refuses_a_picture_claiming_too_many_pixels_before_decoding():
    # 100M pixels claimed by a 100-byte PNG: Pillow would only warn and decode 300 MB per request.
    with pytest.raises(codecs.CodecError, match="10000 x 10000 pixels, more than Lucent decodes") as raised:
        codecs.decode(bytearray(png_header_claiming(10_000, 10_000)), PNG)
    assert raised.value.status == 400


def test_in_process_scoring_gives_the_servers_values(tmp_path):
    sections = []
    for scoring in ("server", "in_process"):
        root = write_image_demo_job(tmp_path / scoring, n_images=1, config=image_demo_config(scoring=scoring))
        job = JobRoot(root)
        assert job.run() == 0, job.message
        sections.append(job.analysis()["explanations"]["lucent_image_shap"]["images"])
    assert sections[0] == sections[1]
