"""Image batches through the built-in model server (issue #16; docs/images.md): scores that are the model's own
numbers for the batches the job sends, for the request size the job uses and for small requests. A real
two-worker server on the image demo's model."""

from __future__ import annotations

import numpy as np
import pytest

from analyzer.config import parse_config
from analyzer.explain import image_shap
from analyzer.explain.image_shap import ImageEndpoint, ImageSource
from analyzer.predict import ModelEndpoint
from container.image_demo import (
    IMAGE_INFERENCE_SCRIPT,
    image_demo_config,
    make_images,
    train_image_model,
    write_image_model,
    write_images,
)
from container.job import LOCAL_MAX_PAYLOAD_BYTES
from container.sidecar import start_model_server


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("demo")
    model = train_image_model(n=60, size=56, seed=0)
    pictures, _ = make_images(3, 56, seed=1)
    write_image_model(root / "model", model)
    write_images(root / "data", pictures)
    with start_model_server(root / "model", workers=2) as server:
        server.wait_healthy(timeout=60)
        yield root, model, server


def request_batches(n: int, per_chunk: int, per_request: int) -> list[tuple[int, int]]:
    """The pictures ``(first, stop)`` of each request for one image's ``n`` rows: chunks of ``per_chunk``, each
    cut into equal requests of at most ``per_request`` (the client's even cut)."""
    batches = []
    for first in range(0, n, per_chunk):
        size = min(per_chunk, n - first)
        parts = -(-size // per_request)
        each = -(-size // parts)
        batches.extend((start, min(start + each, first + size)) for start in range(first, first + size, each))
    return batches


def test_scores_are_the_models_own_numbers_for_the_batches_sent(demo, monkeypatch):
    """Bit for bit: the model's numbers depend on the batch it scores (BLAS blocking moves the last bit), so
    the oracle scores the same batches the client sends; a different cut would change the explanations."""
    root, model, server = demo
    config = parse_config(image_demo_config(num_segments=8))
    names = tuple(sorted(path.name for path in (root / "data").iterdir()))
    source = ImageSource(root / "data", names, 8, 10.0)
    rng = np.random.default_rng(5)
    rows = []
    for index in range(len(names)):
        keep = rng.random((150, source.prepared(index).n_segments)) < 0.5
        rows.append(np.column_stack([np.full(len(keep), index), keep]).astype(float))
    endpoint = ImageEndpoint(ModelEndpoint(server.url, config.predictor, ("image",),
                                           max_payload_bytes=LOCAL_MAX_PAYLOAD_BYTES), source)
    namespace: dict = {}
    exec(compile(IMAGE_INFERENCE_SCRIPT, "inference.py", "exec"), namespace)  # noqa: S102 - our own script
    for per_request, per_chunk in ((image_shap.IMAGES_PER_REQUEST, image_shap.IMAGES_PER_CHUNK), (5, 16)):
        monkeypatch.setattr(image_shap, "IMAGES_PER_REQUEST", per_request)
        monkeypatch.setattr(image_shap, "IMAGES_PER_CHUNK", per_chunk)
        with endpoint.client() as scorer:
            for index, part in enumerate(rows):
                scores = scorer.predict(part).scores
                pictures = source.prepared(index).compose(part[:, 1:] > 0.5)
                batches = request_batches(len(part), per_chunk, per_request)
                expected = np.vstack([namespace["predict_fn"](pictures[first:stop], model) for first, stop in batches])
                np.testing.assert_array_equal(scores, expected)
            assert scorer.client.stats.requests == len(rows) * len(batches)
