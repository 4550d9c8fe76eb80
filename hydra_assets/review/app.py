"""The review app's routes: nights → queens → a grid of every image → one image; decisions by form.

Bad input is a 4xx page that says what was wrong (404 unknown night, queen or image; 400 a bad
form; 409 a stale decision or an unreadable overrides file; 403 a cross-site post; 401 no user
on the cluster); nothing but the partition's overrides file (and the thumbnail cache) is ever
written.
"""

from __future__ import annotations

import getpass
import re
from pathlib import Path
from urllib.parse import urlencode, urlsplit

from fastapi import FastAPI, Form, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException

from hydra_assets.domain import overrides, quality
from hydra_assets.domain.storage import sha256_file
from hydra_assets.review import links
from hydra_assets.review.config import ReviewConfig
from hydra_assets.review.data import NotFound, ReviewStore, filter_images, pretty_json, threshold_suggestions
from hydra_assets.review.decisions import DecisionError, write_decision
from hydra_assets.review.launcher import REVIEW_ASSETS, DagsterLauncher, LaunchResult
from hydra_assets.review.thumbnails import ThumbnailCache

HERE = Path(__file__).resolve().parent
USER_RE = re.compile(r"^[^\x00-\x1f\x7f]{1,100}$")
HASH_RE = re.compile(r"^[0-9a-f]{64}$")


def create_app(config: ReviewConfig, launcher: DagsterLauncher | None = None) -> FastAPI:
    store = ReviewStore(config.storage_root, config.roster_dir)
    thumbnails = ThumbnailCache(config.cache_dir, config.thumbnail_px)
    launcher = launcher or DagsterLauncher(config.dagster_url, config.launch_timeout_s)
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.globals.update(quality=quality, links=links, base="", dagster_url=config.dagster_url)
    templates.env.filters["json"] = pretty_json
    templates.env.filters["thr"] = quality.format_threshold
    templates.env.filters["fmt"] = lambda v, digits=2: "-" if v is None else f"{v:.{digits}f}"

    app = FastAPI(title="Hydra review", docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    def page(request: Request, name: str, status_code: int = 200, **context) -> HTMLResponse:
        return templates.TemplateResponse(request, name, context, status_code=status_code)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        return page(request, "error.html", exc.status_code, status=exc.status_code, message=exc.detail)

    @app.exception_handler(RequestValidationError)
    async def form_error(request: Request, exc: RequestValidationError):
        fields = ", ".join(".".join(str(p) for p in e.get("loc", ())[1:]) or "request" for e in exc.errors())
        return page(request, "error.html", 400, status=400, message=f"missing or invalid: {fields}")

    def partition_or_404(night: str, queen: str):
        try:
            return store.partition(night, queen)
        except NotFound as exc:
            raise HTTPException(404, str(exc)) from exc

    def image_or_404(night: str, queen: str, image_id: str):
        partition = partition_or_404(night, queen)
        try:
            return partition, partition.by_id(image_id)
        except NotFound as exc:
            raise HTTPException(404, str(exc)) from exc

    def file_or_404(night: str, queen: str, image_id: str) -> Path:
        try:
            path = store.image_file(night, queen, image_id)
        except NotFound as exc:
            raise HTTPException(404, str(exc)) from exc
        if not path.is_file():
            raise HTTPException(404, f"{image_id}: its file is missing")
        return path

    def reviewer(request: Request) -> str:
        value = (request.headers.get(config.user_header) or "").strip()
        if not value:
            if config.require_user_header:
                raise HTTPException(401, f"no {config.user_header} header: open the review app through the studio's sign-in proxy")
            value = getpass.getuser()
        if not USER_RE.fullmatch(value):
            raise HTTPException(400, f"{config.user_header} must be 1-100 printable characters")
        return value

    def same_origin(request: Request) -> None:
        """Decisions come from this app's own pages: a form posted from another site is refused."""
        origin = request.headers.get("origin")
        if origin is None:
            return
        allowed = {request.headers.get("host"), urlsplit(config.public_url).netloc}
        if urlsplit(origin).netloc not in allowed:
            raise HTTPException(403, f"cross-site form from {origin} refused")

    @app.get("/healthz", response_class=PlainTextResponse)
    def healthz() -> str:
        return "ok"

    @app.get("/", response_class=HTMLResponse)
    def nights(request: Request):
        return page(request, "nights.html", nights=store.nights())

    @app.get("/nights/{night}", response_class=HTMLResponse)
    def queens(request: Request, night: str):
        try:
            slugs = store.queens(night)
        except NotFound as exc:
            raise HTTPException(404, str(exc)) from exc
        return page(request, "queens.html", night=night, queens=[store.queen_summary(night, q) for q in slugs])

    @app.get("/nights/{night}/{queen}", response_class=HTMLResponse)
    def grid(request: Request, night: str, queen: str, status: str = "", reason: str = "", type: str = "",
             decided: str = "", run: str = "", launch_error: str = ""):
        partition = partition_or_404(night, queen)
        shown = filter_images(partition.images, status or None, reason or None, type or None)
        return page(
            request, "grid.html", p=partition, images=shown,
            filters={"status": status, "reason": reason, "type": type},
            reasons=sorted({i.reason_kind for i in partition.images if i.reason_kind}),
            types=sorted({i.asset_type for i in partition.images}),
            suggestions=threshold_suggestions(store, queen, partition.thresholds),
            outcome={"decided": decided, "run": run, "launch_error": launch_error},
        )

    @app.get("/nights/{night}/{queen}/images/{image_id}", response_class=HTMLResponse)
    def image_page(request: Request, night: str, queen: str, image_id: str, decided: str = "", run: str = "",
                   launch_error: str = ""):
        partition, image = image_or_404(night, queen, image_id)
        ids = [i.image_id for i in partition.images]
        at = ids.index(image_id)
        return page(
            request, "image.html", p=partition, image=image,
            previous=ids[at - 1] if at > 0 else None, next=ids[at + 1] if at + 1 < len(ids) else None,
            outcome={"decided": decided, "run": run, "launch_error": launch_error},
        )

    @app.get("/nights/{night}/{queen}/images/{image_id}/thumb.jpg")
    def thumbnail(night: str, queen: str, image_id: str):
        path = file_or_404(night, queen, image_id)
        data, cached = thumbnails.get(path)
        return Response(data, media_type="image/jpeg",
                        headers={"Cache-Control": "private, max-age=300", "X-Thumbnail-Cache": "hit" if cached else "miss"})

    @app.get("/nights/{night}/{queen}/images/{image_id}/file")
    def original(night: str, queen: str, image_id: str):
        return FileResponse(file_or_404(night, queen, image_id), headers={"Cache-Control": "private, max-age=300"})

    @app.post("/nights/{night}/{queen}/images/{image_id}/decision")
    def decide(request: Request, night: str, queen: str, image_id: str, decision: str = Form(...),
               file_hash: str = Form(...), reason: str = Form(""), return_to: str = Form("grid")):
        same_origin(request)
        partition, image = image_or_404(night, queen, image_id)
        user = reviewer(request)
        if decision not in overrides.OVERRIDE_DECISIONS:
            raise HTTPException(400, f"decision must be one of {', '.join(overrides.OVERRIDE_DECISIONS)}, got {decision!r}")
        if not HASH_RE.fullmatch(file_hash):
            raise HTTPException(400, "file_hash must be the image's sha256 (64 hex digits)")
        if not image.path.is_file():
            raise HTTPException(409, f"{image_id}: its file is missing; nothing written")
        current = sha256_file(image.path)
        if file_hash != current or (image.file_hash and image.file_hash != current):
            raise HTTPException(
                409, f"{image_id} changed since the page was rendered (or since it was scored): reload the page "
                "and look again; nothing written")
        try:
            write_decision(partition.overrides_path, image_id, decision, user, reason)
        except DecisionError as exc:
            raise HTTPException(exc.status, str(exc)) from exc
        result: LaunchResult = launcher.launch(queen, night, user, image_id)
        query = {"decided": image_id, **({"run": result.run_id} if result.run_id else {"launch_error": result.error or ""})}
        target = links.image_review_url("", night, queen, image_id) if return_to == "image" \
            else links.partition_review_url("", night, queen)
        return RedirectResponse(f"{target}?{urlencode(query)}", status_code=303)

    app.state.config = config
    app.state.review_assets = REVIEW_ASSETS
    return app
