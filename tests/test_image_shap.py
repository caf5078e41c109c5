"""The image SHAP core: coalition pictures, segments, the fill, one-segment images, names in errors, and the
mask-image baseline checked against enumeration (docs/images.md)."""

from __future__ import annotations

import itertools
import math

import joblib
import numpy as np
from PIL import Image

from analyzer.data.pictures import compose
from analyzer.explain.image_job import _name_images, heatmap, output_stems
from analyzer.explain.image_shap import mean_colour_fill, segment_image
from container.image_demo import DEMO_COMPACTNESS, LABELS, downsample, image_demo_config, write_image_demo_job
from tests.conftest import JobRoot


def test_compose_takes_kept_segments_from_the_image_and_the_rest_from_the_fill():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    fill = rng.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    segments = rng.integers(0, 4, size=(5, 7))
    keep = np.array(list(itertools.product([False, True], repeat=4)))
    pictures = compose(image, segments, fill, keep)
    assert pictures.shape == (16, 5, 7, 3) and pictures.flags["C_CONTIGUOUS"]
    for c, kept in enumerate(keep):
        for y, x in itertools.product(range(5), range(7)):
            expected = image[y, x] if kept[segments[y, x]] else fill[y, x]
            np.testing.assert_array_equal(pictures[c, y, x], expected)


def test_mean_colour_fill_and_consecutive_segments():
    image = np.zeros((4, 6, 3), dtype=np.uint8)
    image[:, :3] = (10, 20, 30)
    image[:, 3:] = (11, 40, 255)
    assert mean_colour_fill(image)[0, 0].tolist() == [10, 30, 142]  # 10.5 -> 10 (half to even), 142.5 -> 142
    segments = segment_image(np.zeros((16, 16, 3), dtype=np.uint8), 4, 5)
    assert segments.dtype == np.int32 and segments.min() == 0
    assert sorted(np.unique(segments)) == list(range(segments.max() + 1))


def test_flat_image_has_one_segment_worth_prediction_minus_reference(tmp_path):
    root = write_image_demo_job(tmp_path / "job", n_images=1, config=image_demo_config(num_segments=1))
    data = root / "input" / "data"
    for path in data.iterdir():
        path.unlink()
    Image.new("RGB", (40, 30), (200, 30, 30)).save(data / "flat.png")
    job = JobRoot(root)
    assert job.run() == 0, job.message
    entry = job.analysis()["explanations"]["lucent_image_shap"]["images"][0]
    assert entry["n_segments"] == 1
    for label in LABELS:  # one player takes the whole difference (here 0: the fill is the image itself)
        assert entry["shap_values"][label] == [entry["prediction"][label] - entry["reference"][label]] == [0.0]


def test_mask_image_baseline_equals_enumeration_with_that_fill(tmp_path):
    root = write_image_demo_job(tmp_path / "job", n_images=1, config=image_demo_config(baseline="mask.png"))
    mask = np.zeros((64, 32, 3), dtype=np.uint8)
    mask[:, :, 1] = 255  # green, half the size of the images: resized to each image
    Image.fromarray(mask).save(root / "input" / "config" / "mask.png")
    job = JobRoot(root)
    assert job.run() == 0, job.message
    section = job.analysis()["explanations"]["lucent_image_shap"]
    assert section["baseline"] == "mask image mask.png"
    entry = section["images"][0]
    image = np.asarray(Image.open(job.data_dir / entry["image"]).convert("RGB"))
    fill = np.asarray(Image.fromarray(mask).resize((image.shape[1], image.shape[0]), Image.Resampling.BILINEAR))
    assert (fill == (0, 255, 0)).all()
    labels = segment_image(image, 8, DEMO_COMPACTNESS)
    model = joblib.load(root / "input" / "model" / "model.joblib")
    m = int(labels.max()) + 1
    coalitions = list(itertools.product([0, 1], repeat=m))
    value = {c: model.predict_proba(downsample(np.where(np.array(c, bool)[labels][..., None], image, fill)))[0]
             for c in coalitions}
    for j in range(m):
        phi = sum(math.factorial(sum(c)) * math.factorial(m - sum(c) - 1) / math.factorial(m)
                  * (value[c[:j] + (1,) + c[j + 1:]] - value[c]) for c in coalitions if c[j] == 0)
        for k, label in enumerate(LABELS):
            assert abs(entry["shap_values"][label][j] - phi[k]) < 1e-9


def test_heatmap_colours_follow_the_sign_and_strength():
    image = np.full((9, 27, 3), 100, dtype=np.uint8)
    segments = np.repeat(np.repeat(np.array([[0, 1, 2]]), 9, axis=0), 9, axis=1)  # three 9 x 9 blocks
    picture = heatmap(image, segments, np.array([1.0, -0.5, 0.0])).astype(int)
    blue, red, plain = picture[4, 4], picture[4, 13], picture[4, 22]  # the blocks' centres (edges are white)
    assert blue[2] > 200 and blue[0] < 40  # the strongest positive: blue at 75 % opacity
    assert red[0] > red[2] and red[0] - 100 < blue[2] - 100  # negative: red, half as strong
    assert plain.tolist() == [100, 100, 100]  # zero: the grey image
    assert picture[4, 9].tolist() == [255, 255, 255]  # the edge between two segments


def test_output_names_and_error_messages_name_the_files():
    assert output_stems(["a/cat.jpg", "b/cat.jpg", "dog.png", "a_dog.png", "a/dog.jpeg"]) == \
        ["a_cat", "b_cat", "dog", "a_dog_3", "a_dog_4"]
    names = ["image x.png", "image y.png", "image z.png"]
    members = np.array([2, 0])
    assert _name_images("methods.shap: the model failed on dataset row 1 (0-based), on the record itself", members,
                        names) == \
        "methods.shap: the model failed on image x.png, on the record itself"
    assert "(image z.png, image x.png)" in _name_images("NaN for 2 records (dataset rows 0, 1)", members, names)


def test_worker_processes_and_resumed_shards_give_the_same_values(tmp_path, monkeypatch):
    """Two shards (one image each) on two spawned SHAP workers, which read and segment the images again."""
    single = JobRoot(write_image_demo_job(tmp_path / "single", n_images=2))
    assert single.run() == 0, single.message
    monkeypatch.setenv("LUCENT_SHAP_SHARD_ROWS", "300")  # 256 model rows per image: one image per shard
    monkeypatch.setenv("LUCENT_SHAP_WORKERS", "2")
    sharded = JobRoot(write_image_demo_job(tmp_path / "sharded", n_images=2))
    assert sharded.run() == 0, sharded.message
    ours = sharded.analysis()["explanations"]["lucent_image_shap"]["images"]
    theirs = single.analysis()["explanations"]["lucent_image_shap"]["images"]
    assert [e["image"] for e in ours] == [e["image"] for e in theirs]
    for mine, other in zip(ours, theirs, strict=True):  # the model's floats vary with the batch (BLAS): 1e-15
        for key in ("shap_values", "prediction", "reference"):
            for label in LABELS:
                np.testing.assert_allclose(mine[key][label], other[key][label], rtol=0, atol=1e-12)
