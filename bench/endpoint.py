"""``lucent endpoint`` benchmark: online explanations and data capture, each against a reference measured
in the same run.

Run from the repository root: ``python bench/endpoint.py`` (needs ``shap``, a benchmark-only dependency);
``--quick`` for a short run (fewer requests; the capture check over 2,000 requests instead of 100,000).

Model: sklearn GradientBoostingClassifier (100 trees) on 14 numeric features, served by the built-in model
server (``lucent endpoint --model-dir``); one baseline row (the training mean); the default budget
``min(2M + 2048, 2^M - 2)`` = 2,076 coalitions, so 2,077 model rows per explained record.

* Single-record explained requests through boto3 (``sagemaker-runtime`` ``invoke_endpoint``), one at a
  time: p50 and p99. References: the model's own in-process ``predict_proba`` of those 2,077 rows (target:
  p50 at most that + 3 ms) and ``shap.KernelExplainer`` in process on the same record and budget (target:
  at least 4x faster). Beside it, boto3's own round trip to a loopback server that answers at once: the
  floor under any endpoint, so that what the endpoint and the model server add is visible.
* The Python call behind a request (``fit_online_explainer`` once, then ``explain`` of one record with the
  model in process) against ``shap.KernelExplainer``: target at least 20x faster. Both call the model on
  the same 2,077 rows, so shap's time over the model's own bounds the ratio; the line prints that bound.
* 8 concurrent clients (processes, each with its own boto3 client): explained records/s, and the model rows
  they imply (x 2,077) against the model's in-process rows/s on all cores (one process per core predicting
  2,077-row batches): target at least 60 %. Then the CPU each explained record cost (Linux: read from
  /proc), split between the clients, the endpoint, the model server (the model's own predict of the rows
  included) and whatever else ran on the machine meanwhile; and the share the same cores could reach
  with that split: the clients share the cores with the server side here, so boto3's own CPU per request
  caps the share whatever the endpoint does.
* The same 8 clients sending 10 records per request (``BATCH_RECORDS``; 16 requests each, 6 with
  ``--quick``): explained records/s and the same share of the model's in-process rows/s (target 60 %),
  with the CPU per record of each side: boto3's and each HTTP hop's fixed cost shared by the records.
* Capture at 100 % vs off, plain (unexplained) single-record invocations from 8 concurrent clients, the
  two endpoints interleaved in rounds so machine load hits them alike: throughput ratio (target at least
  90 %); after SIGTERM, the captured lines must equal the requests sent.

Everything runs on this machine's cores: the clients, the endpoint, the model server's workers and the
references share them, as a single-host deployment would.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import joblib
import numpy as np
from sklearn.ensemble import GradientBoostingClassifier

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analyzer.explain import default_num_samples  # noqa: E402
from analyzer.explain.online import OnlineShapSettings, fit_online_explainer  # noqa: E402
from bench.processes import cpu_seconds, descendants  # noqa: E402
from bench.shap import _import_shap  # noqa: E402
from container.demo import running_endpoint, runtime_client  # noqa: E402

N_FEATURES = 14
CLIENTS = 8
BATCH_RECORDS = 10  # records per request in the second concurrent line
ENDPOINT = "bench"


# -- the model, the data and the endpoint configs -----------------------------------------------------------

def make_model(n_records: int) -> tuple[GradientBoostingClassifier, np.ndarray, np.ndarray]:
    """The GBM, one baseline row (the training mean) and ``n_records`` unseen records."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000 + n_records, N_FEATURES))
    logits = x[:, 0] * x[:, 1] + np.sin(2 * x[:, 2]) + x[:, 3] * (x[:, 4] > 0) + 0.3 * x[:, 5:].sum(axis=1)
    y = (logits + rng.logistic(size=len(x)) > 0).astype(int)
    model = GradientBoostingClassifier(n_estimators=100, random_state=0).fit(x[:2000], y[:2000])
    return model, x[:2000].mean(axis=0, keepdims=True), x[2000:]


def csv_line(row: np.ndarray) -> str:
    return ",".join(repr(float(v)) for v in row)


def endpoint_config(baseline: np.ndarray | None, capture: Path | None) -> dict:
    """A CreateEndpointConfig body: explanations when ``baseline`` is given, capture when ``capture`` is."""
    config: dict = {"ProductionVariants": [{"VariantName": "AllTraffic"}]}
    if baseline is not None:
        config["ExplainerConfig"] = {"ClarifyExplainerConfig": {
            "InferenceConfig": {"ProbabilityIndex": 1},  # the built-in server answers "p0,p1"
            "ShapConfig": {"ShapBaselineConfig": {"MimeType": "text/csv", "ShapBaseline": csv_line(baseline[0])},
                           "Seed": 0}}}
    if capture is not None:
        config["DataCaptureConfig"] = {
            "EnableCapture": True, "InitialSamplingPercentage": 100, "DestinationS3Uri": str(capture),
            "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
            "CaptureContentTypeHeader": {"CsvContentTypes": ["text/csv"]}}
    return config


def start(folder: Path, name: str, config: dict):
    path = folder / f"{name}.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    return running_endpoint(path, ENDPOINT, folder / "model", folder / f"{name}.log")


# -- client processes ---------------------------------------------------------------------------------------

_clients: dict[str, object] = {}


def _invoke_many(task: tuple[str, list[str]]) -> list[float]:
    """In a client process: invoke ``url`` with each body in turn; the latency of each, in seconds."""
    return _invoke_timed(task)[0]


def _invoke_timed(task: tuple[str, list[str]]) -> tuple[list[float], float]:
    """:func:`_invoke_many`, and the CPU seconds this client process spent meanwhile (all its threads)."""
    url, bodies = task
    client = _clients.get(url)
    if client is None:
        client = _clients[url] = runtime_client(url)
    latencies = []
    cpu_started = time.process_time()
    for body in bodies:
        started = time.perf_counter()
        response = client.invoke_endpoint(EndpointName=ENDPOINT, ContentType="text/csv", Accept="text/csv",
                                          Body=body)
        response["Body"].read()
        latencies.append(time.perf_counter() - started)
    return latencies, time.process_time() - cpu_started


def concurrent_wall(pool, url: str, bodies: list[str]) -> float:
    """Seconds for ``CLIENTS`` client processes to send ``bodies`` between them, as fast as answered."""
    return concurrent_run(pool, url, bodies)[0]


def concurrent_run(pool, url: str, bodies: list[str]) -> tuple[float, float]:
    """:func:`concurrent_wall`, and the CPU seconds the client processes spent in all."""
    shares = [bodies[i::CLIENTS] for i in range(CLIENTS)]
    started = time.perf_counter()
    parts = pool.map(_invoke_timed, [(url, share) for share in shares], chunksize=1)
    return time.perf_counter() - started, sum(cpu for _, cpu in parts)


def server_cpu(endpoint) -> tuple[float, float]:
    """CPU seconds so far of the endpoint process and of the model server it started (all its processes)."""
    endpoint_pid, *model_server = descendants(endpoint.process.pid)
    return cpu_seconds([endpoint_pid]), cpu_seconds(model_server)


_model = None


def _load_model(path: str) -> None:
    global _model
    _model = joblib.load(path)


def _predict_for(task: tuple[np.ndarray, float]) -> tuple[int, float]:
    """In a reference process: predict ``rows`` again and again for ``seconds``; (rows predicted, seconds)."""
    rows, seconds = task
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        _model.predict_proba(rows)
        done += len(rows)
    return done, time.perf_counter() - started


# -- helpers ------------------------------------------------------------------------------------------------

def median_seconds(run, repeats: int) -> float:
    times = []
    for i in range(repeats):
        started = time.perf_counter()
        run(i)
        times.append(time.perf_counter() - started)
    return float(np.median(times))


def verdict(ok: bool) -> str:
    return "meets" if ok else "MISSES"


class _AnswerAtOnce(BaseHTTPRequestHandler):
    """A server that answers every POST at once with a fixed CSV line: boto3's own round trip."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # as the endpoint: no delayed-ACK wait between headers and body

    def do_POST(self) -> None:  # noqa: N802 -- http.server's naming
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = b"0.1,0.9\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/csv")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def boto3_round_trip_ms(n: int) -> float:
    """p50 of boto3's ``invoke_endpoint`` (the client the endpoint lines use) to a loopback server that
    answers at once: what boto3 and one local HTTP round trip cost before any endpoint does anything."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _AnswerAtOnce)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        _invoke_many((url, ["1,2,3"] * 20))  # warm: the connection, botocore's caches
        return 1e3 * float(np.median(_invoke_many((url, ["1,2,3"] * n))))
    finally:
        server.shutdown()
        server.server_close()


def metric(url: str, name: str) -> float:
    """The sum of a Prometheus counter (all its labels) from the endpoint's /metrics."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and line[len(name):len(name) + 1] in ("{", " "))


def server_seconds(url: str) -> float:
    """Seconds the endpoint spent in invocations so far (its latency histogram's sum)."""
    return metric(url, "lucent_endpoint_invocation_seconds_sum")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer requests (2,000 for the capture check)")
    parser.add_argument("--capture-requests", type=int, default=None,
                        help="requests per endpoint in the capture section (default 100,000; 2,000 with --quick)")
    args = parser.parse_args(argv)
    quick = args.quick
    n_sequential = 100 if quick else 400
    n_concurrent = 80 if quick else 400
    n_capture = args.capture_requests or (2_000 if quick else 100_000)
    n_shap = 10 if quick else 30
    rounds = 2 if quick else 4

    budget = default_num_samples(N_FEATURES)
    model, baseline, records = make_model(max(n_sequential, n_concurrent) + 20)
    rows_per_record = budget + 1
    print(f"GradientBoostingClassifier (100 trees), M = {N_FEATURES} numeric features, 1 baseline row, "
          f"budget {budget} coalitions = {rows_per_record:,} model rows per record; {os.cpu_count()} cores"
          f"{' (quick run)' if quick else ''}")

    # In process: the fitted online explainer, the model on one record's rows, shap.KernelExplainer.
    def score(rows: np.ndarray) -> np.ndarray:
        return model.predict_proba(rows)[:, 1:]

    explainer = fit_online_explainer(baseline, score, OnlineShapSettings(seed=0))
    assert explainer.synthetic_rows_per_record == rows_per_record
    synthetic = [explainer.tabular.synthetic_rows(records[i:i + 1]) for i in range(50)]
    model_ms = 1e3 * median_seconds(lambda i: model.predict_proba(synthetic[i % 50]), 100)
    call_ms = 1e3 * median_seconds(lambda i: explainer.explain(records[i:i + 1]), 100)
    shap = _import_shap()
    kernel = shap.KernelExplainer(lambda a: model.predict_proba(a)[:, 1], baseline)
    shap_ms = 1e3 * median_seconds(
        lambda i: kernel.shap_values(records[i:i + 1], nsamples=budget, l1_reg=False, silent=True), n_shap)
    ours = np.array([[a["attributions"][0]["attribution"][0] for a in entry] for entry in explainer.explain(records[:5])])
    theirs = np.asarray(kernel.shap_values(records[:5], nsamples=budget, l1_reg=False, silent=True)).reshape(5, -1)
    print(f"\nIn process, one record (medians): model predict_proba of its {rows_per_record:,} rows {model_ms:.2f} ms; "
          f"shap.KernelExplainer {shap_ms:.1f} ms (mean |lucent - shap| {np.abs(ours - theirs).mean():.1e})")
    print(f"  fitted online explainer, explain(1 record), model in process: {call_ms:.2f} ms; "
          f"{shap_ms / call_ms:.1f}x faster than shap (target >= 20x: {verdict(shap_ms / call_ms >= 20)}); "
          f"outside the model {(shap_ms - model_ms) / max(call_ms - model_ms, 1e-3):.0f}x "
          f"({call_ms - model_ms:.2f} ms vs {shap_ms - model_ms:.1f} ms); the model's own predict of the rows "
          f"bounds the ratio at {shap_ms / model_ms:.1f}x (an explainer that cost nothing)")

    context = multiprocessing.get_context("spawn")  # client processes hold no model, no OpenMP state
    with tempfile.TemporaryDirectory(prefix="lucent-bench-endpoint-") as tmp, \
            context.Pool(CLIENTS) as clients:
        folder = Path(tmp)
        (folder / "model").mkdir()
        joblib.dump(model, folder / "model" / "model.joblib")

        # The model's in-process rows/s on all cores (one process per core), for the concurrency figure.
        with context.Pool(os.cpu_count(), initializer=_load_model,
                          initargs=(str(folder / "model" / "model.joblib"),)) as predictors:
            predictors.map(_predict_for, [(synthetic[0], 0.2)] * os.cpu_count(), chunksize=1)  # warm
            parts = predictors.map(_predict_for, [(synthetic[i], 3.0) for i in range(os.cpu_count())], chunksize=1)
        in_process_rows = sum(rows for rows, _ in parts) / max(seconds for _, seconds in parts)
        single_rows = rows_per_record / (model_ms / 1e3)

        bodies = [csv_line(row) for row in records]
        with start(folder, "explained", endpoint_config(baseline, None)) as endpoint:
            client = runtime_client(endpoint.url)
            _invoke_many((endpoint.url, bodies[:10]))  # warm: connections, the model server's workers
            before, cpu_before = server_seconds(endpoint.url), server_cpu(endpoint)
            timed, client_cpu = _invoke_timed((endpoint.url, bodies[:n_sequential]))
            latencies = np.array(timed) * 1e3
            server_ms = 1e3 * (server_seconds(endpoint.url) - before) / n_sequential
            sequential_cpu = [1e3 * cpu / n_sequential for cpu in
                              (client_cpu, *np.subtract(server_cpu(endpoint), cpu_before))]
            p50, p99 = np.percentile(latencies, 50), np.percentile(latencies, 99)
            sequential_load = os.getloadavg()[0]  # the machine may be shared: every figure says how busy it was
            answer = json.loads(client.invoke_endpoint(EndpointName=ENDPOINT, ContentType="text/csv",
                                                       Body=bodies[0])["Body"].read())
            served = [a["attributions"][0]["attribution"][0] for a in answer["explanations"]["kernel_shap"][0]]
            assert np.allclose(served, ours[0], atol=1e-9), "the endpoint's values differ from the Python call's"
            clients.map(_invoke_many, [(endpoint.url, bodies[:2])] * CLIENTS, chunksize=1)  # warm
            cpu_before = server_cpu(endpoint)
            wall, clients_cpu = concurrent_run(clients, endpoint.url, bodies[:n_concurrent])
            endpoint_cpu, model_server_cpu = np.subtract(server_cpu(endpoint), cpu_before)
            # The same clients sending several records per request (a batch of user traffic in one call):
            # boto3's and each HTTP hop's fixed cost is then shared by the request's records.
            # a few requests per client at least, so that the line measures a steady state
            n_batches = CLIENTS * (6 if quick else 16)
            batches = ["\n".join(bodies[(i * BATCH_RECORDS + j) % len(bodies)] for j in range(BATCH_RECORDS))
                       for i in range(n_batches)]
            batch_cpu_before = server_cpu(endpoint)
            batch_wall, batch_clients_cpu = concurrent_run(clients, endpoint.url, batches)
            batch_cpu = (batch_clients_cpu, *np.subtract(server_cpu(endpoint), batch_cpu_before))
            batch_load = os.getloadavg()[0]
        boto3_floor = boto3_round_trip_ms(n_sequential)
        print(f"\nThrough boto3 -> lucent endpoint -> built-in model server, single-record explained requests, "
              f"sequential ({n_sequential}):")
        print(f"  p50 {p50:.2f} ms, p99 {p99:.2f} ms; model in process {model_ms:.2f} ms + 3 ms = "
              f"{model_ms + 3:.2f} ms (target p50 <= that: {verdict(p50 <= model_ms + 3)}); "
              f"p50 is {shap_ms / p50:.1f}x faster than shap in process (target >= 4x: {verdict(shap_ms / p50 >= 4)}); "
              f"load average {sequential_load:.1f}")
        print(f"  inside the endpoint (its /metrics latency histogram, model server calls included): "
              f"{server_ms:.2f} ms per request on average; CPU per request: the boto3 client "
              f"{sequential_cpu[0]:.2f} ms, the endpoint {sequential_cpu[1]:.2f} ms, the model server "
              f"{sequential_cpu[2]:.2f} ms")
        print(f"  boto3's own round trip to a local server that answers at once: p50 {boto3_floor:.2f} ms (the floor "
              f"under any endpoint: p50 - that - the model = {p50 - boto3_floor - model_ms:.2f} ms for the endpoint, "
              f"the model server's HTTP and its handlers)")
        records_per_s = n_concurrent / wall
        implied = records_per_s * rows_per_record
        share = implied / in_process_rows
        print(f"{CLIENTS} concurrent clients ({n_concurrent} explained records): {records_per_s:.1f} records/s = "
              f"{implied:,.0f} model rows/s; the model in process on {os.cpu_count()} cores "
              f"{in_process_rows:,.0f} rows/s (one core: {single_rows:,.0f}): {share:.0%} "
              f"(target >= 60 %: {verdict(share >= 0.6)})")
        cores = os.cpu_count() or 1
        per_record = [1e3 * cpu / n_concurrent for cpu in (clients_cpu, endpoint_cpu, model_server_cpu)]
        # One core's time for one record's rows: the in-process median (the all-cores reference above sinks
        # when other processes load the machine; the median of single calls hardly does).
        predict_ms = model_ms
        client_ms, endpoint_ms, model_server_ms = per_record
        other_ms = 1e3 * cores * wall / n_concurrent - sum(per_record)
        if model_server_ms > 0:
            print(f"  CPU per explained record: clients (boto3) {client_ms:.2f} ms, endpoint {endpoint_ms:.2f} ms, "
                  f"model server {model_server_ms:.2f} ms (the model's own predict of the {rows_per_record:,} rows: "
                  f"{predict_ms:.2f} ms, the in-process median), other processes or idle {max(other_ms, 0):.2f} ms "
                  f"({cores} cores x wall {1e3 * cores * wall / n_concurrent:.2f} ms); load average "
                  f"{os.getloadavg()[0]:.1f}")
            print(f"  ceiling on these {cores} cores: the model's share of the CPU each record costs. With these "
                  f"clients and a free endpoint and model server: {predict_ms / (client_ms + predict_ms):.0%}; "
                  f"with the endpoint and model server measured: "
                  f"{predict_ms / (client_ms + endpoint_ms + model_server_ms):.0%}; without the clients (on "
                  f"other machines): {predict_ms / (endpoint_ms + model_server_ms):.0%}")
        batch_records = BATCH_RECORDS * len(batches)
        batch_share = batch_records / batch_wall * rows_per_record / in_process_rows
        batch_per_record = [1e3 * cpu / batch_records for cpu in batch_cpu]
        print(f"{CLIENTS} concurrent clients, {BATCH_RECORDS} records per request ({batch_records} explained records): "
              f"{batch_records / batch_wall:.1f} records/s = {batch_records / batch_wall * rows_per_record:,.0f} model "
              f"rows/s: {batch_share:.0%} of the model in process (target >= 60 %: {verdict(batch_share >= 0.6)}); "
              f"CPU per explained record: clients {batch_per_record[0]:.2f} ms, endpoint {batch_per_record[1]:.2f} ms, "
              f"model server {batch_per_record[2]:.2f} ms; load average {batch_load:.1f}")

        # Capture on (100 %) vs off, plain invocations, interleaved in rounds.
        capture_dir = folder / "capture"
        seconds = {"off": 0.0, "on": 0.0}
        sent_on = 0
        with start(folder, "plain", endpoint_config(None, None)) as plain, \
                start(folder, "captured", endpoint_config(None, capture_dir)) as captured:
            urls = {"off": plain.url, "on": captured.url}
            for url in urls.values():
                clients.map(_invoke_many, [(url, bodies[:20])] * CLIENTS, chunksize=1)  # warm
            warm_on = 20 * CLIENTS
            before = server_seconds(plain.url)
            plain_ms = np.array(_invoke_many((plain.url, bodies[:n_sequential]))) * 1e3
            plain_server_ms = 1e3 * (server_seconds(plain.url) - before) / n_sequential
            per_round = [n_capture // rounds + (1 if r < n_capture % rounds else 0) for r in range(rounds)]
            for r, count in enumerate(per_round):
                payload = [bodies[i % len(bodies)] for i in range(count)]
                for name in (("off", "on") if r % 2 == 0 else ("on", "off")):
                    seconds[name] += concurrent_wall(clients, urls[name], payload)
                sent_on += count
            dropped = metric(captured.url, "lucent_endpoint_capture_dropped_records_total")
        lines = sum(1 for path in capture_dir.rglob("*.jsonl") if not path.name.startswith(".")
                    for line in path.open(encoding="utf-8") if line.strip())
        total = sent_on + warm_on
        rate_off, rate_on = n_capture / seconds["off"], n_capture / seconds["on"]
        print(f"\nPlain single-record invocations, {CLIENTS} concurrent clients, {n_capture:,} per endpoint in "
              f"{rounds} interleaved rounds:")
        print(f"  (one at a time, no capture: p50 {np.percentile(plain_ms, 50):.2f} ms through boto3, "
              f"{plain_server_ms:.2f} ms inside the endpoint on average: the fixed cost of any request)")
        print(f"  capture off {rate_off:,.0f} requests/s, capture 100 % {rate_on:,.0f} requests/s: "
              f"{rate_on / rate_off:.0%} (target >= 90 %: {verdict(rate_on / rate_off >= 0.9)})")
        print(f"  captured lines after SIGTERM: {lines:,} for {total:,} requests ({warm_on} of them warm-up), "
              f"{int(dropped)} dropped: {'equal' if lines == total else 'NOT EQUAL'}; endpoint exit code "
              f"{captured.exit_code}")


if __name__ == "__main__":
    main()
