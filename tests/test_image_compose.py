"""Coalition pictures by tiles, the scorer's two reused picture buffers, and the model server receiving
same-sized image batches into reused body buffers (docs/images.md; issue #16, speed).

Every picture is checked against the definition (segment j from the image where kept, else from the fill)
pixel by pixel or against the per-byte composition it replaced; the server test uses a real one-worker
server and a model that keeps the arrays it was given, which a reused buffer would overwrite."""

from __future__ import annotations

import io
import itertools
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import urllib3

from analyzer.data import pictures as pictures_module
from analyzer.data.pictures import PreparedImage
from analyzer.explain import image_shap
from analyzer.explain.image_shap import segment_image
from analyzer.predict.predictions import Predictions
from container.sidecar import ModelServer, start_model_server


def brute_force(image: np.ndarray, segments: np.ndarray, fill: np.ndarray, keep: np.ndarray) -> np.ndarray:
    return np.where(keep[:, segments][..., None], image[None], fill[None])


def random_case(rng: np.random.Generator, height: int, width: int, m: int, n: int, channels: int = 3):
    image = rng.integers(0, 256, size=(height, width, channels), dtype=np.uint8)
    fill = rng.integers(0, 256, size=(height, width, channels), dtype=np.uint8)
    segments = rng.permutation(np.arange(height * width) % m).reshape(height, width).astype(np.int32)
    segments.sort(axis=1)  # runs of one segment along rows, as superpixels have, with every segment present
    return image, segments, fill, rng.random((n, m)) < 0.5


@pytest.mark.parametrize(("height", "width", "m"), [(5, 7, 4), (37, 41, 9), (224, 224, 16), (30, 20, 60), (13, 1, 3)])
def test_tiles_compose_the_definition(height, width, m):
    rng = np.random.default_rng(height * width + m)
    image, segments, fill, keep = random_case(rng, height, width, m, 70)
    prepared = PreparedImage(image, segments, fill)
    tiles = prepared._tiles
    assert tiles is not None and (height * width) % tiles.pixels == 0
    assert len(tiles.slot_segments) <= pictures_module.TILE_MAX_SEGMENTS and tiles.table.nbytes <= pictures_module.TILE_TABLE_BYTES
    pictures = prepared.compose(keep)
    assert pictures.shape == (70, height, width, 3) and pictures.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(pictures, brute_force(image, segments, fill, keep))
    everything = np.array(list(itertools.product([False, True], repeat=3)))  # all 8 coalitions of 3 segments
    small = PreparedImage(image, np.minimum(segments, 2), fill)
    np.testing.assert_array_equal(small.compose(everything), brute_force(image, np.minimum(segments, 2), fill, everything))


def test_compose_into_a_buffer_with_a_visible_area_and_the_per_byte_fallback(monkeypatch):
    rng = np.random.default_rng(3)
    image, segments, fill, keep = random_case(rng, 48, 64, 12, 40)
    visible = np.zeros((48, 64), dtype=bool)
    visible[5:30, 10:50] = True
    expected = brute_force(np.where(visible[..., None], image, fill), segments, fill, keep)
    prepared = PreparedImage(image, segments, fill)
    buffer = np.full((40, 48, 64, 3), 7, dtype=np.uint8)
    assert prepared.compose(keep, visible, out=buffer) is buffer
    np.testing.assert_array_equal(buffer, expected)
    np.testing.assert_array_equal(prepared.compose(keep[:3], visible), expected[:3])  # same visible area: cached
    with pytest.raises(ValueError, match=r"C-contiguous uint8 array of shape \(40, 48, 64, 3\)"):
        prepared.compose(keep, out=np.empty((40, 48, 64, 3), dtype=np.int16))
    one_segment = PreparedImage(image, np.zeros((48, 64), dtype=np.int32), fill)
    np.testing.assert_array_equal(one_segment.compose(np.array([[True], [False]])), np.stack([image, fill]))
    assert one_segment.compose(np.zeros((0, 1), dtype=bool)).shape == (0, 48, 64, 3)
    monkeypatch.setattr(pictures_module, "TILE_TABLE_BYTES", 0)  # no tile size fits: bytes are masked one by one
    fallback = PreparedImage(image, segments, fill)
    assert fallback._tiles is None
    np.testing.assert_array_equal(fallback.compose(keep, visible), expected)
    assert fallback.compose(keep[:0]).shape == (0, 48, 64, 3)


def test_slic_segments_of_a_demo_picture_compose_like_the_per_byte_mask():
    from container.image_demo import DEMO_COMPACTNESS, make_images

    image = make_images(1, 96, seed=5, width=80)[0][0]
    segments = segment_image(image, 20, DEMO_COMPACTNESS)
    fill = image_shap.mean_colour_fill(image)
    keep = np.random.default_rng(0).random((300, int(segments.max()) + 1)) < 0.5
    prepared = PreparedImage(image, segments, fill)
    assert prepared._tiles is not None
    expected = np.empty((300, 96, 80, 3), dtype=np.uint8)
    np.testing.assert_array_equal(prepared.compose(keep), prepared._compose_bytes(keep, expected))


class CheckingClient:
    """A model client that scores each picture by its checksum, and checks that its pictures do not change
    while it holds them: before answering chunk i it waits until chunk i + 1 (if any) has been composed."""

    def __init__(self, chunks: int):
        self.chunks = chunks
        self.composed = 0
        self.changed = threading.Condition()
        self.calls = 0

    def compose_done(self) -> None:
        with self.changed:
            self.composed += 1
            self.changed.notify_all()

    def predict(self, images: np.ndarray) -> Predictions:
        self.calls += 1
        before = images.copy()
        with self.changed:
            assert self.changed.wait_for(lambda: self.composed >= min(self.calls + 1, self.chunks), 30)
        np.testing.assert_array_equal(images, before)
        sums = images.reshape(len(images), -1).astype(np.int64).sum(axis=1, keepdims=True)
        return Predictions(len(images), probability=sums)

    def close(self) -> None:
        pass


def test_scorer_reuses_two_buffers_without_touching_the_chunk_in_flight(monkeypatch):
    rng = np.random.default_rng(11)
    cases = [random_case(rng, 16, 24, 6, 1)[:3] for _ in range(2)]  # the scorer gets images of one segment count
    source = image_shap.ImageSource(Path("."), ("a.png", "b.png"), 8, 10.0)
    monkeypatch.setattr(image_shap, "IMAGES_PER_CHUNK", 4)
    monkeypatch.setattr(image_shap.ImageSource, "prepared", lambda self, index: PreparedImage(*cases[index]))
    client = CheckingClient(chunks=5)
    compose = image_shap.ImageScorer._compose

    def composed(self, *args):
        try:
            return compose(self, *args)
        finally:
            client.compose_done()

    monkeypatch.setattr(image_shap.ImageScorer, "_compose", composed)
    rows = []
    for index in range(2):  # 11 and 6 pictures: chunks of 4, 4, 3, 4, 2
        keep = rng.random((11 if index == 0 else 6, 6)) < 0.5
        rows.append(np.column_stack([np.full(len(keep), index), keep]).astype(float))
    rows = np.vstack(rows)
    scores = image_shap.ImageScorer(client, source).predict(rows).scores[:, 0]
    assert client.calls == 5
    expected = [int(brute_force(*cases[int(row[0])], row[None, 1:] > 0.5).astype(np.int64).sum()) for row in rows]
    assert scores.tolist() == expected


KEEPING_MODEL = '''
import numpy as np

KEPT = []

def model_fn(model_dir):
    return None

def predict_fn(data, model):
    if not KEPT:
        KEPT.append(data)  # a model that keeps its input: its buffer must never be received into again
    sums = data.reshape(len(data), -1).astype(np.int64).sum(axis=1)
    first = KEPT[0].reshape(len(KEPT[0]), -1).astype(np.int64).sum(axis=1)
    return np.column_stack([sums, np.resize(first, len(sums))])
'''


@pytest.fixture(scope="module")
def keeping_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelServer]:
    folder = tmp_path_factory.mktemp("keeping-model")
    (folder / "code").mkdir()
    (folder / "code" / "inference.py").write_text(KEEPING_MODEL)
    with start_model_server(folder, workers=1) as started:
        started.wait_healthy(60)
        yield started


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def test_server_receives_same_sized_batches_into_buffers_nothing_else_holds(keeping_server):
    """Bodies of 2.4 MB (over the size whose buffers are reused), same size, different pixels, on one
    keep-alive connection and on new ones: every answer is its own batch's sums, and the first batch,
    which the model kept, still has its own pixels after the later bodies arrived."""
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, 256, size=(16, 224, 224, 3), dtype=np.uint8) for _ in range(6)]
    batches.append(rng.integers(0, 256, size=(3, 224, 224, 3), dtype=np.uint8))  # another size between them
    batches.append(rng.integers(0, 256, size=(16, 224, 224, 3), dtype=np.uint8))
    first = batches[0].reshape(16, -1).astype(np.int64).sum(axis=1)
    with urllib3.PoolManager(maxsize=1) as http:
        for i, batch in enumerate(batches):
            headers = {"Content-Type": "application/x-npy", "Accept": "application/x-npy"}
            if i % 2:
                headers["Connection"] = "keep-alive"
            response = http.request("POST", f"{keeping_server.url}/invocations", body=npy(batch), headers=headers)
            assert response.status == 200, response.data
            answer = np.load(io.BytesIO(response.data))
            assert answer[:, 0].tolist() == batch.reshape(len(batch), -1).astype(np.int64).sum(axis=1).tolist()
            assert answer[:, 1].tolist() == np.resize(first, len(batch)).tolist()


class SumsClient:
    """A model client scoring each picture by its byte sum, recording how many pictures each call carried."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def predict(self, images: np.ndarray) -> Predictions:
        self.sizes.append(len(images))
        return Predictions(len(images), probability=images.reshape(len(images), -1).astype(np.int64).sum(axis=1,
                                                                                                         keepdims=True))

    def close(self) -> None:
        pass


def test_a_byte_budget_bounds_the_pictures_composed_at_once_and_keeps_the_scores(monkeypatch):
    """Issue: a 2000 x 1500 JPEG took 5.8 GB (2 buffers x 288 pictures of 9 MB). The buffers now hold at most
    PICTURE_BUFFER_BYTES of pictures (at least one): same scores with a budget of one picture as with the
    default, and what is allocated while scoring stays within the budget."""
    import tracemalloc

    rng = np.random.default_rng(21)
    cases = [random_case(rng, 60, 80, 7, 1)[:3] for _ in range(2)]  # 14,400 bytes per picture
    picture_bytes = 60 * 80 * 3
    source = image_shap.ImageSource(Path("."), ("a.png", "b.png"), 8, 10.0)
    prepared = [PreparedImage(*case) for case in cases]
    for image in prepared:
        image.compose(np.ones((1, 7), dtype=bool))  # its tiles are made once, before the allocations are counted
    monkeypatch.setattr(image_shap.ImageSource, "prepared", lambda self, index: prepared[index])
    rows = np.vstack([np.column_stack([np.full(300, i), rng.random((300, 7)) < 0.5]) for i in range(2)]).astype(float)
    expected = [int(brute_force(*cases[int(row[0])], row[None, 1:] > 0.5).astype(np.int64).sum()) for row in rows]
    runs = {}
    for budget in (image_shap.PICTURE_BUFFER_BYTES, picture_bytes + 1, 3 * picture_bytes):  # default, 1, 3 pictures
        monkeypatch.setattr(image_shap, "PICTURE_BUFFER_BYTES", budget)
        client = SumsClient()
        tracemalloc.start()
        try:
            scores = image_shap.ImageScorer(client, source).predict(rows).scores[:, 0]
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert scores.tolist() == expected
        runs[budget] = (client.sizes, peak)
    default_sizes, default_peak = runs[256 * 1024 * 1024]
    assert default_sizes == [288, 12, 288, 12]
    assert default_peak > 2 * 288 * picture_bytes  # two buffers of 288 pictures: 8.3 MB
    one_sizes, one_peak = runs[picture_bytes + 1]
    assert one_sizes == [1] * 600
    three_sizes, three_peak = runs[3 * picture_bytes]
    assert three_sizes == [3] * 200
    for peak in (one_peak, three_peak):  # two buffers of at most 3 pictures, the rows, the keep masks, the tiles
        assert peak < 1_000_000, peak  # two buffers of 1 or 3 pictures (86 kB), rows, masks, scores: not 8.3 MB


def test_large_pictures_come_fewer_at_a_time_small_ones_288():
    source = image_shap.ImageSource(Path("."), ("a.png",), 8, 10.0)
    scorer = image_shap.ImageScorer(SumsClient(), source)
    for (height, width), expected in (((224, 224), 288), ((512, 512), 288), ((1500, 2000), 29), ((10_000, 10_000), 1)):
        picture = np.broadcast_to(np.zeros(1, np.uint8), (height, width, 3))
        source_prepared = PreparedImage.__new__(PreparedImage)
        object.__setattr__(source_prepared, "image", picture)
        scorer.source = type("Source", (), {"prepared": lambda self, index, p=source_prepared: p})()
        size = scorer._chunk_size(0)
        assert size == expected
        assert size == 1 or size * height * width * 3 <= image_shap.PICTURE_BUFFER_BYTES


def test_object_detection_pictures_follow_the_byte_budget_too(monkeypatch):
    """The detection scorer composed up to IMAGES_PER_CHUNK pictures at once as well: same scores with a budget
    of two pictures, and no call carries more than two."""
    from types import SimpleNamespace

    from analyzer.explain.image_detection import DetectedObject, DetectionEndpoint, DetectionScorer

    rng = np.random.default_rng(4)
    case = random_case(rng, 30, 40, 5, 1)[:3]
    prepared = PreparedImage(*case)
    monkeypatch.setattr(image_shap.ImageSource, "prepared", lambda self, index: prepared)
    source = image_shap.ImageSource(Path("."), ("a.png",), 8, 10.0)
    obj = DetectedObject(0, 1, 0.9, (0.0, 0.0, 1.0, 1.0))
    endpoint = DetectionEndpoint(None, source, (obj,), 0.5, 1.0)

    class Detector:  # one whole-image detection of class 1, its confidence the picture's mean byte / 255
        sizes: list[int] = []

        def predict(self, pictures):
            self.sizes.append(len(pictures))
            return SimpleNamespace(probability=[np.array([[1, p.mean() / 255, 0, 0, 1, 1]]) for p in pictures])

    rows = np.column_stack([np.zeros(9), np.zeros(9), rng.random((9, 5)) < 0.5]).astype(float)
    expected = [brute_force(*case, row[None, 2:] > 0.5).mean() / 255 for row in rows]
    for budget, sizes in ((image_shap.PICTURE_BUFFER_BYTES, [9]), (2 * 30 * 40 * 3, [2, 2, 2, 2, 1])):
        monkeypatch.setattr(image_shap, "PICTURE_BUFFER_BYTES", budget)
        detector = Detector()
        detector.sizes = []
        scores = DetectionScorer(detector, endpoint).predict(rows).scores[:, 0]
        np.testing.assert_allclose(scores, expected, rtol=1e-12)
        assert detector.sizes == sizes
