"""Image files that decode badly (analyzer/data/images.py): deep PNGs scaled to 8 bits, decompression bombs
and truncated JPEGs refused by name in `lucent validate` and `lucent run` (QA findings, docs/images.md)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from analyzer.data.images import MAX_PIXELS, image_dataset, read_image
from analyzer.errors import DataError
from tests.test_image_job import _demo_job, png_header_claiming


def test_a_16_bit_grey_png_is_scaled_to_8_bits(tmp_path):
    deep = np.random.default_rng(5).integers(0, 65536, (30, 20), dtype=np.uint16)
    deep[0, :4] = [0, 255, 256, 65535]
    Image.fromarray(deep).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    pixels = read_image(tmp_path / "deep.png")
    assert pixels.shape == (30, 20, 3) and pixels.dtype == np.uint8
    for channel in range(3):
        np.testing.assert_array_equal(pixels[:, :, channel], deep // 256)
    assert pixels[0, :4, 0].tolist() == [0, 0, 1, 255]


def test_a_32_bit_integer_picture_is_clipped_to_16_bits_then_scaled():
    from analyzer.data.images import to_rgb

    wide = np.array([[-5, 0, 511, 65535, 70_000]], dtype=np.int32)
    picture = Image.fromarray(wide)
    assert picture.mode == "I"
    assert to_rgb(picture, "wide")[0, :, 1].tolist() == [0, 0, 1, 255, 255]
    with pytest.raises(DataError, match="floating-point pixels"):
        to_rgb(Image.fromarray(wide.astype(np.float32)), "float")


def test_a_bomb_far_past_pillows_limit_is_a_data_error_naming_file_and_limit(tmp_path):
    # 20,000 x 20,000 = 400M pixels: past twice Pillow's limit, where Image.open itself raises.
    assert 2 * Image.MAX_IMAGE_PIXELS < 20_000 * 20_000
    (tmp_path / "bomb.png").write_bytes(png_header_claiming(20_000, 20_000))
    for load in (image_dataset, read_image):
        with pytest.raises(DataError) as error:
            load(tmp_path / "bomb.png")
        assert "bomb.png" in str(error.value) and f"{MAX_PIXELS:,}" in str(error.value)


def _truncated_jpeg(path) -> None:
    rng = np.random.default_rng(3)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, "JPEG", quality=90)
    data = buffer.getvalue()
    path.write_bytes(data[: len(data) // 2])


def test_a_truncated_jpeg_is_refused_when_the_dataset_is_checked(tmp_path):
    import weasyprint  # noqa: F401  (sets PIL.ImageFile.LOAD_TRUNCATED_IMAGES for the process, as in a job)

    _truncated_jpeg(tmp_path / "trunc.jpg")
    with Image.open(tmp_path / "trunc.jpg") as opened:
        opened.verify()  # what the check used to do: passes
    with pytest.raises(DataError, match="trunc.jpg"):
        image_dataset(tmp_path)


@pytest.mark.parametrize("name", ["bomb.png", "trunc.jpg"])
def test_validate_and_run_name_a_bomb_or_truncated_file(tmp_path, capsys, name):
    job = _demo_job(tmp_path)
    if name == "bomb.png":
        (job.data_dir / name).write_bytes(png_header_claiming(20_000, 20_000))
    else:
        _truncated_jpeg(job.data_dir / name)
    assert job.run(command="validate") == 1
    assert name in capsys.readouterr().out
    assert job.run() == 1
    assert job.message.startswith("ClientError: ") and name in job.message, job.message


@pytest.mark.parametrize("compactness, says", [(0, "must be > 0"), (0.0, "must be > 0"), (-2, "must be > 0"), (-1, "must be > 0 (SLIC divides by it), got -1.0")])
def test_segment_compactness_must_be_positive(compactness, says):
    from analyzer.config import parse_config
    from analyzer.config.parser import ConfigValidationError
    from container.image_demo import image_demo_config

    config = image_demo_config()
    config["methods"]["shap"]["image_config"]["segment_compactness"] = compactness
    with pytest.raises(ConfigValidationError) as error:
        parse_config(config)
    assert f"methods.shap.image_config.segment_compactness: {says}" in str(error.value)


def test_an_image_with_more_segments_than_the_cap_is_refused_naming_the_key_and_image(tmp_path):
    from analyzer.data.images import read_image
    from analyzer.explain.image_job import MAX_SEGMENTS
    from analyzer.explain.image_shap import segment_image

    job = _demo_job(tmp_path, n_images=1, num_segments=10_000)
    picture = sorted(p for p in job.data_dir.rglob("*") if p.is_file())[0]
    count = int(segment_image(read_image(picture), 10_000, 5).max()) + 1  # SLIC's own count
    assert count > MAX_SEGMENTS
    assert job.run() == 1
    assert job.message.startswith("ClientError: "), job.message
    assert "methods.shap.image_config.num_segments 10000" in job.message, job.message
    assert f"{picture.name} has {count:,} SLIC segments" in job.message, job.message
