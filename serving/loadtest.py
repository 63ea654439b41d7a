"""A load test of a served model with Locust's library API, headless, in a process of its own
(Locust patches the standard library with gevent when imported, so it never runs inside the CLI's
or a server's process):

    python -m serving.loadtest '{"url": ..., "model": ..., "concurrency": 32, "duration_s": 20}'

prints one JSON line: requests, failures, throughput, p50/p90/p99 in ms. Each simulated user
sends one image per request and waits for the answer before sending the next (closed loop), or
paces itself to ``rate`` requests per second in total (open loop, when given). Images: the files
of a folder through ``/v1/classify``, or random tensors of the model's input shape through the
Open Inference Protocol (latency does not depend on the pixels), in the binary tensor extension
unless ``binary`` is false (JSON lists of numbers).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def run_load(config: dict) -> dict:
    """Run Locust in a child process and return its figures."""
    result = subprocess.run(
        [sys.executable, "-m", "serving.loadtest", json.dumps(config)],
        capture_output=True,
        text=True,
        check=False,
        timeout=config["duration_s"] + 120,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        raise RuntimeError(
            f"the load generator failed: {(result.stderr or result.stdout).strip()[-400:]}"
        )
    return json.loads(lines[-1])


def _tensor_body(name: str, images, *, binary: bool) -> tuple[bytes, dict]:
    """An OIP v2 infer request: the binary tensor extension (a JSON header, then the raw float32
    bytes, as tritonclient sends by default), or the data as a JSON list of numbers."""
    tensor = {"name": name, "datatype": "FP32", "shape": list(images.shape)}
    if not binary:
        body = json.dumps(
            {"inputs": [{**tensor, "data": images.ravel().round(4).tolist()}]}
        ).encode()
        return body, {"Content-Type": "application/json"}
    header = json.dumps(
        {"inputs": [{**tensor, "parameters": {"binary_data_size": images.nbytes}}]}
    ).encode()
    return header + images.tobytes(), {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(header)),
    }


def _user_class(config: dict):
    import random

    import numpy as np
    import requests
    from locust import FastHttpUser, constant_throughput, task

    folder = config.get("images")
    files = (
        sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if folder
        else []
    )
    if folder and not files:
        raise SystemExit(f"{folder}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    from urllib3 import encode_multipart_formdata

    payloads = [encode_multipart_formdata({"file": ("image", p.read_bytes())}) for p in files[:512]]
    if not payloads:
        meta = requests.get(f"{config['url']}/v2/models/{config['model']}", timeout=30).json()
        spec = meta["inputs"][0]
        shape = [1, *spec["shape"][1:]]
        rng = np.random.default_rng(0)
        bodies = [
            _tensor_body(
                spec["name"], rng.random(shape, dtype=np.float32), binary=config.get("binary", True)
            )
            for _ in range(16)
        ]
    rate = config.get("rate")

    class Client(FastHttpUser):
        host = config["url"]
        wait_time = constant_throughput(rate / config["concurrency"]) if rate else (lambda self: 0)

        @task
        def one_image(self) -> None:
            if payloads:
                body, content_type = random.choice(payloads)
                self.client.post(
                    "/v1/classify",
                    data=body,
                    headers={"Content-Type": content_type},
                    name="classify",
                )
            else:
                body, headers = random.choice(bodies)
                self.client.post(
                    f"/v2/models/{config['model']}/infer", data=body, headers=headers, name="infer"
                )

    return Client


def _main(config: dict) -> dict:
    import gevent
    from locust.env import Environment

    env = Environment(user_classes=[_user_class(config)])
    runner = env.create_local_runner()
    runner.start(user_count=config["concurrency"], spawn_rate=config["concurrency"])
    gevent.spawn_later(config.get("warmup_s", 2), env.stats.reset_all)  # leave the ramp-up out
    gevent.spawn_later(config["duration_s"] + config.get("warmup_s", 2), runner.quit)
    runner.greenlet.join()
    total = env.stats.total
    seconds = (
        max(total.last_request_timestamp - total.start_time, 1e-9) if total.num_requests else 0
    )
    return {
        "url": config["url"],
        "concurrency": config["concurrency"],
        "rate": config.get("rate"),
        "tensors": "json" if config.get("binary") is False else "binary",
        "duration_s": config["duration_s"],
        "requests": total.num_requests,
        "failures": total.num_failures,
        "throughput_rps": total.num_requests / seconds if seconds else 0.0,
        **{f"p{q}_ms": total.get_response_time_percentile(q / 100) for q in (50, 90, 99)},
        "errors": {str(e.error)[:200]: e.occurrences for e in env.stats.errors.values()},
    }


if __name__ == "__main__":
    print(json.dumps(_main(json.loads(sys.argv[1]))))
