"""Data capture for ``lucent endpoint``: every sampled invocation becomes one line of a JSON Lines file
under ``DestinationS3Uri`` (spec model-monitor.md section 2), without ever slowing or failing a request.

Why this shape:

* ``submit`` runs on the request's thread, so it only samples, appends the raw bodies to a bounded
  in-memory queue and returns. It takes one uncontended lock, never waits on I/O and never raises.
  Building the record (UUID, text or base64, JSON) happens on the single background writer thread.
* The writer keeps one open file per inference hour (a file holds the records of one hour, so the
  ``yyyy/mm/dd/hh`` folder is right even when requests straddle the hour), rolls each file once it is
  ``roll_seconds`` old or would pass ``roll_bytes``, and publishes it atomically: a local file is written
  under a temporary name in its folder and renamed (``analyzer.output.atomic_writer``), an S3 file is
  one ``put_object`` of the finished bytes. Readers never see half a file.
* A record is dropped -- never silently -- when the queue is full (by count or bytes), when a local
  destination's disk is ``disk_limit`` (75 %, or ``$LUCENT_CAPTURE_DISK_LIMIT``) full or more, or when a
  file cannot be published (S3 put retried, then given up). Each drop is counted by reason (``dropped``,
  exported in ``/metrics``) and summarised in the log at most every ``DROP_LOG_SECONDS``; bodies are never
  logged.
* ``close`` (the endpoint's SIGTERM handler calls it; ``atexit`` too, as a last resort) stops
  accepting records, writes everything queued and publishes every open file, within a bound (the
  endpoint's ``$LUCENT_CAPTURE_FLUSH_SECONDS``, 30 s): what is not published by then is counted as
  dropped (``stop_timeout``) and logged, so that a destination that never answers cannot hold the stop
  for botocore's timeouts times its retries.
* A local file that cannot be completed (disk full, its folder gone) leaves no temporary file behind.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import random
import shutil
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from analyzer.environment import positive_number
from analyzer.errors import UserError
from analyzer.monitor.capture import capture_key, capture_line, capture_record, check_name, inference_hour
from analyzer.output import atomic_writer
from analyzer.redact import redact
from container.storage import StorageError, parse_uri, s3_client

log = logging.getLogger("lucent.capture")

DROP_LOG_SECONDS = 10.0  # at most one drop summary per this many seconds
DISK_CHECK_SECONDS = 1.0  # how often the writer re-reads the local destination's disk usage
S3_ATTEMPTS = 3  # puts of one file (each with botocore's own retries) before its records are dropped
S3_BACKOFF_SECONDS = 0.2  # doubled after each failed attempt
# Why a record was dropped: the keys of ``dropped_by_reason``.
DROP_REASONS = ("queue_full", "disk_full", "publish_failed", "closed", "error", "stop_timeout")
# A local destination's file system this full (a fraction) or more: records are dropped. 75 % by default (the
# endpoint spec); a machine whose large disk is fuller than that by design can raise it.
DISK_LIMIT_ENV = "LUCENT_CAPTURE_DISK_LIMIT"
DEFAULT_DISK_LIMIT = 0.75
# How long the endpoint's stop waits for the capture to be written and published.
FLUSH_SECONDS_ENV = "LUCENT_CAPTURE_FLUSH_SECONDS"
DEFAULT_FLUSH_SECONDS = 30.0

Body = bytes | bytearray | memoryview | str


def configured_disk_limit() -> float:
    """``$LUCENT_CAPTURE_DISK_LIMIT`` (a fraction above 0, at most 1), else ``DEFAULT_DISK_LIMIT``; anything
    else is a ``UserError`` naming the variable."""
    limit = positive_number(DISK_LIMIT_ENV, DEFAULT_DISK_LIMIT, float, "the disk (a fraction, at most 1)")
    if limit > 1:
        raise UserError(f"{DISK_LIMIT_ENV}={limit:g}: must be a fraction of the disk, at most 1")
    return limit


def configured_flush_seconds() -> float:
    """``$LUCENT_CAPTURE_FLUSH_SECONDS`` (seconds above 0), else ``DEFAULT_FLUSH_SECONDS``; anything else is
    a ``UserError`` naming the variable."""
    return positive_number(FLUSH_SECONDS_ENV, DEFAULT_FLUSH_SECONDS, float, "seconds")


def disk_fraction_used(folder: Path) -> float:
    """How full ``folder``'s file system is, as ``df`` shows it: used / (used + available)."""
    usage = shutil.disk_usage(folder)
    return usage.used / (usage.used + usage.free) if usage.used + usage.free else 0.0


class _OpenFile:
    """A capture file being filled: a temporary file in its final folder (local) or bytes (S3)."""

    __slots__ = ("key", "opened_at", "size", "records", "writer", "handle", "chunks", "folder_fd")

    def __init__(self, key: str, opened_at: float):
        self.key = key
        self.opened_at = opened_at
        self.size = 0
        self.records = 0
        self.writer: Any = None  # the atomic_writer context of a local file
        self.handle: Any = None
        self.chunks: list[bytes] = []
        self.folder_fd: int | None = None  # a local file's folder, to remove its temporary file on failure


# A capture file is published once it is this old (or big enough): a record reaches its destination at
# most this long after it is captured (lucent monitor waits as long past a window's end).
ROLL_SECONDS = 60.0


class CaptureWriter:
    """Queues sampled invocations and writes them as capture files (see the module docstring).

    ``destination`` is ``s3://bucket/prefix``, a local folder or a ``file://`` URI; ``endpoint_url``
    overrides the S3 API endpoint (default: boto3's own ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``).
    Invalid names or destinations raise ``UserError`` here, before anything is accepted.

    Test seams (keyword-only): ``seed`` fixes the sampling; ``clock`` (monotonic seconds) drives file
    ages, the disk re-check and drop logging; ``disk_usage(folder) -> fraction`` replaces the real
    file-system reading; ``max_queue_bytes`` bounds the queued bodies' bytes next to ``max_queue``.
    """

    def __init__(self, destination: str, endpoint: str, variant: str, *, sampling_percentage: float,
                 capture_input: bool, capture_output: bool, csv_types: Sequence[str], json_types: Sequence[str],
                 max_queue: int = 10_000, roll_seconds: float = ROLL_SECONDS, roll_bytes: int = 64 * 2**20,
                 disk_limit: float | None = None, endpoint_url: str | None = None, max_queue_bytes: int = 256 * 2**20,
                 seed: int | None = None, clock: Callable[[], float] = time.monotonic,
                 disk_usage: Callable[[Path], float] = disk_fraction_used):
        self.endpoint = check_name(endpoint, "endpoint name")
        self.variant = check_name(variant, "variant name")
        if not 0 <= sampling_percentage <= 100:
            raise UserError(f"DataCaptureConfig.InitialSamplingPercentage: expected 0-100, got {sampling_percentage}")
        if not (capture_input or capture_output):
            raise UserError("DataCaptureConfig.CaptureOptions: capture neither Input nor Output")
        if max_queue < 1 or max_queue_bytes < 1 or roll_bytes < 1 or roll_seconds <= 0:
            raise ValueError("max_queue, max_queue_bytes, roll_bytes and roll_seconds must be positive")
        try:
            bucket, key, local = parse_uri(destination)
        except StorageError as error:
            raise UserError(f"DataCaptureConfig.DestinationS3Uri: {error}") from None
        self.destination = destination
        self._bucket = bucket
        self._prefix = f"{key.strip('/')}/" if key.strip("/") else ""
        self._folder = local
        self._percentage = float(sampling_percentage)
        self._capture_input = capture_input
        self._capture_output = capture_output
        self._csv_types = tuple(csv_types)
        self._json_types = tuple(json_types)
        self._max_queue = max_queue
        self._max_queue_bytes = max_queue_bytes
        self._roll_seconds = float(roll_seconds)
        self._roll_bytes = roll_bytes
        self._disk_limit = configured_disk_limit() if disk_limit is None else disk_limit
        self._random = random.Random(seed)
        self._clock = clock
        self._disk_usage = disk_usage
        # The idle writer wakes at least this often (real seconds) to roll old files, even when the
        # injected clock is not real time.
        self._poll_seconds = min(1.0, self._roll_seconds)

        self._lock = threading.Lock()
        self._wakeup = threading.Condition(self._lock)
        self._pending: deque[tuple] = deque()
        self._pending_bytes = 0
        self._writer_idle = False
        self._closed = False
        self._disk_full = False
        self._captured = 0
        self._accepted = 0  # records queued
        self._settled = 0  # of which published or dropped by the writer
        self._abandoned = False  # close() gave up waiting: the rest was counted as dropped
        self._sampled_out = 0
        self._dropped = dict.fromkeys(DROP_REASONS, 0)
        self._logged_dropped = 0
        self._last_drop_log = float("-inf")
        self._last_disk_check = float("-inf")
        self._open: dict[datetime, _OpenFile] = {}  # by inference hour; the writer thread's alone

        self._s3: Any = None
        if bucket:
            self._s3 = s3_client(endpoint_url, retries={"mode": "standard", "max_attempts": 3}, connect_timeout=5,
                                 read_timeout=60)
        else:
            try:
                local.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise UserError(f"DataCaptureConfig.DestinationS3Uri: cannot create the folder {local}: "
                                f"{error.strerror}") from None
            self._check_disk()

        self._thread = threading.Thread(target=self._run, name=f"capture-{endpoint}-{variant}", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    # -- the request side ---------------------------------------------------------------------

    def submit(self, *, input_body: Body | None, input_content_type: str | None, output_body: Body | None,
               output_content_type: str | None, inference_id: str | None, inference_time: datetime | None = None,
               custom_attributes: str | None = None) -> bool:
        """Sample the invocation and queue it; True when queued. Never blocks, never raises: a record
        not sampled is counted in ``sampled_out``, one that cannot be queued in ``dropped``."""
        try:
            if self._percentage < 100 and not self._random.random() * 100 < self._percentage:
                with self._lock:
                    self._sampled_out += 1
                return False
            when = inference_time if inference_time is not None else datetime.now(UTC)
            inputs = _own_bytes(input_body) if self._capture_input else None
            outputs = _own_bytes(output_body) if self._capture_output else None
            size = (len(inputs) if inputs is not None else 0) + (len(outputs) if outputs is not None else 0)
            item = (when, inference_id, inputs, input_content_type, outputs, output_content_type, custom_attributes)
            with self._lock:
                if self._closed:
                    reason = "closed"
                elif self._disk_full:
                    reason = "disk_full"
                elif len(self._pending) >= self._max_queue or self._pending_bytes + size > self._max_queue_bytes:
                    reason = "queue_full"
                else:
                    self._pending.append(item)
                    self._accepted += 1
                    self._pending_bytes += size
                    if self._writer_idle:
                        self._wakeup.notify()
                    return True
                self._dropped[reason] += 1
                first_after_close = reason == "closed" and self._dropped[reason] == 1
            if first_after_close:  # the writer is gone and cannot report these: say so once
                log.warning("capture: records submitted after close are dropped (counted in dropped)")
            return False
        except Exception:  # noqa: BLE001 -- capture must never fail a request; counted, logged by the writer
            with contextlib.suppress(Exception), self._lock:
                self._dropped["error"] += 1
            return False

    @property
    def captured(self) -> int:
        """Records in published files."""
        return self._captured

    @property
    def sampled_out(self) -> int:
        return self._sampled_out

    @property
    def dropped(self) -> int:
        with self._lock:
            return sum(self._dropped.values())

    @property
    def dropped_by_reason(self) -> dict[str, int]:
        with self._lock:
            return dict(self._dropped)

    @property
    def queued(self) -> int:
        """Records waiting for the writer."""
        return len(self._pending)

    @property
    def disk_full(self) -> bool:
        """The local destination is at or past ``disk_limit``: records are being dropped."""
        return self._disk_full

    def close(self, timeout: float | None = None) -> None:
        """Stop accepting records, write everything queued and publish every open file (waits up to
        ``timeout`` seconds; None: until done). Safe to call more than once. Not from a signal handler
        that can interrupt a ``submit`` on the same thread (its lock is held there): call it from the
        handler only when requests are submitted on other threads, or after the serving loop returns."""
        with self._lock:
            if self._abandoned:
                return
            self._closed = True
            self._wakeup.notify()
        self._thread.join(timeout)
        if self._thread.is_alive():
            with self._lock:  # the writer counts nothing from now on: what it still had is dropped
                self._abandoned = True
                lost = self._accepted - self._settled
                self._settled = self._accepted
                self._dropped["stop_timeout"] += lost
            atexit.unregister(self.close)
            log.error("capture: not written and published within %g s of the stop (%s): %d record(s) dropped "
                      "(a put still under way may yet arrive)", timeout, FLUSH_SECONDS_ENV, lost)
            self._log_drops(self._clock(), force=True)
            return
        atexit.unregister(self.close)

    # -- the writer thread ------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._pending and not self._closed:
                    self._writer_idle = True
                    self._wakeup.wait(self._wait_seconds())
                    self._writer_idle = False
                batch, self._pending, self._pending_bytes = self._pending, deque(), 0
                closing = self._closed  # nothing is queued after _closed is set: batch holds the rest
            try:
                for item in batch:
                    self._write(item)
                self._housekeeping(closing)
            except Exception as error:  # noqa: BLE001 -- a writer that died would drop everything silently
                log.error("capture writer: unexpected %s: %s", type(error).__name__, redact(str(error)))
            if closing:
                return

    def _wait_seconds(self) -> float:
        if not self._open:
            return self._poll_seconds
        oldest = min(f.opened_at for f in self._open.values())
        return max(0.001, min(self._poll_seconds, oldest + self._roll_seconds - self._clock()))

    def _write(self, item: tuple) -> None:
        when, inference_id, inputs, input_type, outputs, output_type, custom_attributes = item
        if self._disk_full:  # filled up after this record was queued
            self._drop("disk_full", 1)
            return
        try:
            record = capture_record(
                event_id=str(uuid.uuid4()), inference_time=when, inference_id=inference_id,
                input_body=inputs, input_content_type=input_type, output_body=outputs,
                output_content_type=output_type, csv_types=self._csv_types, json_types=self._json_types,
                custom_attributes=custom_attributes)
            line = capture_line(record).encode("utf-8")
            hour = inference_hour(when)
        except Exception as error:  # noqa: BLE001 -- e.g. a non-string inference id: drop this one record
            self._drop("error", 1)
            log.warning("capture: record not written (%s)", type(error).__name__)
            return
        now = self._clock()
        file = self._open.get(hour)
        if file is not None and (now - file.opened_at >= self._roll_seconds
                                 or (file.size and file.size + len(line) > self._roll_bytes)):
            self._publish(hour)
            file = None
        if file is None:
            file = self._start_file(hour, when, now)
            if file is None:
                self._drop("publish_failed", 1)
                return
        try:
            if file.handle is not None:
                file.handle.write(line)
            else:
                file.chunks.append(line)
        except OSError as error:
            file.records += 1
            self._abort(hour, error)
            return
        file.size += len(line)
        file.records += 1

    def _start_file(self, hour: datetime, when: datetime, now: float) -> _OpenFile | None:
        key = capture_key(self.endpoint, self.variant, when, str(uuid.uuid4()))
        file = _OpenFile(key, now)
        if self._folder is not None:
            file.writer = atomic_writer(self._folder / key, "wb")
            try:
                file.handle = file.writer.__enter__()
            except OSError as error:
                log.error("capture: cannot open a file in %s: %s", self._folder / key.rsplit("/", 1)[0],
                          redact(str(error)))
                return None
            # The folder itself, not its path: should the path stop leading to it (the folder moved,
            # replaced by a file), the temporary file can still be found and removed there.
            with contextlib.suppress(OSError):
                file.folder_fd = os.open((self._folder / key).parent, os.O_RDONLY | os.O_DIRECTORY)
        self._open[hour] = file
        return file

    def _housekeeping(self, closing: bool) -> None:
        now = self._clock()
        for hour in [h for h, f in self._open.items() if closing or now - f.opened_at >= self._roll_seconds]:
            self._publish(hour)
        if self._folder is not None and now - self._last_disk_check >= DISK_CHECK_SECONDS:
            self._check_disk()
        self._log_drops(now, force=closing)

    def _publish(self, hour: datetime) -> None:
        file = self._open.pop(hour)
        if self._folder is not None:
            try:
                file.writer.__exit__(None, None, None)  # flush, close, rename into place
            except OSError as error:
                self._remove_temporary(file)
                self._drop("publish_failed", file.records)
                log.error("capture: could not write %s (%d records dropped): %s", self._folder / file.key,
                          file.records, redact(str(error)))
                return
            finally:
                self._release_folder(file)
        else:
            self._put(file)
            if not file.records:
                return
        with self._lock:
            if not self._abandoned:
                self._captured += file.records
                self._settled += file.records

    def _put(self, file: _OpenFile) -> None:
        """One put of the whole file; retried, then its records are counted as dropped (file.records = 0)."""
        body = b"".join(file.chunks)
        key = self._prefix + file.key
        for attempt in range(1, S3_ATTEMPTS + 1):
            try:
                self._s3.put_object(Bucket=self._bucket, Key=key, Body=body)
                return
            except Exception as error:  # noqa: BLE001 -- botocore raises many types; all mean "not stored"
                if attempt == S3_ATTEMPTS:
                    self._drop("publish_failed", file.records)
                    log.error("capture: could not put s3://%s/%s after %d attempts (%d records dropped): %s",
                              self._bucket, key, attempt, file.records, redact(str(error)))
                    file.records = 0
                    return
                time.sleep(S3_BACKOFF_SECONDS * 2 ** (attempt - 1))

    def _abort(self, hour: datetime, error: OSError) -> None:
        """A local write failed (disk full, quota, ...): remove the temporary file, count its records."""
        file = self._open.pop(hour)
        with contextlib.suppress(OSError):
            file.writer.__exit__(type(error), error, error.__traceback__)
        self._remove_temporary(file)
        self._release_folder(file)
        self._drop("publish_failed", file.records)
        log.error("capture: could not write %s (%d records dropped): %s", self._folder / file.key, file.records,
                  redact(str(error)))

    @staticmethod
    def _remove_temporary(file: _OpenFile) -> None:
        """Remove what is left of a local file that could not be completed: its temporary file
        (``.<name>.<random>.tmp``, atomic_writer's name), found in the folder it was opened in. atomic_writer
        removes it by path, which fails once the path no longer leads to that folder (the folder moved or
        replaced by a file: ENOTDIR), and the 2,000-line temporary file then stayed forever."""
        if file.folder_fd is None:
            return
        prefix = "." + file.key.rsplit("/", 1)[-1] + "."
        with contextlib.suppress(OSError):
            for name in os.listdir(file.folder_fd):
                if name.startswith(prefix) and name.endswith(".tmp"):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(name, dir_fd=file.folder_fd)

    @staticmethod
    def _release_folder(file: _OpenFile) -> None:
        if file.folder_fd is not None:
            with contextlib.suppress(OSError):
                os.close(file.folder_fd)
            file.folder_fd = None

    def _check_disk(self) -> None:
        self._last_disk_check = self._clock()
        try:
            fraction = self._disk_usage(self._folder)
        except OSError as error:
            log.warning("capture: cannot read the disk usage of %s: %s", self._folder, redact(str(error)))
            return
        full = fraction >= self._disk_limit
        if full != self._disk_full:
            if full:
                log.warning("capture: %s is %.0f%% full (limit %.0f%%): dropping records until it is below",
                            self._folder, 100 * fraction, 100 * self._disk_limit)
            else:
                log.info("capture: %s is %.0f%% full again: capturing", self._folder, 100 * fraction)
            self._disk_full = full

    def _drop(self, reason: str, count: int) -> None:
        """Count ``count`` queued records the writer could not publish."""
        with self._lock:
            if not self._abandoned:
                self._dropped[reason] += count
                self._settled += count

    def _log_drops(self, now: float, force: bool) -> None:
        if not force and now - self._last_drop_log < DROP_LOG_SECONDS:
            return
        by_reason = self.dropped_by_reason
        total = sum(by_reason.values())
        if total == self._logged_dropped:
            return
        reasons = ", ".join(f"{reason.replace('_', ' ')}: {count}" for reason, count in by_reason.items() if count)
        log.warning("capture: %d records dropped since the last report (%d in total; %s)",
                    total - self._logged_dropped, total, reasons)
        self._logged_dropped = total
        self._last_drop_log = now


def _own_bytes(body: Body | None) -> bytes | str:
    """The body as an immutable value the caller cannot change while it is queued (None: empty)."""
    if body is None:
        return b""
    if isinstance(body, (bytes, str)):
        return body
    if isinstance(body, (bytearray, memoryview)):
        return bytes(body)
    raise TypeError(f"a capture body must be bytes or str, not {type(body).__name__}")
