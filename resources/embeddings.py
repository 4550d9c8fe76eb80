"""EmbeddingStore: the studio's Qdrant collections (seed 000 §3.3) through ``qdrant-client``.

Two modes, one code path:

- local (the embedded default): ``QdrantClient(path=...)``, a folder under the storage root.
  qdrant-client's local mode takes an exclusive, non-blocking ``flock`` on ``{path}/.lock`` after
  loading every point into memory, and a second client on the folder - in another process or in
  the same one - fails with "already accessed by another instance". The embedded profile runs
  steps in subprocesses (several runs at once), so a client is opened per session and closed at
  its end, one per process (nested sessions share it), and processes queue on a sibling lock file
  ``{path}.session-lock`` for at most ``lock_timeout_s`` instead of each loading the store only to
  fail on its lock. Local mode also ignores payload indexes (they are created anyway, for a store
  later moved to a server) and filters by scanning: fine for the studio's tens of thousands of images.
- server (the cluster): ``QdrantClient(url=..., api_key=...)``; concurrency is the server's.

Every session first checks both collections: missing ones are created; one whose vector sizes
differ from the configured backends is refused with a message naming the collection, the sizes
and the fix, so vectors of two spaces never mix.
"""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
from pydantic import Field

from hydra_assets.domain import embeddings as contract
from hydra_assets.domain.embeddings import EmbeddingStoreError, ImageRecord, QueenVectorRecord, SimilarImage, VectorSizes

LOCAL_LOCK_MESSAGE = "already accessed by another instance"
UPSERT_BATCH = 256
SCROLL_PAGE = 1024

_clients: dict[str, tuple[Any, Any, int]] = {}
"""Per process: local folder → (client, session lock, open sessions)."""
_clients_lock = threading.RLock()


def _models():
    from qdrant_client import models

    return models


def _schema(kind: str):
    types = _models().PayloadSchemaType
    return {"keyword": types.KEYWORD, "bool": types.BOOL, "float": types.FLOAT, "integer": types.INTEGER}[kind]


class EmbeddingStore(dg.ConfigurableResource):
    """The queen and image vectors the control plane searches; a local folder or a Qdrant server."""

    path: str | None = Field(default=None, description="Local-mode folder (embedded profile), e.g. {storage root}/qdrant.")
    url: str | None = Field(default=None, description="Qdrant server URL (cluster); wins over path when set.")
    api_key: str | None = Field(default=None, description="Qdrant API key for the server; empty means none.")
    face_size: int = Field(description="Face backend embedding size: 512 InsightFace, 128 dlib.")
    style_size: int = Field(description="Image embedding size of approved images' style vectors.")
    visual_size: int = Field(description="Scoring embedding size (aesthetic backend's image embedding).")
    description_size: int = Field(default=contract.DESCRIPTION_SIZE, description="Text embedding size.")
    lock_timeout_s: float = Field(default=120.0, gt=0, description="Local mode: longest wait for another process's session.")
    timeout_s: int = Field(default=10, ge=1, description="Server mode: per-request timeout in seconds.")

    @property
    def sizes(self) -> VectorSizes:
        return VectorSizes(face=self.face_size, style=self.style_size, visual=self.visual_size, description=self.description_size)

    @property
    def location(self) -> str:
        if self.url:
            return self.url
        if not self.path:
            raise EmbeddingStoreError("EmbeddingStore needs either url (a Qdrant server) or path (a local folder)")
        return str(Path(self.path).resolve())

    @contextmanager
    def session(self) -> Iterator[EmbeddingSession]:
        """An open store with both collections checked; closes (and frees the local folder) on exit."""
        if self.url:
            from qdrant_client import QdrantClient

            try:
                client = QdrantClient(url=self.url, api_key=self.api_key or None, timeout=self.timeout_s)
            except Exception as exc:  # a malformed URL or option: name it
                raise EmbeddingStoreError(f"embedding store {self.url}: cannot make a client: {type(exc).__name__}: {exc}") from exc
            try:
                session = EmbeddingSession(client, self.sizes, self.url, local=False)
                session.ensure_collections()
                yield session
            finally:
                client.close()
            return
        with _local_client(self.location, self.lock_timeout_s) as client:
            session = EmbeddingSession(client, self.sizes, self.location, local=True)
            session.ensure_collections()
            yield session


@contextmanager
def _local_client(folder: str, lock_timeout_s: float) -> Iterator[Any]:
    """The process's client on ``folder``, opened by the first session and closed by the last."""
    with _clients_lock:
        if folder in _clients:
            client, session_lock, count = _clients[folder]
            _clients[folder] = (client, session_lock, count + 1)
        else:
            session_lock = _acquire_session_lock(folder, lock_timeout_s)
            try:
                client = _open_local(folder, lock_timeout_s)
            except BaseException:
                session_lock.release()
                raise
            _clients[folder] = (client, session_lock, 1)
    try:
        yield client
    finally:
        with _clients_lock:
            client, session_lock, count = _clients[folder]
            if count > 1:
                _clients[folder] = (client, session_lock, count - 1)
            else:
                del _clients[folder]
                try:
                    client.close()
                finally:
                    session_lock.release()


def _acquire_session_lock(folder: str, timeout_s: float):
    import portalocker

    Path(folder).parent.mkdir(parents=True, exist_ok=True)
    lock = portalocker.Lock(f"{folder}.session-lock", mode="a", timeout=timeout_s, check_interval=0.1)
    try:
        lock.acquire()
    except portalocker.exceptions.LockException as exc:
        raise EmbeddingStoreError(
            f"embedding store {folder}: another process kept its session for over {timeout_s:g}s "
            "(local mode serves one process at a time); retry later, raise lock_timeout_s, "
            "or use a Qdrant server (url) for concurrent runs"
        ) from exc
    return lock


def _open_local(folder: str, timeout_s: float):
    """QdrantClient(path=folder), retried while a client outside Hydra's session lock holds the folder."""
    from qdrant_client import QdrantClient

    deadline = time.monotonic() + timeout_s
    delay = 0.1
    while True:
        try:
            return QdrantClient(path=folder)
        except RuntimeError as exc:
            if LOCAL_LOCK_MESSAGE not in str(exc):
                raise EmbeddingStoreError(f"embedding store {folder} cannot be opened: {exc}") from exc
            if time.monotonic() + delay > deadline:
                raise EmbeddingStoreError(
                    f"embedding store {folder} is held by another Qdrant client (not a Hydra session) for over "
                    f"{timeout_s:g}s; close it (a notebook or script with QdrantClient(path=...)) or use a Qdrant server"
                ) from exc
        time.sleep(delay)
        delay = min(delay * 2, 2.0)


class EmbeddingSession:
    """Writes and queries on an open client; every failure names the store's location."""

    def __init__(self, client: Any, sizes: VectorSizes, location: str, *, local: bool):
        self.client = client
        self.sizes = sizes
        self.location = location
        self.local = local
        """qdrant-client's local mode (``QdrantClient(path=...)``) rather than a server."""

    @contextmanager
    def _calls(self, what: str) -> Iterator[None]:
        try:
            yield
        except (EmbeddingStoreError, ValueError, KeyError):
            raise
        except Exception as exc:  # transport and server errors of any kind: name the store
            raise EmbeddingStoreError(f"embedding store {self.location}: {what} failed: {type(exc).__name__}: {exc}") from exc

    # ------------------------------------------------------------------------ collections

    def ensure_collections(self) -> None:
        models = _models()
        indexes = {contract.QUEEN_EMBEDDINGS: contract.QUEEN_PAYLOAD_INDEXES, contract.GENERATED_IMAGES: contract.IMAGE_PAYLOAD_INDEXES}
        for collection, fields in indexes.items():
            expected = self.sizes.for_collection(collection)
            with self._calls(f"checking collection {collection}"):
                exists = self.client.collection_exists(collection)
            if exists:
                actual = self.vector_sizes(collection)
                if problem := contract.size_mismatch(collection, expected, actual, self.location):
                    raise EmbeddingStoreError(problem)
                continue
            with self._calls(f"creating collection {collection}"), warnings.catch_warnings():
                # local mode says payload indexes have no effect there; a server uses them
                warnings.filterwarnings("ignore", message="Payload indexes have no effect")
                self.client.create_collection(
                    collection,
                    vectors_config={
                        name: models.VectorParams(size=size, distance=models.Distance.COSINE) for name, size in expected.items()
                    },
                )
                for field, kind in fields.items():
                    self.client.create_payload_index(collection, field, field_schema=_schema(kind))

    def vector_sizes(self, collection: str) -> dict[str, int]:
        """Named vector sizes of an existing collection; a collection made with a single unnamed
        vector reports it as ``""``, which never matches a configured name."""
        with self._calls(f"reading collection {collection}"):
            vectors = self.client.get_collection(collection).config.params.vectors
        if isinstance(vectors, dict):
            return {name: params.size for name, params in vectors.items()}
        return {"": vectors.size}

    def count(self, collection: str, **match: Any) -> int:
        with self._calls(f"counting {collection}"):
            return self.client.count(collection, count_filter=_filter(match), exact=True).count

    # ------------------------------------------------------------------------ writes

    def upsert_images(self, records: Iterable[ImageRecord]) -> int:
        """Every image's ``visual`` vector and payload; the same image id replaces its point."""
        models = _models()
        points = [
            models.PointStruct(
                id=contract.image_point_id(r.image_id),
                vector={contract.VISUAL: contract.checked_vector(r.vector, self.sizes.visual, f"{contract.GENERATED_IMAGES}/{r.image_id}")},
                payload=r.payload(),
            )
            for r in records
        ]
        return self._upsert(contract.GENERATED_IMAGES, points)

    def upsert_queen_vectors(self, records: Iterable[QueenVectorRecord]) -> int:
        models = _models()
        sizes = self.sizes.for_collection(contract.QUEEN_EMBEDDINGS)
        points = [
            models.PointStruct(
                id=r.point_id(),
                vector={
                    name: contract.checked_vector(v, sizes[name], f"{contract.QUEEN_EMBEDDINGS}/{r.queen_slug}/{r.source_file}/{name}")
                    for name, v in r.vectors.items()
                },
                payload=r.payload(),
            )
            for r in records
        ]
        return self._upsert(contract.QUEEN_EMBEDDINGS, points)

    def replace_queen_vectors(self, queen_slug: str, embedding_type: str, records: Sequence[QueenVectorRecord]) -> int:
        """The queen's points of ``embedding_type`` become exactly ``records`` (a reference removed from
        the set, or an image no longer approved, leaves no stale point)."""
        wrong = [r.source_file for r in records if r.queen_slug != queen_slug or r.embedding_type != embedding_type]
        if wrong:
            raise ValueError(f"records {wrong} are not {embedding_type} vectors of {queen_slug}")
        keep = {r.point_id() for r in records}
        stale = [
            point.id
            for point in self._scroll(contract.QUEEN_EMBEDDINGS, _filter({"queen_slug": queen_slug, "embedding_type": embedding_type}))
            if str(point.id) not in keep
        ]
        self.delete_queen_vectors(stale)
        return self.upsert_queen_vectors(records)

    def delete_queen_vectors(self, point_ids: Sequence[str]) -> None:
        """Remove points of ``queen_embeddings`` by id; ids not stored are no error."""
        if point_ids:
            with self._calls(f"deleting {len(point_ids)} points from {contract.QUEEN_EMBEDDINGS}"):
                self.client.delete(contract.QUEEN_EMBEDDINGS, points_selector=_models().PointIdsList(points=list(point_ids)), wait=True)

    def _scroll(self, collection: str, query_filter: Any, *, with_payload: Any = False, with_vectors: Any = False) -> list[Any]:
        """Every point matching ``query_filter``, page by page."""
        found, offset = [], None
        while True:
            with self._calls(f"reading {collection}"):
                points, offset = self.client.scroll(collection, scroll_filter=query_filter, limit=SCROLL_PAGE, offset=offset,
                                                    with_payload=with_payload, with_vectors=with_vectors)
            found.extend(points)
            if offset is None:
                return found

    def _upsert(self, collection: str, points: list[Any]) -> int:
        for start in range(0, len(points), UPSERT_BATCH):
            with self._calls(f"upserting into {collection}"):
                self.client.upsert(collection, points=points[start : start + UPSERT_BATCH], wait=True)
        return len(points)

    # ------------------------------------------------------------------------ queries

    def image(self, image_id: str, *, with_vector: bool = False) -> SimilarImage | None:
        """The stored point of ``image_id`` (score 1.0), or None."""
        with self._calls(f"reading {image_id}"):
            found = self.client.retrieve(
                contract.GENERATED_IMAGES, ids=[contract.image_point_id(image_id)], with_payload=True,
                with_vectors=[contract.VISUAL] if with_vector else False,
            )
        return _hit(found[0], 1.0) if found else None

    def image_by_file(self, file_path: str) -> SimilarImage | None:
        with self._calls(f"looking up {file_path}"):
            points, _ = self.client.scroll(contract.GENERATED_IMAGES, scroll_filter=_filter({"file_path": file_path}), limit=1)
        return _hit(points[0], 1.0) if points else None

    def similar_images(
        self,
        vector: Sequence[float] | np.ndarray,
        queen_slug: str,
        *,
        limit: int = 10,
        approved_only: bool = False,
        before_night: str | None = None,
        exclude_night: str | None = None,
        embedding_model: str | None = None,
        exclude_ids: Sequence[str] = (),
        with_vectors: bool = False,
    ) -> list[SimilarImage]:
        """Nearest images of the same queen by cosine, best first."""
        return self.similar_batch(
            [vector], queen_slug, limit=limit, approved_only=approved_only, before_night=before_night,
            exclude_night=exclude_night, embedding_model=embedding_model, exclude_ids=exclude_ids, with_vectors=with_vectors,
        )[0]

    def similar_batch(
        self,
        vectors: Sequence[Sequence[float]] | np.ndarray,
        queen_slug: str,
        *,
        limit: int = 10,
        approved_only: bool = False,
        before_night: str | None = None,
        exclude_night: str | None = None,
        embedding_model: str | None = None,
        exclude_ids: Sequence[str] = (),
        with_vectors: bool = False,
    ) -> list[list[SimilarImage]]:
        """One query per vector in one request; filters as :meth:`similar_images`."""
        models = _models()
        query_filter = image_filter(
            queen_slug, approved_only=approved_only, before_night=before_night, exclude_night=exclude_night,
            embedding_model=embedding_model, exclude_ids=exclude_ids,
        )
        requests = [
            models.QueryRequest(
                query=contract.checked_vector(v, self.sizes.visual, f"query {index} on {contract.GENERATED_IMAGES}"),
                using=contract.VISUAL, filter=query_filter, limit=limit, with_payload=True,
                with_vector=[contract.VISUAL] if with_vectors else False,
            )
            for index, v in enumerate(vectors)
        ]
        if not requests:
            return []
        with self._calls(f"querying {contract.GENERATED_IMAGES} for {queen_slug}"):
            responses = self.client.query_batch_points(contract.GENERATED_IMAGES, requests=requests)
        return [[_hit(point, point.score) for point in response.points] for response in responses]

    def nearest_prior_approved(
        self, vectors: np.ndarray, queen_slug: str, night: str, embedding_model: str
    ) -> tuple[np.ndarray | None, list[str]]:
        """For the near-duplicate gate: each image's nearest approved image of the queen from an
        earlier night in the same embedding space, as (matrix, ids) (see ``prior_matrix``).

        A server answers one batched, filtered query. qdrant-client's local mode evaluates the
        payload filter in Python for every point and every query of a batch (6.3 s for 16 queries
        over 10,000 points here), so locally the filtered points are read once and ranked with the
        same cosine in numpy (bench/embedding_query.py measures both).
        """
        if not self.local:
            hits = self.similar_batch(
                vectors, queen_slug, limit=1, approved_only=True, before_night=night,
                embedding_model=embedding_model, with_vectors=True,
            )
            return contract.prior_matrix(hits)
        queries = np.asarray(
            [contract.checked_vector(v, self.sizes.visual, f"query {i} on {contract.GENERATED_IMAGES}") for i, v in enumerate(vectors)]
        )
        candidates = self.scan(
            image_filter(queen_slug, approved_only=True, before_night=night, embedding_model=embedding_model), ["image_id"]
        )
        return contract.prior_matrix(contract.nearest_hits(queries, candidates))

    def scan(self, query_filter: Any, payload_fields: Sequence[str] | None = None) -> list[SimilarImage]:
        """Every point matching ``query_filter``, with its ``visual`` vector (paged scroll);
        ``payload_fields`` limits the payload read (None: all of it)."""
        points = self._scroll(
            contract.GENERATED_IMAGES, query_filter, with_vectors=[contract.VISUAL],
            with_payload=True if payload_fields is None else list(payload_fields),
        )
        return [_hit(point, 0.0) for point in points]


def image_filter(
    queen_slug: str,
    *,
    approved_only: bool = False,
    before_night: str | None = None,
    exclude_night: str | None = None,
    embedding_model: str | None = None,
    exclude_ids: Sequence[str] = (),
):
    models = _models()
    must: list[Any] = [models.FieldCondition(key="queen_slug", match=models.MatchValue(value=queen_slug))]
    must_not: list[Any] = []
    if approved_only:
        must.append(models.FieldCondition(key="approved", match=models.MatchValue(value=True)))
    if before_night is not None:
        must.append(models.FieldCondition(key="night_key", range=models.Range(lt=contract.night_key(before_night))))
    if exclude_night is not None:
        must_not.append(models.FieldCondition(key="night", match=models.MatchValue(value=exclude_night)))
    if embedding_model is not None:
        must.append(models.FieldCondition(key="embedding_model", match=models.MatchValue(value=embedding_model)))
    if exclude_ids:
        must_not.append(models.HasIdCondition(has_id=[contract.image_point_id(i) for i in exclude_ids]))
    return models.Filter(must=must, must_not=must_not or None)


def _filter(match: dict[str, Any]):
    models = _models()
    if not match:
        return None
    return models.Filter(must=[models.FieldCondition(key=k, match=models.MatchValue(value=v)) for k, v in match.items()])


def _hit(point: Any, score: float) -> SimilarImage:
    payload = dict(point.payload or {})
    vector = None
    if isinstance(point.vector, dict) and contract.VISUAL in point.vector:
        vector = tuple(np.asarray(point.vector[contract.VISUAL], dtype=np.float64).tolist())
    return SimilarImage(image_id=str(payload.get("image_id", point.id)), score=float(score), payload=payload, vector=vector)
