"""Image explanations in the job: ``methods.shap`` on an ``application/x-image`` dataset (docs/images.md).

``analyzer.explain.job`` hands image jobs here. Every image is read and cut into SLIC segments first (an
unreadable file fails the job before any model call), its segmented picture is written, the model scores
every image with all segments filled (each image's reference), and then Kernel SHAP runs over the
segments through the tabular shards (``image_shap`` explains the change of coordinates). Images are
grouped by their number of segments: each group shares one coalition design, as text records do.

Outputs (spec clarify-contract.md 4.7): per image ``<stem>_segmented.jpeg`` (segment boundaries drawn)
and ``shap_<stem>.jpeg`` (the heatmap of the predicted label: blue = positive, red = negative), and the
``lucent_image_shap`` section of ``analysis.json`` with every segment's value for every label.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from analyzer import __version__, media
from analyzer.config import AnalysisConfig
from analyzer.config.model import ImageConfig, ShapMethod
from analyzer.data import Dataset, resolve_local_path
from analyzer.data.images import IMAGE_COLUMN, image_root, read_image
from analyzer.errors import UserError
from analyzer.output import OutputStaging
from analyzer.predict import ModelEndpoint
from analyzer.predict.image_requests import IMAGE_REQUEST_TYPES
from analyzer.progress import progress

from . import image_shap
from .checkpoint_store import CheckpointMirror, CheckpointStore, fingerprint
from .image_detection import DetectedObject, DetectionEndpoint, check_detections, top_objects
from .image_shap import ImageEndpoint, ImageSource, score_filled
from .job import _check_finite_baseline, _work_folder, predictor_settings
from .kernel_shap import KernelShap, fit_kernel_shap, link
from .shards import ShapSettings, run_shards, shard_size

log = logging.getLogger(__name__)

SECTION = "lucent_image_shap"  # analysis.json: explanations.lucent_image_shap (Clarify's CV section is undocumented)
IMAGE_CLASSIFICATION, OBJECT_DETECTION = "IMAGE_CLASSIFICATION", "OBJECT_DETECTION"
KEY = "methods.shap.image_config"
POSITIVE, NEGATIVE = np.array([0, 90, 255.0]), np.array([230, 25, 25.0])  # heatmap: blue +, red -
HEAT_ALPHA = 0.75  # opacity of the strongest segment's colour over the grey image
BOUNDARY = (1.0, 1.0, 0.0)  # segment edges in the segmented image: yellow
JPEG_QUALITY = 90
# Most segments (players) one image may have: Kernel SHAP's solve grows as M^3 and its coalitions with M, so
# 1,000 keeps the solve near a second; 3,072 (num_segments 10,000 on 48 x 64) took minutes (docs/images.md).
MAX_SEGMENTS = 1_000


def check_image_config(config: AnalysisConfig, shap: ShapMethod) -> ImageConfig:
    """The image settings this version runs (``UserError`` for the others)."""
    content_type = media.media_type(config.predictor.content_type if config.predictor else None) or media.JPEG
    if content_type not in IMAGE_REQUEST_TYPES:
        raise UserError(f"predictor.content_type: {content_type} cannot carry images; use image/jpeg, image/png or "
                        "application/x-npy for application/x-image datasets")
    image_config = shap.image_config or ImageConfig()
    model_type = (image_config.model_type or IMAGE_CLASSIFICATION).upper()
    if model_type not in (IMAGE_CLASSIFICATION, OBJECT_DETECTION):
        raise UserError(f"{KEY}.model_type: {model_type} is not one of {IMAGE_CLASSIFICATION}, {OBJECT_DETECTION}")
    if image_config.feature_extraction_method != "segmentation":
        raise UserError(f"{KEY}.feature_extraction_method: {image_config.feature_extraction_method!r} is not "
                        "supported; Clarify and Lucent use 'segmentation' (SLIC superpixels)")
    if image_config.num_segments < 1:
        raise UserError(f"{KEY}.num_segments must be at least 1, got {image_config.num_segments}")
    if shap.baseline is not None and not isinstance(shap.baseline, str):
        raise UserError("methods.shap.baseline: for images it is the path or URI of a mask image (or absent: "
                        "the image's mean colour), not inline rows")
    return image_config


# methods.shap keys of tabular SHAP that mean nothing for images, and why (docs/images.md): logged, not refused.
NOT_FOR_IMAGES = {
    "num_clusters": "the baseline is each image's fill (its mean colour or the mask image), not clustered rows",
    "agg_method": "images are explained one by one; no global aggregate of the segments is computed",
}


def log_ignored_options(config: AnalysisConfig) -> None:
    """One line for each ``NOT_FOR_IMAGES`` key the config gives."""
    given = (config.raw.get("methods") or {}).get("shap") if isinstance(config.raw, dict) else None
    for key, why in NOT_FOR_IMAGES.items():
        if isinstance(given, dict) and key in given:
            log.warning("methods.shap.%s (%r) does not apply to images and is ignored: %s", key, given[key], why)


def image_source(config: AnalysisConfig, shap: ShapMethod, dataset: Dataset, base_dir: Path | None) -> ImageSource:
    """Where the images are and how they are segmented and filled; the mask image is read here (errors
    name it)."""
    assert dataset.features is not None
    image_config = check_image_config(config, shap)
    mask = None
    if isinstance(shap.baseline, str):
        mask = resolve_local_path(shap.baseline, base_dir=base_dir)
        try:
            read_image(mask)
        except UserError as error:
            raise UserError(f"methods.shap.baseline (the mask image): {error}") from None
    return ImageSource(image_root(dataset), tuple(dataset.features[IMAGE_COLUMN].tolist()),
                       int(image_config.num_segments), float(image_config.segment_compactness), mask)


def explain_images(config: AnalysisConfig, shap: ShapMethod, dataset: Dataset, endpoint: ModelEndpoint,
                   staging: OutputStaging, work_dir: Path, base_dir: Path | None,
                   model_identity: str = "", checkpoint_store: CheckpointStore | None = None) -> dict[str, Any]:
    """Kernel SHAP of every image over its segments: writes the pictures, returns ``{SECTION: ...}``.
    ``checkpoint_store``: where the shards' checkpoints are also kept (as for tabular SHAP, ``job.explain``)."""
    started = time.perf_counter()
    source = image_source(config, shap, dataset, base_dir)
    log_ignored_options(config)
    n = len(source.names)
    stems = output_stems(source.names)
    counts = np.zeros(n, dtype=int)
    with progress("Images: segmenting", total=n, unit="images") as bar:
        for i in range(n):
            prepared = source.prepared(i)
            counts[i] = prepared.n_segments
            if counts[i] > MAX_SEGMENTS:
                raise UserError(f"{KEY}.num_segments {source.num_segments}: image {source.names[i]} has "
                                f"{counts[i]:,} SLIC segments, more than Lucent explains ({MAX_SEGMENTS:,}: the "
                                "cost grows as the cube of the segments); lower num_segments")
            write_jpeg(staging.path(f"{stems[i]}_segmented.jpeg"), segmented_picture(prepared.image, prepared.segments))
            bar.update(1)
    log.info("Segmented %d image(s) into %d to %d segments (num_segments %d, compactness %g) in %.2f s", n,
             counts.min(), counts.max(), source.num_segments, source.compactness, time.perf_counter() - started)

    image_config = check_image_config(config, shap)
    if (image_config.model_type or "").upper() == OBJECT_DETECTION:
        section = explain_objects(config, shap, image_config, source, counts, stems, endpoint, staging, work_dir,
                                  model_identity, checkpoint_store)
        log.info("Kernel SHAP of the objects of %d image(s) done in %.2f s", n, time.perf_counter() - started)
        return {SECTION: section}

    filled = score_filled(endpoint, source, range(n))
    label_keys = filled.score_keys()
    filled_scores = filled.scores
    _check_finite_baseline(filled_scores, shap.use_logit)
    checkpoint_dir, seed, mirror = _checkpoints(config, shap, source, filled_scores, model_identity, work_dir,
                                                checkpoint_store)
    keys = np.arange(n)[:, None]
    with progress("SHAP", total=n, unit="images") as bar:
        values, stderr, reference, prediction = explain_groups(
            shap, ImageEndpoint(endpoint, source), keys, counts, filled_scores, checkpoint_dir, seed,
            [f"image {name}" for name in source.names], bar.update, mirror)
    section = image_section(shap, source, label_keys, counts, values, stderr, reference, prediction, stems,
                            link(filled_scores.mean(axis=0), shap.use_logit))
    for i in range(n):
        prepared = source.prepared(i)
        top = int(np.argmax(prediction[i]))
        write_jpeg(staging.path(f"shap_{stems[i]}.jpeg"), heatmap(prepared.image, prepared.segments, values[i][:, top]))
    log.info("Kernel SHAP of %d image(s) done in %.2f s", n, time.perf_counter() - started)
    return {SECTION: section}


def explain_groups(shap: ShapMethod, players: Any, keys: np.ndarray, counts: np.ndarray, filled_scores: np.ndarray,
                   checkpoint_dir: Path, seed: int, described: list[str], advance: Any,
                   mirror: CheckpointMirror | None = None,
                   ) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray, np.ndarray]:
    """Kernel SHAP of records ``[*keys[r], 1, ..., 1]`` (``counts[r]`` segments each) through the shards,
    grouped by their number of segments; ``players`` is the endpoint that turns rows into pictures and
    scores. Returns per record its values and standard errors ``(M, k)``, and ``reference`` /
    ``prediction`` ``(r, k)``. ``described[r]`` names record ``r`` in errors."""
    r, key_columns = keys.shape
    k = filled_scores.shape[1]
    values: list[np.ndarray] = [np.zeros((0, k))] * r
    stderr: list[np.ndarray] = [np.zeros((0, k))] * r
    reference, prediction = np.zeros((r, k)), np.zeros((r, k))
    for m in sorted(set(counts.tolist())):
        members = np.flatnonzero(counts == m)
        baseline = np.zeros((1, key_columns + m))
        fitted = fit_kernel_shap(baseline, filled_scores[members].mean(axis=0, keepdims=True),
                                 num_samples=shap.num_samples, seed=seed, use_logit=shap.use_logit,
                                 features_to_explain=range(key_columns, key_columns + m))
        log.info("SHAP n_samples %d (%d coalitions) for %d record(s) of %d segments, %d output(s)",
                 shap.num_samples or len(fitted.design.masks), len(fitted.design.masks), len(members), m, k)
        settings = ShapSettings(endpoint=players, baseline=fitted.baseline, num_samples=shap.num_samples, seed=seed,
                                use_logit=shap.use_logit, features=tuple(range(key_columns, key_columns + m)),
                                checkpoint_dir=checkpoint_dir / f"segments-{m}", fitted=fitted,
                                mirror=None if mirror is None else mirror.child(f"segments-{m}"))
        records = np.ones((len(members), key_columns + m))
        records[:, :key_columns] = keys[members]
        size, total = shard_size(fitted.rows_per_record), len(members)
        try:
            local = run_shards(settings, records, size, KernelShap.from_fit(fitted, None),
                               on_done=lambda b, size=size, total=total: advance(min(size, total - b * size)))
        except UserError as error:
            raise UserError(_name_images(str(error), members, described)) from None
        for j, i in enumerate(members.tolist()):
            values[i], stderr[i] = local.values[j], local.stderr[j]
        reference[members], prediction[members] = local.reference, local.prediction
    return values, stderr, reference, prediction


def explain_objects(config: AnalysisConfig, shap: ShapMethod, image_config: ImageConfig, source: ImageSource,
                    counts: np.ndarray, stems: list[str], endpoint: ModelEndpoint, staging: OutputStaging,
                    work_dir: Path, model_identity: str, checkpoint_store: CheckpointStore | None = None,
                    ) -> dict[str, Any]:
    """Object detection: the top objects of each image, each explained over the image's segments
    (``image_detection``); writes ``<stem>_objects.jpeg`` and ``shap_<stem>_box<N>_object.jpeg``."""
    context = float(image_config.context)
    if not 0 <= context <= 1:
        raise UserError(f"{KEY}.context must be in [0, 1], got {context}")
    players = DetectionEndpoint(endpoint, source, (), float(image_config.iou_threshold), context)
    headers = list(config.predictor.label_headers or []) if config.predictor else []
    objects: list[DetectedObject] = []
    with players.client() as scorer:
        for i in range(len(source.names)):
            try:
                found = scorer.detections(source.prepared(i).image[None])[0]
            except UserError as error:
                raise UserError(f"methods.shap: image {source.names[i]}: {error}") from None
            check_detections(found, headers, f"methods.shap: image {source.names[i]}")
            objects.extend(top_objects(i, found, config.probability_threshold, int(image_config.max_objects)))
    players = replace(players, objects=tuple(objects))
    keys = np.array([[obj.image, j] for j, obj in enumerate(objects)], dtype=float).reshape(-1, 2)
    object_counts = counts[[obj.image for obj in objects]] if objects else np.zeros(0, dtype=int)
    log.info("%d object(s) to explain in %d image(s) (probability_threshold %g, max_objects %d)", len(objects),
             len(source.names), config.probability_threshold, image_config.max_objects)
    values: list[np.ndarray] = []
    stderr: list[np.ndarray] = []
    reference = prediction = np.zeros((0, 1))
    filled_scores = np.zeros((0, 1))
    if objects:
        with players.client() as scorer:
            empty = np.hstack([keys, np.zeros((len(keys), int(object_counts.max())))])
            filled_scores = np.concatenate([scorer.predict(empty[j:j + 1, :2 + object_counts[j]]).scores
                                            for j in range(len(objects))])
        checkpoint_dir, seed, mirror = _checkpoints(config, shap, source, filled_scores, model_identity, work_dir,
                                                    checkpoint_store)
        described = [f"image {source.names[obj.image]} (object {j})" for j, obj in enumerate(objects)]
        with progress("SHAP", total=len(objects), unit="objects") as bar:
            values, stderr, reference, prediction = explain_groups(shap, players, keys, object_counts, filled_scores,
                                                                   checkpoint_dir, seed, described, bar.update,
                                                                   mirror)
    images = []
    for i, name in enumerate(source.names):
        prepared = source.prepared(i)
        mine = [j for j, obj in enumerate(objects) if obj.image == i]
        write_jpeg(staging.path(f"{stems[i]}_objects.jpeg"),
                   boxes_picture(prepared.image, [objects[j] for j in mine], headers))
        entries = []
        for number, j in enumerate(mine, start=1):
            obj = objects[j]
            file = f"shap_{stems[i]}_box{number}_object.jpeg"
            write_jpeg(staging.path(file), boxes_picture(heatmap(prepared.image, prepared.segments, values[j][:, 0]),
                                                         [obj], headers))
            entries.append({
                "label": str(headers[obj.class_index]) if 0 <= obj.class_index < len(headers) else str(obj.class_index),
                "class_index": obj.class_index, "confidence": obj.confidence, "box": list(obj.box),
                "prediction": float(prediction[j, 0]), "reference": float(reference[j, 0]),
                "shap_values": values[j][:, 0].tolist(), "lucent_stderr": stderr[j][:, 0].tolist(), "heatmap": file})
        images.append({"image": name, "n_segments": int(counts[i]), "objects": entries,
                       "segmented_image": f"{stems[i]}_segmented.jpeg", "objects_image": f"{stems[i]}_objects.jpeg"})
    return {
        "model_type": OBJECT_DETECTION, "num_segments": source.num_segments,
        "segment_compactness": source.compactness,
        "baseline": "mean colour of each image" if source.mask is None else f"mask image {source.mask.name}",
        "use_logit": shap.use_logit, "max_objects": int(image_config.max_objects),
        "iou_threshold": float(image_config.iou_threshold), "context": context,
        "probability_threshold": config.probability_threshold,
        "expected_value": float(link(filled_scores.mean(axis=0), shap.use_logit)[0]) if objects else None,
        "images": images,
    }


def _checkpoints(config: AnalysisConfig, shap: ShapMethod, source: ImageSource, filled_scores: np.ndarray,
                 model_identity: str, work_dir: Path, checkpoint_store: CheckpointStore | None,
                 ) -> tuple[Path, int, CheckpointMirror | None]:
    """The work area's folder for this job's checkpoints, its seed, and their mirror in ``checkpoint_store``
    (pulled first: the seed and the shards a lost run left there; the seed pushed at once)."""
    checkpoint_dir, seed, mirror = _work_folder(work_dir, _fingerprint(config, shap, source, filled_scores,
                                                                      model_identity), shap.seed, checkpoint_store)
    if mirror is not None:
        mirror.push_missing()  # the seed: each group's shards push only their own folder (``mirror.child``)
    return checkpoint_dir, seed, mirror


def boxes_picture(image: np.ndarray, objects: list[DetectedObject], headers: list) -> np.ndarray:
    """``image`` with each object's box and label drawn (yellow)."""
    from PIL import Image, ImageDraw

    picture = Image.fromarray(image)
    draw = ImageDraw.Draw(picture)
    height, width = image.shape[:2]
    for obj in objects:
        x0, y0, x1, y1 = obj.box
        draw.rectangle([x0 * width, y0 * height, x1 * width, y1 * height], outline=(255, 220, 0), width=2)
        name = headers[obj.class_index] if 0 <= obj.class_index < len(headers) else obj.class_index
        draw.text((x0 * width + 3, y0 * height + 2), f"{name} {obj.confidence:.2f}", fill=(255, 220, 0))
    return np.asarray(picture)


def image_section(shap: ShapMethod, source: ImageSource, label_keys: list[str], counts: np.ndarray,
                  values: list[np.ndarray], stderr: list[np.ndarray], reference: np.ndarray, prediction: np.ndarray,
                  stems: list[str], expected_value: np.ndarray) -> dict[str, Any]:
    """``explanations.lucent_image_shap``: the settings, then per image every segment's value per label."""
    images = []
    for i, name in enumerate(source.names):
        images.append({
            "image": name,
            "n_segments": int(counts[i]),
            "predicted_label": label_keys[int(np.argmax(prediction[i]))],
            "prediction": dict(zip(label_keys, prediction[i].tolist(), strict=True)),
            "reference": dict(zip(label_keys, reference[i].tolist(), strict=True)),
            "shap_values": {key: values[i][:, c].tolist() for c, key in enumerate(label_keys)},
            "lucent_stderr": {key: stderr[i][:, c].tolist() for c, key in enumerate(label_keys)},
            "segmented_image": f"{stems[i]}_segmented.jpeg",
            "heatmap": f"shap_{stems[i]}.jpeg",
        })
    return {
        "model_type": IMAGE_CLASSIFICATION,
        "num_segments": source.num_segments,
        "segment_compactness": source.compactness,
        "baseline": "mean colour of each image" if source.mask is None else f"mask image {source.mask.name}",
        "use_logit": shap.use_logit,
        "label_headers": label_keys,
        "expected_value": dict(zip(label_keys, expected_value.tolist(), strict=True)),
        "images": images,
    }


# -- pictures ----------------------------------------------------------------------------------------

def segmented_picture(image: np.ndarray, segments: np.ndarray) -> np.ndarray:
    """The image with its segments' boundaries drawn."""
    from skimage.segmentation import mark_boundaries

    marked = mark_boundaries(image, segments, color=BOUNDARY, mode="inner")
    return np.clip(np.rint(marked * 255), 0, 255).astype(np.uint8)


def heatmap(image: np.ndarray, segments: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Each segment coloured by its SHAP value over the grey image: blue = positive, red = negative, the
    strongest segment at ``HEAT_ALPHA`` opacity and the others in proportion; edges drawn in white."""
    from skimage.segmentation import find_boundaries

    values = np.asarray(values, dtype=float)
    scale = float(np.max(np.abs(values))) if values.size else 0.0
    strength = (values / scale if scale > 0 else np.zeros_like(values))[segments]
    grey = np.repeat(image.mean(axis=-1, keepdims=True), 3, axis=-1)
    colour = np.where((strength >= 0)[..., None], POSITIVE, NEGATIVE)
    alpha = HEAT_ALPHA * np.abs(strength)[..., None]
    out = grey * (1 - alpha) + colour * alpha
    out[find_boundaries(segments, mode="inner")] = 255.0
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def write_jpeg(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(image).save(path, format="JPEG", quality=JPEG_QUALITY)


def output_stems(names: tuple[str, ...] | list[str]) -> list[str]:
    """File stems of the output pictures: the image's relative path without its suffix, folders joined
    with ``_``; a stem two images would share gets the image's position appended."""
    stems = [re.sub(r"[\\/]+", "_", str(Path(name).with_suffix(""))) for name in names]
    seen: dict[str, int] = {}
    for stem in stems:
        seen[stem] = seen.get(stem, 0) + 1
    return [f"{stem}_{i}" if seen[stem] > 1 else stem for i, stem in enumerate(stems)]


# -- helpers -----------------------------------------------------------------------------------------

def _name_images(message: str, members: np.ndarray, names: Sequence[str]) -> str:
    """The shards name records by their position in the group: name the image (``names``: per record) instead."""
    def image(match: re.Match) -> str:
        position = int(match.group(1))
        return names[members[position]] if position < len(members) else match.group(0)

    message = re.sub(r"dataset rows ([\d, ]+)", lambda m: ", ".join(
        names[members[int(p)]] for p in m.group(1).split(", ") if p.strip().isdigit() and int(p) < len(members)),
        message)
    return re.sub(r"dataset row (\d+)(?: \(0-based\))?", image, message)


def _fingerprint(config: AnalysisConfig, shap: ShapMethod, source: ImageSource, filled_scores: np.ndarray,
                 model_identity: str) -> str:
    """Digest of what the checkpointed values depend on: Lucent's version, the images' bytes and names, the
    segmentation and fill, ``num_samples`` / ``use_logit`` / ``seed``, the predictor's format, the model,
    how the pictures are cut into requests."""
    import skimage

    settings = dict(version=__version__, skimage=skimage.__version__, names=source.names, image=asdict(
                        shap.image_config) if shap.image_config else None, threshold=config.probability_threshold,
                    segments=source.num_segments, compactness=source.compactness,
                    mask=str(source.mask) if source.mask else None, num_samples=shap.num_samples,
                    use_logit=shap.use_logit, seed=shap.seed, predictor=predictor_settings(config), model=model_identity,
                    # how the pictures are cut into requests: a model's last bits depend on the batch it scores
                    batches=(image_shap.IMAGES_PER_CHUNK, image_shap.IMAGES_PER_REQUEST,
                             image_shap.PICTURE_BUFFER_BYTES))
    files = [source.path(i) for i in range(len(source.names))] + ([source.mask] if source.mask is not None else [])
    return fingerprint(settings, [*(hashlib.sha256(path.read_bytes()).digest() for path in files),
                                  np.ascontiguousarray(filled_scores, dtype=float).tobytes()])


__all__ = ["SECTION", "check_image_config", "explain_images", "heatmap", "image_section", "image_source",
           "output_stems", "segmented_picture"]
