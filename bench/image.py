"""Image explanations benchmark: 100 pictures of 224 x 224 through the built-in model server, time in the model.

Run from the repository root: ``python bench/image.py [--images N] [--size PIXELS] [--segments N]
[--content-type application/x-npy|image/jpeg|image/png] [--pictures described|drawn]``.

The image demo's classifier (``container.image_demo``: logistic regression on the picture averaged down
to 8 x 8 blocks, behind its ``inference.py``) is served by the built-in server (one gunicorn worker per
core). The job's image SHAP step (``analyzer.explain.image_job.explain_images``: SLIC with
``num_segments`` segments, default sample count, mean-colour fill, shards and checkpoints, the pictures)
explains every image. Reference, measured in the same run: the model's own in-process ``predict_fn``
over the same number of pictures, in batches of the size the job sends. ``--pictures drawn`` measures the
requests as they go to any other server (the job draws the pictures and sends them as npy).

Printed: images/s, and the model's share of the CPU time: the reference's CPU time against all the CPU
the step used (job process and the server's workers), as ``bench/text.py`` does. Target: the model holds
over half.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.processes import children, cpu_seconds, served_endpoint  # noqa: E402


def main() -> None:
    from analyzer.config import parse_config
    from analyzer.data.images import image_dataset
    from analyzer.explain.design import default_num_samples
    from analyzer.explain.image_job import explain_images
    from analyzer.explain.image_shap import IMAGES_PER_CHUNK, IMAGES_PER_REQUEST
    from analyzer.output import OutputStaging
    from container.image_demo import (
        IMAGE_INFERENCE_SCRIPT,
        image_demo_config,
        make_images,
        train_image_model,
        write_image_model,
        write_images,
    )

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--segments", type=int, default=20)
    parser.add_argument("--content-type", default="application/x-npy")
    parser.add_argument("--pictures", choices=("described", "drawn"), default="described",
                        help="npy requests carry the pictures described, drawn by the server (what a job does with "
                             "the server it starts), or drawn by the job (as to any other server)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    model = train_image_model(n=400, size=args.size, seed=0)
    pictures, _ = make_images(args.images, args.size, seed=1)
    config = parse_config(image_demo_config(num_segments=args.segments, content_type=args.content_type))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_image_model(root / "model", model)
        write_images(root / "data", pictures)
        dataset = image_dataset(root / "data")
        with served_endpoint(root / "model", config, dataset, ["image"]) as (server, endpoint), \
                OutputStaging(root / "out") as staging:
            if args.pictures == "drawn":
                endpoint = dataclasses.replace(endpoint, composes_pictures=False)
            described = endpoint.describes_pictures
            server_workers = children(server.pid)
            before = _own_cpu(), cpu_seconds(server_workers)
            start = time.perf_counter()
            section = explain_images(config, config.methods.shap, dataset, endpoint, staging, root / "work", root)
            wall = time.perf_counter() - start
            job_cpu, server_cpu = _own_cpu() - before[0], cpu_seconds(server_workers) - before[1]
    images = section["lucent_image_shap"]["images"]
    segments = np.array([entry["n_segments"] for entry in images])
    # Pictures scored: per image its coalitions, itself, and itself with every segment filled.
    n_pictures = int(sum(min(default_num_samples(m), 2**m - 2) + 2 for m in segments))

    namespace: dict = {}
    exec(compile(IMAGE_INFERENCE_SCRIPT, "inference.py", "exec"), namespace)  # noqa: S102 - our own script
    predict_fn = namespace["predict_fn"]
    batch = np.ascontiguousarray(np.repeat(pictures[:1], IMAGES_PER_REQUEST, axis=0))
    start, cpu_start = time.perf_counter(), time.process_time()
    done = 0
    while done < n_pictures:
        take = min(IMAGES_PER_REQUEST, n_pictures - done)
        predict_fn(batch[:take], model)
        done += take
    in_process, model_cpu = time.perf_counter() - start, time.process_time() - cpu_start

    total_cpu = job_cpu + server_cpu
    share = model_cpu / total_cpu
    print(f"Image SHAP through the built-in sidecar: {args.images} images of {args.size} x {args.size}, "
          f"num_segments {args.segments} ({segments.min()} to {segments.max()} SLIC segments, {segments.mean():.1f} "
          f"on average), default num_samples, mean-colour fill, {args.content_type} requests of up to "
          f"{IMAGES_PER_REQUEST} images, " + ("the pictures described (the server draws them)" if described else
                                              f"the pictures drawn by the job, {IMAGES_PER_CHUNK} at a time"))
    print(f"  pictures scored by the model: {n_pictures:,} ({n_pictures * pictures[0].nbytes / 2**30:.1f} GiB of "
          f"pixels, {'drawn by the server' if described else 'sent'})")
    print(f"  job image SHAP step: {wall:7.2f} s = {args.images / wall:6.2f} images/s, {n_pictures / wall:,.0f} "
          "pictures/s")
    print(f"  CPU during the step: job process {job_cpu:7.2f} s, {len(server_workers)} model server workers "
          f"{server_cpu:7.2f} s, total {total_cpu:7.2f} s")
    print(f"  model in-process predict_fn, same pictures: {in_process:7.2f} s ({model_cpu:7.2f} s CPU)")
    print(f"  model share of the CPU time: {100 * share:5.1f} %; non-model share: {100 * (1 - share):5.1f} % "
          "(target: model > 50 %)")


def _own_cpu() -> float:
    """CPU seconds of this process and of its children that have exited (SHAP worker processes)."""
    own, children_usage = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children_usage.ru_utime + children_usage.ru_stime


if __name__ == "__main__":
    main()
