"""The REST service with FastAPI's TestClient, micro-batching, and a small loopback load test."""

from __future__ import annotations

import asyncio
import base64
import io
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from cxr_anomaly.checkpoint import load_checkpoint
from cxr_anomaly.explain import legend_height
from cxr_anomaly.io import read_image, resize_grey
from cxr_anomaly.scoring import score_films
from cxr_anomaly.serve import BatchScorer, ServiceSettings, create_app, start_background_server
from cxr_anomaly.serve.loadtest import run_load_test

TOKEN = "test-token-8c1f"


@pytest.fixture(scope="module")
def film_path(shared_data: Path) -> Path:
    return shared_data / "nih1000" / "test" / "1_abnormal" / "00000211_011.png"


@pytest.fixture(scope="module")
def client(tiny_nih_model) -> TestClient:
    with TestClient(create_app(tiny_nih_model.checkpoint, ServiceSettings())) as test_client:
        yield test_client


def offline_scores(checkpoint: Path, path: Path, precision: str = "auto") -> dict[str, object]:
    """What the library computes for a file, to compare the service with."""
    model = load_checkpoint(checkpoint)
    pixels = resize_grey(read_image(path).array, model.config.data.image_size)[None]  # (1, S, S)
    result = score_films(model.detector, pixels, precision=precision)
    raw = result.raw
    return {
        "raw": float(raw[0]),
        "percentile": float(model.calibration.percentile(raw)[0]),
        "z": float(model.calibration.standardise(raw)[0]),
        "flag": bool(model.calibration.flag(raw)[0]),
        "components": {name: float(values[0]) for name, values in result.components.items()},
    }


def test_health_model_and_openapi(client: TestClient, tiny_nih_model) -> None:
    assert client.get("/healthz").json()["status"] == "ok"
    info = client.get("/v1/model").json()
    assert info["model_version"].startswith("sha256:") and info["method"] == "tang2019"
    assert info["detector"] == load_checkpoint(tiny_nih_model.checkpoint).detector.description
    assert "u+d+e" in info["detector"] and "variant" not in info
    assert info["calibration"]["threshold"] == load_checkpoint(tiny_nih_model.checkpoint).calibration.threshold
    assert "normal_quantiles" not in info["calibration"] and info["auth_required"] is False
    schema = client.get("/openapi.json").json()
    operation = schema["paths"]["/v1/score"]["post"]
    assert "multipart/form-data" in operation["requestBody"]["content"]
    assert {"400", "401", "413", "415", "422"} <= set(operation["responses"])
    assert "ScoreResponse" in schema["components"]["schemas"]


def test_score_png_matches_the_library_and_the_calibration(client: TestClient, tiny_nih_model, film_path: Path) -> None:
    response = client.post("/v1/score", files={"file": ("x.png", film_path.read_bytes(), "image/png")})
    assert response.status_code == 200
    body = response.json()
    expected = offline_scores(tiny_nih_model.checkpoint, film_path)
    assert body["score_raw"] == pytest.approx(expected["raw"], rel=1e-5)
    assert body["score"] == pytest.approx(expected["z"], rel=1e-5) and body["score_kind"] == "calibrated"
    assert body["percentile"] == pytest.approx(expected["percentile"], abs=1e-6)
    assert body["decision"] == ("flag" if expected["flag"] else "normal")
    assert body["model_version"] == client.get("/v1/model").json()["model_version"]
    assert body["image"] == {"format": "png", "width": 64, "height": 64}
    assert body["heatmap_png"] is None
    components = body["components"]
    assert set(components) == {"reconstruction", "adversarial", "latent", "code_distance"}
    assert all(value is not None for value in components.values())
    for name, value in components.items():
        assert value == pytest.approx(expected["components"][name], rel=1e-5), name


def test_an_exported_onnx_graph_is_served_like_its_checkpoint(tiny_nih_model, film_path: Path, tmp_path: Path) -> None:
    """``serve --model model.onnx``: onnxruntime scores, and the answers match the fp32 library."""
    pytest.importorskip("onnxruntime")
    from cxr_anomaly.export import export_checkpoint

    onnx_path = export_checkpoint(tiny_nih_model.checkpoint, tmp_path / "model.onnx").path
    expected = offline_scores(tiny_nih_model.checkpoint, film_path, precision="fp32")
    checkpoint = load_checkpoint(tiny_nih_model.checkpoint)
    with TestClient(create_app(onnx_path, ServiceSettings(), onnx_threads=1)) as onnx_client:
        info = onnx_client.get("/v1/model").json()
        assert info["detector"] == f"{checkpoint.detector.description}, onnxruntime"
        assert info["checkpoint"] == "model.onnx" and info["method"] == "tang2019"
        assert info["calibration"]["threshold"] == checkpoint.calibration.threshold
        assert info["training"]["num_train_images"] == checkpoint.training["num_train_images"]
        body = onnx_client.post("/v1/score?heatmap=true", files={"file": ("x.png", film_path.read_bytes())}).json()
    assert body["score_raw"] == pytest.approx(expected["raw"], rel=1e-4, abs=1e-5)
    assert body["decision"] == ("flag" if expected["flag"] else "normal")
    for name, value in body["components"].items():
        assert value == pytest.approx(expected["components"][name], rel=1e-4, abs=1e-5), name
    assert Image.open(io.BytesIO(base64.b64decode(body["heatmap_png"]))).size == (64, 64 + legend_height(64))
    with pytest.raises(ValueError, match="model.onnx.*device='cuda'"):
        create_app(onnx_path, ServiceSettings(), device="cuda")


def test_serve_refuses_a_device_it_cannot_use_before_it_listens(
    tiny_nih_model, caplog: pytest.LogCaptureFixture
) -> None:
    import torch

    from cxr_anomaly.cli import main

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the refusal is for one that has none")
    assert main(["serve", "--model", str(tiny_nih_model.checkpoint), "--device", "cuda", "--port", "1"]) == 2
    assert "device='cuda', but torch sees no CUDA device here" in caplog.text


def test_raw_body_jpeg_and_dicom_are_sniffed_and_scored(
    client: TestClient, tmp_path: Path, shared_data: Path, dicom_writer: Callable[..., Path]
) -> None:
    full_resolution = shared_data / "nih_fullres" / "00000427_000.png"
    grey = np.asarray(Image.open(full_resolution).convert("L"))
    buffer = io.BytesIO()
    Image.fromarray(grey).save(buffer, format="JPEG", quality=95)
    # a misleading name and declared type: the bytes decide
    jpeg = client.post("/v1/score", files={"file": ("film.dcm", buffer.getvalue(), "application/dicom")})
    assert jpeg.status_code == 200 and jpeg.json()["image"] == {"format": "jpeg", "width": 1024, "height": 1024}
    dicom = dicom_writer(grey, tmp_path / "film", study_uid="1.2.3", sop_uid="1.2.3.4")
    response = client.post(
        "/v1/score", content=dicom.read_bytes(), headers={"content-type": "application/octet-stream"}
    )
    assert response.status_code == 200 and response.json()["image"]["format"] == "dicom"
    png = client.post("/v1/score", content=full_resolution.read_bytes(), headers={"content-type": "image/png"})
    assert response.json()["score_raw"] == pytest.approx(png.json()["score_raw"], rel=1e-6)


def test_heatmap_comes_at_the_original_resolution_as_json_or_png(client: TestClient, shared_data: Path) -> None:
    data = (shared_data / "nih_fullres" / "00000427_000.png").read_bytes()
    body = client.post("/v1/score?heatmap=true", files={"file": ("f.png", data)}).json()
    heatmap = Image.open(io.BytesIO(base64.b64decode(body["heatmap_png"])))
    # the film at its own resolution, and the legend band (colour bar, raw score) below it
    assert heatmap.size == (1024, 1024 + legend_height(1024)) and heatmap.mode == "RGB"
    response = client.post("/v1/score?format=png", files={"file": ("f.png", data)})
    assert response.headers["content-type"] == "image/png"
    assert float(response.headers["x-score-raw"]) == pytest.approx(body["score_raw"], rel=1e-5)
    assert response.headers["x-decision"] == body["decision"]
    assert Image.open(io.BytesIO(response.content)).size == (1024, 1024 + legend_height(1024))


def error_of(response: httpx.Response) -> str:
    body = response.json()
    assert set(body) == {"error"} and body["error"]["message"]
    return body["error"]["code"]


def test_bad_inputs_get_clear_json_errors(client: TestClient, tmp_path: Path, film_path: Path) -> None:
    gif = b"GIF89a" + b"\x00" * 200
    response = client.post("/v1/score", files={"file": ("innocent.png", gif, "image/png")})
    assert response.status_code == 415 and error_of(response) == "unsupported_format"
    truncated = film_path.read_bytes()[:60]
    response = client.post("/v1/score", files={"file": ("t.png", truncated, "image/png")})
    assert response.status_code == 422 and error_of(response) == "unreadable_image"
    response = client.post("/v1/score", content=b"")
    assert response.status_code == 400 and error_of(response) == "empty_upload"
    response = client.post("/v1/score", files={"other": ("x.png", film_path.read_bytes())})
    assert response.status_code == 400 and error_of(response) == "missing_file"
    tiny = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(tiny, format="PNG")
    response = client.post("/v1/score", content=tiny.getvalue())
    assert response.status_code == 422 and error_of(response) == "image_too_small"
    response = client.post("/v1/score?format=gif", content=film_path.read_bytes())
    assert response.status_code == 422 and error_of(response) == "invalid_request"
    response = client.get("/v1/nothing")
    assert response.status_code == 404 and error_of(response) == "not_found"


def test_upload_size_and_image_dimension_limits(tiny_nih_model, shared_data: Path) -> None:
    settings = ServiceSettings(max_upload_bytes=200_000, max_image_side=512)
    with TestClient(create_app(tiny_nih_model.checkpoint, settings)) as limited:
        big = (shared_data / "nih_fullres" / "00000427_000.png").read_bytes()
        assert len(big) > 200_000
        for response in (
            limited.post("/v1/score", content=big),
            limited.post("/v1/score", files={"file": ("f.png", big)}),
        ):
            assert response.status_code == 413 and error_of(response) == "upload_too_large"
        wide = io.BytesIO()
        Image.fromarray(np.zeros((64, 4000), dtype=np.uint8)).save(wide, format="PNG")  # small file, 4000 wide
        response = limited.post("/v1/score", content=wide.getvalue())
        assert response.status_code == 413 and error_of(response) == "image_too_large"


def test_bearer_token_from_the_environment_guards_scoring(
    tiny_nih_model, film_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CXR_ANOMALY_TOKEN", TOKEN)
    settings = ServiceSettings.from_environment()
    assert settings.token == TOKEN
    with TestClient(create_app(tiny_nih_model.checkpoint, settings)) as guarded:
        data = film_path.read_bytes()
        missing = guarded.post("/v1/score", content=data)
        assert missing.status_code == 401 and error_of(missing) == "missing_token"
        assert missing.headers["www-authenticate"] == "Bearer"
        wrong = guarded.post("/v1/score", content=data, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and error_of(wrong) == "invalid_token"
        right = guarded.post("/v1/score", content=data, headers={"Authorization": f"Bearer {TOKEN}"})
        assert right.status_code == 200
        assert guarded.get("/healthz").status_code == 200
        assert guarded.get("/v1/model").json()["auth_required"] is True
    assert ServiceSettings.from_environment(token="explicit").token == "explicit"
    with pytest.raises(ValueError, match="token is empty"):
        ServiceSettings(token="  ")


def test_batch_scorer_groups_concurrent_requests_and_keeps_their_order() -> None:
    sizes: list[int] = []

    def score_batch(films: np.ndarray) -> list[float]:
        sizes.append(len(films))
        time.sleep(0.02)  # a forward pass takes time, so later requests queue up
        return [float(film[0, 0]) for film in films]

    scorer: BatchScorer[float] = BatchScorer(score_batch, max_batch_size=8, max_wait_seconds=0.01)

    async def many() -> list[float]:
        films = [np.full((4, 4), value, dtype=np.uint8) for value in range(30)]
        return await asyncio.gather(*(scorer.score(film) for film in films))

    assert asyncio.run(many()) == [float(value) for value in range(30)]
    assert max(sizes) == 8 and sum(sizes) == 30 and len(sizes) < 30
    assert scorer.statistics.films == 30 and scorer.statistics.largest_batch == 8
    scorer.close()


def test_batch_scorer_reports_a_failure_to_every_waiting_request() -> None:
    def broken(films: np.ndarray) -> list[float]:
        raise RuntimeError("network exploded")

    scorer: BatchScorer[float] = BatchScorer(broken, max_batch_size=4, max_wait_seconds=0.01)

    async def many() -> list[object]:
        return await asyncio.gather(
            *(scorer.score(np.zeros((4, 4), np.uint8)) for _ in range(3)), return_exceptions=True
        )

    outcomes = asyncio.run(many())
    assert all(isinstance(outcome, RuntimeError) for outcome in outcomes)
    scorer.close()


def test_small_load_test_on_loopback_has_no_errors_and_batches(tiny_nih_model, film_path: Path) -> None:
    app = create_app(tiny_nih_model.checkpoint, ServiceSettings(batch_wait_seconds=0.01))
    server = start_background_server(app)
    try:
        result = run_load_test(server.url, film_path.read_bytes(), num_requests=64, concurrency=8)
        health = httpx.get(f"{server.url}/healthz").json()
    finally:
        server.stop()
    assert result.errors == 0 and result.status_counts == {"200": 64}
    assert 0 < result.p50_ms <= result.p99_ms <= result.max_ms
    assert health["films_scored"] == 64
    assert health["largest_batch"] > 1  # concurrent requests shared forward passes


def test_serve_command_passes_its_options_and_the_environment_token(
    tiny_nih_model, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cxr_anomaly.serve
    from cxr_anomaly.cli import main

    calls: list[dict[str, object]] = []
    monkeypatch.setattr(
        cxr_anomaly.serve,
        "run_server",
        lambda model, settings, **options: calls.append({"model": model, "settings": settings, **options}),
    )
    monkeypatch.setenv("CXR_ANOMALY_TOKEN", TOKEN)
    assert (
        main(
            [
                "serve",
                "--model",
                str(tiny_nih_model.checkpoint),
                "--port",
                "8123",
                "--max-upload-mb",
                "2",
                "--max-image-side",
                "4096",
                "--batch-wait-ms",
                "20",
                "--threads",
                "1",
            ]
        )
        == 0
    )
    (call,) = calls
    settings = call["settings"]
    assert call["port"] == 8123 and call["host"] == "127.0.0.1" and call["threads"] == 1
    assert settings.token == TOKEN and settings.max_upload_bytes == 2 * 1024 * 1024
    assert settings.max_image_side == 4096 and settings.batch_wait_seconds == pytest.approx(0.02)


def test_run_server_refuses_a_thread_count_below_one(tiny_nih_model) -> None:
    from cxr_anomaly.serve import run_server

    with pytest.raises(ValueError, match="threads=0"):
        run_server(tiny_nih_model.checkpoint, ServiceSettings(), threads=0)
