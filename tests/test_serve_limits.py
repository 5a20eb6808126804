"""The service's admission control, upload parsing and lesser bounds of issue 32, in process."""

from __future__ import annotations

import asyncio
import io
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from cxr_anomaly.errors import ConfigError
from cxr_anomaly.serve import (
    BatchScorer,
    QueueFullError,
    ServiceSettings,
    create_app,
    run_server,
)
from cxr_anomaly.serve.admission import (
    AdmissionStatistics,
    InFlightLimit,
    MemoryBudget,
    ServiceBusyError,
)
from cxr_anomaly.serve.server import is_loopback


@pytest.fixture(scope="module")
def client(tiny_nih_model) -> TestClient:
    with TestClient(create_app(tiny_nih_model.checkpoint, ServiceSettings())) as test_client:
        yield test_client


def test_no_docs_page_loads_a_third_party_script(client: TestClient) -> None:
    assert client.get("/docs").status_code == 404 and client.get("/redoc").status_code == 404
    assert client.get("/openapi.json").status_code == 200
    page = client.get("/").text
    assert "<script src=" not in page.replace(" ", "").replace("'", '"') and "cdn" not in page.lower()


def test_a_corrupt_upload_is_refused_without_a_path(client: TestClient) -> None:
    response = client.post("/v1/score", content=b"\x89PNG\r\n\x1a\n" + b"\0" * 200)
    message = response.json()["error"]["message"]
    assert response.status_code == 422 and message.startswith("cannot decode the PNG upload")
    assert "/" not in message and "cxr-upload" not in message and "BytesIO" not in message


def test_multipart_forms_keep_only_the_file_field(client: TestClient, shared_data: Path) -> None:
    film = (shared_data / "nih1000" / "test" / "1_abnormal" / "00000211_011.png").read_bytes()
    scored = client.post("/v1/score", files={"file": ("f.png", film)}, data={"note": "x" * 100})
    assert scored.status_code == 200
    form = b'--b0undary\r\nContent-Disposition: form-data; name="file"\r\n\r\nnot a file\r\n--b0undary--\r\n'
    plain_field = client.post(
        "/v1/score", content=form, headers={"content-type": "multipart/form-data; boundary=b0undary"}
    )
    assert plain_field.status_code == 400 and plain_field.json()["error"]["code"] == "missing_file"
    two_files = client.post("/v1/score", files=[("file", ("a.png", film)), ("file", ("b.png", film))])
    assert two_files.status_code == 400 and two_files.json()["error"]["code"] == "malformed_form"
    big_field = client.post("/v1/score", files={"file": ("f.png", film)}, data={"note": "x" * 70_000})
    assert big_field.status_code == 413 and big_field.json()["error"]["code"] == "upload_too_large"


def test_a_film_over_the_memory_budget_waits_then_gets_503(tiny_nih_model, shared_data: Path) -> None:
    """The budget is tiny and taken: the film waits its admission time for room, then 503 + Retry-After."""
    settings = ServiceSettings(memory_budget_bytes=1024, admission_wait_seconds=0.2, retry_after_seconds=3)
    app = create_app(tiny_nih_model.checkpoint, settings)
    with TestClient(app) as limited:
        film = (shared_data / "nih_fullres" / "00000427_000.png").read_bytes()
        assert limited.post("/v1/score", content=film).status_code == 200  # cut to the budget: alone, it runs

        async def hold_the_budget() -> None:  # on the app's own loop, as a concurrent decode would
            await app.state.memory_budget.acquire(1024)

        limited.portal.call(hold_the_budget)
        start = time.monotonic()
        busy = limited.post("/v1/score", content=film)
        assert busy.status_code == 503 and busy.headers["retry-after"] == "3"
        assert busy.json()["error"]["code"] == "service_busy" and time.monotonic() - start >= 0.2
        assert limited.get("/healthz").json()["refused_busy"] == 1


def test_in_flight_limit_and_memory_budget() -> None:
    statistics = AdmissionStatistics()
    limit = InFlightLimit(2, statistics)
    with limit.admit(), limit.admit(), pytest.raises(ServiceBusyError, match="2 scoring requests"), limit.admit():
        pass
    assert limit.active == 0 and statistics.refused_in_flight == 1

    async def scenario() -> list[int]:
        budget = MemoryBudget(100, 0.05, statistics)
        held = await budget.acquire(500)  # more than the budget: cut to it
        with pytest.raises(ServiceBusyError, match="stayed full"):
            await budget.acquire(1)
        waiter = asyncio.create_task(budget.acquire(60))
        await asyncio.sleep(0.01)
        await budget.release(held)
        return [held, await waiter, budget.reserved_bytes]

    assert asyncio.run(scenario()) == [100, 60, 60]
    assert statistics.refused_memory == 1


def test_batch_scorer_refuses_films_beyond_its_queue() -> None:
    def slow(films: np.ndarray) -> list[float]:
        time.sleep(0.05)
        return [0.0] * len(films)

    scorer: BatchScorer[float] = BatchScorer(slow, max_batch_size=2, max_wait_seconds=0.0, max_queued=3)

    async def many() -> list[object]:
        return await asyncio.gather(
            *(scorer.score(np.zeros((4, 4), np.uint8)) for _ in range(5)), return_exceptions=True
        )

    outcomes = asyncio.run(many())
    assert sum(isinstance(outcome, QueueFullError) for outcome in outcomes) == 2
    assert outcomes[:3] == [0.0, 0.0, 0.0] and scorer.waiting == 0
    scorer.close()


def test_an_open_non_loopback_bind_is_refused_unless_asked(tiny_nih_model, caplog: pytest.LogCaptureFixture) -> None:
    from cxr_anomaly.cli import main

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3") and not is_loopback("example.org")
    with pytest.raises(ConfigError, match="refusing to serve on 0.0.0.0 without a bearer token"):
        run_server(tiny_nih_model.checkpoint, ServiceSettings(), host="0.0.0.0")
    assert main(["serve", "--model", str(tiny_nih_model.checkpoint), "--host", "0.0.0.0", "--port", "1"]) == 2
    assert "--allow-open" in caplog.text


def test_serve_passes_its_limit_options(tiny_nih_model, monkeypatch: pytest.MonkeyPatch) -> None:
    import cxr_anomaly.serve
    from cxr_anomaly.cli import main

    calls: list[dict[str, object]] = []
    monkeypatch.setattr(
        cxr_anomaly.serve,
        "run_server",
        lambda model, settings, **options: calls.append({"settings": settings, **options}),
    )
    assert (
        main(
            [
                "serve",
                "--model",
                str(tiny_nih_model.checkpoint),
                "--host",
                "0.0.0.0",
                "--allow-open",
                "--max-in-flight",
                "5",
                "--max-queued-films",
                "6",
                "--memory-budget-mb",
                "64",
                "--admission-wait",
                "0.5",
                "--decode-threads",
                "3",
                "--header-timeout",
                "4",
                "--body-timeout",
                "7",
                "--idle-timeout",
                "2",
                "--max-connections",
                "99",
            ]
        )
        == 0
    )
    (call,) = calls
    settings = call["settings"]
    assert call["allow_open"] is True and call["host"] == "0.0.0.0"
    assert (settings.max_in_flight, settings.max_queued_films, settings.memory_budget_bytes) == (5, 6, 64 << 20)
    assert (settings.admission_wait_seconds, settings.decode_threads, settings.max_connections) == (0.5, 3, 99)
    assert (settings.header_timeout_seconds, settings.body_timeout_seconds, settings.idle_timeout_seconds) == (4, 7, 2)
    with pytest.raises(ValueError, match="max_in_flight=0"):
        ServiceSettings(max_in_flight=0)
    with pytest.raises(ValueError, match="header_timeout_seconds=0"):
        ServiceSettings(header_timeout_seconds=0)


def test_a_wide_image_is_refused_from_its_header(client: TestClient) -> None:
    wide = io.BytesIO()
    Image.fromarray(np.zeros((16, 9000), dtype=np.uint8)).save(wide, format="PNG")
    response = client.post("/v1/score", content=wide.getvalue())
    assert response.status_code == 413 and "a side of more than 8192 pixels" in response.json()["error"]["message"]
