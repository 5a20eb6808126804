"""Replay the attacks of issue 32 against ``cxr-anomaly serve`` on loopback and read the server's memory.

The server runs in a subprocess (``python -m cxr_anomaly.cli serve``); before each attack its
peak resident memory is reset (``/proc/PID/clear_refs``, 5) and after it the peak (``VmHWM``)
less the resident memory before is the attack's added memory. The attacks:

- ``deflated_overflow``: a DICOM in the Deflated Explicit VR Little Endian transfer syntax that
  declares a 1024x1024 8-bit film but whose pixel data inflates to ``--inflate-mb`` of zeros;
- ``deflated_declared``: the same syntax, declaring 65535x65535 with short pixel data;
- ``png16_long``: a 16-bit grey PNG of 65535x1024 zeros (67 M pixels, under 8192² but a side over);
- ``rle_long``: an RLE Lossless 16-bit DICOM of 1024x65535 zeros (2 MB);
- ``bombs_8``: 8 of ``deflated_overflow`` and ``png16_long`` at once;
- ``png16_8192`` and ``rle16_4096``: films at the limits that are accepted (a 16-bit PNG of 8192²
  zeros, 130 KB; an RLE 16-bit DICOM of 4096² zeros): what reading and scoring them costs;
- ``burst``: ``--burst`` concurrent uploads of a real 1024² film (``nih_fullres``);
- ``uploads_32mb``: 20 concurrent multipart uploads of just under 32 MB (a PNG signature, then
  noise): what the server holds for each body before it refuses it (422);
- ``slow_headers`` / ``slow_body``: a client sending its headers a byte every 0.25 s, or its body a
  byte a second: how long until the server cuts it (``--slow-limit`` at most);
- ``idle_sockets``: ``--idle`` connections that send nothing: how many are still open after the
  header timeout, and how long ``/healthz`` takes meanwhile.

Usage (a checkout's ``src`` on ``--src`` replays against that code: the "before" of results.md)::

    .venv/bin/python -m benchmarks.attack_replay --model runs/demo/model.pt --out runs/attacks.json
    .venv/bin/python -m benchmarks.attack_replay --model M --src /tmp/main-copy/src --legacy

The builders make each bomb in milliseconds without holding its decoded size: deflate blocks of
zeros are produced once and repeated after a full flush (deflate streams allow it).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import logging
import os
import platform
import socket
import subprocess
import sys
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

_ZERO_BLOCK_BYTES = 1 << 20
_ADLER_MODULUS = 65521


def deflate_zeros(count: int) -> bytes:
    """Raw deflate data (full-flushed, not final) that inflates to ``count`` zero bytes."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    block = compressor.compress(b"\0" * _ZERO_BLOCK_BYTES) + compressor.flush(zlib.Z_FULL_FLUSH)
    remainder = count % _ZERO_BLOCK_BYTES
    tail = b""
    if remainder:
        last = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
        tail = last.compress(b"\0" * remainder) + last.flush(zlib.Z_FULL_FLUSH)
    return block * (count // _ZERO_BLOCK_BYTES) + tail


_FINAL_EMPTY_BLOCK = b"\x03\x00"  # a final fixed-Huffman block holding nothing


def png16_of_zeros(width: int, height: int) -> bytes:
    """A 16-bit grey PNG of ``width`` x ``height`` zeros, built without its decoded size in memory."""
    raw_bytes = height * (1 + 2 * width)  # a filter byte, then two bytes a pixel, per row
    adler = ((raw_bytes % _ADLER_MODULUS) << 16) | 1  # Adler-32 of n zero bytes
    idat = b"\x78\xda" + deflate_zeros(raw_bytes) + _FINAL_EMPTY_BLOCK + adler.to_bytes(4, "big")

    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([16, 0, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _dicom_header(rows: int, columns: int, bits: int, transfer_syntax: str) -> tuple[bytes, bytes]:
    """The preamble with file meta information, and the data set's elements before its pixel data."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info
    from pydicom.uid import SecondaryCaptureImageStorage

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = "1.2.826.0.1.3680043.8.498.2"
    head = DicomBytesIO()
    head.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(head, meta, enforce_standard=True)
    dataset = Dataset()
    dataset.SOPClassUID = SecondaryCaptureImageStorage
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.Modality = "OT"
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.Rows = rows
    dataset.Columns = columns
    dataset.BitsAllocated = bits
    dataset.BitsStored = bits
    dataset.HighBit = bits - 1
    dataset.PixelRepresentation = 0
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, dataset)
    return head.getvalue(), body.getvalue()


def _pixel_data_element(length: int, vr: bytes = b"OB") -> bytes:
    return b"\xe0\x7f\x10\x00" + vr + b"\0\0" + length.to_bytes(4, "little")


def deflated_dicom(rows: int, columns: int, pixel_bytes: int) -> bytes:
    """A deflated DICOM declaring ``rows`` x ``columns`` at 8 bits whose pixel data is ``pixel_bytes`` zeros."""
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    head, elements = _dicom_header(rows, columns, 8, DeflatedExplicitVRLittleEndian)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    start = compressor.compress(elements + _pixel_data_element(pixel_bytes)) + compressor.flush(zlib.Z_FULL_FLUSH)
    return head + start + deflate_zeros(pixel_bytes) + _FINAL_EMPTY_BLOCK


def rle_dicom_of_zeros(rows: int, columns: int) -> bytes:
    """An RLE Lossless 16-bit DICOM of zeros (two byte segments of 128-byte runs)."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import RLELossless

    head, elements = _dicom_header(rows, columns, 16, RLELossless)
    per_segment = rows * columns
    runs, rest = divmod(per_segment, 128)
    segment = b"\x81\x00" * runs + (bytes([rest - 1, 0]) if rest else b"")  # 0x81: repeat the next byte 128 times
    segment += b"\0" * (len(segment) % 2)
    header = (2).to_bytes(4, "little") + (64).to_bytes(4, "little") + (64 + len(segment)).to_bytes(4, "little")
    frame = header + b"\0" * (64 - len(header)) + segment + segment
    # encapsulated pixel data has an undefined length (0xFFFFFFFF); its items end with a delimiter
    delimiter = b"\xfe\xff\xdd\xe0\0\0\0\0"
    return head + elements + b"\xe0\x7f\x10\x00OB\0\0\xff\xff\xff\xff" + encapsulate([frame]) + delimiter


@dataclass
class ServerProcess:
    """A ``cxr-anomaly serve`` subprocess on a loopback port."""

    process: subprocess.Popen[bytes]
    url: str
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        """Terminate the server (this process started it) and wait for it."""
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=20)


def free_port() -> int:
    """A TCP port free on loopback now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(
    model: Path, log: Path, *, src: Path | None = None, options: list[str] | None = None, startup_seconds: float = 180.0
) -> ServerProcess:
    """Start ``serve`` on a free loopback port with one scoring thread; return when ``/healthz`` answers.

    Raises:
        RuntimeError: the server exited or did not answer within ``startup_seconds``.
    """
    import httpx

    port = free_port()
    environment = dict(os.environ)
    if src is not None:
        environment["PYTHONPATH"] = str(src)
    command = [
        sys.executable,
        "-c",
        "import sys; from cxr_anomaly.cli import main; sys.exit(main(sys.argv[1:]))",
        "serve",
        "--model",
        str(model),
        "--port",
        str(port),
        "--threads",
        "1",
        *(options or []),
    ]
    with log.open("wb") as stream:
        process = subprocess.Popen(command, stdout=stream, stderr=subprocess.STDOUT, env=environment)
    server = ServerProcess(process, f"http://127.0.0.1:{port}", log)
    deadline = time.monotonic() + startup_seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"serve exited with {process.returncode}; see {log}")
        try:
            if httpx.get(f"{server.url}/healthz", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    server.stop()
    raise RuntimeError(f"serve did not answer within {startup_seconds} s; see {log}")


def memory_kib(pid: int) -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` of a process, in KiB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(value.split()[0])
    return values


def reset_peak(pid: int) -> int:
    """Reset the process's peak resident memory to its current one; return that, in KiB."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return memory_kib(pid)["VmRSS"]


@dataclass
class AttackResult:
    """What one attack did to the server.

    Attributes:
        name: the attack.
        statuses: responses per HTTP status (``error`` for a transport failure).
        seconds: wall time of the attack.
        max_request_seconds: the slowest request.
        added_peak_mb: the server's peak resident memory during the attack less its memory before.
        notes: attack-specific figures.
    """

    name: str
    statuses: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    max_request_seconds: float = 0.0
    added_peak_mb: float = 0.0
    notes: dict[str, object] = field(default_factory=dict)


def post_all(url: str, bodies: list[bytes], content_type: str, timeout: float = 120.0) -> tuple[dict[str, int], float]:
    """POST every body at once (one thread each); the statuses and the slowest request's seconds.

    A 503 that carries ``Retry-After`` counts as ``503``, one without it as ``503-no-retry-after``.
    """
    import httpx

    def one(body: bytes) -> tuple[str, float]:
        start = time.monotonic()
        try:
            response = httpx.post(
                f"{url}/v1/score", content=body, headers={"content-type": content_type}, timeout=timeout
            )
            status = str(response.status_code)
            if status == "503" and "retry-after" not in response.headers:
                status = "503-no-retry-after"
        except httpx.HTTPError as error:
            status = f"error:{type(error).__name__}"
        return status, time.monotonic() - start

    statuses: dict[str, int] = {}
    slowest = 0.0
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(bodies))) as pool:
        for status, seconds in pool.map(one, bodies):
            statuses[status] = statuses.get(status, 0) + 1
            slowest = max(slowest, seconds)
    return statuses, slowest


def replay(
    server: ServerProcess,
    name: str,
    bodies: list[bytes],
    content_type: str = "application/octet-stream",
) -> AttackResult:
    """POST ``bodies`` at once and measure the server's added peak memory."""
    before = reset_peak(server.pid)
    start = time.monotonic()
    statuses, slowest = post_all(server.url, bodies, content_type)
    seconds = time.monotonic() - start
    peak = memory_kib(server.pid)["VmHWM"]
    return AttackResult(name, statuses, round(seconds, 3), round(slowest, 3), round((peak - before) / 1024, 1))


def slow_client(server: ServerProcess, *, body: bool, limit_seconds: float) -> AttackResult:
    """Send headers a byte every 0.25 s (or complete headers then a body byte a second) until cut."""
    host, port = server.url.removeprefix("http://").split(":")
    request = (
        b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Length: 100000\r\n\r\n"
    )
    start = time.monotonic()
    cut = False
    with socket.create_connection((host, int(port))) as connection:
        if body:
            connection.sendall(request)
        step, payload = (1.0, b"\0" * 100000) if body else (0.25, request)
        for index in range(len(payload)):
            if time.monotonic() - start > limit_seconds:
                break
            try:
                connection.sendall(payload[index : index + 1])
                connection.settimeout(step)
                if connection.recv(1) == b"":
                    cut = True
                    break
            except TimeoutError:
                continue
            except OSError:
                cut = True
                break
    seconds = time.monotonic() - start
    name = "slow_body" if body else "slow_headers"
    return AttackResult(name, seconds=round(seconds, 2), notes={"cut_by_server": cut, "limit_seconds": limit_seconds})


def idle_sockets(server: ServerProcess, count: int, wait_seconds: float) -> AttackResult:
    """Open ``count`` connections that send nothing; count those still open after ``wait_seconds``."""
    import httpx

    host, port = server.url.removeprefix("http://").split(":")
    before = reset_peak(server.pid)
    sockets: list[socket.socket] = []
    opened = 0
    for _ in range(count):
        try:
            sockets.append(socket.create_connection((host, int(port)), timeout=5))
            opened += 1
        except OSError:
            break
    start = time.monotonic()
    try:
        health = httpx.get(f"{server.url}/healthz", timeout=30)
        health_status, health_seconds = str(health.status_code), time.monotonic() - start
    except httpx.HTTPError as error:
        health_status, health_seconds = f"error:{type(error).__name__}", time.monotonic() - start
    time.sleep(max(0.0, wait_seconds - (time.monotonic() - start)))
    still_open = 0
    for connection in sockets:
        connection.setblocking(False)
        try:
            still_open += connection.recv(1) != b""
        except BlockingIOError:
            still_open += 1  # nothing to read and not closed
        except OSError:
            pass
        connection.close()
    peak = memory_kib(server.pid)["VmHWM"]
    return AttackResult(
        "idle_sockets",
        {health_status: 1},
        round(time.monotonic() - start, 2),
        round(health_seconds, 3),
        round((peak - before) / 1024, 1),
        {"opened": opened, f"open_after_{wait_seconds:g}s": still_open},
    )


def count_log_lines(log: Path, text: str) -> int:
    """Lines of the server's log holding ``text``."""
    return sum(text in line for line in log.read_text(errors="replace").splitlines())


def run(arguments: argparse.Namespace) -> dict[str, object]:
    """Every attack against one server; the results as plain values."""
    film = arguments.film.read_bytes() if arguments.film else None
    options = (
        []
        if arguments.legacy
        else ["--header-timeout", str(arguments.header_timeout), "--body-timeout", str(arguments.body_timeout)]
    )
    server = start_server(arguments.model, arguments.log, src=arguments.src, options=options)
    started_mb = round(memory_kib(server.pid)["VmRSS"] / 1024, 1)
    results: list[AttackResult] = []
    try:
        overflow = deflated_dicom(1024, 1024, arguments.inflate_mb << 20)
        declared = deflated_dicom(65535, 65535, 1 << 20)
        png = png16_of_zeros(65535, 1024)
        rle = rle_dicom_of_zeros(65535, 1024)
        logger.info(
            "bombs: deflated %d B, declared %d B, png %d B, rle %d B", len(overflow), len(declared), len(png), len(rle)
        )
        if film is not None:
            results.append(replay(server, "warm_up_film", [film]))
        skip = set(arguments.skip.split(",")) if arguments.skip else set()
        for name, body in (
            ("deflated_overflow", overflow),
            ("deflated_declared", declared),
            ("png16_long", png),
            ("rle_long", rle),
        ):
            if name not in skip:
                results.append(replay(server, name, [body]))
                results[-1].notes["upload_bytes"] = len(body)
        if "bombs_8" not in skip:
            results.append(replay(server, "bombs_8", [overflow, png] * 4))
        for name, build in (
            ("png16_8192", lambda: png16_of_zeros(8192, 8192)),
            ("rle16_4096", lambda: rle_dicom_of_zeros(4096, 4096)),
        ):
            if name not in skip:
                body = build()
                results.append(replay(server, name, [body]))
                results[-1].notes["upload_bytes"] = len(body)
        if "uploads_32mb" not in skip:
            boundary = "attackreplayboundary"
            payload = b"\x89PNG\r\n\x1a\n" + os.urandom((32 << 20) - 4096)
            form = (
                (
                    f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="f.png"\r\n'
                    f"Content-Type: image/png\r\n\r\n"
                ).encode()
                + payload
                + f"\r\n--{boundary}--\r\n".encode()
            )
            del payload
            results.append(replay(server, "uploads_32mb", [form] * 20, f"multipart/form-data; boundary={boundary}"))
            del form
        if film is not None and "burst" not in skip:
            results.append(replay(server, f"burst_{arguments.burst}", [film] * arguments.burst))
        if "slow" not in skip:
            results.append(slow_client(server, body=False, limit_seconds=arguments.slow_limit))
            results.append(slow_client(server, body=True, limit_seconds=arguments.slow_limit))
        if "idle" not in skip:
            results.append(idle_sockets(server, arguments.idle, arguments.header_timeout + 2.0))
    finally:
        server.stop()
    return {
        "server_rss_mb_at_start": started_mb,
        "results": [asdict(result) for result in results],
        "log_tracebacks": count_log_lines(arguments.log, "Traceback"),
        "log_lines": len(arguments.log.read_text(errors="replace").splitlines()),
        "machine": platform.processor() or platform.machine(),
        "python": platform.python_version(),
    }


def main(argv: list[str] | None = None) -> int:
    """Replay the attacks and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--film", type=Path, default=None, help="a real film for the warm-up and the burst")
    parser.add_argument("--src", type=Path, default=None, help="the src folder of the checkout to replay against")
    parser.add_argument("--legacy", action="store_true", help="a server without the limit options (before)")
    parser.add_argument("--inflate-mb", type=int, default=1024)
    parser.add_argument("--burst", type=int, default=200)
    parser.add_argument("--idle", type=int, default=1000)
    parser.add_argument("--header-timeout", type=float, default=10.0)
    parser.add_argument("--body-timeout", type=float, default=60.0)
    parser.add_argument("--slow-limit", type=float, default=30.0)
    parser.add_argument(
        "--skip",
        default="",
        help="attacks to leave out, comma-separated (bombs_8, burst, slow, "
        "idle or a bomb's name): an unbounded server may need gigabytes",
    )
    parser.add_argument("--log", type=Path, default=Path("attack_replay_server.log"))
    parser.add_argument("--out", type=Path, default=None)
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    outcome = run(arguments)
    text = json.dumps(outcome, indent=2)
    if arguments.out:
        arguments.out.write_text(text + "\n")
    logger.info("%s", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
