"""An HTTP inference service for trained models (``python -m hepdask serve RUN_DIR``).

Clients send raw branch values, as in the ROOT files (jagged branches as lists); the
service applies the model's own feature transformation (:meth:`Bundle.score`), so a score
is the one ``hepdask predict`` writes for the same event. Built on FastAPI and uvicorn; the
OpenAPI schema is served at ``/openapi.json`` and browsable at ``/docs`` (both behind the token,
when there is one).

* ``GET /health``: liveness, and the models served (never needs the token);
* ``GET /models``: each model's engine, classes, input branches and types;
* ``POST /predict``: ``{"model": name, "events": [{branch: value, ...}, ...]}`` or
  ``{"model": name, "columns": {branch: [values], ...}}`` → ``{"scores": [...], ...}``;
* ``POST /json``: the TFaaS form, ``{"keys": [...], "values": [...], "model": name}`` for one
  event (or ``values`` as a list of rows) → the class probabilities, so TFaaS and MLaaS4HEP
  clients work unchanged.

Bad requests get a 4xx answer with ``{"error": message}``; the service keeps serving. Bodies are
strict JSON (``null``, not ``NaN``, for a missing value), parsed within Python's limits on
digits and nesting. With a token (``--token-file``) every endpoint but ``/health``, the schema
and ``/docs`` included, wants ``Authorization: Bearer TOKEN``.

The routes are :func:`inference_router`'s, which ``hepdask service`` mounts too, serving each
user the models of their succeeded jobs.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import awkward as ak
import numpy as np

from .bundle import Bundle, records
from .errors import HepdaskError, RequestError

try:
    import fastapi
    import uvicorn
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.responses import JSONResponse, Response
    from pydantic import BaseModel, Field
    from starlette.concurrency import run_in_threadpool

    from .service.auth import user_dependency
except ImportError:
    raise HepdaskError(
        "hepdask serve needs FastAPI and uvicorn, which are not installed. Install them with: "
        "pip install 'hepdask[serve]'."
    ) from None

__all__ = ["DEFAULT_PORT", "inference_router", "is_loopback", "load_bundles", "make_app",
           "new_app", "read_body", "serve"]

log = logging.getLogger("hepdask")

DEFAULT_PORT = 8083  # TFaaS's, so its clients find the service where they expect it
MAX_REQUEST_MB = 16.0
MAX_EVENTS = 100_000


class PredictRequest(BaseModel):
    """Events as records or as columns (one of the two), raw branch values."""

    model: str | None = Field(None, description="the model's name; optional with one model")
    events: list[dict[str, Any]] | None = Field(
        None, description="one object per event: branch -> number (list for jagged branches)")
    columns: dict[str, list[Any]] | None = Field(
        None, description="branch -> one value per event (a list for jagged branches)")


class PredictResponse(BaseModel):
    model: str
    n_events: int
    scores: list[float] | list[list[float]] = Field(
        description="signal probability per event; one list per event for >2 classes")
    selected: list[bool] | None = Field(
        None, description="whether each event passes the training's event selection")


class TFaaSRequest(BaseModel):
    """TFaaS's /json request: one event as parallel keys and values (or rows of values)."""

    keys: list[str]
    values: list[Any]
    model: str | None = None


class ErrorResponse(BaseModel):
    error: str


def inference_router(bundles_for: Callable[[Any], Mapping[str, Bundle]], user: Callable, *,
                     max_request_mb: float = MAX_REQUEST_MB, max_events: int = MAX_EVENTS
                     ) -> fastapi.APIRouter:
    """The inference routes (``/models``, ``/predict``, ``/json``), for ``hepdask serve`` and
    ``hepdask service`` alike.

    Parameters
    ----------
    bundles_for
        The models a user may use, by the name clients give (called in a worker thread: it
        may read a database or load bundles).
    user
        The FastAPI dependency giving the request's user
        (:func:`hepdask.service.auth.user_dependency`); it refuses unauthenticated requests.
    max_request_mb, max_events
        Larger requests are refused with 413 before they are scored.
    """
    limit = int(max_request_mb * 2**20)
    errors = {s: {"model": ErrorResponse} for s in (401, 404, 413, 422)}
    router = fastapi.APIRouter(tags=["inference"])
    me = fastapi.Depends(user)

    @router.get("/models", responses=errors, summary="The models served, with their inputs")
    async def models(who=me) -> list[dict]:
        bundles = await run_in_threadpool(bundles_for, who)
        return [_describe(name, bundle) for name, bundle in bundles.items()]

    def body_schema(model: type[BaseModel]) -> dict:
        """The documented body; bodies are parsed by hand (faster, and clearer messages)."""
        return {"requestBody": {"required": True, "content": {
            "application/json": {"schema": model.model_json_schema()}}}}

    @router.post("/predict", openapi_extra=body_schema(PredictRequest),
                 responses={200: {"model": PredictResponse}, **errors},
                 summary="Scores of events given as records or columns of raw branch values")
    async def predict(request: fastapi.Request, who=me):
        body = await read_body(request, limit)
        bundles = await run_in_threadpool(bundles_for, who)
        return Response(await run_in_threadpool(_predict, bundles, body, max_events),
                        media_type="application/json")

    @router.post("/json", openapi_extra=body_schema(TFaaSRequest), responses=errors,
                 summary="TFaaS-compatible: class probabilities of one event")
    async def tfaas(request: fastapi.Request, who=me):
        body = await read_body(request, limit)
        bundles = await run_in_threadpool(bundles_for, who)
        return Response(await run_in_threadpool(_tfaas, bundles, body, max_events),
                        media_type="application/json")

    return router


def new_app(title: str, description: str, user: Callable) -> fastapi.FastAPI:
    """A FastAPI application with hepdask's error answers and its schema and ``/docs`` behind
    ``user`` (the auth dependency): what the models and jobs take is not for anyone."""
    app = fastapi.FastAPI(title=title, description=description, version=_version(),
                          docs_url=None, redoc_url=None, openapi_url=None)  # added below

    @app.exception_handler(RequestError)
    async def _refused(request, err: RequestError):
        headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else None
        return JSONResponse({"error": str(err)}, status_code=err.status, headers=headers)

    @app.exception_handler(Exception)
    async def _failed(request, err: Exception):  # a bug, not the client's fault: say so, go on
        log.exception("Request to %s failed", request.url.path)
        return JSONResponse({"error": f"internal error: {type(err).__name__}: {err}"},
                            status_code=500)

    # A browser cannot send the header, so with auth /docs is for tools that can (or for a
    # service without auth, on loopback); curl fetches /openapi.json.
    protected = [fastapi.Depends(user)]

    @app.get("/openapi.json", dependencies=protected, include_in_schema=False)
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", dependencies=protected, include_in_schema=False)
    async def docs() -> Response:
        return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{app.title} - docs")

    return app


def make_app(bundles: Mapping[str, Bundle], *, auth: Callable[[str], Any] | None = None,
             max_request_mb: float = MAX_REQUEST_MB, max_events: int = MAX_EVENTS
             ) -> fastapi.FastAPI:
    """The ASGI application of ``hepdask serve``: ``bundles`` by name, for every user.

    Parameters
    ----------
    bundles
        Models by the name clients use (``"model"`` in a request).
    auth
        When given (e.g. :class:`~hepdask.service.auth.StaticTokens`), requests but
        ``/health`` need ``Authorization: Bearer <token>``.
    max_request_mb, max_events
        Larger requests are refused with 413 before they are scored.
    """
    if not bundles:
        raise HepdaskError("No model to serve: give at least one run directory.")
    user = user_dependency(auth)
    app = new_app("hepdask inference service",
                  "Scores of trained hepdask models for events given as raw branch values.", user)

    @app.get("/health", summary="Liveness and the models served")
    async def health() -> dict:
        return {"status": "ok", "models": list(bundles)}

    app.include_router(inference_router(lambda _: bundles, user, max_request_mb=max_request_mb,
                                        max_events=max_events))
    return app


async def read_body(request, limit: int) -> bytes:
    """The request's body, refused with 413 as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(_too_large(int(declared), limit), 413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(_too_large(size, limit), 413)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(size: int, limit: int) -> str:
    return (f"The request has {size / 2**20:.1f} MiB, more than the {limit / 2**20:g} MiB this "
            "service takes (--max-request-mb): send the events in smaller requests.")


def _parse(body: bytes) -> dict:
    """The body as a JSON object, parsed with limits: strict JSON (no NaN or Infinity), and
    Python's own bounds on integer digits and nesting depth, each a 422 with its reason."""
    try:
        data = json.loads(body, parse_constant=_not_json)
    except RecursionError:
        raise RequestError("The body nests arrays or objects too deeply (hundreds of levels): "
                           "events are records of numbers or lists of numbers.") from None
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError, too many digits, NaN
        if "integer string conversion" in str(err):
            raise RequestError(f"The body has an integer of more than "
                               f"{sys.get_int_max_str_digits()} digits, which no branch can "
                               "hold.") from None
        raise RequestError(f"The body is not valid JSON: {err}.") from None
    if not isinstance(data, dict):
        raise RequestError("The body must be a JSON object, e.g. {\"model\": ..., "
                           "\"events\": [...]}.")
    return data


def _not_json(literal: str):
    raise ValueError(f"{literal} is not a JSON number; send null for a missing value")


def _bundle(bundles: Mapping[str, Bundle], name: Any) -> tuple[str, Bundle]:
    if name is not None and not isinstance(name, str):
        raise RequestError(f"\"model\" must be a model's name (a string), not {_show([name])}.")
    if not bundles:
        raise RequestError("No model is served to you yet: a model is served once the job that "
                           "trains it has succeeded.", 404)
    if name is None:
        if len(bundles) == 1:
            return next(iter(bundles.items()))
        raise RequestError(f"Several models are served ({', '.join(bundles)}): say which with "
                           "\"model\".")
    if name not in bundles:
        raise RequestError(f"No model {name!r} here; the models are: {', '.join(bundles)}.", 404)
    return name, bundles[name]


def _predict(bundles: Mapping[str, Bundle], body: bytes, max_events: int) -> bytes:
    data = _parse(body)
    unknown = sorted(set(data) - {"model", "events", "columns"})
    if unknown:
        raise RequestError(f"Unknown keys {unknown}: a request has \"model\" and either "
                           "\"events\" (a list of records) or \"columns\" (branch -> values).")
    name, bundle = _bundle(bundles, data.get("model"))
    if ("events" in data) == ("columns" in data):
        raise RequestError("Give the events either as \"events\" (a list of records) or as "
                           "\"columns\" (branch -> list of values), not both or neither.")
    if "events" in data:
        columns = _records_to_columns(data["events"], bundle.inputs, max_events)
    else:
        columns = data["columns"]
        if not isinstance(columns, dict):
            raise RequestError("\"columns\" must be an object: branch -> list of values.")
    scored = bundle.score(_events(bundle, columns, max_events))
    out = {"model": name, "n_events": len(scored["score"]), "scores": scored["score"].tolist()}
    if "selected" in scored:
        out["selected"] = scored["selected"].tolist()
    return json.dumps(out).encode()


def _tfaas(bundles: Mapping[str, Bundle], body: bytes, max_events: int) -> bytes:
    data = _parse(body)
    keys, values = data.get("keys"), data.get("values")
    if not isinstance(keys, list) or not isinstance(values, list):
        raise RequestError("A /json request has \"keys\" (branch names) and \"values\" (one "
                           "value per key, or a list of such rows), as TFaaS takes them.")
    _, bundle = _bundle(bundles, data.get("model"))
    if not all(isinstance(k, str) for k in keys):
        raise RequestError("\"keys\" must be branch names (strings).")
    branches = bundle.preprocess.branches
    jagged = [k in branches and branches[k].jagged for k in keys]
    single = len(values) == len(keys) and all(
        isinstance(v, list) == j for v, j in zip(values, jagged, strict=True))
    rows = [values] if single else values
    if len(rows) > max_events:
        raise RequestError(_too_many(len(rows), max_events), 413)
    if not all(isinstance(row, list) and len(row) == len(keys) for row in rows):
        raise RequestError(
            f"\"values\" must hold one value per key ({len(keys)} keys; a list for a jagged "
            f"branch), or a list of such rows; it has {len(values)} entries that are neither."
        )
    columns = {key: [row[j] for row in rows] for j, key in enumerate(keys)}
    scores = bundle.score(_events(bundle, columns, max_events))["score"]
    probabilities = scores[:, None].tolist() if scores.ndim == 1 else scores.tolist()
    return json.dumps(probabilities[0] if single else probabilities).encode()


def _too_many(n: int, limit: int) -> str:
    return (f"The request has {n} events, more than the {limit} this service scores at once "
            "(--max-events): send them in smaller requests.")


def _records_to_columns(events: Any, inputs: Sequence[str], max_events: int) -> dict:
    if not isinstance(events, list):
        raise RequestError("\"events\" must be a list of records (branch -> value).")
    if len(events) > max_events:
        raise RequestError(_too_many(len(events), max_events), 413)
    columns: dict[str, list] = {name: [] for name in inputs}
    for i, record in enumerate(events):
        if not isinstance(record, dict):
            raise RequestError(f"Event {i} is not a record: each event is an object "
                               "branch -> value.")
        for name in inputs:
            try:
                columns[name].append(record[name])
            except KeyError:
                raise RequestError(f"Event {i} lacks the branch {name!r}; the model needs "
                                   f"{', '.join(inputs)}.") from None
    return columns


def _events(bundle: Bundle, columns: Mapping[str, Any], max_events: int) -> ak.Array:
    """The request's input branches as one record array, checked against the model's inputs."""
    missing = [name for name in bundle.inputs if name not in columns]
    if missing:
        raise RequestError(f"The events lack the branches {missing}; the model needs "
                           f"{', '.join(bundle.inputs)}.")
    fields, n = {}, None
    for name in bundle.inputs:
        values = columns[name]
        if not isinstance(values, list):
            raise RequestError(f"{name!r} must be a list with one value per event.")
        if n is None:
            n = len(values)
            if n > max_events:
                raise RequestError(_too_many(n, max_events), 413)
        elif len(values) != n:
            raise RequestError(f"{name!r} has {len(values)} values but {bundle.inputs[0]!r} has "
                               f"{n}: give every branch one value per event.")
        fields[name] = _column(name, values, bundle.preprocess.branches[name])
    return records(fields, n or 0)


def _column(name: str, values: list, branch) -> ak.Array | np.ndarray:
    """One branch's values, checked: numbers (lists of numbers when jagged), of its type."""
    dtype = np.dtype(branch.dtype)
    kind = "true/false" if dtype.kind == "b" else "a whole number" if dtype.kind in "iu" \
        else "a number"
    wanted = f"a list of {kind} values per event" if branch.jagged else f"{kind} per event"
    try:
        if branch.jagged:
            if not all(isinstance(v, list) for v in values):
                raise TypeError
            flat = _numbers([x for v in values for x in v])
            array = np.asarray(flat, dtype=dtype) if dtype.kind != "f" else flat
            _check_values(flat, array, dtype)
            array = array.astype(dtype)
            counts = [len(v) for v in values]
        else:
            flat = _numbers(values)
            if flat.ndim != 1:
                raise TypeError
            array = flat.astype(dtype)
            _check_values(flat, array, dtype)
    except (TypeError, ValueError, OverflowError):
        raise RequestError(f"{name!r} must hold {wanted} (as in the ROOT files); got "
                           f"{_show(values)}.") from None
    if dtype.kind == "f" and np.isinf(array).any():
        raise RequestError(f"{name!r} holds a number beyond the range of {dtype} (e.g. 1e400): "
                           "send the values as in the ROOT files.")
    return ak.unflatten(array, counts) if branch.jagged else array


def _numbers(values: list) -> np.ndarray:
    """``values`` as float64, refusing strings (NumPy would read "1.5" as a number); null is
    NaN, a missing value."""
    raw = np.asarray(values)
    if raw.dtype.kind in "USV" or (raw.dtype.kind == "O" and any(isinstance(v, str | dict)
                                                                  for v in values)):
        raise TypeError
    return raw.astype(np.float64, copy=False)


def _check_values(flat: np.ndarray, array: np.ndarray, dtype: np.dtype) -> None:
    if dtype.kind in "iub" and not np.array_equal(flat, array.astype(np.float64)):
        raise ValueError


def _show(values: list) -> str:
    bad = next((v for v in values if not isinstance(v, int | float) or isinstance(v, bool)),
               values[:1])
    try:
        text = json.dumps(bad)
    except (RecursionError, ValueError):  # nested deeper than this thread's stack allows
        text = f"a {type(bad).__name__} nested too deeply"
    return text if len(text) < 60 else text[:57] + "..."


def _describe(name: str, bundle: Bundle) -> dict:
    return {
        "name": name, "engine": bundle.engine, "path": str(bundle.path),
        "classes": {str(k): v for k, v in bundle.classes.items()},
        "inputs": bundle.input_types(), "outputs": ["score", *bundle.outputs],
        "features": len(bundle.layout.names), "created": bundle.info.get("created"),
        "versions": bundle.info.get("versions", {}),
    }


def _version() -> str:
    from . import __version__

    return __version__


def load_bundles(run_dirs: Sequence[str]) -> dict[str, Bundle]:
    """``RUN_DIR`` or ``NAME=RUN_DIR`` arguments as bundles by name (the run's name by default)."""
    bundles: dict[str, Bundle] = {}
    for item in run_dirs:
        name, sep, path = item.partition("=")
        if not sep:
            name, path = "", item
        bundle = Bundle.load(path, name=name or None)
        if bundle.name in bundles:
            raise HepdaskError(
                f"Two models are named {bundle.name!r} ({bundles[bundle.name].path} and "
                f"{bundle.path}): name them, e.g. {bundle.name}-v2={path}."
            )
        bundles[bundle.name] = bundle
    return bundles


def serve(bundles: Mapping[str, Bundle], *, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
          auth: Callable[[str], Any] | None = None, max_request_mb: float = MAX_REQUEST_MB,
          max_events: int = MAX_EVENTS) -> None:
    """Serve ``bundles`` until interrupted."""
    if not is_loopback(host) and auth is None:
        log.warning("Serving on %s without a token: anyone who can reach this machine can use "
                    "the models. Give --token-file to require one.", host)
    app = make_app(bundles, auth=auth, max_request_mb=max_request_mb, max_events=max_events)
    shown = f"[{host}]" if ":" in host else host
    log.info("Serving %s on http://%s:%d (API docs at /docs)", ", ".join(bundles), shown, port)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)


def is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine only (127.0.0.0/8, ::1 or localhost)."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"

