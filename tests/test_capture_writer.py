"""``CaptureWriter``: sampling, rolling, atomic publication, drops, close/SIGTERM flush, local and S3."""

from __future__ import annotations

import logging
import math
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from analyzer.errors import UserError
from analyzer.monitor.capture import payload_bytes, read_capture_lines
from container.capture import DEFAULT_DISK_LIMIT, DISK_LIMIT_ENV, CaptureWriter, configured_disk_limit
from tests.conftest import moto_s3, use_test_credentials

ROOT = Path(__file__).resolve().parents[1]
KEY = re.compile(r"ep/AllTraffic/(\d{4})/(\d\d)/(\d\d)/(\d\d)/(\d\d)-(\d\d)-(\d{3})-"
                 r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}\.jsonl")
T0 = datetime(2023, 1, 19, 5, 31, 46, 585_000, tzinfo=UTC)


def writer(destination, **options) -> CaptureWriter:
    settings = {"sampling_percentage": 100, "capture_input": True, "capture_output": True,
                "csv_types": ["text/csv"], "json_types": ["application/json"], **options}
    return CaptureWriter(str(destination), "ep", "AllTraffic", **settings)


def submit(w: CaptureWriter, i: int = 0, when: datetime | None = T0, **overrides) -> bool:
    arguments = {"input_body": f"{i},2,3".encode(), "input_content_type": "text/csv",
                 "output_body": f"0.{i}\n".encode(), "output_content_type": "text/csv; charset=utf-8",
                 "inference_id": str(i), "inference_time": when, **overrides}
    return w.submit(**arguments)


def published(folder: Path) -> dict[str, list[dict]]:
    """Published capture files below ``folder``: relative key -> records. Fails on a leftover temporary file."""
    files = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            relative = path.relative_to(folder).as_posix()
            assert not path.name.startswith("."), f"temporary file left behind: {relative}"
            files[relative] = read_capture_lines(path.read_text(encoding="utf-8"), source=relative)
    return files


def wait_until(condition, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


class FakeClock:
    """Monotonic seconds that move only when the test says; ``hold()`` makes the writer thread stop
    inside its next clock reading until ``release()`` (to fill the queue while it is busy)."""

    def __init__(self):
        self.now = 1000.0
        self._gate = threading.Event()
        self._gate.set()
        self.held = threading.Event()

    def __call__(self) -> float:
        if not self._gate.is_set() and threading.current_thread().name.startswith("capture-"):
            self.held.set()
            self._gate.wait()
        return self.now

    def hold(self) -> None:
        self._gate.clear()

    def release(self) -> None:
        self._gate.set()


# -- layout and format --------------------------------------------------------------------------

def test_layout_and_records_on_a_local_folder(tmp_path):
    w = writer(f"file://{tmp_path}/capture", seed=1)
    assert submit(w, 1)
    assert submit(w, 2, input_body=b"\x89PNG", input_content_type="image/png", inference_id=None)
    w.close()
    files = published(tmp_path / "capture")
    [(key, records)] = files.items()
    assert KEY.fullmatch(key).groups() == ("2023", "01", "19", "05", "31", "46", "585")
    first, second = records
    assert first["captureData"] == {
        "endpointInput": {"observedContentType": "text/csv", "mode": "INPUT", "data": "1,2,3", "encoding": "CSV"},
        "endpointOutput": {"observedContentType": "text/csv; charset=utf-8", "mode": "OUTPUT", "data": "0.1\n",
                           "encoding": "CSV"}}
    assert list(first["eventMetadata"]) == ["eventId", "inferenceId", "inferenceTime"]
    assert first["eventMetadata"]["inferenceId"] == "1"
    assert first["eventMetadata"]["inferenceTime"] == "2023-01-19T05:31:46Z"
    assert re.fullmatch(r"[0-9a-f-]{36}", first["eventMetadata"]["eventId"])
    assert first["eventMetadata"]["eventId"] != second["eventMetadata"]["eventId"]
    assert "inferenceId" not in second["eventMetadata"]
    assert second["captureData"]["endpointInput"]["encoding"] == "BASE64"
    assert payload_bytes(second["captureData"]["endpointInput"]) == b"\x89PNG"
    assert (w.captured, w.dropped, w.sampled_out) == (2, 0, 0)
    assert oct((tmp_path / "capture" / key).stat().st_mode & 0o777) == "0o644"


@pytest.mark.parametrize(("capture_input", "capture_output", "sides"), [
    (True, False, ["endpointInput"]), (False, True, ["endpointOutput"])])
def test_capture_options_choose_the_sides(tmp_path, capture_input, capture_output, sides):
    w = writer(tmp_path, capture_input=capture_input, capture_output=capture_output)
    submit(w)
    w.close()
    [records] = published(tmp_path).values()
    assert list(records[0]["captureData"]) == sides


def test_inference_time_defaults_to_now_in_utc(tmp_path):
    w = writer(tmp_path)
    before = datetime.now(UTC).replace(microsecond=0)
    submit(w, when=None)
    w.close()
    after = datetime.now(UTC)
    [records] = published(tmp_path).values()
    stamp = datetime.strptime(records[0]["eventMetadata"]["inferenceTime"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert before <= stamp <= after


def test_invalid_names_and_destinations_fail_at_start(tmp_path):
    with pytest.raises(UserError, match="endpoint name '../x'"):
        CaptureWriter(str(tmp_path), "../x", "AllTraffic", sampling_percentage=1, capture_input=True,
                      capture_output=True, csv_types=[], json_types=[])
    with pytest.raises(UserError, match="variant name 'a/b'"):
        CaptureWriter(str(tmp_path), "ep", "a/b", sampling_percentage=1, capture_input=True,
                      capture_output=True, csv_types=[], json_types=[])
    with pytest.raises(UserError, match="DestinationS3Uri: s3:/b/k"):
        writer("s3:/b/k")
    with pytest.raises(UserError, match="InitialSamplingPercentage"):
        writer(tmp_path, sampling_percentage=101)
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="cannot create the folder"):
        writer(tmp_path / "file" / "sub")


# -- sampling -----------------------------------------------------------------------------------

def test_sampling_rate_is_within_binomial_bounds(tmp_path):
    n, percentage = 10_000, 20
    w = writer(tmp_path, sampling_percentage=percentage, seed=12, max_queue=n)
    accepted = sum(submit(w, i) for i in range(n))
    w.close()
    mean, sigma = n * percentage / 100, math.sqrt(n * 0.2 * 0.8)
    assert abs(accepted - mean) <= 4.5 * sigma
    assert w.captured == accepted and w.sampled_out == n - accepted and w.dropped == 0
    assert sum(len(r) for r in published(tmp_path).values()) == accepted


def test_zero_percent_captures_nothing(tmp_path):
    w = writer(tmp_path, sampling_percentage=0)
    assert not any(submit(w, i) for i in range(100))
    w.close()
    assert (w.captured, w.sampled_out, published(tmp_path)) == (0, 100, {})


def test_every_submit_is_captured_at_100_percent(tmp_path):
    n = 100_000
    w = writer(tmp_path, max_queue=n)
    start = time.perf_counter()
    for i in range(n):
        submit(w, i)
    elapsed = time.perf_counter() - start
    w.close()
    print(f"\nsubmit: {elapsed / n * 1e6:.2f} us per record ({n / elapsed:,.0f} submits/s)")
    files = published(tmp_path)
    ids = [r["eventMetadata"]["inferenceId"] for records in files.values() for r in records]
    assert sorted(ids, key=int) == [str(i) for i in range(n)]
    assert (w.captured, w.dropped, w.sampled_out) == (n, 0, 0)


# -- rolling ------------------------------------------------------------------------------------

def test_files_roll_after_roll_seconds_without_new_records(tmp_path):
    clock = FakeClock()
    w = writer(tmp_path, roll_seconds=10, clock=clock)
    submit(w, 1)
    wait_until(lambda: list(tmp_path.rglob(".*.tmp")), what="the first file to be opened")
    assert not list(tmp_path.rglob("*.jsonl")) and w.captured == 0
    clock.now += 10
    wait_until(lambda: w.captured == 1, what="the idle file to roll")
    assert len(published(tmp_path)) == 1
    submit(w, 2)
    w.close()
    files = published(tmp_path)
    assert sorted(len(r) for r in files.values()) == [1, 1]


def test_a_file_older_than_roll_seconds_takes_no_more_records(tmp_path):
    clock = FakeClock()
    w = writer(tmp_path, roll_seconds=3600, clock=clock)  # the idle poll (1 s) never sees it old by itself
    submit(w, 1)
    wait_until(lambda: list(tmp_path.rglob(".*.tmp")), what="the first file to be opened")
    clock.now += 3600
    submit(w, 2)
    wait_until(lambda: w.captured == 1, what="the old file to be published")
    w.close()
    assert sorted(r[0]["eventMetadata"]["inferenceId"] for r in published(tmp_path).values()) == ["1", "2"]


def test_files_roll_by_size(tmp_path):
    w = writer(tmp_path, roll_bytes=1000)
    for i in range(20):
        submit(w, i % 10)  # equal lengths
    w.close()
    files = published(tmp_path)
    sizes = [(tmp_path / key).stat().st_size for key in files]
    line = sizes[0] // len(next(iter(files.values())))
    assert all(size <= 1000 for size in sizes) and max(sizes) == (1000 // line) * line
    assert sum(len(r) for r in files.values()) == 20 and len(files) == math.ceil(20 / (1000 // line))


def test_each_file_holds_one_inference_hour(tmp_path):
    w = writer(tmp_path)
    hour = datetime(2023, 1, 19, 6, tzinfo=UTC)
    for i, when in enumerate([hour - timedelta(milliseconds=100), hour + timedelta(milliseconds=100),
                              hour - timedelta(milliseconds=50), hour + timedelta(hours=25)]):
        submit(w, i, when=when)
    w.close()
    files = published(tmp_path)
    by_folder = {key.rsplit("/", 1)[0]: [r["eventMetadata"]["inferenceId"] for r in records]
                 for key, records in files.items()}
    assert by_folder == {"ep/AllTraffic/2023/01/19/05": ["0", "2"], "ep/AllTraffic/2023/01/19/06": ["1"],
                         "ep/AllTraffic/2023/01/20/07": ["3"]}
    assert [key.rsplit("/", 1)[1][:9] for key in sorted(files)] == ["59-59-900", "00-00-100", "00-00-000"]


# -- drops --------------------------------------------------------------------------------------

def test_queue_overflow_is_dropped_counted_and_logged(tmp_path, caplog):
    clock = FakeClock()
    w = writer(tmp_path, max_queue=5, clock=clock)
    clock.hold()
    assert submit(w, 0)
    assert clock.held.wait(10)  # the writer is busy with record 0
    results = [submit(w, i, input_body=b"SECRET-BODY") for i in range(1, 9)]
    assert results == [True] * 5 + [False] * 3
    assert w.dropped == 3 and w.dropped_by_reason["queue_full"] == 3
    with caplog.at_level(logging.WARNING, logger="lucent.capture"):
        clock.release()
        w.close()
    assert w.captured == 6
    assert "3 records dropped" in caplog.text and "queue full: 3" in caplog.text
    assert "SECRET" not in caplog.text


def test_queue_bytes_bound(tmp_path):
    clock = FakeClock()
    w = writer(tmp_path, max_queue_bytes=1000, clock=clock)
    clock.hold()
    submit(w, 0)
    assert clock.held.wait(10)
    assert submit(w, 1, input_body=b"x" * 600)
    assert not submit(w, 2, input_body=b"x" * 600)
    assert submit(w, 3, input_body=b"x" * 300)
    clock.release()
    w.close()
    assert (w.captured, w.dropped_by_reason["queue_full"]) == (3, 1)


def test_submit_never_raises(tmp_path, caplog):
    w = writer(tmp_path)
    assert not submit(w, 1, input_body=12345)  # not a body: refused in submit
    assert submit(w, 2, when="yesterday")  # found out by the writer
    assert submit(w, 3)
    with caplog.at_level(logging.WARNING, logger="lucent.capture"):
        w.close()
    assert w.dropped_by_reason["error"] == 2 and w.captured == 1
    assert "error: 2" in caplog.text
    with caplog.at_level(logging.WARNING, logger="lucent.capture"):
        assert not submit(w, 4) and not submit(w, 5)
    assert w.dropped_by_reason["closed"] == 2
    assert caplog.text.count("submitted after close") == 1
    w.close()  # twice is fine


def test_disk_guard_with_an_injected_usage(tmp_path, caplog, monkeypatch):
    monkeypatch.delenv(DISK_LIMIT_ENV)  # the default limit (tests/conftest.py sets 1 for the other tests)
    usage = {"fraction": 0.80}
    clock = FakeClock()
    with caplog.at_level(logging.INFO, logger="lucent.capture"):
        w = writer(tmp_path, disk_usage=lambda folder: usage["fraction"], clock=clock, roll_seconds=0.05)
        assert w.disk_full
        assert not submit(w, 1)
        assert w.dropped_by_reason["disk_full"] == 1
        usage["fraction"] = 0.74
        clock.now += 1
        wait_until(lambda: not w.disk_full, what="capture to resume")
        assert submit(w, 2)
        w.close()
    assert w.captured == 1
    assert "80% full (limit 75%)" in caplog.text and "capturing" in caplog.text


@pytest.fixture
def tmpfs(tmp_path):
    """A 1 MiB tmpfs of its own (root only)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "mnt"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if result.returncode:
        pytest.skip(f"cannot mount a tmpfs: {result.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def test_disk_guard_on_a_real_full_disk(tmpfs):
    filler = tmpfs / "filler"
    filler.write_bytes(b"\0" * 800 * 1024)  # 78 % of 1 MiB
    w = writer(tmpfs / "capture", disk_limit=DEFAULT_DISK_LIMIT)
    assert w.disk_full and not submit(w, 1)
    filler.unlink()
    wait_until(lambda: not w.disk_full, what="capture to resume")
    assert submit(w, 2)
    w.close()
    assert (w.captured, w.dropped_by_reason["disk_full"]) == (1, 1)
    assert [r[0]["eventMetadata"]["inferenceId"] for r in published(tmpfs / "capture").values()] == ["2"]


def test_a_write_that_fails_for_lack_of_space_is_counted(tmpfs, caplog):
    w = writer(tmpfs / "capture", disk_limit=1.0, max_queue_bytes=10 * 2**20)
    body = os.urandom(200 * 1024)  # base64: 4/3 larger; five of them do not fit in 1 MiB
    for i in range(5):
        submit(w, i, input_body=body, input_content_type="application/octet-stream")
    with caplog.at_level(logging.ERROR, logger="lucent.capture"):
        w.close()
    stored = sum(len(r) for r in published(tmpfs / "capture").values())
    assert stored == w.captured < 5
    assert w.captured + w.dropped_by_reason["publish_failed"] == 5
    assert "No space left on device" in caplog.text


# -- close and SIGTERM --------------------------------------------------------------------------

def test_close_flushes_everything_queued(tmp_path):
    clock = FakeClock()
    w = writer(tmp_path, clock=clock, max_queue=1000)
    clock.hold()
    submit(w, 0)
    assert clock.held.wait(10)
    for i in range(1, 501):
        submit(w, i)
    assert w.queued == 500
    clock.release()
    w.close()
    assert sum(len(r) for r in published(tmp_path).values()) == 501 == w.captured


SIGTERM_CHILD = textwrap.dedent("""
    import signal, sys
    from container.capture import CaptureWriter

    w = CaptureWriter(sys.argv[1], "ep", "AllTraffic", sampling_percentage=100, capture_input=True,
                      capture_output=True, csv_types=["text/csv"], json_types=[], max_queue=100_000)

    def on_sigterm(signum, frame):
        w.close()
        print(f"closed {w.captured} {w.dropped}", flush=True)
        sys.exit(0)

    signal.signal(signal.SIGTERM, on_sigterm)
    for i in range(int(sys.argv[2])):
        w.submit(input_body=b"1,2,3", input_content_type="text/csv", output_body=b"0", output_content_type="text/csv",
                 inference_id=str(i))
    print("submitted", flush=True)
    while True:
        signal.pause()
""")


def test_sigterm_writes_everything_before_exit(tmp_path):
    n = 20_000
    child = subprocess.Popen([sys.executable, "-c", SIGTERM_CHILD, str(tmp_path / "capture"), str(n)],
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert child.stdout.readline() == "submitted\n"
        assert not list((tmp_path / "capture").rglob("*.jsonl"))  # roll_seconds 60: nothing published yet
        child.send_signal(signal.SIGTERM)
        out, err = child.communicate(timeout=60)
    finally:
        child.kill()
    assert child.returncode == 0, err
    assert out == f"closed {n} 0\n"
    ids = [r["eventMetadata"]["inferenceId"] for records in published(tmp_path / "capture").values() for r in records]
    assert sorted(ids, key=int) == [str(i) for i in range(n)]


# -- S3 -----------------------------------------------------------------------------------------

boto3 = pytest.importorskip("boto3")


@pytest.fixture(scope="module")
def s3_endpoint() -> str:
    with moto_s3() as url:
        yield url


@pytest.fixture
def s3(s3_endpoint, monkeypatch):
    """A client on the moto server with a fresh bucket; only AWS_ENDPOINT_URL_S3 points there."""
    use_test_credentials(monkeypatch, AWS_ENDPOINT_URL_S3=s3_endpoint)
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    bucket = f"capture-{time.monotonic_ns()}"
    client.create_bucket(Bucket=bucket)
    return client, bucket


def s3_files(client, bucket: str, prefix: str) -> dict[str, list[dict]]:
    listing = client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return {item["Key"][len(prefix):]: read_capture_lines(
        client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read().decode(), source=item["Key"])
        for item in listing}


def test_s3_destination_one_put_per_file(s3):
    client, bucket = s3
    w = writer(f"s3://{bucket}/sagemaker/datacapture/", roll_bytes=2000)
    for i in range(20):
        submit(w, i, when=T0 + timedelta(seconds=i))
    w.close()
    files = s3_files(client, bucket, "sagemaker/datacapture/")
    assert len(files) > 1 and all(KEY.fullmatch(key) for key in files)
    ids = [r["eventMetadata"]["inferenceId"] for key in sorted(files) for r in files[key]]
    assert ids == [str(i) for i in range(20)]
    assert (w.captured, w.dropped) == (20, 0)


def test_s3_bucket_root_and_explicit_endpoint_url(s3, s3_endpoint, monkeypatch):
    client, bucket = s3
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")
    w = writer(f"s3://{bucket}", endpoint_url=s3_endpoint)
    submit(w, 1, input_body=b"\x00\x01", input_content_type="application/x-npy")
    w.close()
    [(key, records)] = s3_files(client, bucket, "").items()
    assert KEY.fullmatch(key)
    assert payload_bytes(records[0]["captureData"]["endpointInput"]) == b"\x00\x01"


def test_s3_put_that_keeps_failing_is_counted_and_logged(s3, caplog):
    _, bucket = s3
    w = writer(f"s3://{bucket}-missing/prefix")
    for i in range(3):
        assert submit(w, i, input_body=b"SECRET-BODY")
    with caplog.at_level(logging.WARNING, logger="lucent.capture"):
        w.close()
    assert (w.captured, w.dropped_by_reason["publish_failed"]) == (0, 3)
    assert f"could not put s3://{bucket}-missing/prefix/ep/AllTraffic/2023/01/19/05/31-46-585-" in caplog.text
    assert "after 3 attempts (3 records dropped)" in caplog.text and "NoSuchBucket" in caplog.text
    assert "SECRET" not in caplog.text


def test_the_disk_limit_is_read_from_the_environment_and_checked(tmp_path, monkeypatch):
    usage = {"fraction": 0.80}
    monkeypatch.setenv(DISK_LIMIT_ENV, "0.9")
    assert not writer(tmp_path, disk_usage=lambda folder: usage["fraction"]).disk_full
    monkeypatch.delenv(DISK_LIMIT_ENV)
    assert configured_disk_limit() == DEFAULT_DISK_LIMIT == 0.75
    assert writer(tmp_path / "b", disk_usage=lambda folder: usage["fraction"]).disk_full
    for bad in ("0", "-0.5", "1.5", "lots", "nan"):
        monkeypatch.setenv(DISK_LIMIT_ENV, bad)
        with pytest.raises(UserError, match=DISK_LIMIT_ENV):
            writer(tmp_path / "c")
