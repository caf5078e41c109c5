"""Text SHAP shards hold records in the order of their number of players (``shards.run_text_shards``).

A worker builds a coalition design and solver per number of players (``TextKernelShap.solver``, ~70 ms
at 80 players) and keeps the last ``SOLVERS_KEPT``. Shards cut in dataset order held records of many
lengths each, and a job over reviews of mixed lengths built the same solvers again and again; shards
cut in the order of the player counts hold one or a few counts each. Checked here, with a real model
served over HTTP: the values are those of explaining every record at once in dataset order, bit for bit,
with one worker or two and after a resumed run; each count's solver is built once by a worker; errors
name the failing record's dataset row; checkpoints of the former cut are discarded with a warning.
"""

from __future__ import annotations

import csv
import io
import itertools
import logging
import math
import re
from http.server import BaseHTTPRequestHandler

import numpy as np
import pytest

from analyzer.config.model import Predictor
from analyzer.errors import UserError
from analyzer.explain import shards, text_shap
from analyzer.explain.text_job import synthetic_rows
from analyzer.explain.text_shap import SOLVERS_KEPT, TextExplanation, TextKernelShap, player_counts
from analyzer.explain.text_units import split_text
from analyzer.predict import ModelEndpoint
from tests.conftest import http_server
from tests.test_explain_text import WEIGHTS

NUM_SAMPLES, SEED = 30, 7
SHARD_ROWS = 200  # synthetic rows per shard: 6 records of (30 + 1) x 1 + 1 rows
BASELINE = np.array([["<PAD>", "B"]], dtype=object)
VOCAB = [*WEIGHTS, "the", "a", "it", "was", "very", "shirt", "colour", "size"]
LENGTHS = range(3, 45)  # words per review: 42 player counts (words + the category), more than SOLVERS_KEPT


def _reviews() -> list[tuple[str, str]]:
    """126 reviews, three of each length, the lengths scrambled as in real data (a deterministic shuffle)."""
    rng = np.random.default_rng(11)
    lengths = [LENGTHS[(5 * i) % len(LENGTHS)] for i in range(3 * len(LENGTHS))]  # each length every 42
    return [(" ".join(rng.choice(VOCAB, size=n)), "AB"[i % 2]) for i, n in enumerate(lengths)]


class _Model(BaseHTTPRequestHandler):
    """CSV rows (review, category) in, one probability per row out: a bag of words with an interaction.
    A row holding ``server.refuse`` is refused (HTTP 400, the whole request); one holding ``server.nan``
    scores NaN."""

    def do_GET(self):  # noqa: N802 - http.server API
        self.send_response(200)
        self.end_headers()

    def do_POST(self):  # noqa: N802 - http.server API
        body = self.rfile.read(int(self.headers["Content-Length"])).decode()
        rows = list(csv.reader(io.StringIO(body)))
        if any(self.server.refuse in row[0].split() for row in rows):
            self.send_response(400)
            self.end_headers()
            self.wfile.write(f"the word {self.server.refuse!r} is not allowed".encode())
            return
        out = []
        for text, category in rows:
            words = text.split()
            score = sum(WEIGHTS.get(w, 0.0) for w in words) + {"A": 0.5, "B": -0.25}[category]
            score -= 2.0 if "not" in words and "great" in words else 0.0
            out.append("nan" if self.server.nan in words else repr(1 / (1 + math.exp(-score))))
        self.send_response(200)
        self.send_header("Content-Type", "text/csv")
        self.end_headers()
        self.wfile.write("".join(f"{p}\n" for p in out).encode())

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    with http_server(_Model, refuse="\0", nan="\0") as served:
        yield served


def _endpoint(server) -> ModelEndpoint:
    return ModelEndpoint(f"http://127.0.0.1:{server.server_port}", Predictor(content_type="text/csv",
                                                                             accept_type="text/csv"),
                         ("review", "category"), timeout=30.0)


class _Job:
    """``run_text_shards`` as the text job calls it (``job._explain_text``), on ``reviews``."""

    def __init__(self, server, tmp_path, reviews: list[tuple[str, str]]):
        self.endpoint = _endpoint(server)
        self.records = np.array([list(review) for review in reviews], dtype=object)
        self.units = [[split_text(text, "en", "token")] for text, _ in reviews]
        self.counts = player_counts(self.units, 2)
        self.rows = np.array([synthetic_rows(u, 2, NUM_SAMPLES, len(BASELINE)) for u in self.units])
        with self.endpoint.client() as client:
            self.baseline_scores = client.predict(BASELINE).scores
        self.checkpoint_dir = tmp_path / "checkpoints"
        self.checkpoint_dir.mkdir()

    @property
    def settings(self) -> shards.TextShapSettings:
        return shards.TextShapSettings(endpoint=self.endpoint, baseline=BASELINE, text_columns=(0,),
                                       num_samples=NUM_SAMPLES, seed=SEED, use_logit=False,
                                       checkpoint_dir=self.checkpoint_dir, baseline_scores=self.baseline_scores)

    def run(self, on_records=None) -> TextExplanation:
        explainer = TextKernelShap(None, BASELINE, (0,), num_samples=NUM_SAMPLES, seed=SEED,
                                   baseline_scores=self.baseline_scores)  # assembles results only, as the job's
        return shards.run_text_shards(self.settings, self.records, self.units, self.rows, explainer,
                                      shard_rows=SHARD_ROWS, on_records=on_records)

    def at_once(self) -> TextExplanation:
        """Every record explained in one call, in dataset order, by the explainer a worker makes."""
        with self.endpoint.client() as client:
            return self.settings.explainer(lambda rows: client.predict(rows).scores).explain(self.records, self.units)

    def clear(self) -> None:
        for path in self.checkpoint_dir.glob("shard-*.npz"):
            path.unlink()

    def shard_counts(self) -> list[np.ndarray]:
        """The player counts of each checkpointed shard's records, from the checkpoints' own offsets."""
        return [np.diff(np.load(path)["offsets"]) for path in sorted(self.checkpoint_dir.glob("shard-*.npz"))]


def _assert_identical(result: TextExplanation, expected: TextExplanation) -> None:
    for name in ("values", "stderr", "offsets", "reference", "prediction", "expected_value"):
        np.testing.assert_array_equal(getattr(result, name), getattr(expected, name), err_msg=name)


def _cut(costs: np.ndarray) -> list[int]:
    """The shard boundaries run_text_shards draws over ``costs`` (synthetic rows, in the order explained)."""
    return shards.text_shard_bounds(costs, SHARD_ROWS)


def test_values_are_those_of_every_record_at_once_with_one_or_two_workers(server, tmp_path, monkeypatch):
    job = _Job(server, tmp_path, _reviews())
    expected = job.at_once()
    assert len(np.unique(job.counts)) == len(LENGTHS) > SOLVERS_KEPT
    assert not np.all(np.diff(job.counts) >= 0)  # dataset order is not the order of the counts
    done = []
    monkeypatch.setenv(shards.WORKERS_ENV, "1")
    _assert_identical(job.run(on_records=done.append), expected)
    counts = job.shard_counts()
    assert len(counts) >= 15 and sum(done) == len(job.records) == sum(map(len, counts))  # progress: records
    assert sorted(done) == sorted(len(c) for c in counts)
    # The shards hold the records by ascending count: each shard one or two counts.
    assert np.array_equal(np.concatenate(counts), np.sort(job.counts))
    assert max(len(np.unique(c)) for c in counts) <= 3  # 3 records of each count, about 6 records a shard

    job.clear()
    monkeypatch.setenv(shards.WORKERS_ENV, "2")
    _assert_identical(job.run(), expected)


def test_each_player_count_s_solver_is_built_once_per_worker(server, tmp_path, monkeypatch):
    job = _Job(server, tmp_path, _reviews())
    built = []
    make_design = text_shap.make_design

    def counted(n_players, num_samples=None, seed=None):
        built.append(n_players)
        return make_design(n_players, num_samples, seed)

    monkeypatch.setattr(text_shap, "make_design", counted)
    monkeypatch.setenv(shards.WORKERS_ENV, "1")  # the worker is this process, where the designs are counted
    job.run()
    shard_counts = job.shard_counts()
    # Each count's records are consecutive in the shards: its solver is built once, never again after the
    # LRU evicts it, and a count spread over two shards is still kept from one to the next.
    assert sorted(built) == sorted(set(built)) == np.unique(job.counts).tolist()
    per_shard = sum(len(np.unique(c)) for c in shard_counts)
    split = sum(1 for a, b in itertools.pairwise(shard_counts) if a[-1] == b[0])  # counts cut by a boundary
    assert per_shard == len(built) + split  # what a worker given any subset of the shards builds at most

    # The same records in dataset-order shards (the former cut: the same rule over the dataset's order),
    # each shard explained as
    # TextKernelShap.explain does (one solver per distinct count, ascending), by one explainer.
    built.clear()
    explainer = TextKernelShap(None, BASELINE, (0,), num_samples=NUM_SAMPLES, seed=SEED,
                               baseline_scores=job.baseline_scores)
    bounds = _cut(job.rows)
    for a, b in itertools.pairwise(bounds):
        for m in np.unique(job.counts[a:b]):
            explainer.solver(int(m))
    dataset_order = sum(len(np.unique(job.counts[a:b])) for a, b in itertools.pairwise(bounds))
    assert len(built) > 2 * len(np.unique(job.counts))  # evicted and built again: more than twice as many
    assert per_shard < dataset_order


def test_a_failing_record_in_a_reordered_shard_names_its_dataset_row(server, tmp_path, monkeypatch):
    reviews = _reviews()
    row = 40
    reviews[row] = (reviews[row][0] + " refused", reviews[row][1])
    job = _Job(server, tmp_path, reviews)
    # The record sits in a shard other than the first, not at its shard's start, and its position in the
    # order of the counts is not its dataset row: "first + its index in the shard" would name another row.
    order = np.argsort(job.counts, kind="stable")
    bounds = _cut(job.rows[order])
    position = int(np.flatnonzero(order == row)[0])
    shard = int(np.searchsorted(bounds, position, side="right")) - 1
    assert shard > 0 and position > bounds[shard] and position != row
    monkeypatch.setenv(shards.WORKERS_ENV, "1")

    server.refuse = "refused"
    with pytest.raises(UserError) as caught:
        job.run()
    assert f"the model failed on dataset row {row} (0-based)" in str(caught.value), str(caught.value)
    assert "the word 'refused' is not allowed" in str(caught.value)
    assert len(job.shard_counts()) == shard  # the shards before it were done

    server.refuse, server.nan = "\0", "refused"  # scores NaN where the word is kept
    job.clear()
    with pytest.raises(UserError) as caught:
        job.run()
    message = str(caught.value)
    assert f"for dataset row {row} (0-based)" in message and f"(dataset rows {row})" in message, message
    assert not re.search(r"\brecord \d", message), message  # no row counted within the shard


def test_a_resumed_run_gives_the_same_values_and_old_order_checkpoints_are_discarded(server, tmp_path, monkeypatch,
                                                                                     caplog):
    job = _Job(server, tmp_path, _reviews())
    monkeypatch.setenv(shards.WORKERS_ENV, "1")
    reference = job.run()
    n_shards = len(job.shard_counts())
    job.clear()

    class Killed(Exception):
        pass

    done = []

    def die_after_three(n: int) -> None:
        done.append(n)
        if len(done) == 3:
            raise Killed

    with pytest.raises(Killed):
        job.run(on_records=die_after_three)
    assert len(job.shard_counts()) == 3
    computed = []
    with caplog.at_level(logging.INFO, logger="analyzer.explain.shards"):
        _assert_identical(job.run(on_records=computed.append), reference)
    assert f"resuming, 3 of {n_shards} shards already done" in caplog.text
    assert sum(computed) == len(job.records) - sum(len(c) for c in job.shard_counts()[:3])

    # Checkpoints written by the former cut (records first:stop in dataset order), as that code saved them:
    # none holds the records its shard now holds, and each is discarded with a warning, then recomputed.
    job.clear()
    caplog.clear()
    bounds = _cut(job.rows)
    with job.endpoint.client() as client:
        explainer = job.settings.explainer(lambda rows: client.predict(rows).scores)
        for index, (a, b) in enumerate(itertools.pairwise(bounds[:5])):
            old = explainer.explain(job.records[a:b], job.units[a:b])
            shards._save(shards.shard_path(job.checkpoint_dir, index), old,
                         shards._ShardKey(a, b, shards.records_digest(job.records[a:b]), SEED))
    with caplog.at_level(logging.WARNING, logger="analyzer.explain.shards"):
        _assert_identical(job.run(), reference)
    discarded = [r.getMessage() for r in caplog.records if "discarding checkpoint" in r.getMessage()]
    assert len(discarded) == 4, caplog.text
    assert all("that shard is computed again" in line for line in discarded)


def test_take_puts_records_in_any_order():
    values = np.arange(12.0).reshape(6, 2)
    explanation = TextExplanation(values=values, stderr=-values, offsets=np.array([0, 1, 4, 6]),
                                  expected_value=np.zeros(2), reference=np.array([[0.0, 1], [2, 3], [4, 5]]),
                                  prediction=np.array([[6.0, 7], [8, 9], [10, 11]]))
    taken = explanation.take([2, 0, 1])
    assert taken.offsets.tolist() == [0, 2, 3, 6]
    assert taken.values.tolist() == [[8, 9], [10, 11], [0, 1], [2, 3], [4, 5], [6, 7]]
    assert taken.stderr.tolist() == (-taken.values).tolist()
    assert taken.reference.tolist() == [[4, 5], [0, 1], [2, 3]] and taken.prediction[0].tolist() == [10, 11]
    back = taken.take(np.argsort([2, 0, 1]))
    _assert_identical(back, explanation)
    assert len(explanation.take([])) == 0 and explanation.take([]).values.shape == (0, 2)
