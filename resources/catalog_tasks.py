"""The catalog's generation queue: create, claim, follow and finish ``generation_tasks`` rows.

A mixin of :class:`resources.catalog.CatalogResource` (its session and transactions). Claiming
is the one step that must be atomic: the UPDATE only moves a row that is still ``queued``, so
two sensor ticks racing each get disjoint tasks; on PostgreSQL the candidates are selected
``FOR UPDATE SKIP LOCKED`` as well, so a concurrent claimer skips rows instead of waiting.
"""

from __future__ import annotations

import platform
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from hydra_assets.domain.generation_tasks import ACTIVE_STATUSES, FINAL_STATUSES, TaskRequest, retry_delay_seconds
from resources.catalog_schema import TASK_PRIORITIES, TASK_STATUSES, GenerationTaskRow, QueenRow, _utcnow

COUNT_COLUMNS = ("total_count", "completed_count", "approved_count", "rejected_count")
_PRIORITY_RANK = sa.case({p: n for n, p in enumerate(TASK_PRIORITIES)}, value=GenerationTaskRow.priority, else_=len(TASK_PRIORITIES))


class GenerationTaskCatalog:
    """Methods on the catalog resource; every write is one transaction."""

    def create_task(self, request: TaskRequest) -> int:
        """Queue a validated request; the queen must be in the catalog's queens table."""
        with self._transaction() as session:  # type: ignore[attr-defined]
            queen_id = session.scalar(sa.select(QueenRow.id).where(QueenRow.slug == request.queen))
            if queen_id is None:
                raise LookupError(f"generation_tasks: no queen {request.queen!r} in the catalog's queens table (upsert the queen first)")
            row = GenerationTaskRow(
                task_type=request.task_type,
                priority=request.priority,
                queen_id=queen_id,
                config=request.config.model_dump(mode="json", exclude_none=True),
                status="queued",
                total_count=request.config.count,
                created_by=request.created_by,
                queued_at=_utcnow(),
            )
            session.add(row)
            session.flush()
            return row.id

    def task(self, task_id: int) -> GenerationTaskRow | None:
        with self.session() as session:  # type: ignore[attr-defined]
            return session.get(GenerationTaskRow, task_id)

    def task_queen(self, task_id: int) -> str | None:
        with self.session() as session:  # type: ignore[attr-defined]
            return session.scalar(
                sa.select(QueenRow.slug).join(GenerationTaskRow, GenerationTaskRow.queen_id == QueenRow.id).where(GenerationTaskRow.id == task_id)
            )

    def tasks(self, statuses: tuple[str, ...] = ACTIVE_STATUSES) -> list[tuple[GenerationTaskRow, str]]:
        """Tasks in these statuses with their queen's slug, oldest first."""
        with self.session() as session:  # type: ignore[attr-defined]
            query = (
                sa.select(GenerationTaskRow, QueenRow.slug)
                .join(QueenRow, GenerationTaskRow.queen_id == QueenRow.id)
                .where(GenerationTaskRow.status.in_(statuses))
                .order_by(GenerationTaskRow.id)
            )
            return [(row, slug) for row, slug in session.execute(query)]

    def claim_tasks(self, limit: int, now: datetime | None = None, node: str | None = None) -> list[tuple[GenerationTaskRow, str]]:
        """Move up to ``limit`` due queued tasks to ``assigned``, most urgent first; returns only the ones this call moved."""
        now = now or _utcnow()
        with self._transaction() as session:  # type: ignore[attr-defined]
            candidates = (
                sa.select(GenerationTaskRow.id)
                .where(GenerationTaskRow.status == "queued", GenerationTaskRow.queued_at <= now)
                .order_by(_PRIORITY_RANK, GenerationTaskRow.queued_at, GenerationTaskRow.id)
                .limit(limit)
            )
            if session.get_bind().dialect.name == "postgresql":
                candidates = candidates.with_for_update(skip_locked=True)
            claimed = []
            for task_id in session.scalars(candidates).all():
                moved = session.execute(
                    sa.update(GenerationTaskRow)
                    .where(GenerationTaskRow.id == task_id, GenerationTaskRow.status == "queued")
                    .values(status="assigned", assigned_node=node or platform.node())
                )
                if moved.rowcount == 1:
                    claimed.append(task_id)
        return [(row, slug) for row, slug in self.tasks(("assigned",)) if row.id in claimed] if claimed else []

    def update_task(self, task_id: int, *, status: str | None = None, **values: Any) -> None:
        """Set a task's status and any of its counts, times, ``last_error``, ``k8s_job_name``.

        A task already completed, failed or cancelled is left as it is (a late stage of an
        old run must not reopen it); moving to a final status stamps ``completed_at``.
        """
        allowed = {*COUNT_COLUMNS, "started_at", "completed_at", "last_error", "k8s_job_name", "assigned_node", "assigned_gpu"}
        unknown = sorted(set(values) - allowed)
        if unknown:
            raise ValueError(f"generation_tasks: not columns a stage may set: {', '.join(unknown)}")
        if status is not None:
            if status not in TASK_STATUSES:
                raise ValueError(f"generation_tasks: status {status!r} is not one of {', '.join(TASK_STATUSES)}")
            values["status"] = status
            if status in FINAL_STATUSES:
                values.setdefault("completed_at", _utcnow())
        with self._transaction() as session:  # type: ignore[attr-defined]
            result = session.execute(
                sa.update(GenerationTaskRow)
                .where(GenerationTaskRow.id == task_id, GenerationTaskRow.status.not_in(FINAL_STATUSES))
                .values(**values)
            )
            if result.rowcount == 0 and session.get(GenerationTaskRow, task_id) is None:
                raise LookupError(f"generation_tasks: no task {task_id}")

    def fail_or_requeue_task(self, task_id: int, error: str, now: datetime | None = None) -> str:
        """A run of the task failed: requeue it after the SPEC back-off, or fail it for good
        once ``max_retries`` retries are spent. Returns the new status."""
        now = now or _utcnow()
        with self._transaction() as session:  # type: ignore[attr-defined]
            row = session.get(GenerationTaskRow, task_id, with_for_update=True)
            if row is None:
                raise LookupError(f"generation_tasks: no task {task_id}")
            if row.status in FINAL_STATUSES or row.status == "queued":
                return row.status
            row.last_error = error[:2000]
            if row.retry_count >= row.max_retries:
                row.status, row.completed_at = "failed", now
            else:
                row.queued_at = now + timedelta(seconds=retry_delay_seconds(row.retry_count))
                row.retry_count += 1
                row.status, row.assigned_node = "queued", None
            return row.status
