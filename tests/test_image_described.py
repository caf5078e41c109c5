"""Coalition pictures sent described (``IMAGE_COALITIONS``, docs/images.md): Lucent's built-in server draws
the pictures the job would have drawn, byte for byte; hostile bodies are refused with the reason; the job
describes pictures only to a server that says it draws them.

Pictures are checked against the definition (``brute_force``: segment j from the image where kept, else from the fill)
through real servers: one whose model returns each picture's byte sum and keeps its first input (which a
reused buffer would overwrite), the image demo's model, and a model with its own input_fn."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import urllib3
from hypothesis import given, settings
from hypothesis import strategies as st

from analyzer.config.model import Predictor
from analyzer.data import pictures as pictures_module
from analyzer.data.pictures import CoalitionPictures, PreparedImage
from analyzer.explain.image_shap import ImageEndpoint, ImageScorer, ImageSource
from analyzer.media import IMAGE_COALITIONS, NPY
from analyzer.predict import ModelEndpoint
from analyzer.predict.client import ModelClient
from analyzer.predict.image_requests import CoalitionRecords
from container.image_demo import IMAGE_INFERENCE_SCRIPT, make_images, train_image_model, write_image_model
from container.model_endpoint import ServedModel
from container.sidecar import ModelServer, start_model_server
from container.sidecar.codecs import CodecError
from container.sidecar.pictures import PictureComposer
from tests.test_image_compose import KEEPING_MODEL, brute_force, npy, random_case  # KEEPING_MODEL: byte sums

OWN_INPUT_MODEL = '''
import numpy as np

def model_fn(model_dir):
    return None

def input_fn(body, content_type):
    return np.load(__import__("io").BytesIO(body))

def predict_fn(data, model):
    return np.zeros((len(data), 1))
'''


def body_of(image, segments, fill, keep) -> bytes:
    return bytes(CoalitionRecords(CoalitionPictures(image, segments, fill, keep)).body(0, len(keep)))


def server_for(folder: Path, script: str) -> ModelServer:
    (folder / "code").mkdir(parents=True)
    (folder / "code" / "inference.py").write_text(script)
    server = start_model_server(folder, workers=1)
    server.wait_healthy(60)
    return server


@pytest.fixture(scope="module")
def sums_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelServer]:
    with server_for(tmp_path_factory.mktemp("sums"), KEEPING_MODEL) as server:
        yield server


def post(server: ModelServer, body: bytes, content_type: str = IMAGE_COALITIONS) -> urllib3.BaseHTTPResponse:
    return urllib3.request("POST", f"{server.url}/invocations", body=body, retries=False,
                           headers={"Content-Type": content_type, "Accept": NPY})


# -- the pictures -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("height, width, m, channels", [(48, 64, 7, 3), (33, 17, 40, 3), (20, 30, 1, 1), (56, 56, 12, 4)])
def test_the_server_draws_the_definitions_pictures(height, width, m, channels):
    rng = np.random.default_rng(height * width + m)
    composer = PictureComposer()
    cases = [random_case(rng, height, width, m, 30, channels) for _ in range(2)]
    for case in (cases[0], cases[1], cases[0], cases[0]):  # an image again after another: its kept preparation
        keep = rng.random((30, m)) < 0.5
        image, segments, fill, _ = case
        pictures = composer.pictures(bytearray(body_of(image, segments, fill, keep)), 10**8)
        np.testing.assert_array_equal(pictures, brute_force(image, segments, fill, keep))
        np.testing.assert_array_equal(pictures, PreparedImage(image, segments, fill).compose(keep))


def test_the_same_pixels_are_recognised_only_when_every_byte_is_the_same():
    rng = np.random.default_rng(3)
    image, segments, fill, keep = random_case(rng, 32, 32, 6, 10)
    composer = PictureComposer()
    composer.pictures(bytearray(body_of(image, segments, fill, keep)), 10**8)
    for changed in ("image", "segments", "fill"):
        arrays = {"image": image.copy(), "segments": segments.copy(), "fill": fill.copy()}
        flat = arrays[changed].reshape(-1)
        flat[-1] = (int(flat[-1]) + 1) % (6 if changed == "segments" else 256)  # one value, the last one
        pictures = composer.pictures(bytearray(body_of(arrays["image"], arrays["segments"], arrays["fill"], keep)),
                                     10**8)
        np.testing.assert_array_equal(pictures, brute_force(arrays["image"], arrays["segments"], arrays["fill"], keep))


def test_requests_are_cut_by_the_pictures_drawn_size():
    rng = np.random.default_rng(4)
    image, segments, fill, keep = random_case(rng, 40, 50, 9, 100)
    records = CoalitionRecords(CoalitionPictures(image, segments, fill, keep))
    picture = image.nbytes
    limit = records.envelope_bytes + 7 * picture + picture // 2
    assert records.cut(0, 48, limit) == 7 and records.cut(95, 48, limit) == 100
    assert len(records.body(0, 7)) <= records.envelope_bytes + 7 * picture  # the body itself is far smaller
    assert records.content_type == IMAGE_COALITIONS


# -- hostile bodies ----------------------------------------------------------------------------------------

def _arrays() -> list[np.ndarray]:
    image, segments, fill, keep = random_case(np.random.default_rng(5), 16, 16, 4, 3)
    return [image, segments, fill, keep]


def _joined(arrays: list[np.ndarray]) -> bytes:
    return b"".join(npy(np.asarray(a)) for a in arrays)


def _with(index: int, value: np.ndarray) -> bytes:
    arrays = _arrays()
    arrays[index] = value
    return _joined(arrays)


def _header(descr: str, shape: tuple[int, ...]) -> bytes:
    """An npy header as a hostile client may write it: pickled objects (``|O``), negative dimensions."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": descr, "fortran_order": False, "shape": shape})
    return header.getvalue()


GOOD = _joined(_arrays())
HOSTILE = {
    "not npy": (b"GIF89a" + GOOD, 400, r"the image array at byte 0: .*magic"),
    "cut short": (GOOD[:-1], 400, r"the keep array \(3, 4\) needs 12 bytes, 11 are left"),
    "bytes after": (GOOD + b"\0", 400, "1 bytes after its four arrays"),
    "npy 3.0": (GOOD.replace(b"\x93NUMPY\x01\x00", b"\x93NUMPY\x03\x00", 1), 400,
                r"image array at byte 0: npy format version 3.0"),
    "float image": (_with(0, _arrays()[0].astype(np.float32)), 400, "the image array must be C-ordered uint8, got float32"),
    "Fortran fill": (_with(2, np.asfortranarray(_arrays()[2])), 400, "the fill array must be C-ordered uint8, got Fortran"),
    "int64 segments": (_with(1, _arrays()[1].astype(np.int64)), 400, "segments array must be C-ordered int32"),
    "object keep": (_joined(_arrays()[:3]) + _header("|O", (3, 4)) + b"\0" * 96, 400,
                    "the keep array must be C-ordered bool, got object"),
    "flat image": (_with(0, np.zeros(768, np.uint8)), 400, r"must be \(height, width, channels\)"),
    "negative dimensions": (_header("|u1", (-2, -2, 3)) + GOOD, 400, r"image array at byte 0: negative dimension"),
    "one negative dimension": (_header("|u1", (-1, 4, 3)) + GOOD, 400, r"image array at byte 0: negative dimension"),
    "five channels": (_with(0, np.zeros((16, 16, 5), np.uint8)), 400, "1 to 4 channels"),
    "fill of another size": (_with(2, np.zeros((16, 8, 3), np.uint8)), 400, "must be the same picture"),
    "no picture": (_with(3, np.zeros((0, 4), bool)), 400, "at least one picture"),
    "segment past keep": (_with(3, np.zeros((3, 3), bool)), 400, r"numbered 0 to 2 .* got 0 to 3"),
    "negative segment": (_with(1, np.full((16, 16), -1, np.int32)), 400, "got -1 to -1"),
    "too many pictures": (_with(3, np.zeros((100, 4), bool)), 413, "76,800 bytes drawn, over the server's limit of 50,000"),
}


@pytest.mark.parametrize("name", HOSTILE)
def test_a_hostile_body_is_refused_with_the_reason(name):
    body, status, message = HOSTILE[name]
    with pytest.raises(CodecError, match=message) as refused:
        PictureComposer().pictures(bytearray(body), 50_000)
    assert refused.value.status == status


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_any_mangled_body_is_drawn_or_refused_with_the_reason(data):
    """Bytes of a good body changed and cut anywhere: pictures, or a CodecError (400/413); nothing else."""
    body = bytearray(GOOD)
    for _ in range(data.draw(st.integers(1, 6))):
        body[data.draw(st.integers(0, len(body) - 1))] = data.draw(st.integers(0, 255))
    body = body[:data.draw(st.integers(0, len(body)))]
    try:
        pictures = PictureComposer().pictures(body, 10**6)
    except CodecError as refused:
        assert refused.status in (400, 413) and str(refused).startswith(IMAGE_COALITIONS)
    else:
        assert pictures.dtype == np.uint8 and pictures.ndim == 4 and pictures.nbytes <= 10**6


@pytest.mark.parametrize("tiles", [True, False])
def test_bool_bytes_other_than_0_and_1_are_kept_segments(tiles, monkeypatch):
    if not tiles:  # the per-byte composition, which indexes with the keep bytes
        monkeypatch.setattr(pictures_module, "TILE_TABLE_BYTES", 0)
    image, segments, fill, keep = _arrays()
    raw = keep.view(np.uint8).copy()
    raw[raw == 1] = 7  # numpy does not check a bool's byte: 7 reads as True but indexes like 7
    pictures = PictureComposer().pictures(bytearray(_joined([image, segments, fill, raw.view(bool)])), 10**6)
    np.testing.assert_array_equal(pictures, brute_force(image, segments, fill, keep))


def test_the_server_answers_a_hostile_body_and_keeps_serving(sums_server):
    refused = post(sums_server, HOSTILE["segment past keep"][0])
    assert refused.status == 400 and b"segments must be numbered 0 to 2" in refused.data
    image, segments, fill, keep = _arrays()
    answered = post(sums_server, body_of(image, segments, fill, keep))
    assert answered.status == 200
    sums = np.load(io.BytesIO(answered.data))[:, 0]
    assert sums.tolist() == brute_force(image, segments, fill, keep).reshape(3, -1).astype(np.int64).sum(axis=1).tolist()


def test_a_model_with_its_own_input_fn_is_not_sent_described_pictures(tmp_path):
    with server_for(tmp_path / "own", OWN_INPUT_MODEL) as server:
        info = server.info()
        assert info["composes_pictures"] is False and info["default_io"] is False
        assert ServedModel.from_info(server.url, info).composes_pictures is False
        refused = post(server, GOOD)
        assert refused.status == 415 and b"read only by the default input_fn" in refused.data


# -- the job's side ----------------------------------------------------------------------------------------

def test_a_model_that_keeps_its_input_keeps_its_pictures(tmp_path):
    """The pictures are drawn into a reused buffer only while nothing else holds it."""
    rng = np.random.default_rng(8)
    image, segments, fill, _ = random_case(rng, 32, 32, 6, 0)
    batches = [rng.random((20, 6)) < 0.5 for _ in range(3)]
    sums = [brute_force(image, segments, fill, keep).reshape(20, -1).astype(np.int64).sum(axis=1) for keep in batches]
    with server_for(tmp_path / "keeping", KEEPING_MODEL) as server:
        for keep, own in zip(batches, sums, strict=True):
            answer = np.load(io.BytesIO(post(server, body_of(image, segments, fill, keep)).data))
            assert answer[:, 0].tolist() == own.tolist()
            assert answer[:, 1].tolist() == sums[0].tolist()  # the first pictures, still as they were drawn


def test_the_scorer_describes_pictures_and_gets_each_ones_score(sums_server, monkeypatch):
    """Rows of three images (synthetic rows image by image, as SHAP sends them) through ModelClient and the real
    server: every score is its picture's byte sum by the definition, and every request carried pictures described."""
    rng = np.random.default_rng(6)
    cases = [random_case(rng, 24, 40, 5, 0)[:3] for _ in range(3)]
    monkeypatch.setattr(ImageSource, "prepared", lambda self, index: PreparedImage(*cases[index]))
    source = ImageSource(Path("."), ("a.png", "b.png", "c.png"), 8, 10.0)
    rows = np.vstack([np.column_stack([np.full(130, i), rng.random((130, 5)) < 0.5]) for i in range(3)]).astype(float)
    client = ModelClient(sums_server.url, Predictor(content_type=NPY, accept_type=NPY), ["image"],
                         max_records_per_request=48)
    sent = []
    post_request = client._post
    monkeypatch.setattr(client, "_post", lambda body, batch, *args: sent.append(batch.records.content_type)
                        or post_request(body, batch, *args))
    with ImageScorer(client, source, describe=True) as scorer:
        scores = scorer.predict(rows).scores
    expected = [int(brute_force(*cases[int(row[0])], row[None, 1:] > 0.5).astype(np.int64).sum()) for row in rows]
    assert scores[:, 0].tolist() == expected
    assert len(sent) >= 9 and set(sent) == {IMAGE_COALITIONS}  # 130 pictures per image, at most 48 per request


def test_the_job_describes_pictures_only_to_a_server_that_draws_them(sums_server):
    info = sums_server.info()
    assert info["composes_pictures"] is True
    served = ServedModel.from_info(sums_server.url, info)
    source = ImageSource(Path("."), (), 8, 10.0)
    for composes, content_type, described in ((True, NPY, True), (False, NPY, False), (True, "image/jpeg", False)):
        endpoint = ImageEndpoint(ModelEndpoint(served.url, Predictor(content_type=content_type, accept_type=NPY), ("image",),
                                               composes_pictures=composes and served.composes_pictures), source)
        with endpoint.client() as scorer:
            assert scorer.describe is described


def test_the_demo_models_scores_are_the_same_for_drawn_and_described_pictures(tmp_path):
    """Byte for byte, for the batch the job sends (48 pictures of 224 x 224): the model gets the same array."""
    from analyzer.explain.image_shap import mean_colour_fill, segment_image
    from container.image_demo import DEMO_COMPACTNESS

    model = train_image_model(n=60, size=224, seed=0)
    write_image_model(tmp_path / "model", model)
    image = make_images(1, 224, seed=1)[0][0]
    segments = segment_image(image, 20, DEMO_COMPACTNESS)
    fill = mean_colour_fill(image)
    keep = np.random.default_rng(7).random((48, int(segments.max()) + 1)) < 0.5
    with start_model_server(tmp_path / "model", workers=1) as server:
        server.wait_healthy(60)
        drawn = post(server, npy(PreparedImage(image, segments, fill).compose(keep)), NPY)
        described = post(server, body_of(image, segments, fill, keep))
    assert drawn.status == described.status == 200
    assert described.data == drawn.data
    namespace: dict = {}
    exec(compile(IMAGE_INFERENCE_SCRIPT, "inference.py", "exec"), namespace)  # noqa: S102 - our own script
    expected = namespace["predict_fn"](brute_force(image, segments, fill, keep), model)
    np.testing.assert_array_equal(np.load(io.BytesIO(described.data)), expected)


def test_an_image_too_large_to_describe_within_the_limit_is_sent_drawn(tmp_path, monkeypatch):
    """A described body carries the image, its segments and its fill (20 bytes per pixel): for a large image it
    is over the server's body limit where one drawn picture (3 bytes per pixel) fits. Such an image's pictures
    go drawn (npy) and are scored; before, the server refused the described body (413) and the job failed."""
    from container.sidecar.limits import RequestLimits

    rng = np.random.default_rng(8)
    small, large = random_case(rng, 24, 40, 5, 0)[:3], random_case(rng, 250, 250, 5, 0)[:3]  # 188 kB drawn, 1.25 MB described
    cases = [small, large]
    monkeypatch.setattr(ImageSource, "prepared", lambda self, index: PreparedImage(*cases[index]))
    source = ImageSource(Path("."), ("small.png", "large.png"), 8, 10.0)
    limit = 512 * 1024
    folder = tmp_path / "model"
    (folder / "code").mkdir(parents=True)
    (folder / "code" / "inference.py").write_text(KEEPING_MODEL)
    with start_model_server(folder, workers=1, limits=RequestLimits(max_body_bytes=limit)) as server:
        server.wait_healthy(60)
        client = ModelClient(server.url, Predictor(content_type=NPY, accept_type=NPY), ["image"],
                             max_records_per_request=48, max_payload_bytes=limit)
        sent = []
        post_request = client._post
        monkeypatch.setattr(client, "_post", lambda body, batch, *args: sent.append(batch.records.content_type)
                            or post_request(body, batch, *args))
        with ImageScorer(client, source, describe=True) as scorer:
            for index, expected_type in ((0, IMAGE_COALITIONS), (1, NPY)):
                rows = np.column_stack([np.full(20, index), rng.random((20, 5)) < 0.5]).astype(float)
                sent.clear()
                scores = scorer.predict(rows).scores[:, 0]
                expected = [int(brute_force(*cases[index], row[None, 1:] > 0.5).astype(np.int64).sum()) for row in rows]
                assert scores.tolist() == expected
                assert set(sent) == {expected_type}
