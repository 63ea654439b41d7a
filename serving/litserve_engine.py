"""The LitServe engine (one machine): two LitAPIs, the OIP v2 infer endpoint and ``/v1/classify``,
each with LitServe's own dynamic batching (``max_batch_size``, ``batch_timeout``). A request may
carry several images: requests are concatenated into one batch and split again. Workers are
spawned processes, so the APIs are module-level classes holding only their options."""

from __future__ import annotations

import base64
import json
import signal
from collections.abc import Callable

import litserve as ls
import numpy as np
from fastapi import HTTPException
from starlette.exceptions import HTTPException as StarletteHTTPException

from serving.codec import BINARY_HEADER, BINARY_KEY, BadRequest, Codec
from serving.metrics import Measured, observe_batch
from serving.options import ServeOptions, checked
from serving.runtime import Bundle, Runner, note_replica


def _split(x) -> tuple[list, list[int]]:
    """LitServe hands predict one request, or a list of them when it batched several."""
    return (x, [len(images) for _, images in x]) if isinstance(x, list) else ([x], [len(x[1])])


class _Api(ls.LitAPI):
    """Load once per worker, run a concatenated batch, split it per request."""

    def __init__(self, options: ServeOptions, api_path: str):
        super().__init__(
            max_batch_size=options.max_batch,
            batch_timeout=options.batch_wait_ms / 1000,
            api_path=api_path,
        )
        self.options = options

    def setup(self, device) -> None:
        # Ctrl-C reaches every process of the terminal's group: the serving process stops this one
        # (with SIGTERM); a KeyboardInterrupt here would only print a traceback on its way out.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        bundle = Bundle.open(self.options.bundle)
        self.codec = Codec(bundle, self.options.model_name)
        self.runner = Runner(bundle, self.options.files, threads=self.options.threads_per_replica)
        note_replica()

    async def authorize(self) -> None:
        """No authentication (as LitServe's default), but a coroutine: LitServe's default is a plain
        function, which FastAPI runs in its thread pool, a thread hand-off on every request
        (about a quarter of the HTTP process's time under load)."""

    def batch(self, inputs):
        return inputs  # concatenated in predict: requests carry different numbers of images

    def unbatch(self, output):
        return output

    def predict(self, x):
        requests, sizes = _split(x)
        batch = np.concatenate([images for _, images in requests])
        observe_batch(len(batch))
        logits = self.runner(batch)
        out = [
            (key, part)
            for (key, _), part in zip(
                requests, np.split(logits, np.cumsum(sizes)[:-1]), strict=True
            )
        ]
        return out if isinstance(x, list) else out[0]


class InferApi(_Api):
    def decode_request(self, request):
        return checked(self.codec.decode_infer, request)

    def encode_response(self, output):
        return self.codec.encode_infer(*output)


class ClassifyApi(_Api):
    def decode_request(self, request):
        upload = request.get("file") if hasattr(request, "get") else None
        if upload is None or not hasattr(upload, "file"):
            raise HTTPException(
                status_code=400, detail="send the image as the multipart form field 'file'"
            )
        return None, checked(self.codec.decode_image, upload.file.read())[None]

    def encode_response(self, output):
        return self.codec.encode_classification(output[1][0])


async def _answer(send, status: int, detail: str) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": json.dumps({"detail": detail}).encode()})


class JsonBodies:
    """ASGI middleware: a JSON endpoint's body that is not JSON gets 400 with a message (LitServe
    would answer 500). The body, at most --max-body-mb (checked before this), is replayed as
    received; a binary-extension request is replayed as JSON, its tensor bytes in base64 (LitServe
    hands its workers JSON only)."""

    def __init__(self, app, prefix: str = "/v2/"):
        self.app, self.prefix = app, prefix

    async def __call__(self, scope, receive, send):
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or not scope["path"].startswith(self.prefix)
        ):
            return await self.app(scope, receive, send)
        messages, body = [], b""
        try:
            while True:
                # the size limit outside raises here, past FastAPI's handlers
                message = await receive()
                messages.append(message)
                body += message.get("body", b"")
                if not message.get("more_body"):
                    break
            headers = dict(scope["headers"])
            header, binary = Codec.split_binary(
                body, headers.get(BINARY_HEADER.encode(), b"").decode() or None
            )
        except StarletteHTTPException as exc:
            return await _answer(send, exc.status_code, str(exc.detail))
        except BadRequest as exc:
            return await _answer(send, 400, str(exc))
        if binary:
            body = json.dumps({**header, BINARY_KEY: base64.b64encode(binary).decode()}).encode()
            messages = [{"type": "http.request", "body": body, "more_body": False}]
            headers.update(
                {b"content-length": str(len(body)).encode(), b"content-type": b"application/json"}
            )
            headers.pop(BINARY_HEADER.encode(), None)
            scope = {**scope, "headers": list(headers.items())}

        async def replay():
            return messages.pop(0) if messages else await receive()

        return await self.app(scope, replay, send)


def _use_zmq(server: ls.LitServer) -> None:
    """Make ``fast_queue=True`` do what it says. LitServe 0.2.19 ignores it (it builds its transport
    config with a misspelt keyword, so responses travel through a multiprocessing manager's queue,
    one more process hop and pickle per response), and were it honoured, its factory would pass the
    ZMQ broker's two addresses swapped (Lightning-AI/LitServe#751, fix proposed in #752). Both are
    set here by name, which stays right once LitServe is fixed."""
    from litserve.transport import factory
    from litserve.transport.zmq_queue import Broker
    from litserve.transport.zmq_transport import ZMQTransport

    class MainEnd(ZMQTransport):
        """The main process's end, never set up (it neither sends nor receives): ZMQTransport.close
        raises then, and LitServe's shutdown, which closes it first, would stop there and leave its
        HTTP processes running, so that SIGTERM never ended the server. Workers unpickle the plain
        class (``__reduce__``)."""

        def close(self, **kwargs) -> None:
            if self._zmq is not None:
                super().close(**kwargs)

    def zmq_transport(config):
        broker = Broker()  # a thread of the main process; zmq.proxy runs outside the GIL
        broker.start()
        config.frontend_address, config.backend_address = (
            broker.frontend_address,
            broker.backend_address,
        )
        return MainEnd(
            backend_address=broker.backend_address, frontend_address=broker.frontend_address
        )

    server.transport_config.transport_type = "zmq"
    factory._create_zmq_transport = zmq_transport
    _skip_pings()


def _skip_pings() -> None:
    """A worker that starts (a replica restarted, or started while the server shuts down) sends
    ``0|__ping__`` to consumer 0 to wait for subscribers; LitServe 0.2.19's consumer unpickles it,
    fails, logs two ERROR lines and stops reading responses for that HTTP process. A ping is no
    response: it is skipped (the response loops already skip None)."""
    from litserve.transport import zmq_queue

    parse = zmq_queue.BaseConsumer._parse_message
    if getattr(parse, "skips_pings", False):
        return

    def parse_message(self, message: bytes):
        return None if message.partition(b"|")[2] == b"__ping__" else parse(self, message)

    parse_message.skips_pings = True
    zmq_queue.BaseConsumer._parse_message = parse_message


def build(options: ServeOptions, *, add_routes: Callable) -> ls.LitServer:
    apis = [
        InferApi(options, f"/v2/models/{options.model_name}/infer"),
        ClassifyApi(options, "/v1/classify"),
    ]
    # restart_workers: a worker that dies is started again (LitServe's default shuts the server
    # down);
    # its requests in flight fail after the request timeout
    server = ls.LitServer(
        apis,
        accelerator="cpu",
        workers_per_device=options.replicas,
        restart_workers=True,
        timeout=options.request_timeout_s,
        fast_queue=True,
        middlewares=[JsonBodies, Measured],
        max_payload_size=int(options.max_body_mb * 2**20),
        # LitServe's own check: every worker set up
        healthcheck_path="/v2/health/ready",
    )
    # SIGTERM gives requests in flight their own timeout to finish, not uvicorn's 30 s per HTTP
    # process: after a worker died under load, requests it held never finish, and the shutdown
    # waited the full 30 s for each HTTP process (61 s with 2 workers) before killing them.
    server.uvicorn_graceful_timeout = options.request_timeout_s + 1.0
    _use_zmq(server)
    add_routes(server.app, options)
    return server


def serve(options: ServeOptions, *, add_routes: Callable) -> None:
    build(options, add_routes=add_routes).run(
        host=options.host, port=options.port, generate_client_file=False, log_level="warning"
    )
