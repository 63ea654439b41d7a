"""The Ray Serve engine (one machine or a cluster): one deployment with a FastAPI ingress for the
same routes as the LitServe engine, Ray Serve's own dynamic batching (``@serve.batch``) and
``--replicas`` replicas, which Ray restarts when one dies. ``--address`` deploys onto an existing
Ray cluster (``ray start --head`` on one machine, ``ray start --address`` on the others); without
it a local Ray instance is started for the server's lifetime. (No ``from __future__ import
annotations`` here: FastAPI reads the routes' annotations at run time through Ray's ingress.)"""


import time

import numpy as np
from fastapi import FastAPI, HTTPException, Request, Response
from ray import serve

from serving.codec import BINARY_HEADER, Codec
from serving.metrics import FOLDER_ENV, Measured, exposition, observe_batch
from serving.options import ServeOptions, checked
from serving.runtime import Bundle, Runner, note_replica

app = FastAPI()
app.add_middleware(Measured)


@serve.deployment
@serve.ingress(app)
class OipDeployment:
    """One replica: the bundle's runner and codec; every request goes through one batching queue."""

    def __init__(self, options: ServeOptions):
        import os

        self.options = options
        # a replica on another machine of the cluster
        os.makedirs(os.environ[FOLDER_ENV], exist_ok=True)
        bundle = Bundle.open(options.bundle)
        self.codec = Codec(bundle, options.model_name)
        self.runner = Runner(bundle, options.files, threads=options.threads_per_replica)
        self.platform = "openvino" if options.target.startswith("openvino") else "onnxruntime_onnx"
        note_replica()
        self._batched.set_max_batch_size(options.max_batch)
        self._batched.set_batch_wait_timeout_s(options.batch_wait_ms / 1000)

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.002)
    async def _batched(self, batches: list[np.ndarray]) -> list[np.ndarray]:
        batch = np.concatenate(batches)
        observe_batch(len(batch))
        logits = self.runner(batch)
        return np.split(logits, np.cumsum([len(b) for b in batches])[:-1])

    async def _body(self, request: Request) -> bytes:
        body = await request.body()
        if len(body) > self.options.max_body_mb * 2**20:
            raise HTTPException(
                status_code=413, detail=f"Payload too large (over {self.options.max_body_mb} MB)"
            )
        return body

    def _model(self, name: str) -> None:
        if name != self.options.model_name:
            raise HTTPException(
                status_code=404,
                detail=f"no model {name!r}; this server serves {self.options.model_name!r}",
            )

    @app.get("/v2")
    def server_metadata(self) -> dict:
        return {
            "name": "cskd-pipeline",
            "extensions": ["classification"],
            "models": [self.options.model_name],
        }

    @app.get("/v2/health/live")
    def live(self) -> dict:
        return {"live": True}

    @app.get("/v2/health/ready")
    def ready(self) -> dict:
        return {"ready": True}

    @app.get("/metrics")
    def metrics(self) -> Response:
        content, media_type = exposition()
        return Response(content, media_type=media_type)

    @app.get("/v2/models/{name}")
    def metadata(self, name: str) -> dict:
        self._model(name)
        return self.codec.metadata(self.platform)

    @app.get("/v2/models/{name}/ready")
    def model_ready(self, name: str) -> dict:
        self._model(name)
        return {"ready": True}

    @app.get("/v2/models/{name}/versions/{version}")
    def version_metadata(self, name: str, version: str) -> dict:
        self._version(name, version)
        return self.codec.metadata(self.platform)

    @app.get("/v2/models/{name}/versions/{version}/ready")
    def version_ready(self, name: str, version: str) -> dict:
        self._version(name, version)
        return {"ready": True}

    def _version(self, name: str, version: str) -> None:
        self._model(name)
        if version != self.codec.version:
            raise HTTPException(
                status_code=404,
                detail=f"no version {version!r} of {name!r}; this server serves "
                f"version {self.codec.version}",
            )

    @app.post("/v2/models/{name}/infer")
    async def infer(self, name: str, request: Request) -> dict:
        self._model(name)
        body, binary = checked(
            self.codec.split_binary, await self._body(request), request.headers.get(BINARY_HEADER)
        )
        request_id, images = checked(self.codec.decode_infer, body, binary)
        return self.codec.encode_infer(request_id, await self._batched(images))

    @app.post("/v1/classify")
    async def classify(self, request: Request) -> dict:
        await self._body(request)
        form = await request.form()
        upload = form.get("file")
        if upload is None or not hasattr(upload, "read"):
            raise HTTPException(
                status_code=400, detail="send the image as the multipart form field 'file'"
            )
        sample = checked(self.codec.decode_image, await upload.read())
        return self.codec.encode_classification((await self._batched(sample[None]))[0])


def serve_forever(options: ServeOptions, metrics_folder: str) -> None:
    import ray

    # "local": a Ray instance of this server's own, even where a cluster runs on this machine
    ray.init(
        address=options.address or "local",
        include_dashboard=False,
        log_to_driver=False,
        **({} if options.address else {"num_cpus": max(options.replicas, 1)}),
    )
    serve.start(
        http_options={
            "host": options.host,
            "port": options.port,
            "request_timeout_s": options.request_timeout_s,
        }
    )
    # max_ongoing_requests: Ray's default (5) caps a replica's batch at 5 and makes its proxy back
    # off and
    # retry every request beyond that (seconds of latency at 32 clients): admit two full batches,
    # and at
    # least Ray's former default of 100, so that without batching too requests queue instead of
    # retrying
    deployment = OipDeployment.options(
        num_replicas=options.replicas,
        max_ongoing_requests=max(2 * options.max_batch, 100),
        ray_actor_options={
            # the replicas' metrics, only
            "num_cpus": 0,
            "runtime_env": {"env_vars": {FOLDER_ENV: metrics_folder}},
        },
    )
    serve.run(deployment.bind(options), name=options.model_name, route_prefix="/")
    try:
        while True:
            time.sleep(3600)
    finally:
        # the application goes; a cluster given by --address stays
        serve.delete(options.model_name)
        if options.address is None:
            serve.shutdown()
